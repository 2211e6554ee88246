"""Settings of the operator, passed explicitly to every part (no module-level state)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from reconciler.credentials.policy import SourcePolicy
from reconciler.probe.egress import EgressPolicy

FINALIZER = "smtp.reconciler.dev/finalizer"
IDLE_REQUEUE = 3600.0  # "only a change can help": still look again hourly
ERROR_BACKOFF = 1.0  # first retry after a failed pass; doubles per failure
ERROR_BACKOFF_MAX = 300.0


@dataclass
class OperatorConfig:
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    selector: str | None = None
    publish_secret: str = "smtp-active-relay"  # noqa: S105 - a Secret name
    leader_election: bool = True
    lease_name: str = "smtpctl-operator"
    lease_namespace: str | None = None
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    renew_period: float = 2.0
    health_host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet
    health_port: int = 8080
    metrics_port: int = 9090
    concurrency: int = 16
    # Connection tests in this many worker processes (operator/probing.py); 0: in the loop.
    probe_workers: int = 0
    per_host: int = 4
    announce_testing: bool = True
    # In a pod, loopback is the pod itself (sidecars): refused unless asked for (tests).
    allow_loopback: bool = False
    # The tenant boundary (docs/security.md): own-namespace Secrets only, unless a cluster
    # administrator allow-listed variables or directories (cli/opsecurity.py builds both).
    source_policy: SourcePolicy = field(default_factory=SourcePolicy.operator)
    # Where SMTP probes and OAuth endpoints may connect (None: the default deny list,
    # loopback as allow_loopback says).
    egress: EgressPolicy | None = None
    # Key of the secret-version hashes; None: the shared Secret smtpctl-version-key.
    version_key: bytes | None = None
