"""The operator's credential source: which configuration wins, and token rotation.

Before: ``--kubeconfig`` defaulted to ``$KUBECONFIG`` ahead of the in-cluster
configuration (contrary to its help text), and the ServiceAccount token was read once, so
a rotated (bound) token was never picked up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

from reconciler.stores.kubeapi import ConfigError, in_cluster, load_credentials
from tests.support.kube_emulator import kubeconfig_text


def _service_account(tmp_path: Path, token: str) -> tuple[Path, dict[str, str]]:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_bytes(trustme.CA().cert_pem.bytes())
    (sa / "namespace").write_text("smtpctl-system\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443",
           "SMTPCTL_SERVICEACCOUNT_DIR": str(sa)}
    return sa, env


def test_in_cluster_wins_over_kubeconfig_env_but_not_over_the_flag(tmp_path: Path) -> None:
    _sa, env = _service_account(tmp_path, "sa-token")
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(kubeconfig_text("http://127.0.0.1:1"))
    env["KUBECONFIG"] = str(cfg)
    creds = load_credentials(None, environ=env)
    assert creds.source == "in-cluster" and creds.server == "https://10.0.0.1:6443"
    assert creds.namespace == "smtpctl-system"
    assert creds.authorization() == "Bearer sa-token"
    flagged = load_credentials(str(cfg), environ=env)
    assert flagged.server == "http://127.0.0.1:1" and flagged.source == f"kubeconfig {cfg}"
    # Outside a pod $KUBECONFIG is used.
    del env["KUBERNETES_SERVICE_HOST"]
    assert load_credentials(None, environ=env).server == "http://127.0.0.1:1"


def test_the_flag_does_not_default_to_kubeconfig_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from reconciler.cli import cmd_operator

    monkeypatch.setenv("KUBECONFIG", "/somewhere/else")
    parser = argparse.ArgumentParser()
    cmd_operator.configure(parser)
    # None: load_credentials decides (in-cluster first in a pod).
    assert parser.parse_args([]).kubeconfig is None


def test_rotated_service_account_token_is_reread(tmp_path: Path) -> None:
    sa, env = _service_account(tmp_path, "first")
    creds = in_cluster(env)
    assert creds.authorization() == "Bearer first"
    (sa / "token").write_text("second")  # the kubelet rotated the bound token
    assert creds.refresh()  # what a 401 triggers (the periodic re-read does the same)
    assert creds.authorization() == "Bearer second"


def test_missing_configuration_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_credentials(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="in-cluster files missing"):
        in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1",
                    "SMTPCTL_SERVICEACCOUNT_DIR": str(tmp_path)})


async def test_the_operator_exits_1_when_a_watch_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A watch task that ends (here: its handler crashes on an event) stops the operator
    with exit status 1 instead of leaving it running blind (kopf's watcher used to give up
    and the process exited 0 or kept running without watches)."""
    import asyncio
    import logging

    from reconciler.runtimes.operator import OperatorConfig, run_operator
    from reconciler.runtimes.operator.controller import Controller
    from reconciler.stores.kubeapi import Credentials, KubeApi, resource_path
    from tests.support.kube_emulator import running_emulator

    caplog.set_level(logging.INFO, logger="smtpctl.operator")
    root = Path(__file__).resolve().parents[1]
    real_handle = Controller.handle

    def handle(self: Controller, body: Any, event_type: str | None) -> None:
        if event_type == "ADDED" and body["metadata"]["name"] == "poison":
            raise RuntimeError("handler bug")
        real_handle(self, body, event_type)

    monkeypatch.setattr(Controller, "handle", handle)
    async with running_emulator(root / "manifests" / "crds") as (emu, url):
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(emu.kubeconfig(url))
        config = OperatorConfig(kubeconfig=str(cfg), namespaces=["default"],
                                leader_election=False, health_port=-1, metrics_port=-1,
                                version_key=b"k")
        task = asyncio.create_task(run_operator(config))
        for _ in range(200):
            if any(r.getMessage() == "primed cache" for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        api = KubeApi(Credentials(server=url, token=emu.admin_token,
                                  ssl_context=emu.client_ssl_context()))
        await api.post(resource_path("smtp.reconciler.dev/v1alpha1", "externalsmtps", "default"),
                       {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
                        "metadata": {"name": "poison"},
                        "spec": {"host": "smtp.example.com", "port": 587,
                                 "authentication": "None"}})
        await api.close()
        assert await asyncio.wait_for(task, 30) == 1
    assert any(r.getMessage() == "watch stopped" for r in caplog.records)
