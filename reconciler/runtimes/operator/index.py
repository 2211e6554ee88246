"""Which resources depend on which Secret and which OAuth2Provider (the wake-up index).

A change to a Secret wakes the resources that reference it; a change of readiness of an
OAuth2Provider wakes the ExternalSmtps that use it.  The secret cache also asks the index
whether a Secret is referenced at all (only those are kept in memory).
"""

from __future__ import annotations

from reconciler.resources import KIND_SMTP
from reconciler.stores.base import ObjectRef
from reconciler.stores.kubetypes import KubeObject

SecretKey = tuple[str, str]  # namespace, name


def secret_names(body: KubeObject) -> set[str]:
    """Names of Secrets (same namespace) a resource's spec references."""
    spec = body.get("spec") or {}
    refs = [spec.get("passwordFrom"), spec.get("clientSecretFrom"), spec.get("refreshTokenFrom"),
            (spec.get("tls") or {}).get("caBundleFrom")]
    out = set()
    for ref in refs:
        if isinstance(ref, dict):
            skr = ref.get("secretKeyRef")
            if isinstance(skr, dict) and skr.get("name"):
                out.add(str(skr["name"]))
    return out


def provider_name(ref: ObjectRef, body: KubeObject) -> str | None:
    prov = ((body.get("spec") or {}).get("oauth2ProviderRef") or {}).get("name")
    return str(prov) if ref.kind == KIND_SMTP and prov else None


class DependencyIndex:
    def __init__(self) -> None:
        self._secrets: dict[SecretKey, set[ObjectRef]] = {}
        self._providers: dict[SecretKey, set[ObjectRef]] = {}
        # ref -> (the spec object indexed, its entries)
        self._entries: dict[ObjectRef, tuple[object, list[tuple[
            dict[SecretKey, set[ObjectRef]], SecretKey]]]] = {}

    def update(self, ref: ObjectRef, body: KubeObject | None) -> None:
        """Index ``ref`` by what ``body`` references (``None``: the object is gone).

        Only the spec matters: when ``body``'s spec is the very object indexed last time
        (the store keeps an unchanged spec as the same object), nothing is done."""
        spec = None if body is None else body.get("spec")
        held = self._entries.get(ref)
        if held is not None and spec is not None and held[0] is spec:
            return
        for table, key in self._entries.pop(ref, (None, []))[1]:
            deps = table.get(key)
            if deps is not None:
                deps.discard(ref)
                if not deps:
                    del table[key]
        if body is None:
            return
        entries = [(self._secrets, (ref.namespace, name)) for name in secret_names(body)]
        prov = provider_name(ref, body)
        if prov:
            entries.append((self._providers, (ref.namespace, prov)))
        for table, key in entries:
            table.setdefault(key, set()).add(ref)
        self._entries[ref] = (spec, entries)

    def secret_users(self, namespace: str, name: str) -> set[ObjectRef]:
        return set(self._secrets.get((namespace, name), ()))

    def is_referenced(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._secrets

    def provider_users(self, namespace: str, name: str) -> set[ObjectRef]:
        return set(self._providers.get((namespace, name), ()))
