"""Properties of the marking of spam delivered to INBOX (couriers/local.py junk_in_inbox).

Whatever header block a sender made up, the marked message carries one `X-Spam-Flag: YES`, its
Subject fields start with `[SPAM]`, and the body is untouched.
"""
from __future__ import annotations

from hypothesis import example, given

from appliance import message
from appliance.couriers.local import junk_in_inbox
from tests.unit.properties.test_message import messages


@given(messages)
@example(b"X-Spam-Flag: NO\r\nX-Spam-Flag: no\r\nSubject: [SPAM] x\r\n\r\nbody")
@example(b"Subject:\r\n\r\n")
def test_marked_spam_is_flagged_once_with_every_subject_prefixed(raw):
    marked = junk_in_inbox(raw)
    assert message.get_all(marked, "X-Spam-Flag") == [b"YES"]
    subjects = message.get_all(marked, "Subject")
    assert subjects and all(subject.lstrip().startswith(b"[SPAM]") for subject in subjects)
    assert marked.endswith(message.body(raw))
    assert junk_in_inbox(marked) == marked          # marking twice changes nothing
