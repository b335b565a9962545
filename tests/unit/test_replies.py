"""The reply table: every named reply is well-formed, so no client ever sees a malformed line."""
from appliance import replies
from appliance.replies import IMAPReply, Reply

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


# ---- IMAP ---------------------------------------------------------------------------------------------
IMAP_TABLE = {name: value for name, value in vars(replies).items() if isinstance(value, IMAPReply)}
# RFC 3501 7.1, RFC 4315 (APPENDUID, COPYUID), RFC 5530 (AUTHENTICATIONFAILED ... ALREADYEXISTS)
IMAP_CODES = {"ALERT", "BADCHARSET", "CAPABILITY", "PARSE", "PERMANENTFLAGS", "READ-ONLY", "READ-WRITE",
              "TRYCREATE", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "APPENDUID", "COPYUID", "UNAVAILABLE",
              "AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "PRIVACYREQUIRED", "SERVERBUG", "CANNOT",
              "NONEXISTENT", "ALREADYEXISTS",
              "OVERQUOTA", "NOPERM", "COMPRESSIONACTIVE"}        # RFC 5530 3, RFC 4978 3


def test_imap_table_is_not_empty_and_named_imap():
    assert len(IMAP_TABLE) > 40
    assert all(name.startswith("IMAP_") for name in IMAP_TABLE)


def test_every_imap_reply_is_a_valid_status_line():
    for name, reply in IMAP_TABLE.items():
        assert reply.status in ("OK", "NO", "BAD", "BYE", "+"), name
        assert reply.text.isascii() and reply.text == reply.text.strip() and not reply.text.startswith("["), name
        assert reply.text or reply.code or reply.status == "+", name
        if reply.code:
            assert reply.code.split()[0] in IMAP_CODES, name
        line = reply.line(b"a1")
        assert b"\r" not in line and b"\n" not in line, name
        assert line.startswith(b"+ " if reply.status == "+" else b"a1 " + reply.status.encode() + b" "), name


def test_every_imap_reply_is_named_once_and_used():
    import pathlib
    assert len({(r.status, r.code, r.text) for r in IMAP_TABLE.values()}) == len(IMAP_TABLE)
    source = "".join(path.read_text() for path in pathlib.Path(replies.__file__).parent.joinpath("imap").glob("*.py"))
    assert [name for name in IMAP_TABLE if name not in source] == []


def test_imap_policy_answers_match_the_design_table():
    assert replies.IMAP_AUTH_FAILED.line(b"a") == b"a NO [AUTHENTICATIONFAILED] Authentication failed"
    assert replies.IMAP_AUTH_UNAVAILABLE.line(b"a").startswith(b"a NO [UNAVAILABLE] ")
    assert replies.IMAP_LOGIN_DISABLED.code == "PRIVACYREQUIRED"
    assert replies.IMAP_TOO_MANY_ERRORS.status == "BYE"
    assert replies.IMAP_TLS_UNAVAILABLE.status == "BAD"           # RFC 3501 6.2.1: STARTTLS is OK or BAD


def test_imap_reply_parts():
    assert replies.IMAP_COMPLETED.line(b"a", command=b"NOOP") == b"a OK NOOP completed"
    assert replies.IMAP_APPENDED.message(data=b"7 3") == b"[APPENDUID 7 3] APPEND completed"
    assert replies.IMAP_MOVED_UIDS.message(data=b"7 1 2") == b"[COPYUID 7 1 2]"
    assert replies.IMAP_INVALID_ARGUMENTS.message(detail=b"x") == b"Invalid arguments: x"
    assert replies.IMAP_SEND_AUTH_RESPONSE.line() == b"+ "
