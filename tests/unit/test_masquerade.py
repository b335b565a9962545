"""Masquerading of envelope and header addresses, as a sendmail administrator expects."""
from appliance.masquerade import Masquerader

M = Masquerader(domains=("lan.example.test",), as_domain="example.test", exceptions=("root",))


def test_host_below_a_listed_domain_is_rewritten():
    assert M.rewrite_address("user@pc12.lan.example.test") == "user@example.test"
    assert M.rewrite_address("user@LAN.example.test") == "user@example.test"


def test_other_domains_and_exceptions_are_kept():
    assert M.rewrite_address("user@example.org") == "user@example.org"
    assert M.rewrite_address("user@notlan.example.test") == "user@notlan.example.test"
    assert M.rewrite_address("root@pc12.lan.example.test") == "root@pc12.lan.example.test"
    assert M.rewrite_address("") == ""


def test_headers_rewritten_body_and_other_headers_untouched():
    msg = (b"From: Jean <jean@pc12.lan.example.test>\r\n"
           b"To: bob@pc3.lan.example.test\r\n"
           b"Reply-To: a@x.lan.example.test,\r\n b@y.lan.example.test\r\n"
           b"Sender: root@pc12.lan.example.test\r\n"
           b"Subject: mail from jean@pc12.lan.example.test\r\n"
           b"\r\n"
           b"From: jean@pc12.lan.example.test in the body\r\n")
    out, changes = M.rewrite_headers(msg)
    assert b"From: Jean <jean@example.test>\r\n" in out
    assert b"Reply-To: a@example.test,\r\n b@example.test\r\n" in out
    assert b"To: bob@pc3.lan.example.test\r\n" in out
    assert b"Sender: root@pc12.lan.example.test\r\n" in out
    assert b"Subject: mail from jean@pc12.lan.example.test\r\n" in out
    assert out.endswith(b"\r\n\r\nFrom: jean@pc12.lan.example.test in the body\r\n")
    assert ("jean@pc12.lan.example.test", "jean@example.test") in changes and len(changes) == 3


def test_disabled_is_identity():
    off = Masquerader(domains=(), as_domain="")
    msg = b"From: a@pc.lan.example.test\r\n\r\nx\r\n"
    assert off.rewrite_headers(msg) == (msg, [])
    assert off.rewrite_address("a@pc.lan.example.test") == "a@pc.lan.example.test"
