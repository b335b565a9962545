"""Folder listing with a real client: mbsync mirrors a folder tree (levels that are no folders, names in
modified UTF-7, names differing only in case) from a real `twistd mailappliance`, and back.
"""
from __future__ import annotations

import time

import pytest

from tests.integration.harness import Appliance, make_message
from tests.integration.test_imap import ALICE, MBSYNC_CONFIG, _local_files, _mbsync, imaps

SERVICES = ("smtp", "imaps")
FOLDERS = ["Projects.2026.Q1", "Entw&APw-rfe", "Foo", "foo"]


@pytest.fixture
def app(make_appliance, storage) -> Appliance:
    return make_appliance(storage=storage, services=SERVICES)


def test_mbsync_mirrors_a_folder_tree_both_ways(app, tmp_path):
    client = imaps(app)
    for folder in FOLDERS:
        assert client.create(f'"{folder}"')[0] == "OK"
        message = make_message(f"in {folder}")
        assert client.append(f'"{folder}"', None, time.time(), message)[0] == "OK"
    assert client.subscribe('"Ghost.Folder"')[0] == "OK"      # a subscription without a folder
    client.logout()

    local = tmp_path / "local"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(MBSYNC_CONFIG.format(port=app.ports["imaps"], user=ALICE, password=app.users["alice"],
                                           cert=app.cert_path, local=local))
    _mbsync(app, str(config))
    assert len(_local_files(str(local / "Projects" / "2026" / "Q1"))) == 1
    assert len(_local_files(str(local / "Entw&APw-rfe"))) == 1
    assert len(_local_files(str(local / "Foo"))) == 1 and len(_local_files(str(local / "foo"))) == 1
    assert not (local / "Projects" / "cur").exists()         # a level is no folder: nothing to mirror
    assert not (local / "Ghost").exists()

    q2 = local / "Projects" / "2026" / "Q2"                    # a new folder made on the client side
    for sub in ("cur", "new", "tmp"):
        (q2 / sub).mkdir(parents=True)
    (q2 / "cur" / "1700000000.1.local:2,S").write_bytes(b"Subject: from the client\n\nhello\n")
    _mbsync(app, str(config))
    _mbsync(app, str(config))                                  # and again: nothing to do, no error

    client = imaps(app)
    typ, data = client.list('""', '"Projects.*"')
    assert typ == "OK"
    assert [line.rsplit(b" ", 1)[1] for line in data] == [b'"Projects.2026"', b'"Projects.2026.Q1"',
                                                          b'"Projects.2026.Q2"']
    assert client.select('"Projects.2026.Q2"')[1] == [b"1"]
    assert b'"Ghost.Folder"' in b"\n".join(client.lsub('""', "*")[1])
    client.logout()
