"""The suite's own safety nets: every test peer is installed, and the unprivileged re-run
really has no privilege (otherwise the permission tests it carries would prove nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import peers, privilege


@pytest.mark.parametrize("name", sorted(peers.PEERS))
def test_peer_is_installed(name: str) -> None:
    """./dev test installs every peer; CI must go red, not skip, when one is missing."""
    peers.require(name)


def test_missing_peer_fails_the_test_instead_of_skipping() -> None:
    peers.PEERS["no-such-peer"] = peers.Peer("no-such-peer", ("no-such-package",),
                                             commands=("smtpctl-no-such-command",))
    try:
        with pytest.raises(pytest.fail.Exception, match="no-such-package"):
            peers.require("no-such-peer")
    finally:
        del peers.PEERS["no-such-peer"]


def test_unprivileged_rerun_cannot_bypass_file_modes(tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    if privilege.rerun_unprivileged(request):
        return
    assert not privilege.bypasses_file_permissions()
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o000)
    with pytest.raises(PermissionError):
        secret.read_text()


def test_hypothesis_runs_without_wall_clock_checks() -> None:
    """The suite's Hypothesis profile (tests/conftest.py) drops the two timers - the
    per-example deadline and the too_slow health check - which failed a clean-clone CI run
    on a loaded machine; every deterministic health check stays on."""
    from hypothesis import HealthCheck, settings

    current = settings.default
    assert current is not None and current.deadline is None
    assert list(current.suppress_health_check) == [HealthCheck.too_slow]
