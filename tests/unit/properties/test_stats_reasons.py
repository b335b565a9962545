"""Rejection reasons are named from reply text that may carry outside words (a hook's text, an SPF
explanation, a client's address): naming and counting never fail, and labels stay short and few."""
from __future__ import annotations

from hypothesis import given, strategies as st

from appliance import stats
from appliance.stats import DAY, EventCounters, MailCounters

replies_text = st.one_of(
    st.text(max_size=300),
    st.builds(lambda code, enhanced, text: f"{code} {enhanced} {text}",
              st.sampled_from(["421", "450", "451", "550", "554", "5x0"]),
              st.sampled_from(["4.7.1", "5.1.1", "5.7.23", "9.9", ""]), st.text(max_size=200)))
values = st.one_of(st.none(), st.text(max_size=60), st.integers(), st.binary(max_size=20))


@given(replies_text)
def test_a_reply_always_gets_a_short_one_line_name(reply):
    name = stats.reply_name(reply)
    assert name and len(name) <= 40 and "\n" not in name and "\r" not in name
    code = stats.reply_code(reply)
    assert code == "" or reply.startswith(code.split()[0])


@given(st.lists(st.tuples(st.sampled_from(["check", "rejected", "auth-failed", "received", "other"]),
                          st.dictionaries(st.sampled_from(["check", "verdict", "peer", "reply", "service"]),
                                          values, max_size=5)), max_size=30))
def test_any_event_fields_are_counted_without_error_and_labels_stay_bounded(events):
    mail = MailCounters(EventCounters(lambda: 1_800_000_000.0, max_labels=8))
    for event, fields in events:
        fields = dict(fields)
        if event == "check":
            fields.setdefault("verdict", "reject")
        mail(event, fields)
    assert len(mail.counters.by_label(stats.REJECTED, DAY)) <= 9
