"""The credential cache against a model: whatever logins and passwords clients send (any text,
lone surrogates from undecodable bytes included), a login hits exactly when its last remembered
success had the same password, account and fingerprint and is younger than the TTL, and the
cache never holds more than its size."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from appliance.credcache import CredentialCache

TTL, SIZE = 100, 4
texts = st.text(st.characters(codec=None), max_size=12)
small = st.sampled_from(["a", "b", "", "a\0", "\udcff"])          # collisions are likely
steps = st.lists(st.tuples(st.sampled_from(["remember", "hit", "wait"]), small, st.one_of(small, texts),
                           small, small, st.integers(0, 60)), max_size=40)


@given(steps)
def test_the_cache_agrees_with_a_model(steps):
    clock = Clock()
    cache = CredentialCache(clock, ttl=TTL, size=SIZE)
    model: dict[str, tuple[tuple[str, str, str], float]] = {}        # login -> ((password, account, print), when)
    order: list[str] = []                                            # least recently used first
    for action, login, password, account, fingerprint, seconds in steps:
        if action == "wait":
            clock.advance(seconds)
            continue
        fresh = login in model and clock.seconds() - model[login][1] < TTL
        if action == "remember":
            cache.remember(login, password, account, fingerprint)
            model[login] = ((password, account, fingerprint), clock.seconds())
            order = [name for name in order if name != login] + [login]
            while len(order) > SIZE:
                model.pop(order.pop(0))
        else:
            expected = fresh and model[login][0] == (password, account, fingerprint)
            assert cache.hit(login, password, account, fingerprint) == expected
            if expected:
                order = [name for name in order if name != login] + [login]
            elif login in model and not fresh:
                del model[login]
                order.remove(login)
        assert len(cache) <= SIZE
