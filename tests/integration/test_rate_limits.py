"""Rate limits on a real twistd: per client on port 25, per logged-in user on submission; the memory of
the recipients a user wrote to and the day's counts survive a restart."""
from __future__ import annotations

from tests.integration.harness import DOMAIN, make_message

ALICE = f"alice@{DOMAIN}"


def test_port_25_messages_per_minute(make_appliance):
    appliance = make_appliance(checks={"client_messages_per_minute": "2"})
    with appliance.smtp() as client:
        client.ehlo()
        for _ in range(2):
            assert client.mail("someone@outside.example")[0] == 250
            client.rset()
        assert client.mail("someone@outside.example") == (
            450, b"4.7.1 Too many messages from your address, try again later")
    assert "check=rates stage=mail verdict=tempfail" in appliance.log()


def test_submission_caps_and_known_recipients_across_a_restart(make_appliance):
    appliance = make_appliance(checks={"user_messages_per_day": "3", "user_new_recipients_per_day": "2"})
    with appliance.submit() as client:
        assert client.mail(ALICE)[0] == 250                               # message 1 of the day's 3
        assert client.rcpt("friend@elsewhere.example")[0] == 250         # new: 1 of the day's 2
        assert client.rcpt("friend@elsewhere.example")[0] == 250         # the same one: not counted again
        assert client.rcpt("colleague@elsewhere.example")[0] == 250      # new: 2 of 2
        assert client.rcpt("stranger@elsewhere.example") == (450, b"4.7.1 Daily sending limit reached")
        assert client.data(make_message("to friends", to="friend@elsewhere.example"))[0] == 250
        assert client.mail(ALICE)[0] == 250                               # message 2
        client.rset()
    assert "check=rates stage=rcpt verdict=tempfail" in appliance.log()
    appliance.restart()
    with appliance.submit() as client:
        assert client.mail(ALICE)[0] == 250                               # message 3
        assert client.rcpt("friend@elsewhere.example")[0] == 250         # known, after the restart too
        assert client.rcpt("colleague@elsewhere.example")[0] == 250
        assert client.rcpt("stranger@elsewhere.example") == (450, b"4.7.1 Daily sending limit reached")
        client.rset()
        assert client.mail(ALICE) == (450, b"4.7.1 Daily sending limit reached")    # the day's count was kept
