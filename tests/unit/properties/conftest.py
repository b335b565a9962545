"""Hypothesis profiles for the property tests of every parser that reads outside bytes.

- `ci` (the default): derandomized (the same examples on every run, so CI is reproducible),
  no deadline (a 2-core machine shared with other jobs must not turn slowness into failures),
  no example database in the checkout. The whole property suite stays well under a minute.
- `fuzz`: what bench/fuzz runs: random seeds and many more examples
  (MAILAPPLIANCE_FUZZ_EXAMPLES, default 100000 per test).

Pick one with HYPOTHESIS_PROFILE=ci|fuzz. Tests that cost more per example (a whole protocol
session) take a fraction of the profile's examples through `examples()` in `strategies.py`.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUIET_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci", max_examples=300, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=_QUIET_CHECKS)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("MAILAPPLIANCE_FUZZ_EXAMPLES", "100000")), deadline=None,
    derandomize=False, database=None, print_blob=True, suppress_health_check=_QUIET_CHECKS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
