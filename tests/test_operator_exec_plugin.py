"""``exec`` credential plugins (cloud kubeconfigs: ``aws eks get-token``, ``gke-gcloud-auth-
plugin``, ``kubelogin``), with a real plugin process against the strict API emulator.

The plugin is a shell script that prints an ``ExecCredential`` with the token currently in
a file and records each run.  The operator's client and ``get --kubeconfig`` authenticate
with it; when the token is rotated and the old one revoked, the ``401`` makes the client
run the plugin again and retry once, without restarting anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.stores.kubeapi import KubeApi, Unauthorized, load_credentials, resource_path
from tests.support.kube_auth import User
from tests.support.kube_emulator import EmulatorThread

ROOT = Path(__file__).resolve().parents[1]
NS = "mail"


class Plugin:
    """A credential plugin script: prints the token in ``token``, counts its runs."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.token_file = directory / "token"
        self.calls_file = directory / "calls"
        self.script = directory / "get-token"
        self.script.write_text(
            "#!/bin/sh\n"
            "# a kubectl credential plugin (client.authentication.k8s.io/v1)\n"
            f"echo run >> '{self.calls_file}'\n"
            "printf '{\"apiVersion\":\"client.authentication.k8s.io/v1\","
            "\"kind\":\"ExecCredential\",\"status\":{\"token\":\"%s\"}}\\n' "
            f"\"$(cat '{self.token_file}')\"\n")
        self.script.chmod(self.script.stat().st_mode | stat.S_IXUSR)

    @property
    def runs(self) -> int:
        return len(self.calls_file.read_text().splitlines()) if self.calls_file.exists() else 0

    def kubeconfig(self, path: Path, url: str, ca_file: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "cloud",
            "clusters": [{"name": "cloud", "cluster": {
                "server": url, "certificate-authority": str(ca_file)}}],
            "users": [{"name": "cloud", "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": str(self.script), "interactiveMode": "Never"}}}],
            "contexts": [{"name": "cloud", "context": {
                "cluster": "cloud", "user": "cloud", "namespace": NS}}],
        }))
        return path


@pytest.fixture()
def kube(tmp_path: Path) -> Iterator[EmulatorThread]:
    with EmulatorThread(ROOT / "manifests" / "crds", workdir=tmp_path / "emu",
                        namespaces=(NS,)) as kube:
        yield kube


def _issue(kube: EmulatorThread, name: str) -> str:
    """A token for a cluster administrator (what a cloud IAM mapping would grant)."""
    assert kube.emu is not None
    return str(kube.call(kube.emu.authenticator.add_token,
                         User(name, ("system:masters", "system:authenticated"))))


def test_exec_plugin_token_and_rerun_after_revocation(
        kube: EmulatorThread, tmp_path: Path) -> None:
    assert kube.tls is not None
    plugin = Plugin(tmp_path)
    first = _issue(kube, "alice")
    plugin.token_file.write_text(first)
    cfg = plugin.kubeconfig(tmp_path / "kubeconfig", kube.url, kube.tls.ca_file)

    creds = load_credentials(str(cfg))
    assert plugin.runs == 1  # the loader ran the plugin
    assert creds.authorization() == f"Bearer {first}"
    assert creds.namespace == NS

    path = resource_path("smtp.reconciler.dev/v1alpha1", "externalsmtps", NS)

    async def scenario() -> None:
        api = KubeApi(creds)
        try:
            assert (await api.get(path)).get("items") == []
            # The token expires (rotated by the identity provider, the old one revoked).
            second = _issue(kube, "alice")
            plugin.token_file.write_text(second)
            kube.revoke_token(first)
            sent = api.requests
            assert (await api.get(path)).get("items") == []  # 401 -> plugin re-run -> retry
            assert api.requests == sent + 2
            assert plugin.runs == 2
            assert creds.authorization() == f"Bearer {second}"
        finally:
            await api.close()
        # A plugin that still hands out a revoked token: one re-run, then a clean 401.
        again = KubeApi(load_credentials(str(cfg)))
        try:
            assert plugin.runs == 3
            kube.revoke_token(second)
            with pytest.raises(Unauthorized):
                await again.get(path)
            assert again.requests == 2
            assert plugin.runs == 4
        finally:
            await again.close()

    asyncio.run(scenario())


def test_get_kubeconfig_with_an_exec_plugin(kube: EmulatorThread, tmp_path: Path) -> None:
    """The user-facing path: ``smtpctl get --kubeconfig`` with a cloud-style kubeconfig."""
    assert kube.tls is not None
    plugin = Plugin(tmp_path)
    plugin.token_file.write_text(_issue(kube, "bob"))
    cfg = plugin.kubeconfig(tmp_path / "kubeconfig", kube.url, kube.tls.ca_file)
    admin = KubeApi(load_credentials(str(kube.write_kubeconfig(tmp_path / "admin"))))

    async def create() -> None:
        try:
            await admin.post(
                resource_path("smtp.reconciler.dev/v1alpha1", "externalsmtps", NS),
                {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
                 "metadata": {"name": "via-plugin"},
                 "spec": {"host": "smtp.example.com", "port": 587,
                          "authentication": "None"}})
        finally:
            await admin.close()

    asyncio.run(create())
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "get", "externalsmtp", "-n", NS,
         "--kubeconfig", str(cfg), "-o", "json"],
        capture_output=True, text=True, timeout=60, env=env, check=False)
    assert out.returncode == 0, out.stderr
    names = [item["metadata"]["name"] for item in _items(json.loads(out.stdout))]
    assert names == ["via-plugin"]
    assert plugin.runs >= 1


def _items(doc: object) -> list[dict[str, dict[str, str]]]:
    if isinstance(doc, dict):
        return list(doc.get("items") or [doc])
    assert isinstance(doc, list)
    return list(doc)
