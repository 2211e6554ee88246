"""The reflector's re-list: an object a new LIST no longer has gets a DELETED event with
what the controller needs (kind, apiVersion, namespace, name, uid), although the reflector
keeps only each object's uid between lists (not a body per resource: memory at 10,000)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from reconciler.runtimes.operator.watching import Reflector
from reconciler.stores.kubetypes import KubeObject


class Pages:
    """``list_page`` of a fake API: the items of the current LIST, one page."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def list_page(self, path: str, params: Mapping[str, str] | None = None
                        ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        yield [dict(i) for i in self.items], "7"


def _item(name: str, uid: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "mail", "uid": uid,
                         "resourceVersion": "5"}, "spec": {"host": "relay.test"}}


async def test_a_relist_synthesizes_deleted_for_vanished_objects() -> None:
    api = Pages()
    seen: list[tuple[KubeObject, str | None]] = []
    refl = Reflector(api, "/apis/x", lambda body, etype: seen.append((body, etype)),  # type: ignore[arg-type]
                     kind="ExternalSmtp", api_version="smtp.reconciler.dev/v1alpha1")
    api.items = [_item("a", "uid-a"), _item("b", "uid-b")]
    await refl.list()
    assert [(b["metadata"]["name"], e) for b, e in seen] == [("a", None), ("b", None)]
    seen.clear()
    api.items = [_item("a", "uid-a")]  # b was deleted while the watch was down
    await refl.list()
    assert [(b["metadata"]["name"], e) for b, e in seen] == [("a", None), ("b", "DELETED")]
    gone = seen[1][0]
    assert gone == {"kind": "ExternalSmtp", "apiVersion": "smtp.reconciler.dev/v1alpha1",
                    "metadata": {"name": "b", "namespace": "mail", "uid": "uid-b"}}
    assert refl.resource_version == "7"
    seen.clear()
    await refl.list()  # nothing vanished since: no DELETED again
    assert [e for _, e in seen] == [None]
