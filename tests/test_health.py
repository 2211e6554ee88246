"""``/healthz``, ``/readyz`` and ``/metrics`` of an operator running in-process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from reconciler.runtimes.operator import OperatorConfig, run_operator
from tests.support.kube_emulator import running_emulator
from tests.support.kube_operator import standin_crd


async def test_health_ready_and_metrics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpctl.operator")
    async with running_emulator() as (emu, url):
        emu.install_crd(standin_crd("ExternalSmtp", "externalsmtps"))
        emu.install_crd(standin_crd("OAuth2Provider", "oauth2providers"))
        from tests.support.kube_emulator import kubeconfig_text

        cfg = tmp_path / "kubeconfig"
        cfg.write_text(kubeconfig_text(url))
        config = OperatorConfig(
            kubeconfig=str(cfg),
            namespaces=["default"],
            health_host="127.0.0.1",
            health_port=0,
            metrics_port=0,
            identity="health-test",
            lease_duration=3,
            renew_deadline=2,
            renew_period=0.5,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(run_operator(config, stop=stop))
        try:
            ports: dict[str, int] = {}
            for _ in range(100):
                for r in caplog.records:
                    if r.getMessage() == "listening":
                        ports["/metrics" if "/metrics" in r.paths else "/healthz"] = r.port  # type: ignore[attr-defined]
                if len(ports) == 2 and any(
                    r.getMessage() == "primed cache" for r in caplog.records
                ):
                    break
                await asyncio.sleep(0.05)
            assert len(ports) == 2
            async with httpx.AsyncClient(timeout=5) as http:
                base = f"http://127.0.0.1:{ports['/healthz']}"
                assert (await http.get(base + "/healthz")).status_code == 200
                ready = None
                for _ in range(100):
                    ready = await http.get(base + "/readyz")
                    if ready.status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                assert ready is not None and ready.status_code == 200
                text = (await http.get(f"http://127.0.0.1:{ports['/metrics']}/metrics")).text
                assert "smtpctl_leader 1.0" in text
                assert "smtpctl_connection_tests_total" in text
                assert "smtpctl_queue_depth" in text
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0
        # A clean stop releases the Lease for the standby.
        lease = emu.get_object("coordination.k8s.io/v1", "leases", "default", "smtpctl-operator")
        assert lease is not None and lease["spec"]["holderIdentity"] == ""
