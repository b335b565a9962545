"""What LIST and LSUB answer: pattern matching (RFC 3501 6.3.8-9), LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819).

Pure functions over a snapshot of the account (its folder names and subscriptions), so every
rule here is testable without a disk and the session only reads the snapshot in the pool and
writes the answer. Where the RFCs leave a choice, Dovecot's answers are the model, because
clients are tested against Dovecot:
- levels of the hierarchy that are not folders themselves (`a` above `a.b`) are listed by any
  pattern that matches them, as `\\Noselect \\HasChildren` (basic LIST) or `\\NonExistent`
  (extended LIST, RFC 5258 3.4);
- basic LIST always carries \\HasChildren/\\HasNoChildren (RFC 3348); extended LIST only when
  RETURN (CHILDREN) asks for them;
- special-use attributes (RFC 6154) are always given: they are cheap and every client wants them.
Two choices differ from Dovecot 2.3: LSUB keeps the child and special-use attributes of folders
that exist (as before LIST-EXTENDED; Dovecot gives `()`), and RECURSIVEMATCH gives CHILDINFO to
every matching name with a chosen name below it, even when that name matches too (RFC 5258 3.5
says so; Dovecot leaves such parents out for `*`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from appliance.imap.parse import Str

SELECTION_OPTIONS = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
RETURN_OPTIONS = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}
MAX_PATTERNS = 100              # patterns in one `LIST "" (...)`: a bound on the work one command asks for
MAX_TOKENS = 400                # tokens in one LIST command, literals and parentheses included
MAX_LITERAL = 4096              # one reference or pattern sent as a literal (names are at most 200 characters)


class ListSyntaxError(ValueError):
    """The LIST arguments do not parse, or ask for something unknown: a BAD answer (RFC 5258 3)."""


def matcher(pattern: str, delimiter: str) -> Callable[[str], bool]:
    """RFC 3501 6.3.8: `*` matches anything, `%` anything but the delimiter, every other character itself.

    The whole name must match, case-sensitively, except the name INBOX, which matches in any case
    (RFC 3501 5.1). An NFA walk rather than a regex: the work is len(name) x len(pattern) however
    many wildcards a client sends, where a backtracking regex of `*a*a*a...` is exponential.
    """
    tokens = _collapse(pattern)

    def closure(states: set[int]) -> set[int]:
        out = set(states)
        for i in sorted(states):
            while i < len(tokens) and tokens[i] in "*%":
                i += 1
                out.add(i)
        return out

    def matches(name: str) -> bool:
        fold = name == "INBOX"
        states = closure({0})
        for char in name:
            step = set()
            for i in states:
                if i == len(tokens):
                    continue
                token = tokens[i]
                if token == "*" or (token == "%" and char != delimiter):
                    step.add(i)
                elif token == char or (fold and token.isascii() and token.upper() == char):
                    step.add(i + 1)
            if not step:
                return False
            states = closure(step)
        return len(tokens) in states

    return matches


def _collapse(pattern: str) -> str:
    """`**` is `*`, and `%*`/`*%` are `*`: fewer states, the same language."""
    out: list[str] = []
    for char in pattern:
        if char in "*%" and out and out[-1] in "*%":
            out[-1] = "*" if "*" in (char, out[-1]) else "%"
        else:
            out.append(char)
    return "".join(out)


# ---- the arguments ---------------------------------------------------------------------------------------
# The octets are read by the session's one tokenizer, parse.tokenize (through Arguments.arg_tokens,
# which reads the literals first): words (bytes), strings (Str) and parenthesised lists (list).
# Nothing LIST needs is missing there: its words take `%`, `*` and `]` (list-mailbox, RFC 3501 9),
# a quoted "(" is a Str and so a name, and the nesting is in the lists. This module only judges
# the tokens against RFC 5258's grammar, and bounds them.


@dataclass
class ListRequest:
    """One LIST/LSUB command, parsed. `extended` = the RFC 5258 syntax was used (options or several patterns)."""

    reference: bytes
    patterns: list[bytes]
    selection: set[str] = field(default_factory=set)
    returns: set[str] = field(default_factory=set)
    status: list[bytes] = field(default_factory=list)
    extended: bool = False
    lsub: bool = False


def parse_request(tokens: list, status_items: Iterable[bytes], lsub: bool = False) -> ListRequest:
    """RFC 5258 2 (grammar in 6): `[(selection)] reference (pattern | (patterns)) [RETURN (options)]`.

    `tokens` as parse.tokenize gives them. At most MAX_TOKENS of them (a parenthesis counts as one,
    as in the command's text) and MAX_PATTERNS patterns: what one command may ask for is bounded.
    """
    if _count(tokens) > MAX_TOKENS:
        raise ListSyntaxError("Too many arguments")
    rest = list(tokens)
    selection: set[str] = set()
    extended = False
    if not lsub and rest and isinstance(rest[0], list):
        selection = _options(rest.pop(0), SELECTION_OPTIONS, "selection")
        extended = True
    if len(rest) < 2 or isinstance(rest[0], list):
        raise ListSyntaxError("Missing reference or pattern")
    reference, patterns, rest = rest[0], rest[1], rest[2:]
    if not isinstance(patterns, list):
        patterns = [patterns]
    elif lsub:
        raise ListSyntaxError("Missing pattern")
    elif not patterns or len(patterns) > MAX_PATTERNS or any(isinstance(p, list) for p in patterns):
        raise ListSyntaxError("Invalid pattern list")
    else:
        extended = True
    request = ListRequest(reference, patterns, selection, extended=extended, lsub=lsub)
    if rest:
        if lsub or _word(rest[0]) != "RETURN" or len(rest) < 2:
            raise ListSyntaxError("Unexpected arguments")
        if not isinstance(rest[1], list):
            raise ListSyntaxError("Expected ( after RETURN")
        if len(rest) > 2:
            raise ListSyntaxError("Unexpected arguments after RETURN")
        request.returns, request.status = _return_options(rest[1], set(status_items))
        request.extended = True
    _check_selection(request.selection)
    if "SUBSCRIBED" in request.selection:
        request.returns.add("SUBSCRIBED")             # RFC 5258 3: SUBSCRIBED selection implies the return option
    return request


def _count(tokens: list) -> int:
    """The tokens of the command's text: each word and string, and each parenthesis."""
    return sum(2 + _count(token) if isinstance(token, list) else 1 for token in tokens)


def _word(token: bytes | list) -> str | None:
    """An option name as written (an atom), upper-cased; None for a string or a list: "RETURN" is a name."""
    if isinstance(token, (list, Str)):
        return None
    return token.decode("ascii", "replace").upper()


def _options(tokens: list, known: set[str], kind: str) -> set[str]:
    words = {_word(token) for token in tokens}
    if not words <= known:
        raise ListSyntaxError(f"Unknown {kind} option")
    return words


def _return_options(tokens: list, status_items: set[bytes]) -> tuple[set[str], list[bytes]]:
    """`(SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN) ...)`; unknown options are BAD (RFC 5258 3)."""
    options: set[str] = set()
    status: list[bytes] = []
    items = iter(tokens)
    for token in items:
        word = _word(token)
        if word not in RETURN_OPTIONS:
            raise ListSyntaxError("Unknown return option")
        options.add(word)
        if word == "STATUS":
            wanted = next(items, None)
            if not isinstance(wanted, list) or not wanted or any(isinstance(item, list) for item in wanted):
                raise ListSyntaxError("Invalid STATUS items")
            status = [bytes(item.upper()) for item in wanted]
            if any(item not in status_items for item in status):
                raise ListSyntaxError("Invalid STATUS items")
    return options, status


def _check_selection(selection: set[str]) -> None:
    """RFC 5258 3.1: RECURSIVEMATCH alone (or with REMOTE only) is BAD: it qualifies another option."""
    if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
        raise ListSyntaxError("RECURSIVEMATCH must be used with another selection option")


# ---- the answer ------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One LIST/LSUB response line; `selectable` says whether a LIST-STATUS STATUS line follows it."""

    name: str
    attributes: list[str]
    childinfo: list[str] = field(default_factory=list)
    selectable: bool = False


@dataclass
class Snapshot:
    """The account as LIST sees it: existing folder names (INBOX first), subscriptions, special-use names."""

    names: list[str]
    subscribed: set[str]
    special: dict[str, str]
    delimiter: str = "."


def ancestors(name: str, delimiter: str) -> list[str]:
    """`a.b.c` -> [`a`, `a.b`]."""
    parts = name.split(delimiter)
    return [delimiter.join(parts[:depth]) for depth in range(1, len(parts))]


def root_of(reference: str, delimiter: str) -> str:
    """RFC 3501 6.3.8: LIST with an empty pattern names the root of the reference's hierarchy (`a.b` -> `a.`)."""
    head, sep, _ = reference.partition(delimiter)
    return head + sep if sep else ""


def select(request: ListRequest, reference: str, patterns: list[str], account: Snapshot) -> list[Entry]:
    """The LIST or LSUB responses for `reference` + each pattern (RFC 3501 6.3.8-9, RFC 5258 3)."""
    delim = account.delimiter
    if patterns == [""]:
        return [Entry(root_of(reference, delim), ["\\Noselect"])]
    tests = [matcher(reference + pattern, delim) for pattern in patterns if pattern]
    wanted = lambda name: any(test(name) for test in tests)  # noqa: E731
    existing = set(account.names)
    parents = {parent for name in account.names for parent in ancestors(name, delim)}
    if request.lsub:
        return _lsub(account, wanted, existing, trailing_percent=any(p.endswith("%") for p in patterns))
    universe = existing | parents
    if request.extended:
        universe |= account.subscribed | {p for name in account.subscribed for p in ancestors(name, delim)}
    chosen_below: set[str] = set()
    if "RECURSIVEMATCH" in request.selection:
        chosen_below = {parent for name in universe if _chosen(request, name, account, existing, parents)
                        for parent in ancestors(name, delim)}
    entries = []
    for name in _ordered(universe):
        if not wanted(name):
            continue
        entry = _extended_entry(request, name, account, existing, parents, chosen_below) if request.extended \
            else _basic_entry(name, account, existing, parents)
        if entry is not None:
            entries.append(entry)
    return entries


def _ordered(names: Iterable[str]) -> list[str]:
    """INBOX first, then by name: a stable order that clients can diff."""
    return sorted(set(names), key=lambda name: (name != "INBOX", name))


def _children(name: str, parents: set[str]) -> str:
    return "\\HasChildren" if name in parents else "\\HasNoChildren"


def _basic_entry(name: str, account: Snapshot, existing: set[str], parents: set[str]) -> Entry | None:
    """RFC 3501 LIST: folders, and the levels above them as \\Noselect; subscriptions play no part."""
    if name in existing:
        return Entry(name, [_children(name, parents)] + _special(name, account), selectable=True)
    if name in parents:
        return Entry(name, ["\\Noselect", "\\HasChildren"])
    return None


def _special(name: str, account: Snapshot) -> list[str]:
    special = account.special.get(name)
    return [special] if special else []


def _chosen(request: ListRequest, name: str, account: Snapshot, existing: set[str], parents: set[str]) -> bool:
    """Whether `name` meets the selection options (RFC 5258 3.1); without any, folders and their levels do."""
    chosen = name in existing or name in parents
    if "SUBSCRIBED" in request.selection:
        chosen = name in account.subscribed
    if "SPECIAL-USE" in request.selection:
        chosen = chosen and name in account.special and name in existing
    return chosen


def _extended_entry(request: ListRequest, name: str, account: Snapshot, existing: set[str], parents: set[str],
                    chosen_below: set[str]) -> Entry | None:
    """RFC 5258 3: selection options choose the names, return options decorate them.

    `chosen_below`: the names with a descendant that meets the selection options; with
    RECURSIVEMATCH such a name is listed even if not chosen itself, with CHILDINFO (RFC 5258 3.5).
    """
    exists = name in existing
    childinfo = []
    if "RECURSIVEMATCH" in request.selection and name in chosen_below:
        childinfo = [opt for opt in ("SUBSCRIBED", "SPECIAL-USE") if opt in request.selection]
    if not childinfo and not _chosen(request, name, account, existing, parents):
        return None
    attributes = []
    if "SUBSCRIBED" in request.returns and name in account.subscribed:
        attributes.append("\\Subscribed")
    if not exists:
        attributes.append("\\NonExistent")
    if "CHILDREN" in request.returns:
        attributes.append(_children(name, parents))
    attributes += _special(name, account) if exists else []
    return Entry(name, attributes, childinfo, selectable=exists)


def _lsub(account: Snapshot, wanted: Callable[[str], bool], existing: set[str], trailing_percent: bool) -> list[Entry]:
    """RFC 3501 6.3.9: every subscribed name that matches, whether or not the folder exists (6.3.6).

    A subscribed name whose folder is gone is shown with no attributes (as Dovecot does): \\Noselect
    means something else in LSUB, a level that is not subscribed itself but has subscribed names below.
    """
    parents = {parent for name in existing for parent in ancestors(name, account.delimiter)}
    levels = {parent for name in account.subscribed for parent in ancestors(name, account.delimiter)}
    entries = []
    for name in _ordered(account.subscribed | (levels if trailing_percent else set())):
        if not wanted(name):
            continue
        if name not in account.subscribed:
            entries.append(Entry(name, ["\\Noselect"]))
        elif name in existing:
            entries.append(Entry(name, [_children(name, parents)] + _special(name, account), selectable=True))
        else:
            entries.append(Entry(name, []))
    return entries
