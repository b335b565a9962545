"""The operator's hooks ([checks] hooks) in a real SMTP session: what they see, what each answer does."""
from __future__ import annotations

import os

import pytest
from twisted.internet import task

from appliance import checks, config
from appliance.filters import hooks
from appliance.filters.build import make_pipeline
from tests.unit import hookexamples
from tests.unit.checkrig import CheckRig, LogLines, codes
from tests.unit.test_config import MINIMAL, write


def rig_with(*names: str, clock: task.Clock | None = None, **kw) -> CheckRig:
    clock = clock or task.Clock()
    made = hooks.make_hooks([f"tests.unit.hookexamples:{name}" for name in names], clock)
    return CheckRig(made, clock=clock, **kw)


def test_a_hook_is_asked_at_every_stage_with_a_copy_of_the_facts():
    hookexamples.calls.clear()
    rig = rig_with("record")
    out = rig.mail(body=b"Subject: hi\r\n\r\nbody\r\n")
    assert codes(out)[-1] == b"250"
    assert [stage for stage, _ in hookexamples.calls] == ["connect", "helo", "mail", "rcpt", "data"]
    facts = dict(hookexamples.calls)
    assert facts["connect"]["sender"] is None and facts["connect"]["trusted"] is False
    assert facts["rcpt"]["peer"] == "changed by the hook"            # the hook's own copy...
    assert rig.proto.facts.peer == "192.0.2.9"                       # ...not the session's
    assert facts["rcpt"]["rcpt"] == "alice@example.test" and facts["rcpt"]["sender"] == "x@remote.test"
    assert facts["data"]["message"].endswith(b"body\r\n") and facts["data"]["recipients"] == ["alice@example.test"]
    assert facts["helo"]["helo"] == "client.test" and facts["mail"]["message"] == b""
    assert set(facts["data"]) == {"session", "service", "peer", "helo", "ptr", "login", "trusted", "doubts",
                                  "scores", "sender", "rcpt", "recipients", "message"}


def test_a_trusted_session_is_seen_and_says_so():
    hookexamples.calls.clear()
    rig_with("record", trusted="192.0.2.0/24").mail()
    assert [stage for stage, _ in hookexamples.calls] == ["helo", "mail", "rcpt", "data"]
    assert all(facts["trusted"] for _, facts in hookexamples.calls)


def test_reject_with_a_text():
    with LogLines() as log:
        rig = rig_with("reject_at_rcpt")
        out = rig.mail()
    assert out[-1] == b"550 5.7.1 Alice does not take mail from you"
    (line,) = log.matching("check ")
    assert "check=hook:tests.unit.hookexamples:reject_at_rcpt" in line and "verdict=reject" in line


def test_reject_without_a_text():
    assert b"550 5.7.1 Refused by local policy" in rig_with("reject_plain").mail()


def test_tempfail_text_cannot_smuggle_a_reply_line():
    out = rig_with("tempfail_at_mail").mail()
    assert out[5:7] == [b"451 4.7.1 Come back later??250 smuggled", b"503 5.5.1 Need MAIL command first"]


def test_tag_adds_its_header_fields():
    rig = rig_with("tag_at_data")
    rig.mail(body=b"Subject: offer\r\n\r\nbuy\r\n")
    rig.mail(body=b"Subject: hello\r\n\r\nhi\r\n")
    (_, tagged), (_, plain) = rig.queue.items
    assert b"\r\nX-Offer: yes\r\n" in tagged and b"X-Offer" not in plain


def test_junk_at_connect_holds_for_every_message_of_the_session():
    rig = rig_with("junk_at_connect")
    rig.mail()
    rig.mail()
    assert len(rig.queue.items) == 2
    for envelope, message in rig.queue.items:
        assert [r.folder for r in envelope.recipients] == ["Junk"]
        assert b"X-Neighbourhood: bad\r\n" in message


@pytest.mark.parametrize("name, event", [("raises", "hook-failed"), ("exits", "hook-failed"),
                                         ("nonsense", "hook-nonsense"),
                                         ("unknown_action", "hook-nonsense"), ("bad_header", "hook-nonsense")])
def test_a_broken_hook_is_logged_and_passed_over(name, event):
    with LogLines() as log:
        rig = rig_with(name)
        out = rig.mail()
    assert codes(out)[-1] == b"250" and len(rig.queue.items) == 1
    (_, message), = rig.queue.items
    assert b"everyone@" not in message
    assert any(event in line and f"hookexamples:{name}" in line for line in log.lines)


def test_a_deferred_answer_is_awaited(monkeypatch):
    clock = task.Clock()
    monkeypatch.setattr(hookexamples, "later", clock)
    rig = rig_with("deferred_reject", clock=clock)
    clock.advance(1)                                   # connect
    rig.send(b"EHLO c\r\n")
    clock.advance(1)
    rig.take()
    assert rig.send(b"MAIL FROM:<x@remote.test>\r\n") == []
    clock.advance(1)
    assert rig.take() == [b"550 5.7.1 decided later"]


def test_a_coroutine_answer_is_awaited():
    assert rig_with("coroutine_tempfail").mail()[-1] == b"451 4.7.1 from a coroutine"


def test_a_hook_that_never_answers_times_out_and_is_passed_over():
    clock = task.Clock()
    with LogLines() as log:
        rig = rig_with("never_answers", clock=clock)
        assert rig.greeting == [] or rig.greeting[-1].startswith(b"220-")
        clock.advance(hooks.HOOK_TIMEOUT)
        assert rig.take()[-1].startswith(b"220 ")
    assert any("hook-failed" in line and "TimeoutError" in line for line in log.lines)


def test_a_reject_is_logged_with_one_line_per_verdict_and_others_pass():
    rig = rig_with("record", "reject_at_rcpt")
    out = rig.mail(rcpts=("a@example.test", "alice@example.test"))
    assert out[6:8] == [b"250 2.1.5 Recipient ok", b"550 5.7.1 Alice does not take mail from you"]
    (envelope, _), = rig.queue.items
    assert len(envelope.recipients) == 1           # a@ (alice's other address) only


def config_with_hooks(tmp_path, hooks_line: str) -> config.Config:
    return config.load(write(tmp_path, MINIMAL + f"[tls]\ncertificate =\nkey =\n[checks]\nhooks = {hooks_line}\n"))


def test_an_unimportable_hook_is_a_start_up_problem(tmp_path):
    cfg = config_with_hooks(tmp_path, "no_such_package.rules:decide, tests.unit.hookexamples:missing, "
                                      "tests.unit.hookexamples:not_callable, tests.unit.hookexamples:record")
    assert checks.check_files(cfg) == [
        f"{cfg.path}: [checks] hooks: cannot import no_such_package.rules:decide: "
        "ModuleNotFoundError: No module named 'no_such_package'",
        f"{cfg.path}: [checks] hooks: cannot import tests.unit.hookexamples:missing: "
        "tests.unit.hookexamples has no missing",
        f"{cfg.path}: [checks] hooks: cannot import tests.unit.hookexamples:not_callable: not_callable is not callable",
    ]


def test_importable_hooks_pass_the_start_up_check_and_join_the_pipeline_last(tmp_path):
    cfg = config_with_hooks(tmp_path, "tests.unit.hookexamples:record, tests.unit.hookexamples:raises")
    assert checks.check_files(cfg) == []
    os.makedirs(cfg.appliance.state_dir, exist_ok=True)
    pipeline = make_pipeline(cfg, task.Clock(), None)
    # after every check, but before Authentication-Results, which reports what the checks found
    assert pipeline.names()[-3:] == ["hook:tests.unit.hookexamples:record", "hook:tests.unit.hookexamples:raises",
                                     "authresults"]
