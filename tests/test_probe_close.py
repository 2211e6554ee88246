"""The probe closes its socket before it returns (no descriptor left to the GC)."""

from __future__ import annotations

import asyncio
import os

from reconciler.devservers.smtp import RelayServer
from reconciler.probe import ProbeCredentials, run_probe
from reconciler.resources import ExternalSmtpSpec
from reconciler.secret import Secret
from tests.support.canary import PASSWORD

USER = "close@example.test"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_tls_socket_is_closed_when_run_probe_returns() -> None:
    # Regression: a TLS transport's close() only starts close_notify; with
    # asyncio.run(run_probe(...)) the loop ended first in a few percent of runs and the
    # socket stayed open until garbage collection.
    with RelayServer(mode="starttls", users={USER: PASSWORD}) as relay:
        spec = ExternalSmtpSpec.model_validate({
            "host": "127.0.0.1", "port": relay.port, "authentication": "UsernamePassword",
            "startTLS": True, "username": USER, "passwordFrom": {"env": "UNUSED"},
        })
        creds = ProbeCredentials(password=Secret(PASSWORD), ca_bundle_pem=relay.ca_pem)
        left_open = 0
        for _ in range(30):
            before = _open_fds()
            verdict = asyncio.run(run_probe(spec, creds))
            assert verdict.passed, verdict.message
            left_open += _open_fds() > before
        assert left_open == 0
