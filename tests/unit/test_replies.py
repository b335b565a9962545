"""The reply table: every named reply is well-formed, so no client ever sees a malformed line."""
from appliance import replies
from appliance.replies import Reply

TABLE = {name: value for name, value in vars(replies).items() if isinstance(value, Reply)}


def test_table_is_not_empty():
    assert len(TABLE) > 30


def test_every_reply_is_a_valid_smtp_line():
    for name, reply in TABLE.items():
        line = reply.line()
        assert 200 <= reply.code < 600, name
        assert line[:3].decode() == str(reply.code) and line[3:4] == b" ", name
        assert b"\r" not in line and b"\n" not in line, name
        if reply.enhanced:
            klass, subject, detail = reply.enhanced.split(".")
            assert klass == str(reply.code)[0] and subject.isdigit() and detail.isdigit(), name


def test_policy_codes_match_the_design_table():
    assert (replies.UNKNOWN_USER.code, replies.UNKNOWN_USER.enhanced) == (550, "5.1.1")
    assert replies.RELAY_DENIED.enhanced == "5.7.1" and replies.RELAY_DENIED.code in (550, 554)
    assert (replies.TLS_REQUIRED.code, replies.TLS_REQUIRED.enhanced) == (530, "5.7.0")
    assert (replies.AUTH_FAILED.code, replies.AUTH_FAILED.enhanced) == (535, "5.7.8")
    assert (replies.DIRECTORY_UNAVAILABLE.code, replies.DIRECTORY_UNAVAILABLE.enhanced) == (451, "4.4.3")
    assert (replies.AUTH_TEMPORARY.code, replies.AUTH_TEMPORARY.enhanced) == (454, "4.7.0")
    assert (replies.LOCAL_ERROR.code, replies.LOCAL_ERROR.enhanced) == (451, "4.3.0")
    assert (replies.MESSAGE_TOO_BIG.code, replies.MESSAGE_TOO_BIG.enhanced) == (552, "5.3.4")
    assert (replies.SENDER_NOT_OWNED.code, replies.SENDER_NOT_OWNED.enhanced) == (553, "5.7.1")
    assert replies.TOO_MANY_ERRORS.code == 421


def test_detail_is_appended():
    assert replies.SYNTAX.line("bad SIZE") == b"501 5.5.4 Syntax error in parameters or arguments: bad SIZE"
