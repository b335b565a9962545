"""The SMTP client, driven as bytes: what it sends, what each recipient's result is, and when it gives up."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance.couriers import smtpclient
from appliance.couriers.smtpclient import Timeouts, stuffed
from appliance.errors import PermanentFailure, TemporaryFailure

TIMEOUTS = Timeouts(connect=5, greeting=10, command=20, data_init=30, data_block=40, data_end=50)
MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n.hidden dot\r\n"
EHLO_FULL = b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"


class Peer:
    """The far end of one send(): feed it replies, read what the client wrote."""

    def __init__(self, recipients=("a@example.org", "b@example.org"), message=MESSAGE, **options):
        self.reactor = MemoryReactorClock()
        options.setdefault("timeouts", TIMEOUTS)
        self.result = smtpclient.send(self.reactor, "192.0.2.1", 25, "mail.example.test", "alice@example.test",
                                      list(recipients), message, **options)
        host, port, self.factory, timeout, _ = self.reactor.tcpClients[0]
        assert (host, port, timeout) == ("192.0.2.1", 25, TIMEOUTS.connect)
        self.transport = StringTransportWithDisconnection()

    def connect(self) -> "Peer":
        self.protocol = self.factory.buildProtocol(None)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        return self

    def hang_up(self) -> None:
        """End a conversation a test left half-way, so no session outlives its test."""
        if not self.result.called:
            self.protocol.connectionLost(Failure(ConnectionDone()))
        self.result.addErrback(lambda failure: None)

    def say(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def heard(self) -> bytes:
        """What the client wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def drain(self) -> None:
        """Let the client's body writer run to the end, as a transport does when the peer reads."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()

    def greet(self, ehlo: bytes = EHLO_FULL) -> None:
        self.say(b"220 mx.example.org ESMTP\r\n")
        assert self.heard() == b"EHLO mail.example.test\r\n"
        self.say(ehlo)


class ClientTests(SynchronousTestCase):

    def peer(self, **options) -> Peer:
        peer = Peer(**options).connect()
        self.addCleanup(peer.hang_up)
        return peer

    def test_pipelined_transaction_with_a_reply_per_recipient(self):
        peer = self.peer()
        peer.greet()
        assert peer.heard() == (b"MAIL FROM:<alice@example.test> SIZE=36\r\nRCPT TO:<a@example.org>\r\n"
                                b"RCPT TO:<b@example.org>\r\n"), "MAIL and every RCPT go in one write"
        peer.say(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no such user\r\n550 5.1.1 really\r\n")
        assert peer.heard() == b"DATA\r\n"
        peer.say(b"354 go ahead\r\n")
        peer.drain()
        assert peer.heard() == b"Subject: hi\r\n\r\nHello.\r\n..hidden dot\r\n.\r\n"
        peer.say(b"250 2.0.0 queued as 123\r\n")
        assert self.successResultOf(peer.result) == {"a@example.org": (250, "2.0.0 queued as 123"),
                                                     "b@example.org": (550, "5.1.1 no such user 5.1.1 really")}
        assert peer.heard() == b"QUIT\r\n"
        assert not peer.transport.connected

    def test_without_pipelining_each_command_waits_for_its_reply(self):
        peer = self.peer()
        peer.greet(b"250 mx.example.org\r\n")
        assert peer.heard() == b"MAIL FROM:<alice@example.test>\r\n"
        peer.say(b"250 ok\r\n")
        assert peer.heard() == b"RCPT TO:<a@example.org>\r\n"
        peer.say(b"451 4.3.0 try later\r\n")
        assert peer.heard() == b"RCPT TO:<b@example.org>\r\n"
        peer.say(b"451 4.3.0 try later\r\n")
        assert peer.heard() == b"QUIT\r\n", "no DATA when nobody was accepted"
        assert self.successResultOf(peer.result) == {"a@example.org": (451, "4.3.0 try later"),
                                                     "b@example.org": (451, "4.3.0 try later")}

    def test_rejected_sender_applies_to_every_recipient(self):
        peer = self.peer()
        peer.greet()
        peer.heard()
        peer.say(b"553 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
        assert peer.heard() == b"QUIT\r\n"
        assert self.successResultOf(peer.result) == dict.fromkeys(["a@example.org", "b@example.org"],
                                                                  (553, "5.7.1 sender refused"))

    def test_final_reply_applies_to_all_accepted_recipients(self):
        peer = self.peer()
        peer.greet()
        peer.heard()
        peer.say(b"250 ok\r\n250 ok\r\n250 ok\r\n")
        peer.say(b"354 go\r\n")
        peer.drain()
        peer.say(b"452 4.3.1 out of disk\r\n")
        assert self.successResultOf(peer.result) == dict.fromkeys(["a@example.org", "b@example.org"],
                                                                  (452, "4.3.1 out of disk"))

    def test_old_peer_gets_helo(self):
        peer = self.peer(recipients=["a@example.org"])
        peer.greet(b"502 5.5.2 what?\r\n")
        assert peer.heard() == b"HELO mail.example.test\r\n"
        peer.say(b"250 hello\r\n")
        assert peer.heard() == b"MAIL FROM:<alice@example.test>\r\n"

    def test_message_bigger_than_the_peers_size_is_never_sent(self):
        peer = self.peer(message=b"x" * 1001 + b"\r\n")
        peer.greet()
        failure = self.failureResultOf(peer.result, PermanentFailure)
        assert str(failure.value) == "5.3.4 message size 1003 exceeds the limit 1000 of 192.0.2.1:25"
        assert peer.heard() == b"QUIT\r\n"

    def test_8bit_message_to_a_peer_without_8bitmime_bounces(self):
        peer = self.peer(message="Subject: café\r\n\r\nx\r\n".encode("utf-8"))
        peer.greet(b"250-mx.example.org\r\n250 PIPELINING\r\n")
        failure = self.failureResultOf(peer.result, PermanentFailure)
        assert str(failure.value).startswith("5.6.3 ")
        assert peer.heard() == b"QUIT\r\n"

    def test_8bit_message_is_declared_to_a_peer_with_8bitmime(self):
        peer = self.peer(message="Subject: café\r\n\r\nx\r\n".encode("utf-8"))
        peer.greet()
        assert peer.heard().startswith(b"MAIL FROM:<alice@example.test> SIZE=21 BODY=8BITMIME\r\n")

    def test_refused_greeting_fails_the_host(self):
        peer = self.peer()
        peer.say(b"554 5.7.1 go away\r\n")
        failure = self.failureResultOf(peer.result, TemporaryFailure)
        assert str(failure.value) == "4.4.2 192.0.2.1:25 refused to talk to us: 554 5.7.1 go away"

    def test_refused_connection_fails_the_host(self):
        peer = Peer()
        peer.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(peer.result, TemporaryFailure)
        assert str(failure.value).startswith("4.4.1 cannot connect to 192.0.2.1:25")

    def test_silent_peer_times_out(self):
        peer = self.peer()
        peer.reactor.advance(TIMEOUTS.greeting - 0.1)
        self.assertNoResult(peer.result)
        peer.reactor.advance(0.1)
        failure = self.failureResultOf(peer.result, TemporaryFailure)
        assert str(failure.value) == "4.4.2 timeout waiting for 192.0.2.1:25"
        assert peer.transport.disconnected

    def test_each_rcpt_reply_has_the_command_timeout(self):
        peer = self.peer()
        peer.greet()
        peer.say(b"250 ok\r\n250 ok\r\n")
        peer.reactor.advance(TIMEOUTS.command)
        assert str(self.failureResultOf(peer.result, TemporaryFailure).value).startswith("4.4.2 timeout")

    def test_peer_that_stops_reading_the_message_times_out(self):
        peer = self.peer()
        peer.greet()
        peer.say(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        peer.transport.producer.resumeProducing()        # the first block goes out, then nothing is taken
        peer.reactor.advance(TIMEOUTS.data_block)
        failure = self.failureResultOf(peer.result, TemporaryFailure)
        assert str(failure.value) == "4.4.2 timeout sending the message to 192.0.2.1:25"

    def test_lost_connection_is_temporary(self):
        peer = self.peer()
        peer.greet()
        peer.protocol.connectionLost(Failure(ConnectionRefusedError()))
        assert str(self.failureResultOf(peer.result, TemporaryFailure).value) == \
            "4.4.2 connection to 192.0.2.1:25 lost"

    def test_required_tls_without_starttls_is_temporary(self):
        peer = self.peer(tls_policy="required", tls_hostname="smarthost.example.org")
        peer.greet()
        failure = self.failureResultOf(peer.result, TemporaryFailure)
        assert str(failure.value) == "4.7.4 TLS is required but 192.0.2.1:25 does not offer STARTTLS"
        assert b"MAIL" not in peer.heard()

    def test_credentials_never_go_over_cleartext(self):
        peer = self.peer(auth=("relay-user", "relay-secret"))
        peer.greet(b"250-mx.example.org\r\n250 AUTH PLAIN LOGIN\r\n")
        assert str(self.failureResultOf(peer.result, TemporaryFailure).value).startswith("4.7.4 ")
        assert peer.heard() == b"QUIT\r\n"

    def test_reply_smuggled_after_starttls_is_refused(self):
        peer = self.peer()
        peer.greet(b"250-mx.example.org\r\n250 STARTTLS\r\n")
        assert peer.heard() == b"STARTTLS\r\n"
        peer.say(b"220 go ahead\r\n250 injected\r\n")
        failure = self.failureResultOf(peer.result, TemporaryFailure)
        assert str(failure.value) == "4.7.0 192.0.2.1:25 sent data after its STARTTLS reply"

    def test_opportunistic_tls_goes_on_in_cleartext_when_starttls_is_refused(self):
        peer = self.peer(recipients=["a@example.org"])
        peer.greet(b"250-mx.example.org\r\n250 STARTTLS\r\n")
        assert peer.heard() == b"STARTTLS\r\n"
        peer.say(b"454 4.7.0 TLS not available\r\n")
        assert peer.heard() == b"MAIL FROM:<alice@example.test>\r\n"

    def test_malformed_reply_ends_the_session(self):
        peer = self.peer()
        peer.say(b"hello there\r\n")
        assert str(self.failureResultOf(peer.result, TemporaryFailure).value) == \
            "4.5.0 192.0.2.1:25 sent a malformed reply"


def test_dot_stuffing_doubles_every_leading_dot_and_terminates():
    assert stuffed(b".start\r\nmid\r\n..two\r\nend") == b"..start\r\nmid\r\n...two\r\nend\r\n.\r\n"
    assert stuffed(b"a\r\n.\r\n") == b"a\r\n..\r\n.\r\n"


def test_status_comes_from_the_reply_or_its_class():
    assert smtpclient.status_of(550, "5.1.1 no such user") == "5.1.1"
    assert smtpclient.status_of(550, "no such user") == "5.0.0"
    assert smtpclient.status_of(451, "5.1.1 mismatched class") == "4.0.0"


class SessionTests(SynchronousTestCase):
    """One session, several transactions: what goes on the wire between them, and a peer that hung up."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        settings = smtpclient.settings_for("192.0.2.1", 25, "mail.example.test", timeouts=TIMEOUTS)
        opened = defer.ensureDeferred(smtpclient.open_session(self.reactor, "192.0.2.1", 25, settings))
        factory = self.reactor.tcpClients[0][2]
        self.transport = StringTransportWithDisconnection()
        self.protocol = factory.buildProtocol(None)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        self.say(b"220 mx.example.org ESMTP\r\n")
        self.say(EHLO_FULL)
        self.session = self.successResultOf(opened)
        self.heard()
        self.addCleanup(self.hang_up)

    def hang_up(self) -> None:
        if not self.session.closed.called:
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def say(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def heard(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def transaction(self, rcpt: str = "a@example.org") -> defer.Deferred:
        return defer.ensureDeferred(self.session.transaction("alice@example.test", [rcpt], MESSAGE))

    def deliver(self, rcpt: str = "a@example.org") -> dict:
        """A complete transaction the peer accepts."""
        result = self.transaction(rcpt)
        assert self.heard().startswith(b"MAIL FROM:<alice@example.test>")
        self.say(b"250 ok\r\n250 ok\r\n354 go\r\n")
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        self.heard()
        self.say(b"250 2.0.0 queued\r\n")
        return self.successResultOf(result)

    def test_a_second_message_goes_over_the_same_session_without_greeting_again(self):
        assert self.deliver() == {"a@example.org": (250, "2.0.0 queued")}
        assert self.successResultOf(defer.ensureDeferred(self.session.reset())) is True
        assert self.heard() == b"", "nothing between two transactions: the final reply reset the state"
        assert self.deliver("b@example.org") == {"b@example.org": (250, "2.0.0 queued")}
        assert self.session.transactions == 2 and self.session.usable

    def test_a_transaction_left_half_way_is_reset(self):
        result = self.transaction()
        self.heard()
        self.say(b"250 ok\r\n450 4.2.0 busy\r\n")
        assert self.successResultOf(result) == {"a@example.org": (450, "4.2.0 busy")}
        ready = defer.ensureDeferred(self.session.reset())
        assert self.heard() == b"RSET\r\n"
        self.say(b"250 2.0.0 reset\r\n")
        assert self.successResultOf(ready) is True

    def test_a_refused_reset_ends_reuse(self):
        result = self.transaction()
        self.heard()
        self.say(b"250 ok\r\n450 4.2.0 busy\r\n")
        self.successResultOf(result)
        ready = defer.ensureDeferred(self.session.reset())
        self.say(b"500 what?\r\n")
        assert self.successResultOf(ready) is False

    def test_a_peer_hanging_up_a_reused_session_before_mail_is_session_gone(self):
        self.deliver()
        result = self.transaction()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(result, smtpclient.SessionGone)
        assert str(failure.value) == "4.4.2 connection to 192.0.2.1:25 lost (a reused session)"

    def test_421_to_mail_on_a_reused_session_is_session_gone(self):
        self.deliver()
        result = self.transaction()
        self.say(b"421 4.4.2 idle too long\r\n")
        failure = self.failureResultOf(result, smtpclient.SessionGone)
        assert "closed a reused session: 421 4.4.2 idle too long" in str(failure.value)
        assert not self.session.usable and self.transport.disconnected

    def test_a_peer_hanging_up_a_fresh_session_is_an_ordinary_failure(self):
        result = self.transaction()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(result, TemporaryFailure)
        assert not isinstance(failure.value, smtpclient.SessionGone)

    def test_4xx_to_mail_on_a_reused_session_is_the_peers_answer(self):
        self.deliver()
        result = self.transaction()
        self.say(b"451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n")
        assert self.successResultOf(result) == {"a@example.org": (451, "4.3.0 try later")}
        assert self.session.usable

    def test_hanging_up_after_mail_was_answered_is_an_ordinary_failure(self):
        self.deliver()
        result = self.transaction()
        self.say(b"250 ok\r\n")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(result, TemporaryFailure)
        assert not isinstance(failure.value, smtpclient.SessionGone), "the peer had answered: no silent retry"
