"""The operator process when the API server goes away or its token rotates: outage at
start, outage while watching, a Lease that cannot be renewed, a rotated and revoked
ServiceAccount token.

The API server is reached through a TCP proxy that can be taken down (new connections
closed, open ones cut) without moving its address.  Before the aiohttp client and the
reflectors, an unreachable API at start was a 35-line traceback and exit 1, and a watch
that could not reconnect left the operator running blind (kopf gave up, exit 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.devservers.smtp import RelayServer
from tests.support import canary
from tests.support.kube_operator import (
    OPERATOR_NS,
    OPERATOR_SA,
    RELAY_USER,
    Cluster,
    OperatorProcess,
    condition,
    relay_cluster,
    relay_spec,
    wait_for,
)
from tests.support.tcp_proxy import TcpProxy

NS = "mail"


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[Cluster, RelayServer, TcpProxy, dict[str, str]]]:
    with relay_cluster(tmp_path, NS) as (c, relay):
        host, port = c.kube.url.removeprefix("https://").rsplit(":", 1)
        with TcpProxy(host, int(port)) as proxy:
            # The simulated pod reaches the API server through the proxy (TLS passes it).
            yield c, relay, proxy, {"KUBERNETES_SERVICE_PORT": str(proxy.port)}


def test_outage_at_start_then_recovery(
    env: tuple[Cluster, RelayServer, TcpProxy, dict[str, str]],
) -> None:
    c, relay, proxy, via = env
    c.create_smtp(NS, "early", relay_spec(relay.port))
    proxy.set_down(True)
    server = f"https://127.0.0.1:{proxy.port}"
    with OperatorProcess(c, "op", "--namespace", NS, env=via, health_port=0,
                         lease_duration=30) as op:
        # One clear line naming the server (no traceback), retried, not ready meanwhile.
        wait_for("a line naming the server",
                 lambda: any(server in str(r.get("msg")) for r in op.logs()), timeout=20)
        assert op.exited() is None
        assert op.readyz() == 503
        assert "Traceback" not in op.log_text()
        proxy.set_down(False)
        wait_for("Ready after the API came back", lambda: c.ready(NS, "early"), timeout=30)
        wait_for("ready", lambda: op.readyz() == 200, timeout=20)


def test_outage_while_watching_then_resync(
    env: tuple[Cluster, RelayServer, TcpProxy, dict[str, str]],
) -> None:
    c, relay, proxy, via = env
    c.create_smtp(NS, "first", relay_spec(relay.port))
    with OperatorProcess(c, "op", "--namespace", NS, env=via, health_port=0,
                         lease_duration=60) as op:
        wait_for("first Ready", lambda: c.ready(NS, "first"))
        wait_for("published", lambda: c.secret_data(NS, "smtp-active-relay"))
        wait_for("ready", lambda: op.readyz() == 200, timeout=20)
        proxy.set_down(True)
        # While the operator cannot see the API: a new resource and a password rotation.
        c.create_smtp(NS, "during", relay_spec(relay.port))
        rotated = canary.canary("rotated-during-outage")
        relay.users[RELAY_USER] = rotated
        c.put_secret(NS, "relay-password", {"password": rotated})
        wait_for("not ready during the outage", lambda: op.readyz() == 503, timeout=20)
        before = relay.connections
        proxy.set_down(False)
        wait_for("the new resource reconciled", lambda: c.ready(NS, "during"), timeout=30)
        # The rotation made during the gap is seen (kept Secrets are re-read) and re-tested.
        wait_for("re-tested with the rotated password",
                 lambda: relay.connections > before + 1, timeout=30)
        wait_for("first still Ready", lambda: c.ready(NS, "first"), timeout=30)
        wait_for("republished", lambda: (c.secret_data(NS, "smtp-active-relay") or {})
                 .get("SMTP_PASSWORD") == rotated, timeout=30)
        # The Secrets kept from before the outage are re-read before use: "during" is
        # never tested with the rotated-away password (before: a spurious
        # AuthenticationFailed test and Warning Event when its pass ran before the resync).
        assert [r for r in op.logs() if r.get("reason") == "AuthenticationFailed"] == []
        assert op.exited() is None
        assert "Traceback" not in op.log_text()


Env = tuple[Cluster, RelayServer, TcpProxy, dict[str, str]]


def test_lease_not_renewable_exits_1(env: Env) -> None:
    c, _relay, proxy, via = env
    with OperatorProcess(c, "op", "--namespace", NS, env=via, lease_duration=3) as op:
        wait_for("leader", lambda: any(r.get("msg") == "became leader" for r in op.logs()))
        wait_for("watching", lambda: any(r.get("msg") == "primed cache" for r in op.logs()))
        proxy.set_down(True)  # longer than the renew deadline (2 s)
        wait_for("exited", lambda: op.exited() is not None, timeout=30)
        assert op.exited() == 1
        assert any(r.get("msg") == "lost leadership" for r in op.logs())


def test_token_rotation_and_revocation(
    env: tuple[Cluster, RelayServer, TcpProxy, dict[str, str]],
) -> None:
    """The kubelet rotates the bound token and the old one is revoked: the operator re-reads
    the file on the 401 and carries on (before: read once at start, then 401 forever)."""
    c, relay, _proxy, _via = env
    c.create_smtp(NS, "first", relay_spec(relay.port))
    with OperatorProcess(c, "op", "--namespace", NS) as op:
        wait_for("first Ready", lambda: c.ready(NS, "first"))
        for _ in range(2):
            c.kube.rotate_in_cluster_token(c.sa_dir, OPERATOR_NS, OPERATOR_SA, revoke_old=True)
        c.create_smtp(NS, "after", relay_spec(relay.port))
        wait_for("a resource created after the rotation is reconciled",
                 lambda: c.ready(NS, "after"), timeout=30)
        c.patch_smtp(NS, "first", {"spec": {"refreshInterval": "2h"}})
        wait_for("and changes are still seen", lambda: condition(
            c.smtp(NS, "first"), "Ready").get("observedGeneration") == 2, timeout=30)
        assert op.exited() is None  # the Lease was renewed with the new token too
