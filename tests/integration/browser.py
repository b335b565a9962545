"""A real browser for the tests: Debian's headless chromium driven by chromedriver through Selenium.

The appliance's certificate is self-signed; chromium is told to trust exactly that key with
--ignore-certificate-errors-spki-list (the base64 SHA-256 of the certificate's
SubjectPublicKeyInfo), which chromium honours only with its own --user-data-dir. Any other
certificate error still fails. A missing chromium, chromedriver or Selenium fails under CI and
skips elsewhere (harness.require_program).
"""
from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.harness import require_program

PAGE_LOAD_TIMEOUT = 30


def spki_hash(cert_path: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate, as chromium's flag wants it."""
    with open(cert_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def _webdriver() -> Any:
    try:
        from selenium import webdriver
    except ImportError:
        import os
        message = "selenium is not installed (pip install -e .[test])"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return webdriver


@contextmanager
def chromium(cert_path: str, profile: str) -> Iterator[Any]:
    """A headless chromium trusting the appliance's certificate, with a fresh profile in `profile`."""
    binary = require_program("chromium")
    driver_path = require_program("chromedriver")
    webdriver = _webdriver()
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", f"--ignore-certificate-errors-spki-list={spki_hash(cert_path)}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
