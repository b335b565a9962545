"""One intake for SMTP and the pickup folder: the same Received, Date, Message-ID and masquerading, one checks list."""
from __future__ import annotations

import base64
import os
import pwd

import pytest
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from appliance import address, maillog, pickup
from appliance import message as rfc5322
from appliance.config import LimitsSection, TLSSection
from appliance.envelope import FAILED, Recipient
from appliance.errors import DirectoryUnavailable
from appliance.inline import InlinePool, InlineReactor
from appliance.intake import Arrival, Intake, RecipientResolver
from appliance.interfaces import UserRecord
from appliance.masquerade import Masquerader
from appliance.realm import AuthThrottle, Login, MailRealm
from appliance.replies import Reply, SMTPReplyError
from appliance.smtp.server import SMTPFactory
from appliance.smtp.submission import SubmissionPolicy

HOST = "mail.example.test"
ALICE = UserRecord("alice@example.test", frozenset({"alice@example.test", "alice@pc1.lan.example.test"}))
BOB = UserRecord("bob@example.test", frozenset({"bob@example.test"}))
MESSAGE = b"From: Alice <alice@pc1.lan.example.test>\r\nSubject: report\r\n\r\nAll done.\r\n"
REFUSE = Reply(554, "5.7.1", "Refused by a check")
LATER = Reply(451, "4.7.1", "Try again later")


class Directory:
    supports_shared_secrets = False
    down = False

    def lookup(self, addr):
        if self.down:
            return defer.fail(DirectoryUnavailable("ldap down"))
        return defer.succeed({u.address: u for u in (ALICE, BOB)}.get(address.normalise(addr)))


class Queue:
    def __init__(self):
        self.items = []

    def put(self, envelope, message):
        self.items.append((envelope, message))
        return defer.succeed(None)


class Checker:
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, creds):
        return defer.succeed(ALICE)


@pytest.fixture
def house(tmp_path, monkeypatch):
    """One intake (masquerading lan.example.test) behind both front ends, on one clock; log lines recorded."""
    lines = []
    monkeypatch.setattr(maillog, "emit", lambda event, **fields: lines.append((event, fields)))
    reactor, queue, directory = InlineReactor(), Queue(), Directory()
    masquerader = Masquerader(domains=("lan.example.test",), as_domain="example.test")
    resolver = RecipientResolver(directory, None, ("example.test",), masquerader=masquerader)
    intake = Intake(queue, HOST, resolver, clock=reactor, masquerader=masquerader)
    folder = str(tmp_path / "pickup")
    service = pickup.PickupService(folder, intake, reactor, InlinePool(), max_message_size=100_000)
    service.startService()
    return intake, service, folder, reactor, queue, lines


def smtp_submit(intake, reactor, sender, rcpt, data):
    """One authenticated submission over the real SMTP protocol; returns the server's reply lines."""
    factory = SMTPFactory(policy=SubmissionPolicy("submission", intake.resolver), intake=intake,
                          directory=intake.resolver.directory, hostname=HOST,
                          login=Login(Portal(MailRealm(store=None), [Checker()]), AuthThrottle(reactor), reactor),
                          domains=("example.test",), limits=LimitsSection(),
                          tls=None, tls_settings=TLSSection("", "", plaintext_auth_networks=address.parse_networks(
                              "192.0.2.0/24")), implicit_tls=False, clock=reactor)
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 4321))
    proto.makeConnection(transport)
    token = base64.b64encode(b"\0alice@example.test\0secret")
    proto.dataReceived(b"EHLO client.test\r\nAUTH PLAIN " + token + b"\r\n"
                       + f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode() + data + b".\r\n")
    return transport.value().split(b"\r\n")


def test_smtp_and_pickup_give_the_same_trace_headers_and_masquerading(house):
    intake, service, folder, reactor, queue, lines = house
    pickup.write(folder, "alice@pc1.lan.example.test", ["bob@example.test"], MESSAGE)
    reactor.advance(1)
    replies = smtp_submit(intake, reactor, "alice@pc1.lan.example.test", "bob@example.test", MESSAGE)
    assert replies[-2].startswith(b"250 2.0.0 Ok: queued as ")
    (by_pickup, picked), (by_smtp, sent) = queue.items

    date = rfc5322.get(picked, "Date")
    stamp = b"\r\n\tfor <bob@example.test>; " + date
    user = pwd.getpwuid(os.geteuid()).pw_name.encode()
    assert rfc5322.get_all(picked, "Received") == [rfc5322.unfold(
        b"Received: from local (pickup)\r\n\tby mail.example.test (mailappliance) with local id "
        + by_pickup.id.encode() + b"\r\n\t(user " + user + b")" + stamp)]
    assert rfc5322.get_all(sent, "Received") == [rfc5322.unfold(
        b"Received: from client.test ([192.0.2.9])\r\n\tby mail.example.test (mailappliance) with ESMTPA id "
        + by_smtp.id.encode() + stamp)]
    for envelope, queued in ((by_pickup, picked), (by_smtp, sent)):
        assert envelope.sender == "alice@example.test"                    # the envelope is masqueraded
        assert rfc5322.get(queued, "From") == b"Alice <alice@example.test>"  # and so is the From header
        assert rfc5322.get(queued, "Date") == date                        # added, from the same clock
        assert rfc5322.get(queued, "Message-ID").endswith(b"@mail.example.test>")
        assert envelope.size == len(queued)
        assert queued.startswith(b"Received: from ")                     # trace on top
        assert queued.endswith(b"Subject: report\r\n\r\nAll done.\r\n")
    assert rfc5322.get(picked, "Message-ID") != rfc5322.get(sent, "Message-ID")
    without_trace = [rfc5322.replace(rfc5322.remove(m, "Received"), "Message-ID", "<x>") for m in (picked, sent)]
    assert without_trace[0] == without_trace[1]

    masqueraded = [fields for event, fields in lines if event == "masqueraded"]
    assert [(f["id"], f["original"]) for f in masqueraded] == [
        (by_pickup.id, "alice@pc1.lan.example.test"), (by_pickup.id, "alice@pc1.lan.example.test"),
        (by_smtp.id, "alice@pc1.lan.example.test"), (by_smtp.id, "alice@pc1.lan.example.test")]
    received = [(f["service"], f["peer"], f["proto"]) for event, f in lines if event == "received"]
    assert received == [("pickup", "local", "local"), ("submission", "192.0.2.9", "ESMTPA")]


def test_a_submission_keeps_the_date_and_message_id_it_has(house):
    intake, *_ = house
    given = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\nx\r\n"
    assert intake.complete(given) is given
    assert intake.complete(b"no header here\r\n").endswith(b"\r\n\r\nno header here\r\n")


def outcome(d):
    """What a Deferred that has fired gave: its result or its Failure (consumed)."""
    results = []
    defer.ensureDeferred(d).addBoth(results.append)
    return results[0]


def arrival(**fields) -> Arrival:
    base = dict(sender="alice@example.test", recipients=[Recipient("bob@example.test")], message=MESSAGE,
                service="smtp", protocol="ESMTP", peer="192.0.2.9", helo="client.test")
    return Arrival(**{**base, **fields})


def test_checks_run_in_order_before_anything_is_queued_and_may_refuse(house):
    intake, _, _, _, queue, _ = house
    seen = []
    intake.checks += [lambda a: seen.append(("first", a.id)), lambda a: defer.succeed(seen.append(("second", a.id)))]
    one = arrival()
    assert outcome(intake.accept(one)) == one.id
    assert seen == [("first", one.id), ("second", one.id)] and len(queue.items) == 1

    def refuse(a):
        raise SMTPReplyError(REFUSE)
    intake.checks.insert(1, refuse)
    failure = outcome(intake.accept(arrival()))
    assert failure.check(SMTPReplyError) and failure.value.reply == REFUSE
    assert len(queue.items) == 1 and seen[2:] == [("first", seen[2][1])]     # the later check never ran


def test_smtp_answers_a_checks_refusal_at_the_end_of_data(house):
    intake, _, _, reactor, queue, _ = house
    intake.checks.append(lambda a: defer.fail(SMTPReplyError(REFUSE)))
    replies = smtp_submit(intake, reactor, "alice@example.test", "bob@example.test", MESSAGE)
    assert replies[-2] == b"554 5.7.1 Refused by a check" and queue.items == []


@pytest.mark.parametrize("reply, stays", [(LATER, True), (REFUSE, False)])
def test_the_pickup_keeps_a_file_a_check_put_off_and_sets_aside_one_it_refused(house, reply, stays):
    intake, _, folder, reactor, queue, _ = house
    intake.checks.append(lambda a: defer.fail(SMTPReplyError(reply)))
    pickup.write(folder, "alice@example.test", ["bob@example.test"], MESSAGE)
    reactor.advance(1)
    assert queue.items == []
    assert (len(os.listdir(folder)) == 2) is stays and (len(os.listdir(os.path.join(folder, "bad"))) == 1) is not stays


def test_resolve_all_refuses_what_cannot_be_delivered_and_drops_duplicates(house):
    intake, *_ = house
    given = ["bob@example.test", "BOB@example.test", "not an address", "ghost@example.test", "zed@elsewhere.test"]
    found, refused = outcome(intake.resolve_all(given))
    assert [(r.address, r.local) for r in found] == [("bob@example.test", True), ("zed@elsewhere.test", False)]
    assert [(r.address, r.state, r.status, r.last_error) for r in refused] == [
        ("not an address", FAILED, "5.1.3", "5.1.3 bad recipient address syntax"),
        ("ghost@example.test", FAILED, "5.1.1", "5.1.1 Recipient address rejected: User unknown")]


def test_refused_recipients_are_bounced_to_the_masqueraded_sender(house):
    intake, _, _, _, queue, lines = house
    ghost = Recipient("ghost@example.test", state=FAILED, status="5.1.1", last_error="5.1.1 no such user")
    one = arrival(sender="alice@pc1.lan.example.test", insider=True, refused=[ghost], service="pickup",
                  protocol="local", peer="")
    assert outcome(intake.accept(one)) == one.id
    (envelope, _), (dsn, report) = queue.items
    assert envelope.id == one.id and dsn.sender == ""
    assert [r.address for r in dsn.recipients] == ["alice@example.test"]
    assert b"Status: 5.1.1" in report and f"X-Queue-ID: {one.id}".encode() in report
    [bounced] = [fields for event, fields in lines if event == "bounced"]
    assert (bounced["id"], bounced["rcpt"], bounced["reason"]) == (one.id, "ghost@example.test", "5.1.1 no such user")
    [received] = [fields for event, fields in lines if event == "received" and fields["id"] == dsn.id]
    assert (received["service"], received["parent"]) == ("bounce", one.id)    # the DSN, linked to its message


def test_a_directory_outage_fails_the_whole_resolution(house):
    intake, *_ = house
    intake.resolver.directory.down = True
    assert outcome(intake.resolve_all(["bob@example.test"])).check(DirectoryUnavailable)
