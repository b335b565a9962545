"""IMAP keywords (RFC 3501 2.3.2 flag-keyword): which names are valid, and a folder's name <-> letter map.

Both formats keep a message's keywords as the letters `a`..`z` beside its system-flag letters,
as Dovecot does in Maildir file names (`:2,Sab`); the folder's list says which name each
letter stands for (Maildir: Dovecot's own `dovecot-keywords` file, so Dovecot, mutt and our
server read the same keywords; mbox: the side folder's `flags` file). That caps a folder at 26
keywords: asking for a 27th is refused with NO [LIMIT], never silently dropped, and PERMANENTFLAGS
stops offering `\\*` once the folder is full (RFC 3501 7.1: no new keywords can be created).

Names compare case-insensitively (RFC 3501 2.3.2) and keep the spelling they were first stored
with: `STORE +FLAGS (JUNK)` on a folder that knows `Junk` sets `Junk`.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from appliance.store.base import SYSTEM_FLAGS, MailboxError

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MAX_KEYWORDS = len(LETTERS)
MAX_LENGTH = 128                     # octets of one keyword: enough for every client's labels, bounded
FILE = "dovecot-keywords"            # Maildir: Dovecot's name, so both servers share one list
# atom = 1*ATOM-CHAR; ATOM-CHAR = any 7-bit CHAR except atom-specials ( ) { SP CTL % * " \ ]
_ATOM_CHARS = "".join(chr(c) for c in range(0x21, 0x7f) if chr(c) not in '(){%*"\\]')
_ATOM = re.compile("[" + re.escape(_ATOM_CHARS) + "]+")
_SYSTEM = {flag.lower(): flag for flag in SYSTEM_FLAGS}


def valid(name: str) -> bool:
    """Whether `name` is a keyword a client may set: an atom (no backslash: that starts a system flag)."""
    return len(name) <= MAX_LENGTH and _ATOM.fullmatch(name) is not None


def client_flags(flags: Iterable[str]) -> frozenset[str]:
    """The flags of a STORE or APPEND, system flags in their canonical spelling.

    ValueError (a BAD reply) for `\\Recent`, which clients may not set (RFC 3501 2.3.2), any
    other unknown `\\Flag`, and non-atoms; Dovecot refuses the same.
    """
    wanted = set()
    for flag in flags:
        if flag.startswith("\\"):
            system = _SYSTEM.get(flag.lower())
            if system is None:
                raise ValueError(f"Invalid system flag {flag[:40]}")
            wanted.add(system)
        elif valid(flag):
            wanted.add(flag)
        else:
            raise ValueError("Invalid keyword")
    return frozenset(wanted)


def split(flags: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(system flags, keywords) of a flag set."""
    system = frozenset(flag for flag in flags if flag.startswith("\\"))
    return system, frozenset(flags) - system


class KeywordMap:
    """One folder's keywords in letter order: index 0 is `a`."""

    def __init__(self, names: Iterable[str] = ()):
        """`names` in letter order; an invalid or repeated one keeps its place as a placeholder nobody
        can match, so the letters after it keep meaning what the file's writer meant."""
        self.names: list[str] = []
        self._by_lower: dict[str, int] = {}
        self._names_of: dict[str, frozenset[str]] = {}    # letters -> names: a folder uses a handful of letter strings
        for index, name in zip(range(MAX_KEYWORDS), names):
            if valid(name) and name.lower() not in self._by_lower:
                self._by_lower[name.lower()] = index
                self.names.append(name)
            else:
                self.names.append(f"\\Unused{index}")      # never valid(): no client flag matches it

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeywordMap) and other.names == self.names

    def canonical(self, name: str) -> str | None:
        """The stored spelling of `name`, or None when the folder does not know it."""
        index = self._by_lower.get(name.lower())
        return None if index is None else self.names[index]

    def define(self, flags: Iterable[str]) -> tuple[frozenset[str], bool]:
        """`flags` with keywords in their stored spelling, new ones added to the map; and whether any was new.

        MailboxError [LIMIT] when the folder has no letter left for a new keyword.
        """
        flags = sorted(flags)
        fresh: dict[str, str] = {}
        for flag in flags:
            if not flag.startswith("\\") and self.canonical(flag) is None:
                fresh.setdefault(flag.lower(), flag)
        if len(self.names) + len(fresh) > MAX_KEYWORDS:
            raise MailboxError(f"Too many keywords in this mailbox (at most {MAX_KEYWORDS})", "LIMIT")
        for lower, name in fresh.items():
            self._by_lower[lower] = len(self.names)
            self.names.append(name)
        if fresh:
            self._names_of.clear()        # letters without a name until now may have one
        return frozenset(flag if flag.startswith("\\") else self.canonical(flag) or flag for flag in flags), bool(fresh)

    def names_of(self, letters: str) -> frozenset[str]:
        """Keyword names of the lower-case letters of a Maildir info part; letters without a name are skipped.

        Remembered per letter string: a rescan asks this for each of 10,000 messages.
        """
        names = self._names_of.get(letters)
        if names is None:
            if len(self._names_of) >= 4096:
                self._names_of.clear()
            names = self._names_of[letters] = frozenset(
                self.names[LETTERS.index(c)] for c in letters if self.is_mapped(c) and valid(self.names[LETTERS.index(c)]))
        return names

    def letters_of(self, keywords: Iterable[str]) -> str:
        """The letters of known keyword names (unknown ones are skipped: callers `define` first)."""
        return "".join(sorted(LETTERS[self._by_lower[name.lower()]] for name in keywords
                              if name.lower() in self._by_lower))

    def is_mapped(self, letter: str) -> bool:
        return "a" <= letter <= "z" and LETTERS.index(letter) < len(self.names)


def parse_file(text: str) -> KeywordMap:
    """Dovecot's `dovecot-keywords`: `<index> <name>` per line. Bad lines and gaps are skipped.

    A gap (index 3 missing) keeps later indexes in place: the letters on disk must keep meaning
    the names Dovecot gave them, so a missing index becomes a placeholder nobody can match.
    """
    slots: dict[int, str] = {}
    for line in text.splitlines():
        number, _, name = line.partition(" ")
        if number.isdigit() and int(number) < MAX_KEYWORDS and int(number) not in slots:
            slots[int(number)] = name
    return KeywordMap(slots.get(index, "") for index in range(max(slots, default=-1) + 1))


def format_file(keywords: KeywordMap) -> str:
    return "".join(f"{index} {name}\n" for index, name in enumerate(keywords.names) if valid(name))


def listed(keywords: KeywordMap) -> list[str]:
    """The names a FLAGS response shows (placeholders for gaps left out)."""
    return [name for name in keywords.names if valid(name)]
