"""Properties of the backup manifest parser (backup.parse_manifest, safe_name): it reads an archive
that came from elsewhere, so any bytes give either a manifest whose every path stays inside the
restore's areas, or one BackupError line; never another exception.
"""
from __future__ import annotations

import json
import os

from hypothesis import example, given, strategies as st

from appliance.backup import AREAS, FORMAT, VERSION, BackupError, parse_manifest, safe_name

_names = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(list(AREAS) + ["..", ".", "", "a", "b.c", "files", "users", "config", "\0", "x/y"]),
             min_size=1, max_size=5).map("/".join),
)
_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 1 << 40), st.text(max_size=70),
                    st.just("0" * 64), st.just("f" * 64))
_entries = st.lists(st.fixed_dictionaries(
    {"path": _names, "type": st.sampled_from(["file", "dir", "link", 3])},
    optional={"mode": st.one_of(st.integers(-1, 0o10000), st.text(max_size=3)), "owner": _values,
              "group": _values, "size": _values, "sha256": _values}), max_size=6)
_manifests = st.fixed_dictionaries(
    {"format": st.sampled_from([FORMAT, "other"]), "version": st.sampled_from([VERSION, 2, "1"]),
     "entries": st.one_of(_entries, _values)},
    optional={"storage": st.one_of(_values, st.fixed_dictionaries(
        {"format": st.sampled_from(["maildir", "mbox", "x"]), "shape": _values}))})


def _inside(root: str, name: str) -> bool:
    return os.path.normpath(os.path.join(root, name)).startswith(root + "/")


@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff\xfe")
@example(b"[]")
def test_any_bytes_give_a_manifest_or_one_backup_error(data):
    try:
        parse_manifest(data)
    except BackupError as exc:
        assert "\n" not in str(exc)


@given(_manifests)
def test_every_accepted_entry_stays_inside_its_area(manifest):
    try:
        _, entries = parse_manifest(json.dumps(manifest).encode())
    except BackupError as exc:
        assert "\n" not in str(exc)
        return
    for path, entry in entries.items():
        assert path == entry.path and path.split("/")[0] in AREAS
        assert _inside("/restore", path) and ".." not in path.split("/")
        assert entry.type in ("file", "dir") and 0 <= entry.mode <= 0o7777


@given(_names)
@example("state/../../etc")
@example("files/../state")
def test_safe_names_never_leave_the_target(name):
    if safe_name(name):
        assert _inside("/restore", name) and "\0" not in name
        assert not name.startswith("files/") or name.count("/") == 1
