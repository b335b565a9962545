"""Mail loops (issue 10, defect 3): the Received hop limit at intake, Delivered-To on forwards,
and the MX router refusing to send mail back to ourselves."""
from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from appliance import message as rfc5322
from appliance.couriers.mxroute import MXRouter, own_addresses
from appliance.couriers.outbound import OutboundCourier
from appliance.envelope import Envelope, Recipient
from appliance.errors import PermanentFailure
from appliance.inline import InlineReactor
from appliance.intake import MAX_HOPS, Arrival, Intake, RecipientResolver
from appliance.replies import SMTPReplyError
from tests.unit.test_intake import Directory, Queue, outcome, smtp_submit
from tests.unit.test_mxroute import MX, A, FakeResolver

BODY = b"From: x@outside.example\r\nSubject: loop\r\n\r\nround and round\r\n"


def hops(n: int) -> bytes:
    return b"".join(b"Received: from h%d.example by h%d.example; Sat, 5 Dec 2026 06:00:00 +0000\r\n" % (i, i + 1)
                    for i in range(n)) + BODY


@pytest.fixture
def intake():
    resolver = RecipientResolver(Directory(), None, ("example.test",))
    return Intake(Queue(), "mail.example.test", resolver, clock=InlineReactor())


def arrival(message, peer="192.0.2.9", recipients=None, **fields) -> Arrival:
    return Arrival(sender="x@outside.example", recipients=recipients or [Recipient("bob@example.test")],
                   message=message, service="smtp" if peer else "pickup", protocol="ESMTP" if peer else "local",
                   peer=peer, **fields)


def test_fifty_hops_pass_and_fifty_one_are_refused_554_5_4_6(intake):
    assert MAX_HOPS == 50
    one = arrival(hops(50))
    assert outcome(intake.accept(one)) == one.id
    failure = outcome(intake.accept(arrival(hops(51))))
    assert failure.check(SMTPReplyError)
    assert failure.value.reply.line().startswith(b"554 5.4.6 ")
    assert len(intake.queue.items) == 1


def test_the_hop_limit_over_smtp_answers_at_the_end_of_data(intake):
    replies = smtp_submit(intake, intake.clock, "alice@example.test", "bob@example.test", hops(51))
    assert replies[-2].startswith(b"554 5.4.6 ")
    assert intake.queue.items == []


def test_a_program_that_cannot_be_refused_gets_a_bounce_for_too_many_hops(intake):
    one = arrival(hops(60), peer="")
    assert outcome(intake.accept(one)) == one.id
    [(dsn, data)] = intake.queue.items
    assert dsn.recipients[0].address == "x@outside.example"
    assert b"5.4.6" in data


def test_a_forward_already_in_delivered_to_bounces_and_the_others_go_on(intake):
    message = b"Delivered-To: fwd@example.test\r\n" + BODY
    forward = Recipient("someone@elsewhere.example", local=False, original="fwd@example.test")
    plain = Recipient("bob@example.test")
    one = arrival(message, recipients=[forward, plain])
    assert outcome(intake.accept(one)) == one.id
    (queued, _), (dsn, data) = intake.queue.items
    assert [r.address for r in queued.recipients] == ["bob@example.test"]
    assert b"5.4.6" in data and b"mail forwarding loop for fwd@example.test" in data


def test_a_forward_whose_target_is_in_delivered_to_bounces(intake):
    message = b"Delivered-To: <Someone@Elsewhere.example>\r\n" + BODY
    forward = Recipient("someone@elsewhere.example", local=False, original="fwd@example.test")
    failure = outcome(intake.accept(arrival(message, recipients=[forward])))
    assert failure.check(SMTPReplyError) and failure.value.reply.enhanced == "5.4.6"


def test_a_plain_recipient_in_delivered_to_is_delivered(intake):
    """fetchmail re-injecting a message its ISP stamped for the same user is no loop."""
    one = arrival(b"Delivered-To: bob@example.test\r\n" + BODY)
    assert outcome(intake.accept(one)) == one.id and len(intake.queue.items) == 1


def test_a_forward_leaves_with_delivered_to_naming_the_alias(monkeypatch):
    sent = []

    class Session:
        """Stands in for an SMTP session: records each transaction, accepts every recipient."""
        transactions, usable, clean = 0, True, True
        closed: defer.Deferred = defer.Deferred()

        def reset(self):
            return defer.succeed(True)

        def transaction(self, sender, recipients, message):
            sent.append((recipients, message))
            return defer.succeed({r: (250, "ok") for r in recipients})

        def close(self):
            return defer.succeed(None)

    from appliance.couriers import smtpclient
    monkeypatch.setattr(smtpclient, "open_session", lambda reactor, host, port, settings: defer.succeed(Session()))
    clock = Clock()
    router = MXRouter(FakeResolver(mx={"elsewhere.example": [MX(10, "mx.elsewhere.example")]},
                                   a={"mx.elsewhere.example": [A("192.0.2.80")]}), "mail.example.test", clock=clock)
    courier = OutboundCourier(router, clock, "mail.example.test")
    envelope = Envelope(id="q1", sender="x@outside.example", recipients=[])
    courier.deliver(envelope, Recipient("a@elsewhere.example", local=False, original="fwd@example.test"), BODY)
    courier.deliver(envelope, Recipient("b@elsewhere.example", local=False), BODY)
    clock.advance(0)
    by_rcpt = {tuple(r): m for r, m in sent}
    assert rfc5322.get_all(by_rcpt[("a@elsewhere.example",)], "Delivered-To") == [b"fwd@example.test"]
    assert by_rcpt[("b@elsewhere.example",)] == BODY


def route_failure(router, domain):
    results = []
    router.route(domain).addBoth(results.append)
    return results[0].value


def test_an_address_literal_of_ours_loops_back_to_myself():
    router = MXRouter(FakeResolver(), "mail.example.test", own_addresses(["tcp:2525:interface=127.0.0.1"], 2525),
                      allow_literals=True, clock=Clock())
    problem = route_failure(router, "[127.0.0.1]")
    assert isinstance(problem, PermanentFailure) and problem.status == "5.4.6"
    assert "loops back to myself" in str(problem)


def test_an_mx_pointing_at_one_of_our_addresses_loops_back_to_myself():
    resolver = FakeResolver(mx={"loop.example": [MX(10, "mx.loop.example")]}, a={"mx.loop.example": [A("127.0.0.1")]})
    router = MXRouter(resolver, "mail.example.test", own_addresses(["tcp:25"], 25), clock=Clock())
    problem = route_failure(router, "loop.example")
    assert isinstance(problem, PermanentFailure) and problem.status == "5.4.6"


def test_own_addresses_follow_the_mx_listener_and_the_delivery_port():
    assert own_addresses(["tcp:2525:interface=127.0.0.1"], 2525) == {"127.0.0.1/32"}
    assert own_addresses(["tcp:2525:interface=127.0.0.1"], 25) == set()        # a peer on another port is not us
    every = own_addresses(["tcp:25"], 25)
    assert {"127.0.0.0/8", "::1/128"} <= every
    router = MXRouter(FakeResolver(), "mail.example.test", every, allow_literals=True, clock=Clock())
    for literal in ("[127.0.0.2]", "[IPv6:::1]", "[IPv6:::ffff:127.0.0.1]"):
        assert route_failure(router, literal).status == "5.4.6"
    assert MXRouter(FakeResolver(), "mail.example.test", {"127.0.0.1/32"}, allow_literals=True,
                    clock=Clock()).route("[127.0.0.2]").result == [("[127.0.0.2]", "127.0.0.2")]
