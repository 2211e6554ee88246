"""Operator metrics computed when ``/metrics`` is scraped, not on a timer."""

from __future__ import annotations

import asyncio
from typing import Any

from reconciler.resources import API_VERSION
from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.main import build
from reconciler.runtimes.operator.settings import OperatorConfig
from reconciler.stores.kubeapi import Credentials
from reconciler.stores.kubetypes import as_object


def _relay(name: str, rv: str, ready: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ExternalSmtp",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                         "resourceVersion": rv, "generation": 1},
            "spec": {"host": "smtp.example.com", "port": 587},
            "status": {"observedGeneration": 1,
                       "conditions": [{"type": "Ready", "status": ready},
                                      {"type": "Validated", "status": "True"}]}}


def test_resources_by_condition_status_are_counted_at_each_scrape() -> None:
    """``smtpctl_resources`` says what the cache holds when it is scraped.  Before, a task
    recounted every cached resource every 5 s (41 ms a time at 10,000 resources) and a
    scrape saw the count of the last tick: this test, which runs no such task, failed
    (no ``smtpctl_resources`` sample at all)."""
    metrics = OperatorMetrics()

    def count(ready: str) -> float | None:
        value: float | None = metrics.registry.get_sample_value(
            "smtpctl_resources", {"kind": "ExternalSmtp", "condition": "Ready",
                                  "status": ready})
        return value

    async def main() -> None:
        parts = build(OperatorConfig(namespaces=["default"]), metrics,
                      Credentials(server="https://127.0.0.1:1"), version_key=b"k" * 32)
        try:
            parts.store.observe(as_object(_relay("a", "1", "True")), listed=True)
            parts.store.observe(as_object(_relay("b", "2", "True")), listed=True)
            assert count("True") == 2
            assert count("False") is None
            parts.store.observe(as_object(_relay("b", "3", "False")))
            assert (count("True"), count("False")) == (1, 1)
            assert metrics.registry.get_sample_value(
                "smtpctl_resources", {"kind": "ExternalSmtp", "condition": "Validated",
                                      "status": "True"}) == 2
            assert b'smtpctl_resources{condition="Ready",kind="ExternalSmtp",status="False"}' \
                b" 1.0" in metrics.render()
        finally:
            await parts.api.close()
            await parts.controller.world.aclose()

    asyncio.run(main())
