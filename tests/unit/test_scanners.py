"""The spamd and clamd checks inside a real SMTP session, the daemon played as bytes on a memory reactor.

What the client sees (250, 550 5.7.1, 554 5.7.1 naming the virus, 451 4.7.1), what is queued
(X-Spam-* fields, the Junk folder), what spamd and clamd receive, and the log line of every
way a scanner can fail: refused, silent past scanner_timeout, nonsense, a message too big.
The real daemons are driven in tests/integration/test_scanners.py.
"""
from __future__ import annotations

import struct

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from appliance import config
from appliance.filters.build import make_pipeline
from appliance.filters.clamd import ClamdCheck, parse_answer as clamd_answer, request as clamd_request
from appliance.filters.spamd import SpamdAnswer, SpamdCheck, parse_answer as spamd_answer, status_fields
from tests.unit.checkrig import CheckRig, LogLines, settings

MESSAGE = b"From: x@remote.test\r\nSubject: hi\r\n\r\nbody\r\n"


def spamd_says(spam: str, score: str, required: str = "5.0", tests: bytes = b"MISSING_DATE,MISSING_MID") -> bytes:
    return (b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: %s ; %s / %s\r\n\r\n%s"
            % (len(tests), spam.encode(), score.encode(), required.encode(), tests))


class Daemon:
    """The scanner's end of the one connection a check opens on the memory reactor."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        reactor.advance(0)
        host, port, self.factory, _, _ = reactor.tcpClients[-1]
        self.address = (host, port)

    def accept(self) -> "Daemon":
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        return self

    def heard(self) -> bytes:
        return self.transport.value()

    def answer(self, data: bytes, closed_by: type = ConnectionDone) -> None:
        self.protocol.dataReceived(data)
        self.protocol.connectionLost(Failure(closed_by()))

    def refuse(self) -> None:
        self.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.reactor.advance(1)             # HostnameEndpoint gives up once every attempt failed


class Rig(CheckRig):
    """A CheckRig whose clock is also the reactor the scanners connect with."""

    def __init__(self, make_check, **changes) -> None:
        reactor = MemoryReactorClock()
        self.settings = settings(**{"spamd": "127.0.0.1:783", "clamd": "127.0.0.1:3310", **changes})
        super().__init__([make_check(reactor, self.settings)], settings=self.settings, clock=reactor)
        self.reactor = reactor

    def start(self, body: bytes = MESSAGE) -> Daemon:
        """A transaction up to the end of DATA; the check is now connecting to its daemon."""
        out = self.mail(body=body)
        assert out[-1].startswith(b"354"), out
        return Daemon(self.reactor)

    def reply(self) -> bytes:
        (line,) = self.take()[-1:]
        return line

    def queued(self) -> tuple:
        (envelope, message), = self.queue.items
        return envelope, message


# ---- spamd --------------------------------------------------------------------------------------------
def test_spamd_is_asked_with_symbols_and_the_whole_message():
    rig = Rig(SpamdCheck)
    daemon = rig.start()
    assert daemon.address == ("127.0.0.1", 783)
    sent = daemon.accept().heard()
    head, _, message = sent.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [b"SYMBOLS SPAMC/1.5", b"Content-length: %d" % len(message)]
    assert b"Subject: hi\r\n" in message and message.endswith(b"\r\nbody\r\n")


def test_a_clean_message_is_delivered_with_its_score():
    rig = Rig(SpamdCheck)
    rig.start().accept().answer(spamd_says("False", "1.3"))
    assert rig.reply().startswith(b"250 ")
    envelope, message = rig.queued()
    assert b"X-Spam-Status: No, score=1.3 required=5.0 tests=MISSING_DATE,MISSING_MID\r\n" in message
    assert b"X-Spam-Score: 1.3\r\n" in message and b"X-Spam-Flag" not in message
    assert [r.folder for r in envelope.recipients] == [""]


def test_spam_below_the_reject_score_goes_to_junk_flagged():
    rig = Rig(SpamdCheck)
    with LogLines() as log:
        rig.start().accept().answer(spamd_says("True", "7.2", tests=b"MY_RULE"))
    assert rig.reply().startswith(b"250 ")
    envelope, message = rig.queued()
    assert b"\r\nX-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=7.2 required=5.0 tests=MY_RULE\r\n" in message
    assert [r.folder for r in envelope.recipients] == ["Junk"]
    (line,) = log.matching("check ")
    assert "check=spamd" in line and "verdict=junk" in line and "score=7.2" in line


def test_spam_at_the_reject_score_is_refused_at_the_end_of_data():
    rig = Rig(SpamdCheck, spam_reject_score=15.0)
    rig.start().accept().answer(spamd_says("True", "1000.0", tests=b"GTUBE"))
    assert rig.reply() == b"550 5.7.1 Message refused as spam"
    assert rig.queue.items == []


def test_a_senders_own_spam_fields_are_replaced():
    rig = Rig(SpamdCheck)
    rig.start(b"X-Spam-Flag: NO\r\nX-Spam-Score: -100\r\nSubject: hi\r\n\r\nbody\r\n").accept().answer(
        spamd_says("False", "0.5"))
    _, message = rig.queued()
    assert b"X-Spam-Flag" not in message and message.count(b"X-Spam-Score:") == 1
    assert b"X-Spam-Score: 0.5\r\n" in message


@pytest.mark.parametrize("failure, expected", [("accept", b"250 "), ("tempfail", b"451 4.7.1 ")])
def test_spamd_refusing_connections_follows_scanner_failure(failure, expected):
    rig = Rig(SpamdCheck, scanner_failure=failure)
    with LogLines() as log:
        rig.start().refuse()
    assert rig.reply().startswith(expected)
    (line,) = log.matching("check ")
    assert "check=spamd" in line and "connection refused" in line
    if failure == "accept":
        _, message = rig.queued()
        assert b"X-Spam-" not in message                # delivered untagged
        assert "delivered unscanned" in line


@pytest.mark.parametrize("failure, expected", [("accept", b"250 "), ("tempfail", b"451 4.7.1 ")])
def test_a_silent_spamd_costs_scanner_timeout_then_follows_scanner_failure(failure, expected):
    rig = Rig(SpamdCheck, scanner_failure=failure, scanner_timeout=30)
    daemon = rig.start().accept()
    rig.reactor.advance(29)
    assert rig.take() == []
    with LogLines() as log:
        rig.reactor.advance(1)
    assert rig.reply().startswith(expected)
    assert daemon.transport.disconnecting or daemon.transport.disconnected
    assert "no answer within 30 s" in log.matching("check ")[0]


def test_a_spamd_refusal_or_nonsense_is_a_scanner_failure():
    for answer in (b"SPAMD/1.0 76 Bad header line: (Content-Length mismatch)\r\n", b"HTTP/1.1 400 Bad\r\n\r\n", b""):
        rig = Rig(SpamdCheck, scanner_failure="tempfail")
        rig.start().accept().answer(answer)
        assert rig.reply().startswith(b"451 4.7.1 "), answer


def test_a_message_over_spamd_max_size_is_not_sent_and_says_so():
    rig = Rig(SpamdCheck, spamd_max_size=100)
    with LogLines() as log:
        rig.mail(body=MESSAGE + b"x" * 200 + b"\r\n")
    rig.reactor.advance(0)
    assert rig.reactor.tcpClients == []
    assert rig.queue.items
    assert "not scanned" in log.matching("check ")[0] and "spamd_max_size" in log.matching("check ")[0]


def test_trusted_clients_are_not_scanned():
    reactor = MemoryReactorClock()
    check = SpamdCheck(reactor, settings(spamd="127.0.0.1:783"))
    out = CheckRig([check], trusted="192.0.2.0/24", clock=reactor).mail()
    reactor.advance(0)
    assert out[-1].startswith(b"250 ") and reactor.tcpClients == []


def test_status_fields_fold_a_long_list_of_tests():
    tests = tuple(f"RULE_NUMBER_{n}" for n in range(20))
    fields = dict(status_fields(SpamdAnswer(9.5, 5.0, tests)))
    lines = fields["X-Spam-Status"].split("\r\n\t")
    assert len(lines) > 1 and all(len(line) < 78 for line in lines)
    assert "".join(lines) == "Yes, score=9.5 required=5.0 tests=" + ",".join(tests)


def test_spamd_answer_of_a_real_spamd():
    answer = spamd_answer(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 58\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
                          b"GTUBE,MISSING_DATE,MISSING_HEADERS,MISSING_MID,NO_RECEIVED")
    assert answer == SpamdAnswer(1000.0, 5.0, ("GTUBE", "MISSING_DATE", "MISSING_HEADERS", "MISSING_MID",
                                               "NO_RECEIVED"))


# ---- clamd --------------------------------------------------------------------------------------------
def test_clamd_gets_instream_chunks_and_a_zero_length_end():
    parts = clamd_request(b"abcdefghij", chunk=4)
    assert b"".join(parts) == (b"zINSTREAM\0" + struct.pack(">I", 4) + b"abcd" + struct.pack(">I", 4) + b"efgh"
                               + struct.pack(">I", 2) + b"ij" + struct.pack(">I", 0))


def test_a_virus_is_refused_naming_its_signature():
    rig = Rig(ClamdCheck)
    daemon = rig.start().accept()
    assert daemon.address == ("127.0.0.1", 3310)
    sent = daemon.heard()
    assert sent.startswith(b"zINSTREAM\0") and sent.endswith(b"\0\0\0\0") and b"Subject: hi\r\n" in sent
    with LogLines() as log:
        daemon.answer(b"stream: Eicar-Test-Signature FOUND\0")
    assert rig.reply() == b"554 5.7.1 Virus found: Eicar-Test-Signature"
    assert rig.queue.items == []
    assert "virus Eicar-Test-Signature" in log.matching("check ")[0]


def test_a_clean_message_passes_clamd_untouched():
    rig = Rig(ClamdCheck)
    rig.start().accept().answer(b"stream: OK\0")
    assert rig.reply().startswith(b"250 ")
    _, message = rig.queued()
    assert message.endswith(MESSAGE)


def test_clamds_size_limit_answer_delivers_unscanned_with_advice():
    rig = Rig(ClamdCheck, scanner_failure="tempfail")
    with LogLines() as log:
        rig.start().accept().answer(b"INSTREAM size limit exceeded. ERROR\0", closed_by=ConnectionLost)
    assert rig.reply().startswith(b"250 ")
    assert "clamd_max_size" in log.matching("check ")[0]


def test_a_message_over_clamd_max_size_is_not_sent():
    rig = Rig(ClamdCheck, clamd_max_size=50, scanner_failure="tempfail")
    with LogLines() as log:
        rig.mail(body=MESSAGE + b"x" * 100 + b"\r\n")
    rig.reactor.advance(0)
    assert rig.reactor.tcpClients == [] and rig.queue.items
    assert "not scanned" in log.matching("check ")[0]


@pytest.mark.parametrize("failure, expected", [("accept", b"250 "), ("tempfail", b"451 4.7.1 ")])
def test_clamd_down_or_failing_follows_scanner_failure(failure, expected):
    for play in (Daemon.refuse, lambda d: d.accept().answer(b"stream: Can't allocate memory ERROR\0"),
                 lambda d: d.accept().answer(b"", closed_by=ConnectionLost)):
        rig = Rig(ClamdCheck, scanner_failure=failure)
        play(rig.start())
        assert rig.reply().startswith(expected)


def test_a_unix_socket_path_is_used_as_one():
    rig = Rig(ClamdCheck, clamd="/run/clamav/clamd.ctl")
    rig.mail()
    rig.reactor.advance(0)
    (path, factory, *_), = rig.reactor.unixClients
    assert path == "/run/clamav/clamd.ctl"


def test_clamd_answers_of_a_real_clamd():
    assert clamd_answer(b"stream: OK\0").outcome == "clean"
    found = clamd_answer(b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0")
    assert (found.outcome, found.name) == ("virus", "Eicar-Test-Signature.UNOFFICIAL")
    assert clamd_answer(b"INSTREAM size limit exceeded. ERROR\0").outcome == "too-big"


# ---- configuration ---------------------------------------------------------------------------------------
def test_the_pipeline_asks_clamd_before_spamd_only_when_configured(tmp_path):
    def pipeline_for(checks: str) -> list[str]:
        path = tmp_path / "mailappliance.conf"
        path.write_text("[appliance]\nhostname = mail.example.test\ndomains = example.test\n[checks]\n" + checks)
        names = make_pipeline(config.load(str(path)), MemoryReactorClock(), None).names()
        return [name for name in names if name in ("clamd", "spamd")]

    assert pipeline_for("") == []
    assert pipeline_for("spamd = 127.0.0.1:783\nclamd = /run/clamav/clamd.ctl\n") == ["clamd", "spamd"]
    assert pipeline_for("spamd = localhost:783\n") == ["spamd"]
    everything = make_pipeline(config.load(str(tmp_path / "mailappliance.conf")), MemoryReactorClock(), None).names()
    assert everything.index("spamd") < everything.index("dkim") < everything.index("authresults")
