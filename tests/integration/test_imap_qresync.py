"""A QRESYNC sync client against a real `twistd mailappliance`, across delivery, another client and a restart.

Neither installed sync client speaks RFC 7162 (isync 1.4.4 sends no CONDSTORE/QRESYNC command;
offlineimap3 has no code for them), so the client here is imaplib driven by hand the way
Thunderbird and K-9 resynchronise: a full first round, then each later round is one
`SELECT INBOX (QRESYNC (uidvalidity modseq))` whose VANISHED (EARLIER) and FETCH responses are
applied to the cache. After every round the cache must equal what a full fetch says.
"""
from __future__ import annotations

import pytest

from tests.integration.harness import DOMAIN, HOSTNAME, Appliance, make_message, wait_for
from tests.integration.test_imap import IMAPS
from tests.unit.imap.rfc7162 import fetches, number, run, vanished

ALICE = f"alice@{DOMAIN}"


@pytest.fixture
def app(make_appliance, storage) -> Appliance:
    return make_appliance(storage=storage, services=("smtp", "imaps"))


def deliver(app: Appliance, subject: str) -> None:
    with app.smtp() as client:
        client.sendmail("someone@outside.example", [ALICE], make_message(subject))


def connect(app: Appliance) -> IMAPS:
    client = IMAPS(HOSTNAME, app.ports["imaps"], ssl_context=app.tls_context(), timeout=10)
    client.login(ALICE, app.users["alice"])
    return client


class SyncClient:
    """A client's cache of INBOX: uid -> flags, with the UIDVALIDITY and HIGHESTMODSEQ it belongs to."""

    def __init__(self) -> None:
        self.validity = 0
        self.highest = 0
        self.flags: dict[int, set[str]] = {}
        self.last: dict = {}

    def full(self, app: Appliance) -> None:
        client = connect(app)
        answer = run(client, "SELECT", "INBOX (CONDSTORE)")
        self.validity, self.highest = number(answer, "UIDVALIDITY"), number(answer, "HIGHESTMODSEQ")
        self.flags = {uid: item["flags"] for uid, item in fetches(run(client, "UID", "FETCH 1:* (FLAGS)")).items()}
        client.logout()

    def resync(self, app: Appliance) -> None:
        """One round trip: what changed since our HIGHESTMODSEQ, applied to the cache."""
        client = connect(app)
        assert run(client, "ENABLE", "QRESYNC").status == "OK"
        answer = run(client, "SELECT", f"INBOX (QRESYNC ({self.validity} {self.highest}))")
        assert number(answer, "UIDVALIDITY") == self.validity
        gone, changed = vanished(answer, earlier=True), fetches(answer)
        self.last = {"vanished": gone, "changed": set(changed)}
        for uid in gone:
            self.flags.pop(uid, None)
        for uid, item in changed.items():
            self.flags[uid] = item["flags"]
        self.highest = number(answer, "HIGHESTMODSEQ")
        client.logout()


def truth(app: Appliance) -> dict[int, set[str]]:
    client = connect(app)
    client.select("INBOX")
    state = {uid: item["flags"] for uid, item in fetches(run(client, "UID", "FETCH 1:* (FLAGS)")).items()}
    client.logout()
    return state


def test_incremental_rounds_end_where_a_full_sync_would(app):
    for n in range(6):
        deliver(app, f"message {n}")
    wait_for(lambda: len(app.messages(ALICE)) == 6)
    cache = SyncClient()
    cache.full(app)
    assert sorted(cache.flags) == [1, 2, 3, 4, 5, 6]

    other = connect(app)                                # another client reads, flags, deletes
    other.select("INBOX")
    other.uid("STORE", "2", "+FLAGS", "(\\Seen)")
    other.uid("STORE", "3,5", "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.logout()
    deliver(app, "arrived meanwhile")
    wait_for(lambda: len(app.messages(ALICE)) == 5)

    cache.resync(app)
    assert cache.last == {"vanished": {3, 5}, "changed": {2, 7}}
    assert cache.flags == truth(app)

    app.restart()                                        # a new daemon over the same files
    deliver(app, "after the restart")
    wait_for(lambda: len(app.messages(ALICE)) == 6)
    cache.resync(app)
    assert cache.last == {"vanished": set(), "changed": {8}}
    assert cache.flags == truth(app)

    cache.resync(app)                                    # nothing happened: nothing is sent
    assert cache.last == {"vanished": set(), "changed": set()}
