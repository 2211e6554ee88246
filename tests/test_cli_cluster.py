"""`smtpctl get/describe --kubeconfig` read CR status from a cluster (the API emulator)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from reconciler.cli.main import main
from tests.support.kube_operator import GROUP, VERSION, cluster, relay_spec

NOW = "2026-11-27T10:00:00Z"


def _status() -> dict[str, object]:
    cond = {"type": "Ready", "status": "False", "reason": "AuthenticationFailed",
            "message": "generation 2 failed (AuthenticationFailed); generation 1 remains in use",
            "lastTransitionTime": NOW, "observedGeneration": 1}
    return {
        "observedGeneration": 1, "conditions": [cond], "selected": True,
        "activeGeneration": 1, "lastTestTime": NOW,
        "active": {"generation": 1, "host": "127.0.0.1", "port": 2525,
                   "authentication": "UsernamePassword", "tlsMode": "starttls",
                   "username": "user@example.test", "from": "user@example.test"},
        "lastTest": {"passed": False, "stage": "auth", "reason": "AuthenticationFailed",
                     "message": "Authentication failed: Bad username / password",
                     "durationSeconds": 0.25, "generation": 1},
    }


def test_get_and_describe_read_the_cluster(tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    with cluster(tmp_path) as c:
        c.create_smtp("mail", "relay", relay_spec(2525))
        c.co.patch_namespaced_custom_object_status(
            GROUP, VERSION, "mail", "externalsmtps", "relay", {"status": _status()})
        c.core.create_namespaced_event("mail", cast(Any, {
            "metadata": {"name": "relay.1"}, "type": "Warning",
            "reason": "AuthenticationFailed", "message": "generation 2 failed",
            "involvedObject": {"kind": "ExternalSmtp", "name": "relay", "namespace": "mail"},
            "lastTimestamp": NOW}))
        kc = str(c.kubeconfig)
        empty_state = str(tmp_path / "no-local-store")

        assert main(["get", "externalsmtp", "-n", "mail", "--kubeconfig", kc,
                     "--state", empty_state, "-o", "json"]) == 0
        listed = json.loads(capfd.readouterr().out)
        assert listed["kind"] == "List"
        items = listed["items"]
        assert [i["metadata"]["name"] for i in items] == ["relay"]
        assert items[0]["status"]["activeGeneration"] == 1

        assert main(["get", "-n", "mail", "--kubeconfig", kc, "--state", empty_state]) == 0
        table = capfd.readouterr().out
        assert "mail/relay" in table and "AuthenticationFailed" in table

        assert main(["describe", "externalsmtp", "relay", "-n", "mail", "--kubeconfig", kc,
                     "--state", empty_state]) == 0
        desc = capfd.readouterr().out
        assert "generation 1 remains in use" in desc
        assert "stage auth, reason AuthenticationFailed" in desc
        assert "Warning" in desc and "generation 2 failed" in desc  # the Event

        assert main(["get", "active", "-n", "mail", "-o", "env", "--kubeconfig", kc]) == 0
        assert "SMTP_HOST='127.0.0.1'" in capfd.readouterr().out

        assert main(["describe", "externalsmtp", "nope", "-n", "mail",
                     "--kubeconfig", kc]) == 1


def test_unreachable_cluster_is_one_clear_line(tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: x, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "contexts: [{name: x, context: {cluster: x, user: x}}]\n"
        "users: [{name: x, user: {}}]\n")
    assert main(["get", "--kubeconfig", str(kc)]) == 2
    err = capfd.readouterr().err
    assert "cannot read from the cluster" in err and "Traceback" not in err
