"""The same class as issue 10 #16 in POP3 and SMTP: a long, mostly good session is not closed for errors
spread over its life; a client that only makes errors still is."""
from __future__ import annotations

from tests.unit.test_pop3 import World
from tests.unit.test_smtp_server import Rig


def test_pop3_errors_spread_over_a_session_do_not_close_it():
    session = World().session()
    session.login()
    for n in range(15):
        assert session.command("RETR 99").startswith(b"-ERR No such message")
        assert session.command("NOOP") == b"+OK\r\n"
    assert not session.transport.disconnecting


def test_pop3_consecutive_errors_still_close():
    session = World().session()
    session.login()
    for n in range(10):
        session.command("RETR 99")
    assert session.command("RETR 99").startswith(b"-ERR Too many errors")
    assert session.transport.disconnecting


def test_smtp_errors_count_again_from_zero_after_a_delivered_message():
    rig = Rig("mx", max_errors=5)
    rig.send(b"EHLO c\r\n")
    for round in range(3):
        for _ in range(4):
            assert rig.send(b"RCPT TO:<x@example.test>\r\n")[0].startswith(b"503")
        out = rig.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\n")
        assert out[-1].startswith(b"250")
    assert not rig.transport.disconnecting
    for _ in range(5):
        out = rig.send(b"RCPT TO:<x@example.test>\r\n")
    assert out[-1].startswith(b"421") and rig.transport.disconnecting
