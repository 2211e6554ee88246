"""``/healthz``, ``/readyz`` and ``/metrics`` of an operator running in-process.

The metrics assertions read sample values, not names: an earlier version matched the
``# HELP`` lines, which are present even when nothing was ever counted (with the
``tests`` counter's ``inc()`` removed from the controller it still passed; now it fails).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import httpx
import pytest

from reconciler.runtimes.operator import OperatorConfig, run_operator
from reconciler.stores.kubeapi import Credentials, KubeApi, resource_path
from tests.support.kube_emulator import running_emulator

ROOT = Path(__file__).resolve().parents[1]
API = "smtp.reconciler.dev/v1alpha1"


def _samples(text: str) -> dict[str, float]:
    """Sample values by name and the labels that matter here (sums over the others)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            keys = [sample.name]
            for label in ("result", "kind"):
                if label in sample.labels:
                    keys.append(f'{sample.name}{{{label}="{sample.labels[label]}"}}')
            for key in keys:
                out[key] = out.get(key, 0.0) + sample.value
    return out


async def test_health_ready_and_metrics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpctl.operator")
    async with running_emulator(ROOT / "manifests" / "crds") as (emu, url):
        # A relay that refuses connections: one failed connection test to count.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        api = KubeApi(Credentials(server=url, token=emu.admin_token,
                                  ssl_context=emu.client_ssl_context()))
        await api.post(resource_path(API, "externalsmtps", "default"), {
            "apiVersion": API, "kind": "ExternalSmtp", "metadata": {"name": "refused"},
            "spec": {"host": "127.0.0.1", "port": closed_port, "authentication": "None",
                     "connectionTest": {"checkRelay": False, "timeoutSeconds": 5}}})
        await api.close()

        cfg = tmp_path / "kubeconfig"
        cfg.write_text(emu.kubeconfig(url))
        config = OperatorConfig(
            kubeconfig=str(cfg),
            namespaces=["default"],
            health_host="127.0.0.1",
            health_port=0,
            metrics_port=0,
            identity="health-test",
            allow_loopback=True,
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
                metrics_url = f"http://127.0.0.1:{ports['/metrics']}/metrics"
                samples: dict[str, float] = {}
                for _ in range(200):  # until the connection test has been counted
                    text = (await http.get(metrics_url)).text
                    samples = _samples(text)
                    if samples.get('smtpctl_connection_tests_total{result="failed"}'):
                        break
                    await asyncio.sleep(0.05)
                assert samples["smtpctl_leader"] == 1.0
                assert samples['smtpctl_connection_tests_total{result="failed"}'] == 1.0
                assert samples.get('smtpctl_connection_tests_total{result="passed"}', 0) == 0
                assert samples["smtpctl_workers"] == 1.0
                assert samples['smtpctl_reconciles_total{kind="ExternalSmtp"}'] >= 1.0
                assert "smtpctl_queue_depth" in samples
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0
        # A clean stop releases the Lease for the standby.
        lease = emu.get_object("coordination.k8s.io/v1", "leases", "default", "smtpctl-operator")
        assert lease is not None and lease["spec"]["holderIdentity"] == ""
