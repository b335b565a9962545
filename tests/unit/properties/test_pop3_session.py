"""The POP3 session (pop3.py) fed random command lines over StringTransport, as tests/unit/test_pop3.py does.

Every command is answered +OK or -ERR (multi-line answers end with their lone dot), no answer is
the local error that means an exception was caught, and the session answers CAPA afterwards
unless it closed.
"""
from __future__ import annotations

from hypothesis import example, given, strategies as st

from tests.unit.properties.strategies import examples, no_logged_failures, special_bytes
from tests.unit.test_pop3 import World

_commands = st.one_of(
    st.sampled_from([b"CAPA", b"USER alice@example.test", b"PASS alice-pw", b"PASS x", b"STAT", b"LIST", b"LIST 1",
                     b"LIST 0", b"LIST 99999999999999999999", b"UIDL", b"UIDL 2", b"RETR 1", b"RETR 2", b"RETR x",
                     b"TOP 2 0", b"TOP 1 -1", b"TOP 1 99999999999999999999", b"TOP 1", b"DELE 1", b"DELE 1",
                     b"RSET", b"NOOP", b"STLS", b"AUTH", b"AUTH PLAIN", b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==",
                     b"AUTH PLAIN ===", b"APOP alice@example.test 0123456789abcdef0123456789abcdef", b"APOP",
                     b"QUIT", b"", b" ", b"LIST \xff", b"USER \xff"]),
    special_bytes.map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))


@examples(0.25)
@given(st.booleans(), st.lists(_commands, max_size=12))
@example(True, [b"USER alice@example.test", b"PASS alice-pw", b"TOP 1 99999999999999999999"])
@example(False, [b"APOP alice@example.test 0123456789abcdef0123456789abcdef"] * 3)   # throttled: answered later
def test_the_session_answers_every_command(login_first, commands):
    with no_logged_failures() as failures:
        world = World(implicit_tls=True)
        session = world.session()
        if login_first:
            session.command("USER alice@example.test")
            session.command("PASS alice-pw")
        for command in commands:
            out = session.send(command + b"\r\n")
            if not out:
                world.reactor.advance(600)         # an answer the login throttle holds back comes later
                out = session.take()
            for line in out.split(b"\r\n"):
                assert b"Local error" not in line, (command, out)
            if not out:
                continue                          # a closed session
            first = out.split(b"\r\n", 1)[0]
            assert first.startswith((b"+OK", b"-ERR", b"+ ")), (command, out)
            if session.transport.disconnecting:
                break
            if first.startswith(b"+ "):
                session.send(b"*\r\n")            # abort an AUTH exchange
        if not session.transport.disconnecting:
            assert session.send(b"CAPA\r\n").startswith((b"+OK", b"-ERR"))
        session.drop()
    assert not failures, failures[0][1].getTraceback()
