"""The self-signed certificate (demo, gen-cert) is accepted by clients on the machine itself.

A client checks the name it connected to; the demo's mail.example.test resolves nowhere, so
msmtp, fetchmail and neomutt pointed at 127.0.0.1 or localhost refused it (issue 12).
"""
from __future__ import annotations

import socket
import ssl

import pytest

from tests.integration.harness import SMTP_SERVICES


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "mail.example.test"])
def test_a_verifying_client_accepts_the_certificate_by_this_name(make_appliance, name):
    appliance = make_appliance(services=SMTP_SERVICES)
    context = ssl.create_default_context(cafile=appliance.cert_path)        # the certificate is its own CA
    with socket.create_connection(("127.0.0.1", appliance.ports["smtps"]), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            assert tls.recv(100).startswith(b"220 ")


def test_gen_cert_says_which_names_and_how_to_trust_it(make_appliance):
    appliance = make_appliance(services=SMTP_SERVICES)
    result = appliance.cli("gen-cert", "--force")
    assert result.stdout == (f"wrote {appliance.cert_path} and {appliance.root}/tls/key.pem: self-signed for "
                             "mail.example.test, localhost, 127.0.0.1, ::1, valid 10 years; clients trust it with "
                             f"{appliance.cert_path} as their CA file\n")
