"""appliance.checks: what is on disk behind the configuration, named in the same `FILE: [section] key:` lines."""
from __future__ import annotations

import os
import shutil

import pytest

from appliance import checks, config, tls
from tests.unit.test_config import MINIMAL, write

ETC_CONF = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "mailappliance.conf")


def with_pair(tmp_path) -> None:
    tls.generate_self_signed("mail.example.test", str(tmp_path / "tls/cert.pem"), str(tmp_path / "tls/key.pem"))


def tls_config(tmp_path, extra: str = "") -> config.Config:
    return config.load(write(tmp_path, MINIMAL + "[listen]\nsubmission = tcp:587\n" + extra))


def test_check_files_passes_with_a_generated_pair(tmp_path):
    with_pair(tmp_path)
    assert checks.check_files(tls_config(tmp_path)) == []


def test_missing_certificate_is_named(tmp_path):
    cfg = tls_config(tmp_path)
    [problem] = checks.check_files(cfg)
    assert problem.startswith(f"{cfg.path}: [tls] certificate: cannot read {tmp_path}/tls/cert.pem: "
                              "No such file or directory")


def test_tls_services_need_a_certificate(tmp_path):
    cfg = tls_config(tmp_path, "[tls]\ncertificate =\nkey =\n")
    assert checks.check_files(cfg) == [
        f"{cfg.path}: [tls] certificate: empty, but [listen] submission need TLS; "
        "set it and run `mailappliance gen-cert` for a self-signed one"]


def test_plain_services_run_without_tls(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL + "[tls]\ncertificate =\nkey =\n[listen]\nsmtp = tcp:25\n"))
    assert checks.check_files(cfg) == []


def test_key_of_another_certificate_is_refused(tmp_path):
    with_pair(tmp_path)
    tls.generate_self_signed("other.example.test", str(tmp_path / "other.pem"), str(tmp_path / "other.key"))
    cfg = tls_config(tmp_path, "[tls]\nkey = other.key\n")
    assert checks.check_files(cfg) == [
        f"{cfg.path}: [tls] key: {tmp_path}/other.key does not match the certificate {tmp_path}/tls/cert.pem"]


def test_state_dir_that_is_a_file(tmp_path):
    with_pair(tmp_path)
    (tmp_path / "var").write_text("")
    cfg = tls_config(tmp_path)
    assert f"{cfg.path}: [appliance] state_dir: {tmp_path}/var is not a folder" in checks.check_files(cfg)


def test_unreadable_users_file(tmp_path):
    with_pair(tmp_path)
    (tmp_path / "users").mkdir()
    problems = checks.check_files(tls_config(tmp_path))
    assert len(problems) == 1 and "[directory] users_file: " in problems[0]


def test_named_aliases_file_must_exist(tmp_path):
    with_pair(tmp_path)
    cfg = tls_config(tmp_path, "[aliases]\nfile = my-aliases\n")
    assert checks.check_files(cfg) == [
        f"{cfg.path}: [aliases] file: {tmp_path}/my-aliases does not exist; create it, or write `file =` "
        "for no aliases"]


def test_aliases_problems_are_passed_on(tmp_path):
    with_pair(tmp_path)
    (tmp_path / "aliases").write_text("this line is not an alias\n")
    problems = checks.check_files(tls_config(tmp_path))
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path}/mailappliance.conf: [aliases] file: {tmp_path}/aliases:1: ")


def test_shipped_file_passes_after_gen_cert(tmp_path):
    shutil.copy(ETC_CONF, tmp_path / "mailappliance.conf")
    with_pair(tmp_path)
    cfg = config.load(str(tmp_path / "mailappliance.conf"))
    assert checks.check_files(cfg) == []
    assert cfg.listen == config.ListenSection("tcp:25", "tcp:587", "tcp:465", "tcp:110", "tcp:995", "tcp:143",
                                              "tcp:993")


# ---------------------------------------------------------------- [ldap]: the files read before the first search

def ldap_config(tmp_path, **extra: str) -> config.Config:
    """The ldap backend with the four required keys; the password file exists unless told otherwise."""
    (tmp_path / "ldap.secret").write_text("s3cret\n")
    keys = {"url": "ldaps://ldap.example.org", "bind_dn": "cn=mailappliance,dc=example,dc=org",
            "bind_password_file": "ldap.secret", "base_dn": "dc=example,dc=org", **extra}
    ldap = "".join(f"{key} = {value}\n" for key, value in keys.items())
    return config.load(write(tmp_path, MINIMAL + "[directory]\nbackend = ldap\n[ldap]\n" + ldap))


def test_readable_ldap_files_pass(tmp_path):
    (tmp_path / "ca.pem").write_text("not checked here\n")
    assert checks.check_ldap_files(ldap_config(tmp_path, ca_file="ca.pem")) == []


@pytest.mark.parametrize("key, value", [("bind_password_file", "nowhere.secret"), ("ca_file", "nowhere.pem")])
def test_unreadable_ldap_file_names_key_and_path(tmp_path, key, value):
    cfg = ldap_config(tmp_path, **{key: value})
    expected = [f"{cfg.path}: [ldap] {key}: {tmp_path}/{value}: not a readable file"]
    assert checks.check_ldap_files(cfg) == expected
    assert expected[0] in checks.check_files(cfg)


def test_a_folder_is_no_password_file(tmp_path):
    (tmp_path / "secrets").mkdir()
    cfg = ldap_config(tmp_path, bind_password_file="secrets")
    assert checks.check_ldap_files(cfg) == [f"{cfg.path}: [ldap] bind_password_file: {tmp_path}/secrets: "
                                            "not a readable file"]


def test_file_backend_has_no_ldap_files(tmp_path):
    assert checks.check_ldap_files(config.load(write(tmp_path, MINIMAL))) == []
