"""The mail-flow counters on disk, so a restart does not blank the plots and `status`.

Why one small JSON file rewritten whole (and not an append-only log of events): the counters
are already bounded (a day of minutes, a week of hours, only the buckets that hold something),
so the file is too: a few kilobytes for a quiet week, a few hundred for a busy one. Rewriting it once a
minute on a thread (durable.replace_file: temp file, fsync, rename) costs the SMTP path
nothing, and a crash loses at most the last minute of counts, never the file.

The file is read back at start, and its bytes are outside input like any other: anything not
exactly as written here (truncated, hand-edited, from a future version) raises StatsFileError,
and the caller starts from zero with one log line. Nothing in it can crash the daemon or make
it allocate without bound.
"""
from __future__ import annotations

import json
import math
import os

from appliance import durable

Key = tuple[str, str]                                   # (kind of event, label)
Snapshot = dict[str, list[tuple[int, dict[Key, int]]]]   # ring name -> [(bucket number, counts)]

FILENAME = "counters.json"
FORMAT = "mailappliance-counters 1"
RINGS = ("minute", "hour")
MAX_BYTES = 16 * 1024 * 1024      # far above what the bounded counters can write
MAX_BUCKETS = 20_000              # per ring (the rings hold 1440 and 168)
MAX_KEYS = 20_000                 # distinct (kind, label) pairs (the counters keep ~kinds x 64)
MAX_TEXT = 500                    # characters of a kind or a label
MAX_COUNT = 2**53                 # what a JSON number holds exactly


class StatsFileError(ValueError):
    """The file is not a counters file this version wrote; the message says where it differs."""


def encode(snapshot: Snapshot, saved_at: float) -> bytes:
    """The file's bytes: one JSON object; each (kind, label) is written once in `keys`, and a
    bucket is [number, [key index, count, key index, count, ...]].

    Encoded bucket by bucket, not in one json.dumps call: the C encoder holds the interpreter
    lock for as long as it runs (70 ms for a full week in one call), which would stall the
    reactor thread that serves SMTP; between small calls the lock changes hands as usual.
    """
    index: dict[Key, int] = {}
    rings = {}
    for ring in RINGS:
        buckets = []
        for number, counts in snapshot.get(ring, ()):
            flat: list[int] = []
            for key, n in counts.items():
                flat += (index.setdefault(key, len(index)), n)
            buckets.append(json.dumps([number, flat], separators=(",", ":")))
        rings[ring] = "[" + ",".join(buckets) + "]"
    head = json.dumps({"format": FORMAT, "saved": saved_at, "keys": [list(key) for key in index]},
                      separators=(",", ":"), ensure_ascii=True)
    tail = "".join(f',"{ring}":{rings[ring]}' for ring in RINGS)
    return (head[:-1] + tail + "}").encode("ascii")


def decode(data: bytes) -> tuple[Snapshot, float]:
    """(snapshot, when it was saved) of a file's bytes, or StatsFileError."""
    if len(data) > MAX_BYTES:
        raise StatsFileError(f"{len(data)} bytes, more than the {MAX_BYTES} a counters file can have")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StatsFileError(f"not JSON: {str(e)[:100]}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StatsFileError(f"not a {FORMAT!r} document")
    saved = document.get("saved")
    if not _number(saved) or not math.isfinite(saved):
        raise StatsFileError("no valid `saved` time")
    keys = _keys(document.get("keys"))
    return {ring: _buckets(document.get(ring), ring, keys) for ring in RINGS}, float(saved)


def _keys(value: object) -> list[Key]:
    if not isinstance(value, list) or len(value) > MAX_KEYS:
        raise StatsFileError(f"`keys` is not a list of at most {MAX_KEYS} [kind, label]")
    keys = []
    for key in value:
        if not (isinstance(key, list) and len(key) == 2 and _text(key[0]) and _text(key[1])):
            raise StatsFileError("a key is not [kind, label]")
        keys.append((key[0], key[1]))
    return keys


def _buckets(value: object, ring: str, keys: list[Key]) -> list[tuple[int, dict[Key, int]]]:
    if not isinstance(value, list) or len(value) > MAX_BUCKETS:
        raise StatsFileError(f"`{ring}` is not a list of at most {MAX_BUCKETS} buckets")
    buckets = []
    for bucket in value:
        if not (isinstance(bucket, list) and len(bucket) == 2 and _whole(bucket[0]) and isinstance(bucket[1], list)
                and len(bucket[1]) % 2 == 0):
            raise StatsFileError(f"a `{ring}` bucket is not [number, [key, count, ...]]")
        counts: dict[Key, int] = {}
        flat = bucket[1]
        for at in range(0, len(flat), 2):
            key, n = flat[at], flat[at + 1]
            if not (_whole(key) and key < len(keys) and _whole(n)):
                raise StatsFileError(f"a count in `{ring}` bucket {bucket[0]} is not [key index, count]")
            counts[keys[key]] = min(MAX_COUNT, counts.get(keys[key], 0) + n)
        buckets.append((bucket[0], counts))
    return buckets


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _text(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def save(path: str, snapshot: Snapshot, saved_at: float) -> int:
    """Write the file crash-safely (blocking: a thread, or the last save at stop); its size."""
    data = encode(snapshot, saved_at)
    durable.replace_file(path, data)
    return len(data)


def load(path: str) -> tuple[Snapshot, float] | None:
    """The saved counters; None when there is no file; StatsFileError (or OSError) when it
    cannot be used."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    return decode(data)


def path_in(state_dir: str) -> str:
    return os.path.join(state_dir, FILENAME)

