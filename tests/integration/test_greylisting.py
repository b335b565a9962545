"""Greylisting on a real twistd: 451 4.7.1 first, 250 after the delay, across a restart and a kill -9."""
from __future__ import annotations

import email
import smtplib
import time

from tests.integration.harness import DOMAIN, Appliance, make_message, wait_for

SENDER = "someone@outside.example"
ALICE = f"alice@{DOMAIN}"
DELAY = 2.0
GREYLIST = {"greylist": "all", "greylist_delay": "2"}


def try_once(appliance: Appliance, subject: str) -> tuple[int, bytes]:
    """One delivery attempt as an MTA makes it: the reply to RCPT, or to DATA when RCPT passed."""
    with appliance.smtp() as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        code, reply = client.rcpt(ALICE)
        if code != 250:
            return code, reply
        return client.data(make_message(subject, to=ALICE))


def subjects(appliance: Appliance) -> list[str]:
    return [email.message_from_bytes(raw)["Subject"] for raw in appliance.messages(ALICE)]


def test_first_try_451_retry_after_a_restart_and_the_delay_is_delivered(make_appliance):
    appliance = make_appliance(checks=GREYLIST)
    started = time.monotonic()
    code, reply = try_once(appliance, "greylisted")
    assert (code, reply) == (451, b"4.7.1 Greylisted, try again in 2 seconds")
    code, reply = try_once(appliance, "greylisted")
    assert code == 451 and reply.startswith(b"4.7.1 Greylisted, try again in")
    appliance.restart()
    time.sleep(max(0.0, started + DELAY + 0.2 - time.monotonic()))
    code, reply = try_once(appliance, "greylisted")
    assert code == 250, reply                  # the first try's time was kept: no new wait
    wait_for(lambda: subjects(appliance) == ["greylisted"], timeout=15)
    assert "check=greylist stage=rcpt verdict=tempfail" in appliance.log()
    assert "check=greylist stage=rcpt verdict=accept" in appliance.log()


def test_the_first_try_is_remembered_across_kill_9(make_appliance):
    appliance = make_appliance(checks=GREYLIST)
    started = time.monotonic()
    assert try_once(appliance, "crash")[0] == 451
    time.sleep(0.5)                            # the writer commits within milliseconds of the reply
    appliance.kill9()
    appliance.start()
    time.sleep(max(0.0, started + DELAY + 0.2 - time.monotonic()))
    code, reply = try_once(appliance, "crash")
    assert code == 250, reply
    wait_for(lambda: subjects(appliance) == ["crash"], timeout=15)


def test_greylisting_off_delivers_at_once(make_appliance):
    appliance = make_appliance(checks={"greylist": "off"})
    assert try_once(appliance, "direct")[0] == 250


def test_our_users_on_submission_are_never_greylisted(make_appliance):
    appliance = make_appliance(checks=GREYLIST)
    with appliance.submit() as client:
        try:
            client.sendmail(ALICE, [ALICE], make_message("from alice", to=ALICE))
        except smtplib.SMTPException as problem:
            raise AssertionError(f"submission was refused: {problem}") from problem
    wait_for(lambda: subjects(appliance) == ["from alice"], timeout=15)
