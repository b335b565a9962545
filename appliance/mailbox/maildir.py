"""A Maildir folder for IMAP: flags in the `:2,` info of file names, \\Recent as the move from new/ to cur/."""
from __future__ import annotations

import os
import re

from appliance.mailbox.folder import Folder, shared
from appliance.store import maildir as maildir_store

# Maildir info letters (https://cr.yp.to/proto/maildir.html), kept in ASCII order in names.
LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
FLAGS = {letter: flag for flag, letter in LETTERS.items()}
_ARRIVAL = re.compile(r"(\d+)\.M(\d+)")


def split_name(name: str) -> tuple[str, frozenset[str]]:
    """`base:2,FS` -> (base, {\\Flagged, \\Seen}); unknown letters (keywords, P) are kept on disk only."""
    base, _, info = name.partition(":")
    letters = info[2:] if info.startswith("2,") else ""
    return base, frozenset(FLAGS[c] for c in letters if c in FLAGS)


def info_letters(flags: frozenset[str], old_name: str = "") -> str:
    """The `:2,` letters for `flags`, keeping letters we do not map (such as P, Passed) from the old name."""
    _, _, info = old_name.partition(":")
    kept = {c for c in info[2:] if c not in FLAGS} if info.startswith("2,") else set()
    return "".join(sorted(kept | {LETTERS[f] for f in flags if f in LETTERS}))


def open_folder(path: str) -> "MaildirFolder":
    return shared(os.path.realpath(path), lambda: MaildirFolder(path))  # type: ignore[return-value]


class MaildirFolder(Folder):
    """One Maildir (INBOX or a Maildir++ `.Folder`); message keys are the unique base names."""

    def __init__(self, path: str):
        super().__init__(path, path)
        self._names: dict[str, tuple[str, str]] = {}      # key -> (subdir, file name)
        self._seen_stamp: tuple[int, ...] | None = None

    def _dir_stamp(self) -> tuple[int, ...]:
        stamp = []
        for sub in ("new", "cur"):
            try:
                info = os.stat(os.path.join(self.path, sub))
                stamp += [info.st_mtime_ns, info.st_ino]
            except OSError:
                stamp += [0, 0]
        return tuple(stamp)

    def changed(self) -> bool:
        return self._dir_stamp() != self._seen_stamp

    def _scan(self) -> dict[str, tuple[frozenset[str], bool]]:
        self._seen_stamp = self._dir_stamp()       # before listing: a change during the scan is seen next time
        names: dict[str, tuple[str, str]] = {}
        found: dict[str, tuple[frozenset[str], bool]] = {}
        for sub in ("new", "cur"):
            try:
                listing = os.listdir(os.path.join(self.path, sub))
            except FileNotFoundError:
                continue
            for name in listing:
                if name.startswith("."):
                    continue
                key, flags = split_name(name)
                names[key] = (sub, name)
                found[key] = (flags, sub == "new")
        self._names = names
        return found

    def _order(self, key: str) -> object:
        match = _ARRIVAL.match(key)
        return (int(match.group(1)), int(match.group(2)), key) if match else (1 << 62, 0, key)

    def _file(self, key: str) -> str:
        sub, name = self._names[key]
        return os.path.join(self.path, sub, name)

    def _read(self, key: str) -> bytes:
        try:
            path = self._file(key)
        except KeyError:
            raise FileNotFoundError(key) from None
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            # Renamed by a flag change in another process since our scan: look once more.
            self._scan()
            with open(self._file(key), "rb") as handle:
                return handle.read()

    def _mtime(self, key: str) -> float:
        return os.stat(self._file(key)).st_mtime

    def _move(self, key: str, flags: frozenset[str]) -> bool:
        """Rename a message to cur/ with `flags`; False when it has vanished."""
        for attempt in range(2):
            sub, name = self._names.get(key, ("", ""))
            if not name:
                return False
            target = f"{key}:2,{info_letters(flags, name)}"
            try:
                os.rename(os.path.join(self.path, sub, name), os.path.join(self.path, "cur", target))
                self._names[key] = ("cur", target)
                return True
            except FileNotFoundError:
                if attempt == 0:
                    self._scan()
        return False

    def _set_flags(self, changes: dict[str, frozenset[str]]) -> None:
        for key, flags in changes.items():
            self._move(key, flags)

    def _claim(self, keys: list[str]) -> list[str]:
        claimed = []
        for key in keys:
            sub, name = self._names.get(key, ("", ""))
            if sub == "new" and self._move(key, split_name(name)[1]):
                claimed.append(key)
        return claimed

    def _remove(self, keys: list[str]) -> None:
        for key in keys:
            try:
                os.unlink(self._file(key))
            except (KeyError, FileNotFoundError):
                pass

    def _add(self, message: bytes, flags: frozenset[str], date: float | None) -> str:
        written = maildir_store.write(self.path, message)
        key, _ = split_name(os.path.basename(written))
        target = os.path.join(self.path, "cur", f"{key}:2,{info_letters(flags)}")
        os.rename(written, target)
        if date is not None:
            os.utime(target, (date, date))
        self._scan()
        return key
