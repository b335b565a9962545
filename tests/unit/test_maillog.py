"""The log's own parts: Twisted's chatter kept at debug, a TLS failure's reason, the received line's fields,
the start-up summary."""
from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.logger import LogLevel, Logger
from twisted.python.failure import Failure

from appliance import config, maillog, tls, twistdlog
from tests.unit.checkrig import LogLines
from tests.unit.test_config import MINIMAL, write


def legacy(text: str) -> dict:
    """An event as twisted.python.log.msg("...") reaches a new-style observer."""
    return {"log_format": "{log_text}", "log_text": text, "log_level": LogLevel.info, "log_namespace": "log_legacy",
            "log_system": "-", "log_time": 0.0}


CHATTER = ["SMTPFactory (LimitedFactory) starting on 25", "IMAPFactory (LimitedFactory) (TLS) starting on 993",
           "(TCP Port 25 Closed)", "(UNIX Port /var/lib/mailappliance/control.sock Closed)",
           "/etc/resolv.conf changed, reparsing", "Resolver added ('192.0.2.53', 53) to server list",
           "Starting protocol <twisted.names.dns.DNSDatagramProtocol object at 0x7f>"]


def test_twisted_chatter_is_dropped_at_info_and_kept_at_debug():
    for level, expected in ((LogLevel.info, []), (LogLevel.debug, CHATTER + ["Starting factory <F>"])):
        seen: list[dict] = []
        observer = twistdlog.quiet(seen.append, level)
        for text in CHATTER:
            observer(legacy(text))
        Logger(namespace="appliance.smtp.server.SMTPFactory", observer=observer).info("Starting factory {f}", f="<F>")
        assert [event.get("log_text") or "Starting factory <F>" for event in seen] == expected


def test_our_lines_and_real_problems_pass_at_info():
    seen: list[dict] = []
    observer = twistdlog.quiet(seen.append)
    Logger(namespace="mail", observer=observer).info("connect service=smtp peer=192.0.2.7 session=ab")
    Logger(namespace="mail", observer=observer).info("received id=X rcpts=a@b starting on monday")
    observer(legacy("twistd 26.10.0 starting up."))
    observer(legacy("Received SIGTERM, shutting down."))
    Logger(namespace="twisted.internet.tcp", observer=observer).error("Port 25 Closed unexpectedly")
    assert len(seen) == 5


def test_the_level_comes_from_the_environment():
    assert twistdlog.level_from_environment({}) == LogLevel.info
    assert twistdlog.level_from_environment({"MAILAPPLIANCE_LOG_LEVEL": "Debug"}) == LogLevel.debug
    assert twistdlog.level_from_environment({"MAILAPPLIANCE_LOG_LEVEL": "loud"}) == LogLevel.info


def test_a_tls_failure_gives_openssl_reason_and_other_ends_none():
    error = SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")])
    assert tls.failure_reason(Failure(error)) == "tlsv1 alert unknown ca"
    assert tls.failure_reason(Failure(SSL.Error([("SSL routines", "", "wrong version number"),
                                                 ("SSL routines", "", "other")]))) == "wrong version number; other"
    assert tls.failure_reason(Failure(ConnectionDone())) is None
    assert tls.failure_reason(None) is None


def test_received_shows_the_given_addresses_only_when_they_differ():
    with LogLines() as log:
        maillog.received("Q1", "smtp", "192.0.2.7", "s@x.test", 10, ["alice@example.test", "bob@example.test"], "ESMTP",
                         session="ab", given=["sales@example.test", "sales@example.test"])
        maillog.received("Q2", "smtp", "192.0.2.7", "s@x.test", 10, ["alice@example.test"], "ESMTP",
                         given=["alice@example.test"])
    first, second = log.matching("received")
    assert 'rcpts="alice@example.test,bob@example.test" orig_rcpts=sales@example.test' in first
    assert first.endswith("session=ab")
    assert "orig_rcpts" not in second and "session" not in second


def test_the_start_up_summary_is_a_few_lines_naming_what_an_admin_checks(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL + f"state_dir = {tmp_path}/var\n[checks]\nspf = off\n"
                                                 "dnsbl = zen.example.test\n"))
    lines = config.summarise(cfg)
    assert len(lines) <= 6
    text = " ".join(f"{key}={value}" for fields in lines for key, value in fields.items())
    assert f"domains={','.join(cfg.appliance.domains)}" in text and "storage=" in text
    assert "greylist=suspicious" in text and "dnsbl=zen.example.test" in text and "spf=" not in text
