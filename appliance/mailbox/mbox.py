"""mbox folders for IMAP: messages found by scanning the mboxrd file, flags and \\Recent in a sidecar.

A message's key is a digest of its content plus its occurrence number among identical copies,
so UIDs survive restarts and other programs rewriting the file around it (offsets change,
content does not). The sidecar folder `<mbox>.imap/` holds the UID list, the index and
`flags` (JSON: key -> Maildir-style letters). Other folders are mbox files in `<mbox>.folders/`.
Expunge rewrites the file under the same dot-lock and fcntl lock that delivery takes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time

from appliance.mailbox.account import Account
from appliance.mailbox.folder import Folder, shared
from appliance.mailbox.index import write_atomic
from appliance.mailbox.maildir import FLAGS as LETTER_FLAGS, LETTERS
from appliance.store import make_dirs
from appliance.store import mbox as mbox_store

_FROM = re.compile(rb"^From ", re.MULTILINE)
_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
FLAGS_FILE = "flags"


def open_folder(path: str, meta_dir: str) -> "MboxFolder":
    return shared(os.path.realpath(path), lambda: MboxFolder(path, meta_dir))  # type: ignore[return-value]


def split_messages(data: bytes) -> list[tuple[int, int, int]]:
    """(start of From_ line, start of message, end) of each entry; a From_ line begins the file or follows a blank line."""
    starts = [m.start() for m in _FROM.finditer(data) if m.start() == 0 or data[m.start() - 2:m.start()] == b"\n\n"]
    entries = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(data)
        body = data.find(b"\n", start) + 1 or end
        entries.append((start, body, end))
    return entries


def keyed_messages(data: bytes) -> list[tuple[str, int, int, int]]:
    """(key, From_ line start, body start, end) per entry; the key is content digest + occurrence number."""
    seen: dict[str, int] = {}
    out = []
    for start, body, end in split_messages(data):
        digest = hashlib.sha1(data[body:end]).hexdigest()[:20]
        seen[digest] = seen.get(digest, 0) + 1
        out.append((f"{digest}-{seen[digest]}", start, body, end))
    return out


def _unquote(entry: bytes) -> bytes:
    """mboxrd: drop the separating blank line and one `>` from each quoted From line."""
    if entry.endswith(b"\n\n"):
        entry = entry[:-1]
    return _QUOTED_FROM.sub(rb"\1", entry)


class MboxFolder(Folder):
    def __init__(self, path: str, meta_dir: str):
        make_dirs(meta_dir)
        super().__init__(path, meta_dir)
        self._flags_path = os.path.join(meta_dir, FLAGS_FILE)
        self._entries: dict[str, tuple[int, int, int, float]] = {}   # key -> (from line, body, end, date)
        self._order_of: dict[str, int] = {}
        self._stamp: tuple[int, int] | None = None
        self._seen_stamp: tuple[int, int] | None = None
        self._sidecar: dict = {}

    def _file_stamp(self) -> tuple[int, int]:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return (0, 0)
        return info.st_mtime_ns, info.st_size

    def changed(self) -> bool:
        return self._file_stamp() != self._seen_stamp

    def _load_sidecar(self) -> dict:
        try:
            with open(self._flags_path, encoding="utf-8") as handle:
                data = json.load(handle)
            if isinstance(data, dict):
                return data
        except (OSError, ValueError):
            pass
        return {"flags": {}, "claimed": []}

    def _save_sidecar(self) -> None:
        write_atomic(self._flags_path, json.dumps(self._sidecar).encode("utf-8"))

    def _scan(self) -> dict[str, tuple[frozenset[str], bool]]:
        self._seen_stamp = stamp = self._file_stamp()
        if stamp != self._stamp:
            self._entries, self._order_of = self._parse()
            self._stamp = stamp
        self._sidecar = self._load_sidecar()
        letters, claimed = self._sidecar.get("flags", {}), set(self._sidecar.get("claimed", []))
        return {key: (frozenset(LETTER_FLAGS[c] for c in letters.get(key, "") if c in LETTER_FLAGS),
                      key not in claimed) for key in self._entries}

    def _parse(self) -> tuple[dict[str, tuple[int, int, int, float]], dict[str, int]]:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return {}, {}
        entries, order = {}, {}
        for index, (key, start, body, end) in enumerate(keyed_messages(data)):
            entries[key] = (start, body, end, _from_line_date(data[start:body]))
            order[key] = index
        return entries, order

    def _order(self, key: str) -> object:
        return self._order_of.get(key, 1 << 62)

    def _read(self, key: str) -> bytes:
        if key not in self._entries:
            raise FileNotFoundError(key)
        _, body, end, _ = self._entries[key]
        with open(self.path, "rb") as handle:
            handle.seek(body)
            return _unquote(handle.read(end - body))

    def _mtime(self, key: str) -> float:
        return self._entries[key][3]

    def _set_flags(self, changes: dict[str, frozenset[str]]) -> None:
        letters = self._sidecar.setdefault("flags", {})
        for key, flags in changes.items():
            letters[key] = "".join(sorted(LETTERS[f] for f in flags if f in LETTERS))
        self._save_sidecar()

    def _claim(self, keys: list[str]) -> list[str]:
        claimed = set(self._sidecar.get("claimed", []))
        new = [key for key in keys if key not in claimed]
        self._sidecar["claimed"] = sorted((claimed | set(new)) & set(self._entries))
        self._save_sidecar()
        return new

    def _remove(self, keys: list[str]) -> None:
        doomed = set(keys)
        with mbox_store.locked(self.path):
            with open(self.path, "rb") as handle:
                data = handle.read()
            kept = [data[start:end] for key, start, _, end in keyed_messages(data) if key not in doomed]
            write_atomic(self.path, b"".join(kept))
        self._stamp = None
        letters = self._sidecar.get("flags", {})
        for key in doomed:
            letters.pop(key, None)
        self._save_sidecar()

    def _add(self, message: bytes, flags: frozenset[str], date: float | None) -> str:
        mbox_store.append(self.path, message, "MAILER-DAEMON", now=date)
        self._scan()
        key = max(self._order_of, key=self._order_of.get)
        self._set_flags({key: flags})
        self._claim([key])
        return key


def _from_line_date(line: bytes) -> float:
    """The asctime date at the end of a From_ line (UTC, as delivery writes it); now when unreadable."""
    try:
        text = line.decode("ascii").split(None, 2)[2].strip()
        return float(time.mktime(time.strptime(text[-24:], "%a %b %d %H:%M:%S %Y")) - time.timezone)
    except (UnicodeDecodeError, IndexError, ValueError, OverflowError):
        return time.time()


class MboxAccount(Account):
    """INBOX is the mbox file at `root`; folder `X` is the mbox file `<root>.folders/X`."""

    def _folders(self) -> str:
        return self.root + ".folders"

    def _disk_names(self) -> list[str]:
        try:
            entries = os.listdir(self._folders())
        except FileNotFoundError:
            return []
        return [e for e in entries if not e.startswith(".") and not e.endswith(".imap")
                and os.path.isfile(os.path.join(self._folders(), e))]

    def _path(self, disk: str) -> str:
        return os.path.join(self._folders(), disk)

    def _make(self, disk: str) -> None:
        make_dirs(self._folders())
        open(self._path(disk), "ab").close()

    def _remove(self, disk: str) -> None:
        import shutil
        os.unlink(self._path(disk))
        shutil.rmtree(self._path(disk) + ".imap", ignore_errors=True)

    def _move(self, old: str, new: str) -> None:
        os.rename(self._path(old), self._path(new))
        if os.path.isdir(self._path(old) + ".imap"):
            os.rename(self._path(old) + ".imap", self._path(new) + ".imap")

    def _open(self, disk: str | None) -> Folder:
        if disk is None:
            make_dirs(os.path.dirname(self.root))
            return open_folder(self.root, self.root + ".imap")
        return open_folder(self._path(disk), self._path(disk) + ".imap")

    def _meta_dir(self) -> str:
        return self.root + ".imap"
