"""Properties of appliance.message, the one header parser.

split and fields give the header block back byte for byte; prepend, remove, replace and rewrite
change only the fields they name and leave everything else (other fields, the body) as it was.
"""
from __future__ import annotations

from hypothesis import example, given, strategies as st

from appliance import message
from tests.unit.properties.strategies import any_bytes

_eol = st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r"])
_line = st.one_of(
    st.builds(lambda name, sep, value: name + sep + value,
              st.sampled_from([b"Subject", b"BCC", b"bcc", b"To", b"X-A", b"Received", b"From ", b"", b"\xe9t\xe9"]),
              st.sampled_from([b":", b": ", b" : ", b""]), st.binary(max_size=20).map(
                  lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
    st.builds(lambda wsp, text: wsp + text, st.sampled_from([b" ", b"\t"]), st.binary(max_size=10).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
    st.just(b""))
messages = st.one_of(
    any_bytes,
    st.builds(lambda lines, ends, body: b"".join(line + ends[n % len(ends)] for n, line in enumerate(lines)) + body,
              st.lists(_line, max_size=8), st.lists(_eol, min_size=1, max_size=3), st.binary(max_size=30)))
_names = st.sampled_from(["Bcc", "bcc", b"To", "Received", "X-A", "Subject", "From"])
_values = st.text(alphabet="abc xyz<>@.:;", max_size=20).map(str.strip)


@given(messages)
@example(b"a:b\r\n\r\n")
def test_split_and_fields_give_the_message_back_byte_for_byte(raw):
    head, rest = message.split(raw)
    assert head + rest == raw
    assert b"".join(text for _, text in message.fields(raw)) == head
    assert b"".join(text for _, text in message.fields(head)) == head
    assert raw.endswith(message.body(raw))


@given(messages, st.lists(st.tuples(_names, _values), min_size=1, max_size=3))
def test_prepend_keeps_the_message_below_byte_for_byte(raw, new):
    changed = message.prepend(raw, *new)
    assert message.body(changed) == message.body(raw) or not message.split(raw)[0] and message.body(changed) == raw
    assert changed.endswith(raw)
    name, value = new[0]
    assert message.get(changed, name) == value.encode()


@given(messages, st.lists(_names, min_size=1, max_size=2))
@example(b":", ["Bcc"])
def test_remove_takes_out_the_named_fields_and_nothing_else(raw, names):
    changed = message.remove(raw, *names)
    keys = {(n if isinstance(n, bytes) else n.encode()).lower() for n in names}
    kept = [(name, text) for name, text in message.fields(raw) if name.lower() not in keys]
    # A colon-less line that a removal would leave on top goes too: first, it would turn every
    # field below it into body ("Bcc: a\nfoo\nTo: b\n" keeps "To: b", not "foo"). Without a
    # removal the message comes back as it was (raw=b":" once failed this test for that).
    removed = len(kept) < len(message.fields(raw))
    while removed and kept and not kept[0][0]:
        kept.pop(0)
    assert message.fields(changed) == kept
    assert changed.endswith(message.split(raw)[1])
    assert all(not message.has(changed, n) for n in names) or not message.split(changed)[0]
    if not any(name.lower() in keys for name, _ in message.fields(raw)):
        assert changed is raw


@given(messages, _names, _values)
def test_replace_leaves_one_field_with_the_new_value(raw, name, value):
    changed = message.replace(raw, name, value)
    assert message.get_all(changed, name) == [value.encode()]
    assert changed.endswith(message.split(raw)[1])
