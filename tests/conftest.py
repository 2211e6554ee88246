"""Suite-wide fixtures.  Feature-specific fixtures live in tests/support/ modules."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.support.canary import assert_no_canary


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
