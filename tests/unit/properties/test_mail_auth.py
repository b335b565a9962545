"""Properties of the mail-authentication parsers of outside bytes: DMARC records (a domain's DNS),
the authserv-id of an Authentication-Results field (a sender's header), and the values we write."""
from __future__ import annotations

from hypothesis import example, given, strategies as st

from appliance import message
from appliance.filters.authresults import authserv_id, pvalue, resinfo
from appliance.filters.base import AuthResult
from appliance.filters.dmarc import DMARCRecord, from_domain, parse_record, parse_tags
from appliance.filters.spf import clean_explanation
from tests.unit.properties.strategies import any_bytes

_blank = st.sampled_from(["", " ", "\t", "  "])
_policy = st.sampled_from(["none", "quarantine", "reject"])
_mode = st.sampled_from(["r", "s"])
_unknown_tag = st.tuples(st.sampled_from(["rua", "ruf", "fo", "rf", "ri", "x-new", "np"]),
                         st.text(alphabet="abcdefghij:@.,=/!", max_size=15))


@st.composite
def records(draw):
    """A valid DMARC record with known tags in any order after v, unknown tags and blanks mixed in."""
    record = DMARCRecord(p=draw(_policy), sp=draw(st.none() | _policy), adkim=draw(_mode), aspf=draw(_mode),
                         pct=draw(st.integers(0, 100)))
    tags = [("p", record.p), ("adkim", record.adkim), ("aspf", record.aspf), ("pct", str(record.pct))]
    if record.sp is not None:
        tags.append(("sp", record.sp))
    tags += [t for t in draw(st.lists(_unknown_tag, max_size=3, unique_by=lambda t: t[0])) if t[0] != "rua"]
    tags = draw(st.permutations(tags))
    b = draw(_blank)
    text = f"v{b}={b}DMARC1" + "".join(f"{draw(_blank)};{draw(_blank)}{n}{b}={b}{v}" for n, v in tags)
    return text + draw(st.sampled_from(["", ";", "; "])), record


@given(records())
def test_a_valid_record_reads_back_its_values(case):
    text, record = case
    assert parse_record(text) == record


@given(st.text(max_size=120))
@example("v=DMARC1")
@example("v=DMARC1; p=reject; p=none")
@example("v=DMARC1; p=bogus")
@example("v=DMARC1; p=bogus; rua=mailto:a@b")
@example("v=DMARC1; =x")
@example("p=reject; v=DMARC1")
def test_any_text_is_a_record_or_none_and_never_raises(text):
    found = parse_record(text)
    if found is not None:
        assert text.lstrip(" \t").startswith("v")
        assert found.p in ("none", "quarantine", "reject") and 0 <= found.pct <= 100
        assert found.adkim in ("r", "s") and found.aspf in ("r", "s")


@given(st.text(max_size=80))
def test_a_record_not_starting_with_the_version_is_never_used(text):
    assert parse_record("p=reject; v=DMARC1; " + text) is None
    assert parse_record("v=DMARC2; p=reject; " + text) is None


@given(_policy, st.text(alphabet="abcxyz!", min_size=1, max_size=8))
def test_an_invalid_p_counts_as_none_only_with_a_report_address(policy, junk):
    assert parse_record(f"v=DMARC1; p={junk}9") is None
    assert parse_record(f"v=DMARC1; p={junk}9; rua=mailto:d@example.test") == DMARCRecord(p="none")
    assert parse_record(f"v=DMARC1; p={policy}; sp={junk}9") is None


@given(st.text(max_size=80))
def test_tag_lists_never_raise(text):
    tags = parse_tags(text)
    assert tags is None or all(name == name.lower() and "=" not in name for name in tags)


# ---- the From: domain ------------------------------------------------------------------------------

@given(any_bytes)
def test_from_domain_of_any_message_is_a_domain_or_a_reason(raw):
    domain, problem = from_domain(raw)
    assert bool(domain) != bool(problem)
    assert domain == domain.lower() and "@" not in domain and " " not in domain


# ---- Authentication-Results ------------------------------------------------------------------------

_host = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9]{1,8}){0,3}", fullmatch=True)
_comment = st.text(alphabet="abc ;=()\\\"", max_size=12).map(
    lambda t: "(" + t.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")")
_cfws = st.lists(st.one_of(_comment, st.sampled_from([" ", "\t", "\r\n "])), max_size=3).map("".join)
_rest = st.sampled_from(["; spf=pass", " 1; none", ";dkim=fail", "", " (c); spf=pass smtp.mailfrom=a@b"])


@given(_cfws, _host, st.booleans(), _rest)
def test_the_authserv_id_is_found_behind_comments_and_quotes(cfws, host, quoted, rest):
    written = f'"{host}"' if quoted else host
    assert authserv_id((cfws + written + rest).encode()) == host.lower()


@given(any_bytes)
def test_authserv_id_of_any_bytes_never_raises(raw):
    assert isinstance(authserv_id(raw), str)


@given(st.text(max_size=40))
def test_a_pvalue_is_one_token_or_one_quoted_string_without_controls(text):
    value = pvalue(text)
    assert not any(ord(c) < 0x20 or c == "\x7f" for c in value)
    if value.startswith('"'):
        inner = value[1:-1]
        assert value.endswith('"') and inner.replace('\\\\', "").replace('\\"', "").count('"') == 0
    else:
        assert " " not in value and ";" not in value and "(" not in value


@given(st.text(max_size=30), st.text(max_size=30))
def test_a_written_field_reads_back_with_our_authserv_id_first(helo, sender):
    value = "mail.example.test; " + resinfo(AuthResult("spf", "pass", (("smtp.helo", helo), ("smtp.mailfrom", sender))))
    raw = message.prepend(b"Subject: x\r\n\r\nbody", ("Authentication-Results", value))
    (read,) = message.get_all(raw, "Authentication-Results")
    assert authserv_id(read) == "mail.example.test"
    assert message.body(raw) == b"body"


@given(st.text(max_size=300))
def test_an_spf_explanation_fits_one_reply_line(text):
    cleaned = clean_explanation(text)
    assert len(cleaned) <= 200 and all(0x20 <= ord(c) < 0x7f for c in cleaned)


def test_a_tag_given_twice_invalidates_the_record_and_a_malformed_entry_is_ignored():
    assert parse_record("v=DMARC1; p=reject; p=none") is None
    assert parse_record("v=DMARC1; p=reject; bad entry; 9x=1") == DMARCRecord(p="reject")
