"""Referenced Secrets served from the operator's watch instead of one GET per reconcile.

The engine resolves credentials on every pass (the secret *versions* are part of the
plan digest), so without a cache a restarted operator would make one Secret read per
reference per resource before it could say "nothing changed".  This subclass of the
credentials layer's :class:`~reconciler.credentials.sources.KubeSecretSource` keeps the
bodies of the Secrets that resources reference (the operator's index says which), fed by
the Secret watch and primed with one LIST; decoding, checks and versions stay the
credentials layer's own (``_resolve_sync``).  A miss falls back to the API read.

Only referenced Secrets are kept (a namespace may hold large unrelated ones, e.g. Helm
releases), only in memory, and never logged.  A newer resourceVersion always wins, so a
slow API read cannot overwrite a fresher watch event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.credentials.base import Resolved
from reconciler.credentials.sources import ApiClientFactory, KubeSecretSource
from reconciler.resources import SecretKeySelector, SecretRef

Wanted = Callable[[str, str], bool]  # (namespace, name) -> referenced?


def _rv(body: dict[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class CachedKubeSecretSource(KubeSecretSource):
    def __init__(self, api_client_factory: ApiClientFactory, wanted: Wanted) -> None:
        super().__init__(api_client_factory)
        self._wanted = wanted
        self._bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0

    def observe(self, body: dict[str, Any], *, deleted: bool = False) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if deleted:
            self._bodies.pop(key, None)
            return
        if not self._wanted(*key):
            self._bodies.pop(key, None)
            return
        old = self._bodies.get(key)
        if old is None or _rv(body) >= _rv(old):
            self._bodies[key] = {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                                 "data": dict(body.get("data") or {})}

    def _read(self, sel: SecretKeySelector, namespace: str) -> dict[str, Any]:
        cached = self._bodies.get((namespace, sel.name))
        if cached is not None:
            return cached
        doc = super()._read(sel, namespace)
        self.observe({**doc, "metadata": {**(doc.get("metadata") or {}),
                                          "namespace": namespace, "name": sel.name}})
        return doc

    async def resolve(self, ref: SecretRef, namespace: str) -> Resolved:
        sel = ref.secret_key_ref
        if sel is not None and (namespace, sel.name) in self._bodies:
            self.hits += 1
            return self._resolve_sync(sel, namespace)  # no I/O: decode from memory
        self.misses += 1
        return await super().resolve(ref, namespace)
