"""Cached labelled children of the operator's metrics (reconciler/runtimes/metrics.py)."""

from __future__ import annotations

import threading
from enum import StrEnum

from reconciler.runtimes.metrics import OperatorMetrics


class _Action(StrEnum):
    TESTED = "tested"


def _sample(m: OperatorMetrics, name: str, labels: dict[str, str]) -> float | None:
    value = m.registry.get_sample_value(name, labels)
    return value


def test_children_are_the_labelled_children_and_count_the_same() -> None:
    m = OperatorMetrics()
    kid = m.reconciles_of("ExternalSmtp", _Action.TESTED)
    assert kid is m.reconciles.labels("ExternalSmtp", "tested")  # the very child
    assert m.reconciles_of("ExternalSmtp", "tested") is kid  # str and enum: one key
    kid.inc()
    m.reconciles_of("ExternalSmtp", _Action.TESTED).inc()
    m.reconciles.labels("ExternalSmtp", "tested").inc()
    assert _sample(m, "smtpctl_reconciles_total",
                   {"kind": "ExternalSmtp", "action": "tested"}) == 3.0
    m.test_duration_of("tls").observe(0.02)
    assert _sample(m, "smtpctl_connection_test_stage_seconds_count", {"stage": "tls"}) == 1.0
    assert b'smtpctl_reconciles_total{action="tested",kind="ExternalSmtp"} 3.0' in m.render()


def test_children_count_every_request_from_two_threads() -> None:
    m = OperatorMetrics()

    def hammer() -> None:
        for _ in range(2000):
            m.kube_requests_of("PUT", "leases").inc()

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hammer()
    assert _sample(m, "smtpctl_kube_requests_total",
                   {"verb": "PUT", "resource": "leases"}) == 6000.0
