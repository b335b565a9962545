"""appliance.reload: which keys a SIGHUP applies, which refuse it, and that a refusal changes nothing."""
from __future__ import annotations

import os

import pytest

from appliance import config, reload
from appliance.errors import ConfigError
from tests.unit.checkrig import LogLines

BASE = {
    "appliance": {"hostname": "mail.example.test", "domains": "example.test", "state_dir": "var"},
    "tls": {"certificate": "", "key": ""},
    "listen": {"smtp": "tcp:2525:interface=127.0.0.1"},
    "checks": {"greylist": "off"},
}


def write(path, sections: dict[str, dict[str, str]]) -> None:
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) for name, keys in sections.items())
    path.write_text(text)


def edited(**changes: dict[str, str]) -> dict[str, dict[str, str]]:
    sections = {name: dict(keys) for name, keys in BASE.items()}
    for name, keys in changes.items():
        sections.setdefault(name, {}).update(keys)
    return sections


class Prepared:
    """A prepare() that records what it was given and whether its swap ran."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.given: list[config.Config] = []
        self.swapped = 0

    def __call__(self, new: config.Config):
        self.given.append(new)
        if self.fail is not None:
            raise self.fail
        return self.swap

    def swap(self) -> None:
        self.swapped += 1


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "mailappliance.conf"
    write(path, BASE)
    return path


def reloader(conf, prepared: Prepared) -> reload.Reloader:
    return reload.Reloader(config.load(str(conf)), prepared)


def test_changed_names_the_ini_keys(conf):
    old = config.load(str(conf))
    write(conf, edited(masquerade={"domains": "lan.example.test", "as": "example.test"},
                       limits={"max_message_size": "1000"}))
    assert config.changed(old, config.load(str(conf))) == [
        ("masquerade", "domains"), ("masquerade", "as"), ("limits", "max_message_size")]


def test_an_unchanged_file_still_reloads_what_it_names(conf):
    prepared = Prepared()
    with LogLines() as log:
        assert reloader(conf, prepared)() is True
    assert prepared.swapped == 1           # certificate, aliases and users files are read again
    assert log.matching("reloaded") == ["reloaded changed=none"]


def test_reloadable_changes_are_swapped_in_and_named(conf):
    prepared = Prepared()
    run = reloader(conf, prepared)
    write(conf, edited(aliases={"catch_all": "example.test: bob@example.test"}, relay={"trusted_networks": "10.0.0.0/8"}))
    with LogLines() as log:
        assert run() is True
    assert prepared.swapped == 1 and prepared.given[0].aliases.catch_all == (("example.test", "bob@example.test"),)
    assert log.matching("reloaded") == ['reloaded changed="[aliases] catch_all, [relay] trusted_networks"']
    assert run.current is prepared.given[0]


@pytest.mark.parametrize("changes, named", [
    ({"listen": {"smtp": "tcp:2526:interface=127.0.0.1"}}, "[listen] smtp"),
    ({"listen": {"imap": "tcp:1143:interface=127.0.0.1"}}, "[listen] imap"),
    ({"appliance": {"state_dir": "elsewhere"}}, "[appliance] state_dir"),
    ({"storage": {"format": "mbox"}}, "[storage] format"),
])
def test_restart_only_keys_refuse_the_whole_reload(conf, changes, named):
    prepared = Prepared()
    run = reloader(conf, prepared)
    old = run.current
    write(conf, edited(aliases={"catch_all": "example.test: bob@example.test"}, **changes))
    with LogLines() as log:
        assert run() is False
    assert prepared.given == [] and run.current is old
    [line] = log.matching("reload-refused")
    assert f'keys="{named}"' in line and "restart" in line and "catch_all" not in line


def test_a_broken_file_is_refused_one_line_per_problem(conf):
    prepared = Prepared()
    run = reloader(conf, prepared)
    write(conf, edited(limits={"max_recipients": "many", "max_errors": "0"}))
    with LogLines() as log:
        assert run() is False
    assert prepared.given == []
    lines = log.matching("reload-refused")
    assert len(lines) == 2
    assert "[limits] max_recipients" in lines[0] and "[limits] max_errors" in lines[1]


def test_a_named_file_that_is_missing_is_refused(conf, tmp_path):
    prepared = Prepared()
    run = reloader(conf, prepared)
    write(conf, edited(aliases={"file": str(tmp_path / "nowhere")}))
    with LogLines() as log:
        assert run() is False
    assert "[aliases] file" in log.matching("reload-refused")[0]


def test_a_bad_aliases_line_refuses_at_reload_though_a_start_would_pass(conf, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("sales: bob\nno colon here\n")
    prepared = Prepared()
    with LogLines() as log:
        assert reloader(conf, prepared)() is False
    assert prepared.given == [] and "[aliases] file" in log.matching("reload-refused")[0]


@pytest.mark.parametrize("failure", [ConfigError(["conf: [tls] key: does not match"]), OSError(13, "Permission denied")])
def test_a_failure_while_building_keeps_the_old_settings(conf, failure):
    prepared = Prepared(fail=failure)
    run = reloader(conf, prepared)
    old = run.current
    write(conf, edited(limits={"max_message_size": "1000"}))
    with LogLines() as log:
        assert run() is False
    assert prepared.swapped == 0 and run.current is old
    assert log.matching("reload-refused") and not log.matching("reloaded")


def test_the_unit_reloads_with_sighup():
    unit = os.path.join(os.path.dirname(__file__), "..", "..", "systemd", "mailappliance.service")
    with open(unit, encoding="utf-8") as handle:
        reloads = [line for line in handle if line.startswith("ExecReload=")]
    assert reloads[-1].strip() == "ExecReload=/bin/kill -HUP $MAINPID"


def test_a_directory_moving_to_ldap_names_the_ldap_keys_and_reloads(conf, tmp_path):
    secret = tmp_path / "ldap.secret"
    secret.write_text("secret\n")
    old = config.load(str(conf))
    write(conf, edited(directory={"backend": "ldap"},
                       ldap={"url": "ldap://127.0.0.1:3389", "bind_dn": "cn=svc,dc=example,dc=test",
                             "bind_password_file": str(secret), "base_dn": "dc=example,dc=test"}))
    changed = config.changed(old, config.load(str(conf)))
    assert ("directory", "backend") in changed and ("ldap", "url") in changed
    assert reload.restart_keys(changed) == []
