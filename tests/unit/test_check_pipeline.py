"""The pipeline of checks inside a real SMTP session: stages, verdicts, replies, log lines, pregreet."""
from __future__ import annotations

from twisted.internet import defer

from appliance import replies
from appliance.filters.base import Check, Verdict
from tests.unit.checkrig import CheckRig, LogLines, codes, settings

SPAM = replies.Reply(550, "5.7.1", "Refused as spam")


class Recorder(Check):
    """Says what it is told at one stage, and records the stages it saw."""

    name = "recorder"

    def __init__(self, stage: str = "", verdict: Verdict | None = None, inbound: bool = True) -> None:
        self.stage, self.verdict, self.inbound = stage, verdict, inbound
        self.seen: list[str] = []
        for name in ("connect", "helo", "mail", "rcpt", "data"):
            setattr(self, name, self._at(name))

    def _at(self, name: str):
        def ask(facts):
            self.seen.append(name)
            return self.verdict if name == self.stage else None
        return ask


def test_every_stage_is_asked_in_order():
    check = Recorder()
    rig = CheckRig([check])
    out = rig.mail()
    assert codes(out)[-1] == b"250"
    assert check.seen == ["connect", "helo", "mail", "rcpt", "data"]


def test_a_rcpt_refusal_is_the_reply_and_one_log_line():
    with LogLines() as log:
        rig = CheckRig([Recorder("rcpt", Verdict.reject(SPAM, "listed"))])
        out = rig.mail()
    assert out[-1] == b"550 5.7.1 Refused as spam"
    assert not rig.queue.items
    (line,) = log.matching("check ")
    assert f"session={rig.proto.sid}" in line and "check=recorder" in line and "verdict=reject" in line
    assert "rcpt=alice@example.test" in line and "reason=listed" in line


def test_a_data_refusal_queues_nothing():
    rig = CheckRig([Recorder("data", Verdict.reject(SPAM, "spam"))])
    out = rig.mail()
    assert out[-1] == b"550 5.7.1 Refused as spam"
    assert rig.queue.items == []


def test_tag_headers_and_junk_reach_the_queue():
    rig = CheckRig([Recorder("data", Verdict.junk("spam", ("X-Spam-Flag", "YES")))])
    rig.mail()
    (envelope, message), = rig.queue.items
    assert b"\r\nX-Spam-Flag: YES\r\n" in message
    assert [r.folder for r in envelope.recipients] == ["Junk"]


def test_trusted_clients_skip_inbound_checks_but_not_the_others():
    inbound, everyone = Recorder(), Recorder(inbound=False)
    rig = CheckRig([inbound, everyone], peer="192.0.2.9", trusted="192.0.2.0/24")
    rig.mail()
    assert inbound.seen == []
    assert everyone.seen == ["helo", "mail", "rcpt", "data"]      # no connect stage for trusted clients


def test_a_connect_refusal_is_answered_at_mail():
    rig = CheckRig([Recorder("connect", Verdict.reject(SPAM, "listed"))])
    assert rig.greeting == [b"220 mail.example.test ESMTP mailappliance"]
    out = rig.send(b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\n")
    assert out[-1] == b"550 5.7.1 Refused as spam"


def test_the_banner_waits_for_the_connect_checks():
    pending: defer.Deferred = defer.Deferred()

    class Slow(Check):
        name = "slow"

        def connect(self, facts):
            return pending

    rig = CheckRig([Slow()])
    assert rig.greeting == []
    out = rig.send(b"EHLO c\r\n")          # pipelined early: kept until the banner is out
    assert out == []
    pending.callback(None)
    assert rig.take() == [b"220 mail.example.test ESMTP mailappliance", b"250-mail.example.test",
                          b"250-PIPELINING", b"250-SIZE 26214400", b"250-8BITMIME", b"250 ENHANCEDSTATUSCODES"]


class Doubt(Check):
    name = "doubt"

    def connect(self, facts):
        facts.doubts.append("no reverse DNS")


def test_pregreet_a_doubtful_client_that_talks_early_is_refused():
    with LogLines() as log:
        rig = CheckRig([Doubt()], settings=settings(pregreet="suspicious", pregreet_wait=6))
        assert rig.greeting == [b"220-mail.example.test ESMTP mailappliance"]
        out = rig.send(b"EHLO bot\r\n")
    assert out == [replies.PREGREET.line()]
    assert rig.transport.disconnecting
    assert any("check=pregreet" in line and "verdict=reject" in line for line in log.lines)


def test_pregreet_a_patient_client_gets_the_banner_after_the_pause():
    rig = CheckRig([Doubt()], settings=settings(pregreet="suspicious", pregreet_wait=6))
    rig.clock.advance(5)
    assert rig.take() == []
    rig.clock.advance(1)
    assert rig.take() == [b"220 mail.example.test ESMTP mailappliance"]
    assert codes(rig.mail())[-1] == b"250"


def test_pregreet_a_client_that_hangs_up_during_the_pause_leaves_no_timer():
    rig = CheckRig([Doubt()], settings=settings(pregreet="suspicious", pregreet_wait=6))
    rig.close()
    rig.clock.advance(6)
    assert rig.take() == []                           # no banner to a gone client
    assert rig.clock.getDelayedCalls() == []          # nor an idle timer holding the dead session


def test_pregreet_an_ordinary_client_waits_no_pause():
    rig = CheckRig([Recorder()], settings=settings(pregreet="suspicious", pregreet_wait=6))
    assert rig.greeting == [b"220-mail.example.test ESMTP mailappliance", b"220 mail.example.test ESMTP mailappliance"]


def test_unknown_recipients_wait_longer_after_a_few():
    rig = CheckRig([Recorder()], settings=settings(bad_recipients_before_delay=2), max_errors=20)
    rig.send(b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\n")
    for _ in range(2):
        assert rig.send(b"RCPT TO:<nobody@example.test>\r\n")[-1].startswith(b"550 5.1.1")
    assert rig.send(b"RCPT TO:<nobody@example.test>\r\n") == []     # the third waits 1 s
    rig.clock.advance(1)
    assert rig.take()[-1].startswith(b"550 5.1.1")
    assert rig.send(b"RCPT TO:<nobody@example.test>\r\n") == []     # the fourth 2 s
    rig.clock.advance(1.5)
    assert rig.take() == []
    rig.clock.advance(0.5)
    assert rig.take()[-1].startswith(b"550 5.1.1")
