"""Issue 10, defects 5 and 6 on a real twistd: guessing is throttled before any password check,
the real user still logs in at once, and abandoned AUTH attempts do not delay RCPT."""
from __future__ import annotations

import statistics
import time

import pytest

from tests.integration.attack import (abandoned_auth, checks_logged, guess_until, login_latency, open_sessions,
                                      rcpt_latency, throttled_logged)
from tests.integration.harness import DOMAIN, Appliance

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
# Password AUTH without TLS from loopback, and room for 100 connections from one address.
SETTINGS = {"tls": {"plaintext_auth_networks": "127.0.0.0/8"}, "limits": {"max_connections_per_ip": "200"}}


@pytest.fixture
def appliance(make_appliance) -> Appliance:
    return make_appliance(services=("smtp", "submission"), **SETTINGS)


def test_parallel_guesses_from_one_address_are_not_all_checked(appliance):
    port = appliance.ports["submission"]
    sessions = open_sessions(port, ["127.0.0.1"] * 100)
    try:
        codes = guess_until(sessions, ALICE, time.monotonic() + 3.0, keep_guessing=False)
        # the real user, from another network, while 100 guesses are pending or refused
        reply, seconds = login_latency(port, ALICE, appliance.users["alice"], "127.0.1.5")
    finally:
        for session in sessions:
            session.close()
    assert reply.startswith(b"235"), reply
    assert seconds < 1.0
    checked = checks_logged(appliance) - 1                     # the real user's check
    assert checked <= 10, (checked, codes)                     # 5 free, then slots 1 s, 2 s, ... apart
    assert codes.get(b"454", 0) >= 80, codes                    # refused at once, without a check
    assert 1 <= throttled_logged(appliance) <= codes.get(b"454", 0)     # summarised, not one line each


def test_rcpt_is_not_delayed_by_abandoned_auth_attempts(appliance):
    smtp, submission = appliance.ports["smtp"], appliance.ports["submission"]
    before = []
    for _ in range(3):
        time.sleep(1.1)                                        # each RCPT re-reads the users file
        before.append(rcpt_latency(smtp, BOB))
    sent = abandoned_auth(submission, ALICE, 200)              # 200 networks: no throttle spares the pool
    assert sent >= 190
    time.sleep(1.1)                                            # this RCPT needs a re-read of the users file
    during = rcpt_latency(smtp, BOB)
    assert during < max(0.5, 10 * statistics.median(before)), (during, before)
