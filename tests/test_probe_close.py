"""The probe closes its socket before it returns (no descriptor left to the GC)."""

from __future__ import annotations

import asyncio
import os

import pytest

from reconciler.devservers.smtp import RelayServer
from reconciler.probe import ProbeCredentials, run_probe
from reconciler.resources import ExternalSmtpSpec
from reconciler.secret import Secret
from tests.support.canary import PASSWORD

USER = "close@example.test"


def _client_sockets(server_port: int) -> int:
    """Open sockets of this process connected *to* ``server_port``.

    The relay runs in a thread of this process, so its own (server-side) sockets must not
    count: only those whose remote port is the relay's are the probe's.
    """
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[9] in inodes and remote_port == server_port:
                    count += 1
    return count


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
            verdict = asyncio.run(run_probe(spec, creds))
            assert verdict.passed, verdict.message
            left_open += _client_sockets(relay.port)
        assert left_open == 0


def test_close_completes_on_the_peers_close_not_on_the_grace_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: aclose() waited on aiosmtplib's _closed_future, which nothing resolves,
    # so every test sat out the whole grace period (+250 ms per test, seen in bench/probe).
    # With an hour of grace, only a close driven by connection_lost can finish in time.
    import reconciler.probe.wire as wire

    real = wire.Wire.aclose

    async def patient(self: wire.Wire, grace: float = 0.25) -> None:
        await real(self, grace=3600)

    monkeypatch.setattr(wire.Wire, "aclose", patient)
    with RelayServer(mode="starttls", users={USER: PASSWORD}) as relay:
        spec = ExternalSmtpSpec.model_validate({
            "host": "127.0.0.1", "port": relay.port, "authentication": "UsernamePassword",
            "startTLS": True, "username": USER, "passwordFrom": {"env": "UNUSED"},
        })
        creds = ProbeCredentials(password=Secret(PASSWORD), ca_bundle_pem=relay.ca_pem)

        async def bounded() -> None:
            verdict = await asyncio.wait_for(run_probe(spec, creds), 20)
            assert verdict.passed, verdict.message

        asyncio.run(bounded())
