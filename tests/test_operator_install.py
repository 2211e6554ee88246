"""Uninstall without stuck objects, the published Secret's ownership, the version key.

* Uninstalling while the operator runs (delete the custom resources first, as
  docs/operator.md says) leaves nothing behind our finalizer, and the CRDs delete.
* Uninstalling after the operator is gone: ``smtpctl operator --remove-finalizers``
  drops our finalizer (never another controller's); the CRDs then delete.  Before it
  existed, the CRD stayed Terminating behind our finalizer (asserted below first).
* A Secret named like the published one that the operator did not create is neither
  overwritten nor deleted (before: the create's 409 fell through to an unconditional PUT,
  and the delete when no relay was active removed it).
* Without ``SMTPCTL_VERSION_KEY`` the operator creates the shared Secret
  ``smtpctl-version-key`` itself, so no install step has to run before the pods.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.devservers.smtp import RelayServer
from reconciler.stores.kube import MEMO_FIELD
from tests.support.kube_operator import (
    OPERATOR_NS,
    ROOT,
    Cluster,
    OperatorProcess,
    relay_cluster,
    relay_spec,
    wait_for,
)

USER = "user@example.test"
NS = "mail"
PUBLISHED = "smtp-active-relay"
FINALIZER = "smtp.reconciler.dev/finalizer"
CRD = "externalsmtps.smtp.reconciler.dev"


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[Cluster, RelayServer]]:
    with relay_cluster(tmp_path, NS) as (c, relay):
        yield c, relay


def crd_exists(c: Cluster) -> bool:
    assert c.kube.emu is not None
    return c.kube.emu.get_object("apiextensions.k8s.io/v1", "customresourcedefinitions", "",
                                 CRD) is not None


def delete_crd(c: Cluster) -> None:
    ext = __import__("kubernetes").client.ApiextensionsV1Api(c.client)
    ext.delete_custom_resource_definition(CRD)


def test_uninstall_while_running_leaves_nothing_stuck(env: tuple[Cluster, RelayServer]) -> None:
    c, relay = env
    c.create_smtp(NS, "one", relay_spec(relay.port))
    with OperatorProcess(c, "op", "--namespace", NS):
        wait_for("Ready", lambda: c.ready(NS, "one"))
        wait_for("published", lambda: c.secret_data(NS, PUBLISHED))
        c.delete_smtp(NS, "one")  # step 1 of the documented uninstall
        wait_for("gone", lambda: c.smtp(NS, "one") is None)
        wait_for("published Secret removed", lambda: c.secret_data(NS, PUBLISHED) is None)
    delete_crd(c)  # step 2: the install, CRDs included
    wait_for("CRD deleted", lambda: not crd_exists(c))


def test_remove_finalizers_after_the_operator_is_gone(env: tuple[Cluster, RelayServer]) -> None:
    c, relay = env
    c.create_smtp(NS, "one", relay_spec(relay.port))
    with OperatorProcess(c, "op", "--namespace", NS):
        wait_for("finalizer added",
                 lambda: FINALIZER in ((c.smtp(NS, "one") or {}).get("metadata") or {})
                 .get("finalizers", []))
    c.patch_smtp(NS, "one", {"metadata": {"finalizers": [FINALIZER, "other.example/keep"]}})
    delete_crd(c)
    # Without the operator our finalizer holds the object, so the CRD stays Terminating.
    wait_for("object marked for deletion",
             lambda: "deletionTimestamp" in ((c.smtp(NS, "one") or {}).get("metadata") or {}))
    assert crd_exists(c)
    env_vars = dict(os.environ)
    env_vars.pop("KUBECONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "operator", "--kubeconfig", str(c.kubeconfig),
         "--namespace", NS, "--remove-finalizers"],
        cwd=ROOT, env=env_vars, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    obj = c.smtp(NS, "one")
    assert obj is not None and obj["metadata"]["finalizers"] == ["other.example/keep"]
    c.patch_smtp(NS, "one", {"metadata": {"finalizers": None}})  # the other controller's turn
    wait_for("CRD deleted", lambda: not crd_exists(c))


def test_foreign_secret_with_the_published_name_is_left_alone(
    env: tuple[Cluster, RelayServer],
) -> None:
    c, relay = env
    c.put_secret(NS, PUBLISHED, {"owner": "someone-else"})
    c.create_smtp(NS, "one", relay_spec(relay.port))
    with OperatorProcess(c, "op", "--namespace", NS) as op:
        wait_for("Ready", lambda: c.ready(NS, "one"))
        wait_for("warning", lambda: any("did not create" in str(r.get("msg"))
                                        for r in op.logs()))
        assert c.secret_data(NS, PUBLISHED) == {"owner": "someone-else"}
        c.delete_smtp(NS, "one")
        wait_for("gone", lambda: c.smtp(NS, "one") is None)
        wait_for("deletion handled",
                 lambda: any(r.get("reason") == "Deleting" for r in op.logs()))
    assert c.secret_data(NS, PUBLISHED) == {"owner": "someone-else"}


def test_version_key_is_created_once_and_shared(env: tuple[Cluster, RelayServer]) -> None:
    c, relay = env
    c.create_smtp(NS, "one", relay_spec(relay.port))
    no_key = {"SMTPCTL_VERSION_KEY": ""}
    with OperatorProcess(c, "op1", "--namespace", NS, env=no_key):
        # Ready, with its test memo: one status write carries both.
        wait_for("Ready and memo", lambda: c.ready(NS, "one") and MEMO_FIELD in (
            (c.smtp(NS, "one") or {}).get("status") or {}))
    assert c.kube.emu is not None
    key = c.kube.emu.get_object("v1", "secrets", OPERATOR_NS, "smtpctl-version-key")
    assert key is not None and key["data"]["key"]
    rv = c.smtp(NS, "one")["metadata"]["resourceVersion"]  # type: ignore[index]
    connections = relay.connections
    with OperatorProcess(c, "op2", "--namespace", NS, env=no_key) as op:
        wait_for("caught up", lambda: any(r.get("msg") == "reconciled" for r in op.logs()))
        # Same key -> same secret versions -> no re-test, no write after a restart.
        assert relay.connections == connections
        assert c.smtp(NS, "one")["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    again = c.kube.emu.get_object("v1", "secrets", OPERATOR_NS, "smtpctl-version-key")
    assert again is not None and again["data"] == key["data"]
