"""The operator's credential source: which configuration wins, and token rotation.

Before: ``--kubeconfig`` defaulted to ``$KUBECONFIG`` ahead of the in-cluster
configuration (contrary to its help text), and the ServiceAccount token was read once, so
a rotated (bound) token was never picked up.
"""

from __future__ import annotations

from pathlib import Path

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
