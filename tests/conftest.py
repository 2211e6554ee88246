"""Suite-wide fixtures.  Feature-specific fixtures live in tests/support/ modules."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.support.canary import assert_no_canary

# Hypothesis' two wall-clock checks are timers asserting performance inside tests, which
# this suite does not do (performance is measured in bench/): the per-example `deadline`
# (200 ms) and the `too_slow` health check (input generation slower than ~1 s).  On a
# loaded machine a descheduled draw alone trips them - tests/test_engine.py's
# test_choose_properties failed a clean-clone CI run with "Input generation is slow: ...
# slowest draw 1.247 s" for a list of at most 8 small records.  The deterministic checks
# (filter_too_much, data_too_large, ...) stay on.  A test may still set its own settings.
settings.register_profile(
    "suite", deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


@pytest.fixture(autouse=True)
def leak_guard(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Fail any test whose captured output or logs contain a planted canary secret."""
    caplog.set_level(logging.DEBUG)
    yield
    out, err = capfd.readouterr()
    assert_no_canary(out, err, where="captured stdout/stderr")
    assert_no_canary("\n".join(r.getMessage() for r in caplog.records), where="log records")
    # Put the output back so pytest still reports it on failure.
    print(out, end="")
