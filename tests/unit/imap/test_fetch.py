"""FETCH and UID FETCH (RFC 3501 6.4.5, 6.4.8, 7.4.2): every data item, \\Seen, sections, partials."""
from __future__ import annotations

import re

import pytest

MESSAGE0 = b"Subject: m0\r\nFrom: bob@example.test\r\n\r\nbody 0\r\n"
HEADER0 = b"Subject: m0\r\nFrom: bob@example.test\r\n\r\n"


def test_flags_uid_size_and_internaldate(selected):
    reply = selected.cmd(b"f FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)")
    lines = reply.split(b"\r\n")
    assert re.fullmatch(rb'\* 1 FETCH \(FLAGS \(\\Recent\) UID 1 RFC822.SIZE 47 '
                        rb'INTERNALDATE "\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d \+0000"\)', lines[0])
    assert lines[1].startswith(b"* 2 FETCH (FLAGS (\\Recent) UID 2 ") and lines[2] == b"f OK FETCH completed"


def test_uid_fetch_always_includes_uid_and_skips_missing(selected):
    assert selected.cmd(b"f UID FETCH 2 FLAGS") == b"* 2 FETCH (UID 2 FLAGS (\\Recent))\r\nf OK FETCH completed\r\n"
    assert selected.cmd(b"f2 UID FETCH 99 FLAGS") == b"f2 OK FETCH completed\r\n"
    assert selected.cmd(b"f3 UID FETCH 2:* UID") == b"* 2 FETCH (UID 2)\r\nf3 OK FETCH completed\r\n"


def test_body_sets_seen_and_reports_the_flags(selected):
    reply = selected.cmd(b"f FETCH 1 BODY[]")
    assert reply == (b"* 1 FETCH (BODY[] {47}\r\n" + MESSAGE0 + b" FLAGS (\\Seen \\Recent))\r\n"
                     b"f OK FETCH completed\r\n")
    assert selected.cmd(b"f2 FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\nf2 OK FETCH completed\r\n"


def test_peek_leaves_seen_alone(selected):
    reply = selected.cmd(b"f FETCH 1 BODY.PEEK[HEADER]")
    assert reply == b"* 1 FETCH (BODY[HEADER] {39}\r\n" + HEADER0 + b")\r\nf OK FETCH completed\r\n"
    assert b"\\Seen" not in selected.cmd(b"f2 FETCH 1 FLAGS")


def test_header_fields_and_partial_text(selected):
    reply = selected.cmd(b"f FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[TEXT]<0.4>)")
    assert reply == (b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {15}\r\nSubject: m0\r\n\r\n"
                     b" BODY[TEXT]<0> {4}\r\nbody)\r\nf OK FETCH completed\r\n")
    reply = selected.cmd(b"f2 FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (Subject)]")
    assert reply.startswith(b"* 1 FETCH (BODY[HEADER.FIELDS.NOT (SUBJECT)] {26}\r\nFrom: bob@example.test\r\n\r\n)")


def test_missing_section_is_nil(selected):
    assert selected.cmd(b"f FETCH 1 BODY.PEEK[9]") == b"* 1 FETCH (BODY[9] NIL)\r\nf OK FETCH completed\r\n"


def test_rfc822_items(selected):
    reply = selected.cmd(b"f FETCH 1 RFC822.HEADER")
    assert reply == b"* 1 FETCH (RFC822.HEADER {39}\r\n" + HEADER0 + b")\r\nf OK FETCH completed\r\n"
    reply = selected.cmd(b"f2 FETCH 2 RFC822.TEXT")
    assert reply == b"* 2 FETCH (RFC822.TEXT {8}\r\nbody 1\r\n FLAGS (\\Seen \\Recent))\r\nf2 OK FETCH completed\r\n"
    reply = selected.cmd(b"f3 FETCH 1 RFC822")
    assert reply.startswith(b"* 1 FETCH (RFC822 {47}\r\n" + MESSAGE0)


def test_envelope_and_bodystructure_come_from_the_index(selected):
    reply = selected.cmd(b"f FETCH 2 (ENVELOPE BODYSTRUCTURE BODY)")
    assert reply == (b'* 2 FETCH (ENVELOPE (NIL "m1" ((NIL NIL "bob" "example.test")) '
                     b'((NIL NIL "bob" "example.test")) ((NIL NIL "bob" "example.test")) NIL NIL NIL NIL NIL) '
                     b'BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 1 NIL NIL NIL NIL) '
                     b'BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 1))\r\n'
                     b"f OK FETCH completed\r\n")


def test_macros(selected):
    reply = selected.cmd(b"f FETCH 1 FAST")
    assert re.fullmatch(rb'\* 1 FETCH \(FLAGS \(\\Recent\) INTERNALDATE "[^"]+" RFC822.SIZE 47\)\r\n'
                        rb"f OK FETCH completed\r\n", reply)


def test_fetch_in_examine_never_sets_seen(authed):
    authed.ok(b"e EXAMINE INBOX")
    assert b"FLAGS" not in authed.cmd(b"f FETCH 1 BODY[]")
    assert authed.cmd(b"f2 FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS ())\r\nf2 OK FETCH completed\r\n"


@pytest.mark.parametrize("command, reply", [
    (b"f FETCH 3 FLAGS", b"f BAD Invalid message sequence number\r\n"),
    (b"f FETCH 0 FLAGS", b"f BAD Invalid arguments: Invalid sequence number\r\n"),
    (b"f FETCH 1 FROB", b"f BAD Invalid arguments: Invalid fetch attributes\r\n"),
    (b"f FETCH 1", b"f BAD Invalid arguments: Missing fetch attributes\r\n"),
])
def test_fetch_refusals(selected, command, reply):
    assert selected.cmd(command) == reply
    assert selected.alive


def test_expunge_by_another_session_is_not_reported_during_fetch(selected, other):
    other.ok(b"st STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok(b"e EXPUNGE")
    reply = selected.cmd(b"f FETCH 1:2 FLAGS")
    assert b"EXPUNGE" not in reply and reply.endswith(b"f OK FETCH completed\r\n")
    assert selected.cmd(b"n NOOP") == b"* 1 EXPUNGE\r\nn OK NOOP completed\r\n"


def test_big_fetch_streams_in_batches(authed, monkeypatch):
    from appliance.imap import fetch
    for n in range(5):
        authed.deliver(b"Subject: big %d\r\n\r\n" % n + b"x" * 1000 + b"\r\n")
    authed.select()
    monkeypatch.setattr(fetch, "FETCH_BATCH_BYTES", 1500)
    reply = authed.cmd(b"f FETCH 1:* BODY.PEEK[]")
    assert reply.count(b" FETCH (BODY[] {") == 7 and reply.endswith(b"f OK FETCH completed\r\n")


MESSAGE1 = b"Subject: m1\r\nFrom: bob@example.test\r\n\r\nbody 1\r\n"


def test_whole_mailbox_download_is_every_message_once_in_order(selected):
    """`FETCH 1:* (BODY.PEEK[])`, the download every client does, in its own fast path: exact octet
    counts, one response per message, \\Seen left alone."""
    reply = selected.cmd(b"f FETCH 1:* (BODY.PEEK[])")
    assert reply == (b"* 1 FETCH (BODY[] {47}\r\n" + MESSAGE0 + b")\r\n"
                     b"* 2 FETCH (BODY[] {47}\r\n" + MESSAGE1 + b")\r\nf OK FETCH completed\r\n")
    reply = selected.cmd(b"f2 UID FETCH 2:* BODY.PEEK[]")
    assert reply == b"* 2 FETCH (UID 2 BODY[] {47}\r\n" + MESSAGE1 + b")\r\nf2 OK FETCH completed\r\n"
    assert b"\\Seen" not in selected.cmd(b"f3 FETCH 1:* FLAGS")


def test_whole_mailbox_download_in_examine_and_after_seen(authed):
    """BODY[] and RFC822 in a read-only session (no FLAGS change to report) take the fast path too."""
    authed.ok(b"e EXAMINE INBOX")
    assert authed.cmd(b"f FETCH 1:2 RFC822") == (b"* 1 FETCH (RFC822 {47}\r\n" + MESSAGE0 + b")\r\n"
                                                 b"* 2 FETCH (RFC822 {47}\r\n" + MESSAGE1 + b")\r\n"
                                                 b"f OK FETCH completed\r\n")
    assert authed.cmd(b"f2 UID FETCH 1 BODY[]") == (b"* 1 FETCH (UID 1 BODY[] {47}\r\n" + MESSAGE0 + b")\r\n"
                                                    b"f2 OK FETCH completed\r\n")


def test_whole_mailbox_download_keeps_partials_and_seen_apart(selected):
    """A partial BODY[]<a.b>, and BODY[] that sets \\Seen (FLAGS then follows), still answer exactly."""
    assert selected.cmd(b"f FETCH 1 BODY.PEEK[]<9.5>") == b"* 1 FETCH (BODY[]<9> {5}\r\nm0\r\nF)\r\nf OK FETCH completed\r\n"
    reply = selected.cmd(b"f2 FETCH 1:2 BODY[]")
    assert reply == (b"* 1 FETCH (BODY[] {47}\r\n" + MESSAGE0 + b" FLAGS (\\Seen \\Recent))\r\n"
                     b"* 2 FETCH (BODY[] {47}\r\n" + MESSAGE1 + b" FLAGS (\\Seen \\Recent))\r\n"
                     b"f2 OK FETCH completed\r\n")


def test_whole_mailbox_download_skips_a_message_expunged_meanwhile(selected, other):
    other.ok(b"st STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok(b"e EXPUNGE")
    reply = selected.cmd(b"f FETCH 1:2 BODY.PEEK[]")
    assert reply == b"* 2 FETCH (BODY[] {47}\r\n" + MESSAGE1 + b")\r\nf OK FETCH completed\r\n"
