"""Strategic merge patch of built-in kinds (tests/support/kube_smp.py), as
``k8s.io/apimachinery/pkg/util/strategicpatch`` applies it with the Go types' patch
strategies and merge keys (``patchStrategy:"merge" patchMergeKey:"name"`` on
``PodSpec.Containers``, ``EnvVar`` by ``name``, ``ObjectMeta.Finalizers`` as a set,
``DeploymentStrategy`` with ``$retainKeys``).  Before, the emulator applied a strategic
patch as a JSON merge patch: ``kubectl apply`` of one changed container replaced the whole
list and the other containers were lost.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.kube_emulator import EmulatorThread
from tests.support.kube_smp import PatchError, strategic_merge_patch

SMP = {"Content-Type": "application/strategic-merge-patch+json"}


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "mail", "finalizers": ["a.example/x"]},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {
                "tolerations": [{"key": "a", "operator": "Exists"}],
                "containers": [
                    {"name": "app", "image": "app:1",
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                     "ports": [{"containerPort": 8080}]},
                    {"name": "sidecar", "image": "side:1"},
                ]}}}}


def patch(obj: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    return strategic_merge_patch(obj, body, "apps", "Deployment")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def test_lists_with_a_merge_key_merge_item_by_item() -> None:
    """What ``kubectl apply`` sends after one container's image changed."""
    out = patch(deployment(), {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
        "containers": [{"name": "app", "image": "app:2",
                        "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                        "env": [{"name": "B", "value": "3"}]}]}}}})
    app, sidecar = pod_spec(out)["containers"]
    assert app["image"] == "app:2" and app["ports"] == [{"containerPort": 8080}]
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]
    assert sidecar == {"name": "sidecar", "image": "side:1"}
    # a new item is appended; $setElementOrder puts the listed ones in its order
    out = patch(out, {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "init"}, {"name": "app"},
                                        {"name": "sidecar"}],
        "containers": [{"name": "init", "image": "init:1"}]}}}})
    assert [c["name"] for c in pod_spec(out)["containers"]] == ["init", "app", "sidecar"]


def test_directives_delete_replace_retain_keys() -> None:
    out = patch(deployment(), {"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "$patch": "delete"}]}}}})
    assert [c["name"] for c in pod_spec(out)["containers"]] == ["app"]
    out = patch(deployment(), {"spec": {"template": {"spec": {"containers": [
        {"$patch": "replace"}, {"name": "only", "image": "only:1"}]}}}})
    assert pod_spec(out)["containers"] == [{"name": "only", "image": "only:1"}]
    out = patch(deployment(), {"spec": {"strategy": {"$retainKeys": ["type"],
                                                     "type": "Recreate"}}})
    assert out["spec"]["strategy"] == {"type": "Recreate"}
    out = patch(deployment(), {"spec": {"template": {"$patch": "replace", "spec": {
        "containers": [{"name": "x", "image": "x"}]}}}})
    assert out["spec"]["template"] == {"spec": {"containers": [{"name": "x", "image": "x"}]}}


def test_scalar_sets_and_lists_without_a_strategy() -> None:
    """``ObjectMeta.Finalizers`` merges as a set (``$deleteFromPrimitiveList`` removes);
    ``tolerations`` has no patch strategy and is replaced, as in a merge patch."""
    out = patch(deployment(), {"metadata": {"finalizers": ["b.example/y", "a.example/x"]}})
    assert out["metadata"]["finalizers"] == ["a.example/x", "b.example/y"]
    out = patch(out, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example/x"]}})
    assert out["metadata"]["finalizers"] == ["b.example/y"]
    out = patch(deployment(), {"spec": {"template": {"spec": {"tolerations": [
        {"key": "b", "operator": "Exists"}]}}}})
    assert pod_spec(out)["tolerations"] == [{"key": "b", "operator": "Exists"}]
    out = patch(deployment(), {"spec": {"strategy": None}})
    assert "strategy" not in out["spec"]
    with pytest.raises(PatchError, match="does not contain declared merge key: name"):
        patch(deployment(), {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})
    original = deployment()
    patch(original, {"spec": {"template": {"spec": {"containers": [{"name": "app",
                                                                     "image": "z"}]}}}})
    assert original == deployment()  # the stored object is never changed in place


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with EmulatorThread(namespaces=("mail",)) as kube:
        assert kube.emu is not None
        with httpx.Client(base_url=kube.url, timeout=10, **kube.emu.http_kwargs()) as client:
            yield client


def test_the_emulator_applies_strategic_patches_to_built_in_kinds(http: httpx.Client) -> None:
    body = copy.deepcopy(deployment())
    body["metadata"].pop("finalizers")
    path = "/apis/apps/v1/namespaces/mail/deployments"
    assert http.post(path, json=body).status_code == 201
    r = http.patch(f"{path}/d", headers=SMP, json={"spec": {"template": {"spec": {
        "containers": [{"name": "app", "image": "app:2"}]}}}})
    assert r.status_code == 200, r.text
    assert [(c["name"], c["image"]) for c in pod_spec(r.json())["containers"]] == \
        [("app", "app:2"), ("sidecar", "side:1")]
    r = http.patch(f"{path}/d", headers=SMP, json={"spec": {"template": {"spec": {
        "containers": [{"image": "nameless"}]}}}})
    assert r.status_code == 400 and "does not contain declared merge key" in r.json()["message"]
