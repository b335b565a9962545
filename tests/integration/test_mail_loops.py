"""Issue 10 on a real twistd: mail loops (defect 3), Bcc (11), `[delivery] nameservers` alone (14),
a looping alias or a bad aliases line at start (15)."""
from __future__ import annotations

import os
import smtplib
import socket
import time

import pytest

from tests.integration.dnsserver import DNSServer, a, mx
from tests.integration.harness import DOMAIN, SMTP_SERVICES, Appliance, ApplianceError, make_message, wait_for

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"


def received_lines(app: Appliance) -> int:
    """Messages that came in (a bounce made here is logged `received ... service=bounce`: not counted)."""
    return sum((" received id=" in line or line.startswith("received id=")) and " service=bounce " not in line
               for line in app.log().splitlines())


def with_hops(n: int, subject: str) -> bytes:
    trace = "".join(f"Received: from h{i}.example by h{i + 1}.example; Sat, 5 Dec 2026 06:00:00 +0000\r\n"
                    for i in range(n))
    return trace.encode() + make_message(subject, to=BOB)


@pytest.fixture
def own(request, tmp_path):
    """own(**overrides) -> a started appliance whose [delivery] port is its own MX port (a loop waiting to happen)."""
    made: list[Appliance] = []
    request.node.appliances = made

    def make(**overrides):
        app = Appliance(str(tmp_path / f"appliance{len(made)}"), services=SMTP_SERVICES, overrides=overrides)
        app.sections.setdefault("delivery", {})["port"] = str(app.ports["smtp"])
        made.append(app)
        try:
            app.setup()
            app.start()
        except ApplianceError as problem:
            pytest.fail(str(problem), pytrace=False)
        return app
    yield make
    for app in made:
        app.stop()


def test_a_looping_alias_does_not_stop_the_start_and_is_answered_550_5_4_6(make_appliance, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("a: b\nb: a\ncontact: alice\n")
    app = make_appliance(aliases={"file": str(aliases)})
    with app.smtp() as client:
        client.ehlo()
        client.mail("someone@outside.example")
        code, text = client.rcpt(f"a@{DOMAIN}")
        assert (code, text[:5]) == (550, b"5.4.6")
        assert client.rcpt(f"contact@{DOMAIN}")[0] == 250
        client.data(make_message("to-contact"))
    wait_for(lambda: any(b"to-contact" in m for m in app.messages("alice")))
    assert "aliases-problem" in app.log() and "alias loop: a@example.test" in app.log()
    result = app.cli("check", check=False)
    assert result.returncode == 1 and "alias loop" in result.stdout + result.stderr


def test_a_bad_aliases_line_does_not_stop_the_start_and_defers_only_its_name(make_appliance, tmp_path):
    """The same class as the loop: a machine rebooted with a typo in the aliases file takes mail."""
    aliases = tmp_path / "aliases"
    aliases.write_text("sales: bob, |/usr/bin/archive\nno colon here\ncontact: alice\n")
    app = make_appliance(aliases={"file": str(aliases)})
    with app.smtp() as client:
        client.ehlo()
        client.mail("someone@outside.example")
        code, text = client.rcpt(f"sales@{DOMAIN}")
        assert (code, text[:5]) == (451, b"4.3.0")       # waits for the fix: neither bounced nor misdelivered
        assert client.rcpt(f"contact@{DOMAIN}")[0] == 250
        client.data(make_message("to-contact-past-a-typo"))
    wait_for(lambda: any(b"to-contact-past-a-typo" in m for m in app.messages("alice")))
    assert app.log().count("aliases-problem") == 2 and "deferred at RCPT with 4.3.0" in app.log()
    result = app.cli("check", check=False)
    assert result.returncode == 1 and "commands and files are not allowed" in result.stdout + result.stderr


def test_fifty_one_received_lines_are_refused_554_5_4_6(appliance):
    with appliance.smtp() as client:
        client.sendmail("someone@outside.example", [BOB], with_hops(50, "fifty-hops"))
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("someone@outside.example", [BOB], with_hops(51, "fifty-one-hops"))
    assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.4.6")
    wait_for(lambda: any(b"fifty-hops" in m for m in appliance.messages("bob")))
    assert not any(b"fifty-one-hops" in m for m in appliance.messages("bob"))


@pytest.fixture
def loop_dns(tmp_path):
    server = DNSServer(str(tmp_path / "dns"), {"loop.test": [mx("loop.test", 10, "mx.loop.test"),
                                                             a("mx.loop.test", "127.0.0.1")]})
    server.start()
    yield server
    server.stop()


def test_mail_routed_back_to_ourselves_bounces_5_4_6_instead_of_looping(own, loop_dns):
    app = own(relay={"trusted_networks": "127.0.0.1/32"},
              delivery={"nameservers": loop_dns.nameserver, "allow_address_literals": "yes"},
              queue={"retry_initial": "1", "retry_max": "2"})
    with app.smtp() as client:
        client.sendmail(ALICE, ["bob@[127.0.0.1]"], make_message("to-my-literal", sender=ALICE))
        client.sendmail(ALICE, ["bob@loop.test"], make_message("to-my-mx", sender=ALICE))

    def bounces():
        return [m for m in app.messages("alice") if b"loops back to myself" in m and b"5.4.6" in m]
    wait_for(lambda: len(bounces()) == 2, timeout=20)
    time.sleep(2)
    assert received_lines(app) == 2          # the two messages (bounces are made inside): nothing came back in
    assert app.messages("bob") == []


def test_bcc_is_removed_on_submission_and_pickup(appliance):
    message = make_message("blind", sender=ALICE, to=BOB, extra_headers="Bcc: carol@elsewhere.example\r\n")
    with appliance.submit() as client:
        client.sendmail(ALICE, [BOB], message)
    appliance.cli("sendmail", "-f", ALICE, BOB, stdin=message.decode().replace("blind", "blind-pickup"))
    wait_for(lambda: len([m for m in appliance.messages("bob") if b"blind" in m]) == 2, timeout=15)
    for delivered in appliance.messages("bob"):
        assert b"To: bob@example.test" in delivered and b"carol@elsewhere.example" not in delivered


def test_a_silent_nameserver_defers_4_4_3_and_never_bounces(make_appliance):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))                  # takes the queries and never answers
    try:
        app = make_appliance(relay={"trusted_networks": "127.0.0.1/32"},
                             delivery={"nameservers": f"127.0.0.1:{silent.getsockname()[1]}"})
        with app.smtp() as client:
            client.sendmail(ALICE, ["someone@nowhere.example"], make_message("to-nowhere", sender=ALICE))
        wait_for(lambda: "4.4.3" in app.cli("queue", "list").stdout, timeout=40, interval=0.5)
        listing = app.cli("queue", "list").stdout
        assert "someone@nowhere.example" in listing and "5.1.2" not in listing
        assert app.messages("alice") == []
        silent.settimeout(0.1)
        assert silent.recv(512)                    # our server was the one asked
    finally:
        silent.close()


def test_two_servers_forwarding_to_each_other_stop_at_the_first_round(tmp_path, request):
    """A forwards fwd@example.test to x@other.test, B forwards x@other.test back: a loop that used to
    run forever. The Delivered-To: each forward adds stops it; the sender gets one 5.4.6 bounce."""
    dns_server = DNSServer(str(tmp_path / "dns"), {
        "other.test": [mx("other.test", 10, "mx.other.test"), a("mx.other.test", "127.0.0.1")],
        "example.test": [mx("example.test", 10, "mx.example.test"), a("mx.example.test", "127.0.0.1")]})
    dns_server.start()
    request.addfinalizer(dns_server.stop)
    (tmp_path / "a-aliases").write_text("fwd: x@other.test\n")
    (tmp_path / "b-aliases").write_text("x: fwd@example.test\n")
    first = Appliance(str(tmp_path / "a"), services=("smtp",),
                      overrides={"aliases": {"file": str(tmp_path / "a-aliases")},
                                 "queue": {"retry_initial": "1", "retry_max": "2"}})
    second = Appliance(str(tmp_path / "b"), services=("smtp",), users={},
                       overrides={"appliance": {"hostname": "mail.other.test", "domains": "other.test"},
                                  "aliases": {"file": str(tmp_path / "b-aliases")},
                                  "queue": {"retry_initial": "1", "retry_max": "2"}})
    first.sections["delivery"] = {"nameservers": dns_server.nameserver, "port": str(second.ports["smtp"])}
    second.sections["delivery"] = {"nameservers": dns_server.nameserver, "port": str(first.ports["smtp"])}
    request.node.appliances = [first, second]
    for app in (first, second):
        request.addfinalizer(app.stop)
        app.setup()
        app.start()
    with first.smtp() as client:
        client.sendmail(ALICE, [f"fwd@{DOMAIN}"], make_message("ping-pong", sender=ALICE, to=f"fwd@{DOMAIN}"))
    wait_for(lambda: any(b"5.4.6" in m and b"ping-pong" in m for m in first.messages("alice")), timeout=30)
    time.sleep(2)
    assert received_lines(first) <= 3 and received_lines(second) <= 2, (received_lines(first), received_lines(second))
    assert "mail-loop" in first.log() + second.log()
