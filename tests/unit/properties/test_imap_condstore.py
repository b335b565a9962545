"""Properties of the RFC 7162 parsers (imap/condstore.py) and of QRESYNC's expunge answer (store/modseq.py).

Client bytes give a parsed value or ValueError, never anything else; what a client writes reads back.
Whatever known-uids and sequence-match data a client sends, and whatever happened to the mailbox,
`VANISHED (EARLIER)` names every UID the client knew that is gone since its mod-sequence and names
no message that is still there.
"""
from __future__ import annotations

import os
import tempfile

from hypothesis import example, given, strategies as st

from appliance.imap.condstore import Qresync, parse_select_params, parse_store_modifier, split_fetch
from appliance.store.modseq import ModseqLog, first_known, merge, to_ranges
from tests.unit.properties.strategies import any_bytes

_tokens = st.lists(st.sampled_from([b"(", b")", b" ", b"QRESYNC", b"qresync", b"CONDSTORE", b"1", b"0", b"*", b":",
                                    b",", b"4294967296", b"9223372036854775808", b"(1 2)", b"\"x\"", b"{3}",
                                    b"VANISHED", b"CHANGEDSINCE", b"UNCHANGEDSINCE", b"MODSEQ", b"\x00", b"\xff"]),
                   max_size=14).map(b"".join)
_uid = st.integers(1, 4_294_967_295)
_modseq = st.integers(1, (1 << 63) - 1)
_ranges = st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)).map(lambda p: (p[0], p[0] + p[1])),
                   min_size=1, max_size=5)


def _set(ranges) -> str:
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


@given(st.one_of(any_bytes, _tokens))
@example(b"(QRESYNC (1 2 3:4 (1:2 3:4)) CONDSTORE)")
@example(b"(" * 100)
def test_select_params_are_parsed_or_refused(text):
    try:
        params = parse_select_params(text)
    except ValueError:
        return
    if params.qresync is not None:
        assert 1 <= params.qresync.uidvalidity <= 4_294_967_295 and 1 <= params.qresync.modseq < 1 << 63


@given(_uid, _modseq, st.none() | _ranges, st.none() | st.tuples(_ranges, _ranges), st.booleans())
def test_a_qresync_parameter_reads_back(validity, modseq, known, match, condstore):
    inner = f"{validity} {modseq}"
    if known is not None:
        inner += " " + _set(known)
    if match is not None:
        inner += f" ({_set(match[0])} {_set(match[1])})"
    text = f" (QRESYNC ({inner}){' CONDSTORE' if condstore else ''})".encode()
    params = parse_select_params(text)
    assert params.condstore == condstore
    assert params.qresync == Qresync(validity, modseq, None if known is None else merge(known),
                                     tuple(match[0]) if match else (), tuple(match[1]) if match else ())


@given(st.one_of(any_bytes, _tokens))
def test_fetch_and_store_modifiers_are_parsed_or_refused(text):
    for parse in (split_fetch, parse_store_modifier):
        try:
            parse(text)
        except ValueError:
            pass


_ITEMS = {b"(FLAGS MODSEQ)": (b"(FLAGS)", True), b"(MODSEQ BODY[HEADER.FIELDS (MODSEQ X)])":
          (b"(BODY[HEADER.FIELDS (MODSEQ X)])", True), b"FLAGS": (b"FLAGS", False), b"ALL": (b"ALL", False)}


@given(st.sampled_from(sorted(_ITEMS)), st.none() | st.integers(0, (1 << 63) - 1), st.booleans())
def test_fetch_modifiers_read_back(items, since, vanished):
    modifiers = ([b"CHANGEDSINCE %d" % since] if since is not None else []) + ([b"VANISHED"] if vanished else [])
    text = items + (b" (" + b" ".join(modifiers) + b")" if modifiers else b"")
    rest, parsed = split_fetch(text)
    assert (rest, parsed.modseq_item) == _ITEMS[items]       # a header named MODSEQ stays in the section
    assert parsed.changedsince == since and parsed.vanished == vanished


# ---- VANISHED (EARLIER) against what really happened ------------------------------------------------
_history = st.lists(st.tuples(st.sampled_from(["expunge", "flag", "deliver"]), st.integers(0, 30)), max_size=25)


@given(st.integers(1, 30), _history, st.integers(0, 25), st.none() | _ranges,
       st.lists(st.integers(0, 40), max_size=6), st.booleans())
def test_vanished_earlier_is_complete_and_never_names_a_present_message(start, history, cut, known_uids,
                                                                        sample, lie):
    with tempfile.TemporaryDirectory() as root:
        log = ModseqLog(os.path.join(root, "modseq"))
        present = {uid: frozenset() for uid in range(1, start + 1)}
        uidnext = start + 1
        log.observe(7, uidnext, list(present.items()))
        client_modseq, client_uids = log.highest, sorted(present)
        gone_after: set[int] = set()
        for step, (action, pick) in enumerate(history):
            uids = sorted(present)
            if action == "deliver":
                present[uidnext] = frozenset()
                uidnext += 1
            elif uids and action == "expunge":
                uid = uids[pick % len(uids)]
                del present[uid]
                if step >= cut:
                    gone_after.add(uid)
            elif uids:
                uid = uids[pick % len(uids)]
                present[uid] = frozenset({"\\Seen"}) if not present[uid] else frozenset()
            log.observe(7, uidnext, sorted(present.items()))
            if step + 1 == cut:
                client_modseq, client_uids = log.highest, sorted(present)
        now = sorted(present)
        # The client's seq-match sample: (its message number, its UID) pairs, true for its own view.
        picks = sorted({i % len(client_uids) for i in sample}) if client_uids else []
        sequences = [i + 1 for i in picks]
        uids = [client_uids[i] + (1 if lie and i == picks[-1] else 0) for i in picks] if picks else []
        floor = first_known(now, sequences, uids)
        reported = set()
        for low, high in log.vanished(client_modseq, now, uidnext, known_uids, floor):
            reported.update(range(low, high + 1))
        assert not reported & set(now)
        within = set() if known_uids is None else {u for a, b in known_uids for u in range(a, b + 1)}
        owed = {uid for uid in set(client_uids) - set(now) if known_uids is None or uid in within}
        if not lie:
            # What the client must learn: its UIDs gone since (all of them when the proof holds below floor,
            # those are ones it knew of) -- none above the floor may be missing.
            assert {uid for uid in owed if uid > floor} <= reported
            assert all(uid not in owed for uid in range(1, floor + 1))
        assert reported <= {u for u in range(1, uidnext) if u not in present}


def test_first_known_stops_at_the_first_pair_that_fails():
    assert first_known([1, 2, 4, 5], [1, 2, 3, 4], [1, 2, 3, 5]) == 2
    assert first_known([1, 2, 4, 5], [9], [9]) == 0
    assert to_ranges([3, 1, 2, 7]) == [(1, 3), (7, 7)]
