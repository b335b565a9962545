"""CREATE, DELETE, RENAME, SUBSCRIBE/UNSUBSCRIBE, LIST/LSUB, STATUS, NAMESPACE (RFC 3501 6.3, RFC 2342)."""
from __future__ import annotations

import pytest

from tests.unit.imap.harness import tagged, untagged

SPECIAL = [b'* LIST (\\HasNoChildren) "." "INBOX"', b'* LIST (\\HasNoChildren \\Drafts) "." "Drafts"',
           b'* LIST (\\HasNoChildren \\Junk) "." "Junk"', b'* LIST (\\HasNoChildren \\Sent) "." "Sent"',
           b'* LIST (\\HasNoChildren \\Trash) "." "Trash"']


def names(reply: bytes) -> list[bytes]:
    return [line.rsplit(b" ", 1)[1].strip(b'"') for line in untagged(reply)]


def test_first_login_lists_inbox_and_the_special_use_folders(authed):
    reply = authed.cmd(b'l LIST "" *')
    assert untagged(reply) == SPECIAL and tagged(reply, b"l") == b"l OK LIST completed"


def test_empty_pattern_gives_the_delimiter(authed):
    assert authed.cmd(b'l LIST "" ""') == b'* LIST (\\Noselect) "." ""\r\nl OK LIST completed\r\n'


def test_create_then_list_shows_children(authed):
    assert authed.cmd(b"c CREATE Projects") == b"c OK CREATE completed\r\n"
    assert authed.cmd(b"c2 CREATE Projects.Beta.") == b"c2 OK CREATE completed\r\n"      # trailing delimiter
    reply = authed.cmd(b'l LIST "" Projects*')
    assert untagged(reply) == [b'* LIST (\\HasChildren) "." "Projects"',
                               b'* LIST (\\HasNoChildren) "." "Projects.Beta"']


def test_percent_stops_at_the_delimiter_and_shows_missing_levels_as_noselect(authed):
    authed.ok(b"c CREATE Projects.2026.Q1")
    authed.ok(b"c2 CREATE Sentinel")
    reply = authed.cmd(b'l LIST "" %')
    assert b'* LIST (\\Noselect \\HasChildren) "." "Projects"' in untagged(reply)
    assert b"Projects.2026" not in reply
    assert names(authed.cmd(b'l2 LIST "" Projects.%')) == [b"Projects.2026"]
    assert names(authed.cmd(b'l3 LIST "" Sent')) == [b"Sent"]                # whole names only
    # reference + pattern; `*` lists the level Projects.2026 too, as Dovecot does
    assert names(authed.cmd(b'l4 LIST Projects. *')) == [b"Projects.2026", b"Projects.2026.Q1"]


def test_pattern_characters_are_literal_and_inbox_is_case_insensitive(authed):
    authed.ok(b"c CREATE PxQ")
    assert names(authed.cmd(b'l LIST "" P.Q')) == []
    assert names(authed.cmd(b'l2 LIST "" inbox')) == [b"INBOX"]
    assert names(authed.cmd(b'l3 LIST "" sent')) == []


def test_create_refusals(authed):
    assert authed.cmd(b"c CREATE INBOX") == b"c NO [ALREADYEXISTS] Mailbox already exists\r\n"
    assert authed.cmd(b"c2 CREATE a/b").startswith(b"c2 NO")
    assert authed.cmd(b'c3 CREATE "bad*name"').startswith(b"c3 NO [CANNOT]")


def test_delete_and_rename(authed):
    authed.ok(b"c CREATE Old")
    assert authed.cmd(b"r RENAME Old New") == b"r OK RENAME completed\r\n"
    assert b'"New"' in authed.cmd(b'l LIST "" *') and b'"Old"' not in authed.cmd(b'l2 LIST "" *')
    assert authed.cmd(b"d DELETE New") == b"d OK DELETE completed\r\n"
    assert authed.cmd(b"d2 DELETE New") == b"d2 NO [NONEXISTENT] Mailbox does not exist\r\n"
    assert authed.cmd(b"r2 RENAME Nope Other") == b"r2 NO [NONEXISTENT] Mailbox does not exist\r\n"


def test_deleting_the_selected_folder_leaves_the_selected_state(authed):
    authed.ok(b"c CREATE Old")
    authed.select(b"Old")
    assert authed.cmd(b"d DELETE Old") == b"d OK DELETE completed\r\n"
    assert authed.cmd(b"f FETCH 1 FLAGS") == b"f BAD Unsupported command\r\n"


def test_subscribe_and_lsub(authed):
    authed.ok(b"c CREATE Lists")
    assert b'"Lists"' not in authed.cmd(b'l LSUB "" *')
    assert authed.cmd(b"s SUBSCRIBE Lists") == b"s OK SUBSCRIBE completed\r\n"
    assert untagged(authed.cmd(b'l2 LSUB "" L*')) == [b'* LSUB (\\HasNoChildren) "." "Lists"']
    assert authed.cmd(b"u UNSUBSCRIBE Lists") == b"u OK UNSUBSCRIBE completed\r\n"
    assert authed.cmd(b'l3 LSUB "" L*') == b"l3 OK LSUB completed\r\n"


def test_status(authed):
    reply = authed.cmd(b"s STATUS INBOX (MESSAGES RECENT UIDNEXT UNSEEN)")
    assert reply == b'* STATUS "INBOX" (MESSAGES 2 RECENT 2 UIDNEXT 3 UNSEEN 2)\r\ns OK STATUS completed\r\n'
    assert authed.cmd(b"s2 STATUS INBOX (UIDVALIDITY)").startswith(b'* STATUS "INBOX" (UIDVALIDITY ')


@pytest.mark.parametrize("command, reply", [
    (b"s STATUS INBOX (FOO)", b"s BAD Invalid STATUS items\r\n"),
    (b"s STATUS INBOX ()", b"s BAD Invalid STATUS items\r\n"),
    (b"s STATUS Nope (MESSAGES)", b"s NO [NONEXISTENT] Mailbox does not exist\r\n"),
])
def test_status_refusals(authed, command, reply):
    assert authed.cmd(command) == reply
    assert authed.alive


def test_names_travel_in_modified_utf7(authed):
    assert authed.cmd(b"c CREATE &ANY-t&AOk-") == b"c OK CREATE completed\r\n"          # "Öté"
    assert b'"&ANY-t&AOk-"' in authed.cmd(b'l LIST "" *')
    assert authed.cmd(b"c2 CREATE &ZZZZ-") == b"c2 NO [CANNOT] Invalid mailbox name encoding\r\n"


def test_namespace(authed):
    assert authed.cmd(b"n NAMESPACE") == b'* NAMESPACE (("" ".")) NIL NIL\r\nn OK NAMESPACE completed\r\n'
