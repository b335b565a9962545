"""Fixtures that give each integration test its own running appliance (see harness.py)."""
from __future__ import annotations

import socket

from collections.abc import Callable, Iterator

import pytest

from tests.integration.harness import SMTP_SERVICES, Appliance, ApplianceError

MakeAppliance = Callable[..., Appliance]


@pytest.fixture
def make_appliance(request: pytest.FixtureRequest, tmp_path) -> Iterator[MakeAppliance]:
    """make_appliance(storage="maildir", services=SMTP_SERVICES, **{section: {key: value}}).

    Each call sets up and starts one appliance below tmp_path; all are stopped at teardown.
    """
    made: list[Appliance] = []
    request.node.appliances = made          # read by pytest_runtest_makereport below

    def make(storage: str = "maildir", services=SMTP_SERVICES, **overrides: dict[str, str]) -> Appliance:
        appliance = Appliance(str(tmp_path / f"appliance{len(made)}"), storage=storage, services=services,
                              overrides=overrides)
        made.append(appliance)
        try:
            appliance.setup()
            appliance.start()
        except ApplianceError as problem:
            pytest.fail(str(problem), pytrace=False)
        return appliance

    yield make
    for appliance in made:
        appliance.stop()


@pytest.fixture
def appliance(make_appliance: MakeAppliance) -> Appliance:
    """The default appliance: Maildir storage, SMTP ports only, nobody trusted for relay."""
    return make_appliance()


@pytest.fixture(params=["maildir", "mbox"])
def storage(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On failure, show the appliance's log tail next to the assertion: that is where the why is."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when == "call":   # setup failures already carry the log
        for number, appliance in enumerate(getattr(item, "appliances", [])):
            report.sections.append((f"appliance {number} log", appliance.diagnostics()))


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """A `[delivery] nameservers` value whose UDP port takes queries and never answers: mail for
    remote domains is deferred 4.4.3 and stays queued."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{silent.getsockname()[1]}"
    silent.close()
