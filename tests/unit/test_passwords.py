"""Password hashes: the stored format, verification, and no timing hint for unknown users."""
from __future__ import annotations

import re

import pytest

from appliance import passwords
from appliance.passwords import DUMMY_HASH, hash_password, verify_password, verify_unknown_user

FORMAT = re.compile(r"^\$scrypt\$ln=14,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$")


def test_hash_has_the_documented_format():
    assert FORMAT.match(hash_password("correct horse"))


def test_right_password_verifies_and_wrong_one_does_not():
    stored = hash_password("correct horse")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)


def test_each_hash_has_its_own_salt():
    first, second = hash_password("same"), hash_password("same")
    assert first != second
    assert first.split("$")[3] != second.split("$")[3]


def test_non_ascii_and_odd_passwords_work():
    stored = hash_password("pässwörd ✓")
    assert verify_password("pässwörd ✓", stored)
    lone_surrogate = "bad\udcff"
    assert verify_password(lone_surrogate, hash_password(lone_surrogate))


@pytest.mark.parametrize("stored", [
    "",
    "plaintext",
    "$md5$salt$hash",
    "$scrypt$ln=14,r=8$c2FsdA$aGFzaA",                 # missing parameter
    "$scrypt$ln=x,r=8,p=1$c2FsdA$aGFzaA",              # not a number
    "$scrypt$ln=14,r=8,p=1$!!!$aGFzaA",                # salt not base64
    "$scrypt$ln=14,r=8,p=1$$aGFzaA",                   # empty salt
    "$scrypt$ln=30,r=8,p=1$c2FsdA$aGFzaA",             # absurd cost refused, not computed
])
def test_unknown_or_damaged_hashes_never_verify(stored):
    assert verify_password("anything", stored) is False


def test_existing_hash_with_other_parameters_still_verifies():
    """Each hash carries its parameters, so raising the cost later keeps old hashes valid."""
    salt = b"0123456789abcdef"
    digest = passwords._scrypt("pw", salt, 10, 8, 1)
    stored = f"$scrypt$ln=10,r=8,p=1${passwords._b64encode(salt)}${passwords._b64encode(digest)}"
    assert verify_password("pw", stored)
    assert not verify_password("pw2", stored)


def test_unknown_user_costs_one_real_scrypt(monkeypatch):
    calls = []
    real = passwords._scrypt

    def counting(*args):
        calls.append(args[2:])
        return real(*args)

    monkeypatch.setattr(passwords, "_scrypt", counting)
    assert verify_unknown_user("guess") is False
    assert calls == [(14, 8, 1)]


def test_dummy_hash_is_a_real_hash():
    assert FORMAT.match(DUMMY_HASH)


def test_check_queue_bounds_waiting_work_and_drops_cancelled_work():
    from twisted.internet.defer import CancelledError

    from appliance.inline import InlineReactor
    from appliance.passwords import CheckQueue, TooManyChecks
    from tests.unit.test_directory_file import ManualPool
    pool = ManualPool()
    checks = CheckQueue(InlineReactor(), pool, threads=2, max_pending=3)
    ran = []
    results = [[] for _ in range(7)]
    ds = [checks.run(ran.append, n) for n in range(7)]
    for d, out in zip(ds, results):
        d.addBoth(out.append)
    assert len(pool.pending) == 2 and checks.pending == 3          # 2 on threads, 3 waiting
    assert all(out and out[0].check(TooManyChecks) for out in results[5:])
    ds[2].cancel()                                                # its client left before it ran
    ds[0].cancel()                                                # left while it ran: result ignored
    assert checks.dropped == 1
    while pool.pending:
        pool.run()
    assert ran == [0, 1, 3, 4]
    assert results[0][0].check(CancelledError) and results[2][0].check(CancelledError)
    assert [r[0] for r in (results[1], results[3], results[4])] == [None, None, None]
    assert checks.running == 0 and checks.pending == 0
