"""aliases(5) expansion: which final addresses (or commands and files) a mail for an alias goes to.

The file format, as in sendmail and Postfix (docs/aliases.md is the operator's guide)::

    # comment
    postmaster: root
    root: admin@example.test
    team: alice, bob@example.test,
          carol
    staff: :include:staff.list
    info@example.org: alice
    archive: |/usr/local/bin/archive --folder inbox     (only with [aliases] allow_commands = yes)
    backup: "|/usr/bin/filter one, two", /var/mail/backup.mbox

- A line starting with whitespace continues the previous definition; comment lines are whole lines.
- A bare name (``team``) is an alias in every local domain; a full address only for itself and
  takes precedence over the bare name there.
- A bare target (``carol``) is in the domain of the address being resolved, so ``team@example.org``
  reaches ``carol@example.org``.
- Targets are separated by commas (whitespace works too, except inside a command). Double quotes
  keep commas and spaces inside one target.
- ``:include:FILE`` reads one or more targets a line; a relative FILE is relative to this file's folder.
- ``|command`` (to the next comma outside quotes) and ``/absolute/file`` are refused unless
  allow_commands is on; in an include file only when that file is owned by root or by the user
  reading it, so whoever may edit a list cannot run commands as the appliance's user.

Resolution expands aliases of aliases up to MAX_DEPTH levels, drops duplicates (keeping the
first), and keeps a target that names the alias itself as a real mailbox (``bob: bob, bob@elsewhere``
delivers to the local bob *and* a copy elsewhere -- the sendmail convention). A loop raises
AliasLoopError. Commands and files are final targets, returned as written.

``postmaster`` and ``abuse`` (RFC 5321 4.5.1, RFC 2142) must always reach somebody: when the file
does not define them, they go wherever ``root`` goes if ``root`` is defined; otherwise they stay
unresolved (None) and the SMTP side treats postmaster specially.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from zope.interface import implementer

from appliance import address as addr
from appliance.interfaces import IAliasResolver

MAX_DEPTH = 10
ALWAYS_ANSWERED = ("postmaster", "abuse")
FALLBACK = "root"
INCLUDE = ":include:"
COMMAND, FILE = "|", "/"
ALLOW_HINT = "set [aliases] allow_commands = yes to allow them"
REFUSED_FILE_DIRS = ("/dev", "/proc", "/sys")   # appending there is never a mailbox, often a disaster
_PLAIN_ITEM = re.compile(r'[^,\s"]+')


class AliasesError(Exception):
    """The aliases file has problems; `problems` holds one `FILE:LINE: what is wrong` line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class AliasLoopError(Exception):
    """Expanding an alias went round in a circle, or deeper than MAX_DEPTH levels."""


class AliasBrokenError(Exception):
    """The alias's own line in the aliases file cannot be read: its mail waits (4xx) until the file is fixed.

    Neither "unknown" (its mail would bounce) nor the user of the same name (it would go to the
    wrong mailbox): the operator meant something for this name and the file does not say what.
    """


@dataclass(frozen=True)
class _Alias:
    targets: tuple[str, ...]   # bare local parts or full addresses (domain normalised)
    where: str                 # `FILE:LINE` of its definition, for messages
    broken: bool = False       # the name parsed but its targets did not (lenient loading only)


@implementer(IAliasResolver)
class AliasTable:
    """One parsed aliases file; immutable, so a reload can swap whole tables atomically."""

    def __init__(self, by_address: dict[str, _Alias], by_local: dict[str, _Alias], local_domains: Iterable[str],
                 problems: Iterable[str] = ()):
        self._by_address = by_address
        self._by_local = by_local
        self._domains = frozenset(addr.normalise_domain(d) for d in local_domains)
        self.problems = list(problems)      # the lines a lenient load passed over (broken names answer 4xx)

    def resolve(self, address: str) -> list[str] | None:
        """The final recipients of `address`, or None when it is not an alias."""
        try:
            key = addr.normalise(address)
        except addr.AddressSyntaxError:
            return None
        targets = self._targets(key)
        if targets is None:
            return None
        found: dict[str, str] = {}   # normalised -> as written, in first-seen order
        self._expand(key, targets, (key,), found)
        return list(found.values())

    def loop_problems(self) -> list[str]:
        """`FILE:LINE: alias loop ...` for every alias that cannot be expanded; for reload and `check`."""
        problems: dict[str, None] = {}
        for name, alias in self._by_address.items():
            problems.update(dict.fromkeys(self._loop_in(name, alias)))
        for local, alias in self._by_local.items():
            for domain in sorted(self._domains):
                problems.update(dict.fromkeys(self._loop_in(f"{local}@{domain}", alias)))
        return list(problems)

    def definitions(self) -> Iterator[tuple[str, tuple[str, ...], str]]:
        """(address, direct targets, `FILE:LINE`) of every readable definition, a bare name once
        per local domain; for `check`, which looks at what each target names."""
        for name, alias in self._by_address.items():
            if not alias.broken:
                yield name, alias.targets, alias.where
        for local, alias in self._by_local.items():
            for domain in sorted(self._domains):
                if not alias.broken and f"{local}@{domain}" not in self._by_address:
                    yield f"{local}@{domain}", alias.targets, alias.where

    def _loop_in(self, address: str, alias: _Alias) -> list[str]:
        try:
            self.resolve(address)
        except AliasLoopError as e:
            return [f"{alias.where}: {e}"]
        except AliasBrokenError:
            return []           # reported as the line's own problem, not as a loop
        return []

    def _targets(self, key: str) -> tuple[str, ...] | None:
        """The direct targets of the alias `key` (normalised), or None when it is no alias."""
        alias = self._by_address.get(key)
        if alias is not None:
            return _usable(alias)
        local, domain = key.rsplit("@", 1)
        if domain not in self._domains:
            return None
        alias = self._by_local.get(local)
        if alias is not None:
            return _usable(alias)
        if local in ALWAYS_ANSWERED and self._targets(f"{FALLBACK}@{domain}") is not None:
            return (FALLBACK,)
        return None

    def _expand(self, key: str, targets: tuple[str, ...], chain: tuple[str, ...], found: dict[str, str]) -> None:
        if len(chain) > MAX_DEPTH:
            raise AliasLoopError(f"aliases nested deeper than {MAX_DEPTH} levels: {' -> '.join(chain)}")
        domain = key.rsplit("@", 1)[1]
        for target in targets:
            if is_command_or_file(target):
                found.setdefault(target, target)
                continue
            final = target if "@" in target else f"{target}@{domain}"
            norm = addr.normalise(final)
            deeper = None if norm == key else self._targets(norm)
            if deeper is None:
                found.setdefault(norm, final)
            elif norm in chain:
                raise AliasLoopError(f"alias loop: {' -> '.join((*chain, norm))}")
            else:
                self._expand(norm, deeper, (*chain, norm), found)


def _usable(alias: _Alias) -> tuple[str, ...]:
    if alias.broken:
        raise AliasBrokenError(f"{alias.where}: this alias's definition cannot be read")
    return alias.targets


def is_command_or_file(target: str) -> bool:
    """A `|command` or `/file` target, which the local courier hands to a command or an mbox file."""
    return target.startswith((COMMAND, FILE))


def load_aliases(path: str, local_domains: Iterable[str], allow_commands: bool = False, *,
                 lenient: bool = False) -> AliasTable:
    """Parse an aliases file (blocking); AliasesError with every problem found. Missing file = no aliases.

    `allow_commands` is `[aliases] allow_commands`: without it `|command` and `/file` targets
    are errors, since they run or write with the appliance's rights. `lenient` (the daemon's
    start, when there is no previous table to keep) passes over the lines it cannot read instead:
    they are in the table's `problems`, and a name whose targets could not be read answers
    AliasBrokenError. A file that cannot be read at all is still an AliasesError.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return AliasTable({}, {}, local_domains)
    except (OSError, UnicodeDecodeError) as e:
        raise AliasesError([f"{path}: cannot read: {_reason(e)}"]) from None
    parser = _Parser(path, allow_commands)
    parser.parse(lines)
    if parser.problems and not lenient:
        raise AliasesError(parser.problems)
    return AliasTable(parser.by_address, parser.by_local, local_domains, parser.problems)


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def _logical_lines(lines: list[str]) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, orphan) of each definition, continuation lines joined.

    Comments and blank lines are skipped and do not end a definition, as in Postfix. `orphan` is
    True for a continuation line with no definition before it.
    """
    number, parts, orphan = 0, [], False
    for i, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and parts:
            parts.append(stripped)
            continue
        if parts:
            yield number, " ".join(parts), orphan
        number, parts, orphan = i, [stripped], line[0].isspace()
    if parts:
        yield number, " ".join(parts), orphan


def _items(text: str) -> list[str]:
    """Split a target list as sendmail and Postfix read it; ValueError on an unclosed quote.

    Commas separate targets, and so does whitespace, except in a `|command`, which runs to the
    next comma outside double quotes so that `|prog -x "a, b"` stays one target. A target in
    double quotes (`"|prog with, commas"`) is taken as written between them.
    """
    items, at = [], 0
    while at < len(text):
        char = text[at]
        if char == "," or char.isspace():
            at += 1
        elif char == '"':
            end = text.find('"', at + 1)
            if end < 0:
                raise ValueError(f"missing closing double quote: {text[at:]}")
            items.append(text[at + 1:end].strip())
            at = end + 1
        elif char == COMMAND:
            end = _unquoted_comma(text, at)
            items.append(text[at:end].strip())
            at = end
        else:
            match = _PLAIN_ITEM.match(text, at)
            items.append(match.group())
            at = match.end()
    return items


def _unquoted_comma(text: str, start: int) -> int:
    """The index of the first comma after `start` outside double quotes (len(text) when none)."""
    quoted = False
    for at in range(start, len(text)):
        if text[at] == '"':
            quoted = not quoted
        elif text[at] == "," and not quoted:
            return at
    if quoted:
        raise ValueError(f"missing closing double quote: {text[start:]}")
    return len(text)


def _valid_local(local: str) -> bool:
    return "@" not in local and addr.is_valid(f"{local}@example.invalid")


def _target(item: str, refusal: str | None) -> str:
    """A checked target: a bare local part, a full address with its domain normalised, or a
    command or file. `refusal` says why commands and files are not allowed here (None: they are)."""
    if item.startswith((COMMAND, FILE)):
        if refusal is not None:
            raise ValueError(f"commands and files are not allowed: {item} ({refusal})")
        return _command(item) if item.startswith(COMMAND) else _file(item)
    if item.startswith(("./", "../", "~/")):
        raise ValueError(f"a file target needs an absolute path: {item}")
    if "@" not in item:
        if not _valid_local(item):
            raise ValueError(f"bad address: {item!r}")
        return item
    if not addr.is_valid(item):
        raise ValueError(f"bad address: {item!r}")
    local, domain = addr.split(item)
    return f"{local}@{domain}"


def _command(item: str) -> str:
    if not item[1:].strip():
        raise ValueError("empty command after |")
    if any(ord(c) < 32 and c != "\t" for c in item):
        raise ValueError(f"control character in command: {item!r}")
    return item


def _file(item: str) -> str:
    """An absolute, plain path outside /dev, /proc and /sys; plain, so that the check below
    cannot be walked around with `..` or `//` (symbolic links are the file owner's business)."""
    if any(part in ("", ".", "..") for part in item.split("/")[1:]):
        raise ValueError(f"write the file path without //, ., .. or a trailing /: {item}")
    if any(item == d or item.startswith(d + "/") for d in REFUSED_FILE_DIRS):
        raise ValueError(f"files in {', '.join(REFUSED_FILE_DIRS)} are not allowed: {item}")
    if any(ord(c) < 32 for c in item):
        raise ValueError(f"control character in file name: {item!r}")
    return item


def _owner_refusal(path: str, allow_commands: bool) -> str | None:
    """Why an include file may not name commands and files (None: it may).

    Whoever can edit the file could otherwise run commands as the appliance's user, so it must
    belong to root or to the user reading it (the appliance's own).
    """
    if not allow_commands:
        return ALLOW_HINT
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return "include file cannot be checked"
    if owner in (0, os.geteuid()):
        return None
    return f"include file owned by uid {owner}, not by root or uid {os.geteuid()}"


class _Parser:
    """Collects aliases and every problem of one file, so the operator sees them all at once."""

    def __init__(self, path: str, allow_commands: bool = False):
        self.path = path
        self.allow_commands = allow_commands
        self.by_address: dict[str, _Alias] = {}
        self.by_local: dict[str, _Alias] = {}
        self.problems: list[str] = []

    def parse(self, lines: list[str]) -> None:
        for number, text, orphan in _logical_lines(lines):
            if orphan:
                self._problem(number, "continuation line without an alias before it")
            else:
                self._definition(number, text)

    def _problem(self, number: int, what: str, path: str | None = None) -> None:
        self.problems.append(f"{path or self.path}:{number}: {what}")

    def _definition(self, number: int, text: str) -> None:
        name, colon, rest = text.partition(":")
        if not colon:
            self._problem(number, f"missing colon after the alias name: {text!r}")
            return
        key, table = self._name(number, name.strip())
        targets = self._targets(number, rest)
        if key is None:
            return
        if key in table:
            self._problem(number, f"duplicate alias {name.strip()!r} (first defined at {table[key].where})")
            return
        where = f"{self.path}:{number}"
        table[key] = _Alias((), where, broken=True) if targets is None else _Alias(tuple(targets), where)

    def _name(self, number: int, name: str) -> tuple[str | None, dict[str, _Alias]]:
        """The lookup key of an alias name and the table it goes in; key None after a problem."""
        if "@" in name:
            if addr.is_valid(name):
                return addr.normalise(name), self.by_address
        elif _valid_local(name):
            return name.lower(), self.by_local
        self._problem(number, f"bad alias name: {name!r}" if name else "missing alias name")
        return None, {}

    def _targets(self, number: int, text: str) -> list[str] | None:
        """The checked targets of one definition, or None after a problem."""
        try:
            items = _items(text)
        except ValueError as e:
            self._problem(number, str(e))
            return None
        if not items:
            self._problem(number, "empty target list")
            return None
        refusal = None if self.allow_commands else ALLOW_HINT
        targets, ok = [], True
        for item in items:
            try:
                if item.lower().startswith(INCLUDE):
                    targets.extend(self._include(item[len(INCLUDE):].strip()))
                else:
                    targets.append(_target(item, refusal))
            except ValueError as e:
                self._problem(number, str(e))
                ok = False
        return targets if ok else None

    def _include(self, name: str) -> list[str]:
        """The addresses of an :include: file; problems inside it carry its own name and line."""
        path = os.path.join(os.path.dirname(os.path.abspath(self.path)), name)
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read include file {path}: {_reason(e)}") from None
        refusal = _owner_refusal(path, self.allow_commands)
        targets, ok = [], True
        for line_number, line in enumerate(lines, start=1):
            if line.strip().startswith("#"):
                continue
            try:
                for item in _items(line):
                    if item.lower().startswith(INCLUDE):
                        raise ValueError(f"{INCLUDE} inside an include file is not allowed")
                    targets.append(_target(item, refusal))
            except ValueError as e:
                self._problem(line_number, str(e), path)
                ok = False
        if not ok:
            raise ValueError(f"problems in include file {path}")
        return targets


@implementer(IAliasResolver)
class AliasResolver:
    """Holds the current AliasTable; a reload that finds problems keeps the previous table.

    At start there is no previous table, and a machine rebooted with a bad line must still take
    mail. So the start is lenient: a line that cannot be read is passed over, and a name whose
    targets cannot be read raises AliasBrokenError, which the intake answers 451 (its mail waits
    for the fix instead of bouncing or reaching the wrong mailbox). A loop does not stop the
    start either: resolving a looping name raises AliasLoopError, answered 550 5.4.6. Both kinds
    are in `problems`, as (problem, what happens to its mail), for the start-up log;
    `mailappliance check` still reports them all and exits 1. Only a file that cannot be read at
    all stops the start.
    """

    def __init__(self, path: str, local_domains: Iterable[str], allow_commands: bool = False):
        """Load the file; raises AliasesError when it cannot be parsed."""
        self._path = path
        self._domains = tuple(local_domains)
        self._allow_commands = allow_commands
        table = load_aliases(self._path, self._domains, self._allow_commands, lenient=True)
        self.problems = ([(problem, "deferred at RCPT with 4.3.0 until fixed") for problem in table.problems]
                         + [(problem, "refused at RCPT with 5.4.6") for problem in table.loop_problems()])
        self._table = table

    def reload(self) -> list[str]:
        """Re-read the file (blocking, small); the problems found, empty when the new table is in use."""
        try:
            table = load_aliases(self._path, self._domains, self._allow_commands)
        except AliasesError as e:
            return e.problems
        problems = table.loop_problems()
        if not problems:
            self._table = table
            self.problems = []
        return problems

    def resolve(self, address: str) -> list[str] | None:
        return self._table.resolve(address)
