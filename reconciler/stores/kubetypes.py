"""Typed shapes of the Kubernetes objects that flow through the store and the operator.

The API answers JSON; these ``TypedDict`` s say which fields the code relies on (all
optional, as in the API: a watch event may carry a partial object) and the accessors
replace ``(body.get("metadata") or {}).get(...)`` chains with one typed call.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast


class OwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    finalizers: list[str]
    ownerReferences: list[OwnerReference]


class KubeObject(TypedDict, total=False):
    """A custom resource, a Secret, a Lease ... (``spec``/``status``/``data`` as JSON)."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]
    status: dict[str, Any]
    data: dict[str, str]
    type: str


class ListMeta(TypedDict, total=False):
    resourceVersion: str
    remainingItemCount: int


class WatchEvent(TypedDict, total=False):
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK | ERROR
    object: KubeObject


def as_object(doc: dict[str, Any]) -> KubeObject:
    """A JSON document from the API, seen as a :class:`KubeObject` (no copy)."""
    return cast(KubeObject, doc)


def meta_of(body: KubeObject | None) -> ObjectMeta:
    """The object's metadata (empty when absent)."""
    return (body or {}).get("metadata") or {}


def name_of(body: KubeObject | None) -> str:
    return str(meta_of(body).get("name") or "")


def namespace_of(body: KubeObject | None) -> str:
    return str(meta_of(body).get("namespace") or "")


def resource_version(body: KubeObject | None) -> str:
    """Opaque: compare for equality only."""
    return str(meta_of(body).get("resourceVersion") or "")


def uid_of(body: KubeObject | None) -> str:
    return str(meta_of(body).get("uid") or "")


def finalizers_of(body: KubeObject | None) -> list[str]:
    return [str(f) for f in meta_of(body).get("finalizers") or []]


def is_deleting(body: KubeObject | None) -> bool:
    return bool(meta_of(body).get("deletionTimestamp"))


def conditions_of(body: KubeObject | None) -> list[dict[str, Any]]:
    return [c for c in ((body or {}).get("status") or {}).get("conditions") or []
            if isinstance(c, dict)]


def condition(body: KubeObject | None, ctype: str) -> dict[str, Any]:
    for c in conditions_of(body):
        if c.get("type") == ctype:
            return c
    return {}
