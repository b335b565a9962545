"""Properties of the compact envelope record (envelope.py to_record / from_record / decode).

Every envelope the queue can hold reads back equal from its compact record, and from the JSON
object form older versions wrote. Any other bytes (a damaged record whose CRC still matched, a
file from elsewhere) give an Envelope or a ValueError, which the spool logs and keeps aside:
never another exception, never a crash of the recovery.
"""
from __future__ import annotations

import json

from hypothesis import example, given, strategies as st

from appliance.envelope import DELIVERED, FAILED, PENDING, RECORD_VERSION, Envelope, Recipient
from tests.unit.properties.strategies import any_bytes

_text = st.text(max_size=30)
_times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
_counts = st.integers(min_value=0, max_value=1 << 40)
_recipients = st.builds(Recipient, address=_text, original=_text, extension=_text, local=st.booleans(),
                        state=st.sampled_from([PENDING, DELIVERED, FAILED]), attempts=_counts,
                        next_attempt=_times, last_error=_text, status=_text, folder=_text)
_envelopes = st.builds(Envelope, id=st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=1, max_size=20),
                       sender=_text, recipients=st.lists(_recipients, max_size=4), received_at=_times, peer=_text,
                       helo=_text, protocol=st.sampled_from(["SMTP", "ESMTP", "ESMTPSA", "local"]), login=_text,
                       size=_counts, held=st.booleans(), delay_notified=st.booleans(), parent=_text)


@given(_envelopes)
def test_an_envelope_reads_back_equal_from_its_record_and_from_the_old_json_form(envelope):
    record = envelope.to_record()
    assert record[:1] == b"[" and record.isascii()
    assert Envelope.decode(record) == envelope
    assert Envelope.decode(envelope.to_json()) == envelope


@given(any_bytes)
@example(b"[" * 100_000)
@example(b'[2,"A","",0,"","","ESMTP","",true,false,false,"",[]]')
def test_any_bytes_as_a_record_give_an_envelope_or_a_value_error(data):
    try:
        envelope = Envelope.from_record(data)
    except ValueError:
        return
    assert isinstance(envelope, Envelope) and envelope.id


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
                            lambda inner: st.lists(inner, max_size=4), max_leaves=20)


@given(_envelopes, st.integers(min_value=0, max_value=12), _json_values)
def test_a_record_with_any_field_replaced_gives_an_envelope_of_the_right_types_or_a_value_error(envelope, at, value):
    """A well-formed array with a wrong value anywhere: refused, or every field still has its type."""
    raw = json.loads(envelope.to_record())
    raw[at] = value
    try:
        back = Envelope.from_record(json.dumps(raw).encode())
    except ValueError:
        return
    assert raw[0] == RECORD_VERSION
    assert isinstance(back.id, str) and back.id and isinstance(back.size, int) and not isinstance(back.size, bool)
    assert isinstance(back.received_at, float) and isinstance(back.held, bool)
    for rcpt in back.recipients:
        assert isinstance(rcpt.address, str) and isinstance(rcpt.local, bool) and isinstance(rcpt.attempts, int)
        assert isinstance(rcpt.next_attempt, float)


def _base32_by_division(value: int) -> str:
    """The queue id's digits as new_id computed them before (a divmod loop): the reference."""
    digits = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    chars = []
    while value:
        value, digit = divmod(value, 32)
        chars.append(digits[digit])
    return "".join(reversed(chars))


@given(st.integers(min_value=1, max_value=(1 << 120) - 1))
@example(1)
@example(31)
@example(32)
@example((1 << 120) - 1)
def test_queue_id_digits_are_the_numbers_base_32_digits(value):
    from appliance.envelope import base32
    assert base32(value) == _base32_by_division(value)


@given(st.floats(min_value=1.0, max_value=4e9, allow_nan=False), st.floats(min_value=1.0, max_value=4e9, allow_nan=False))
def test_queue_ids_sort_as_their_times(first, second):
    from appliance.envelope import new_id
    a, b = new_id(first), new_id(second)
    if int(first * 1_000_000) < int(second * 1_000_000):
        assert len(a) < len(b) or (len(a) == len(b) and a < b)
