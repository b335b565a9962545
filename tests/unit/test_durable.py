"""Crash-safe replacement: the target is the old file or the whole new one, never a mix."""
import os

import pytest

from appliance import durable


def test_replace_file_writes_whole_file_with_mode(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    durable.replace_file(str(target), b"new contents", 0o640)
    assert target.read_bytes() == b"new contents"
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def no_space(fd, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(durable.os, "write", no_space)
    with pytest.raises(OSError):
        durable.replace_file(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_folder_is_synced_unless_the_caller_does_it(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(durable, "fsync_dir", synced.append)
    durable.replace_file(str(tmp_path / "a"), b"1")
    durable.replace_file(str(tmp_path / "b"), b"2", sync_dir=False)
    assert synced == [str(tmp_path)]
