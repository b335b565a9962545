"""How many outbound deliveries run at once: per destination, and in all."""
from __future__ import annotations

from twisted.internet import defer

from appliance.couriers.sessions import Slots


def start(slots: Slots, destinations: list[str], running: list[str]) -> None:
    for destination in destinations:
        d = defer.ensureDeferred(slots.acquire(destination))
        d.addCallback(lambda _, destination=destination: running.append(destination))


def test_a_destination_gets_at_most_its_limit_and_the_rest_wait_in_order():
    slots, running = Slots(per_destination=2, total=10), []
    start(slots, ["a.example", "a.example", "a.example", "b.example"], running)
    assert running == ["a.example", "a.example", "b.example"], "the third for a.example waits, b.example does not"
    assert slots.busy("a.example") == 2
    slots.release("a.example")
    assert running == ["a.example", "a.example", "b.example", "a.example"]


def test_the_total_limit_holds_across_destinations():
    slots, running = Slots(per_destination=2, total=3), []
    start(slots, ["a.example", "a.example", "b.example", "b.example", "c.example"], running)
    assert running == ["a.example", "a.example", "b.example"]
    slots.release("a.example")
    assert running == ["a.example", "a.example", "b.example", "b.example"], "first come, first served"
    slots.release("b.example")
    assert running[-1] == "c.example" and len(running) == 5


def test_a_destination_nobody_is_sending_to_holds_nothing():
    slots, running = Slots(per_destination=1, total=1), []
    start(slots, ["a.example"], running)
    slots.release("a.example")
    assert slots.busy("a.example") == 0 and slots._destinations == {}
    start(slots, ["a.example"], running)
    assert running == ["a.example", "a.example"]
