"""Referenced Secrets served from the operator's watch instead of one GET per reconcile.

The engine resolves credentials on every pass (the secret *versions* are part of the
plan digest), so without a cache a restarted operator would make one Secret read per
reference per resource before it could say "nothing changed".  This source keeps the
bodies of the Secrets that resources reference (the operator's index says which), fed by
the Secret watch and primed at start; decoding, checks and versions are the credentials
layer's own (:func:`~reconciler.credentials.sources.resolve_from_secret`).  A miss falls
back to the wrapped source (an API read).

Only referenced Secrets are kept (a namespace may hold large unrelated ones, e.g. Helm
releases), only in memory, and never logged.  A newer resourceVersion always wins, so a
slow API read cannot overwrite a fresher watch event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.credentials.base import Resolved, SecretSource
from reconciler.credentials.sources import resolve_from_secret
from reconciler.resources import SecretRef
from reconciler.secret import Secret

Wanted = Callable[[str, str], bool]  # (namespace, name) -> referenced?


def _rv(body: dict[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class CachedKubeSecretSource:
    def __init__(self, fallback: SecretSource, wanted: Wanted) -> None:
        self._fallback = fallback
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

    async def resolve(self, ref: SecretRef, namespace: str) -> Resolved:
        sel = ref.secret_key_ref
        cached = self._bodies.get((namespace, sel.name)) if sel is not None else None
        if sel is not None and cached is not None:
            self.hits += 1
            return resolve_from_secret(cached, sel, namespace)  # no I/O: decode from memory
        self.misses += 1
        return await self._fallback.resolve(ref, namespace)

    async def write(self, ref: SecretRef, namespace: str, value: Secret) -> str:
        writer = getattr(self._fallback, "write", None)
        assert writer is not None
        version: str = await writer(ref, namespace, value)
        return version
