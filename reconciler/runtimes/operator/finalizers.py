"""The finalizer ``smtp.reconciler.dev/finalizer`` on each ExternalSmtp.

It is added inside a worker's pass (under the pass slots, so 10,000 new resources do not
become 10,000 concurrent PATCHes) and removed when the deletion has been handled:
selection recomputed in the namespace (failover) and the published Secret updated.
"""

from __future__ import annotations

import logging
import time

from reconciler.engine.selection import select_scope
from reconciler.engine.world import BasicWorld
from reconciler.runtimes.operator.settings import FINALIZER
from reconciler.runtimes.publish import Publisher
from reconciler.stores.base import Event, ObjectRef
from reconciler.stores.kube import KubeStore
from reconciler.stores.kubeapi import ApiError

log = logging.getLogger("smtpctl.operator")


def has_finalizer(body: dict[str, object] | None) -> bool:
    meta = (body or {}).get("metadata") or {}
    assert isinstance(meta, dict)
    return FINALIZER in (meta.get("finalizers") or [])


async def add_finalizer(store: KubeStore, ref: ObjectRef, current: list[str]) -> None:
    try:
        body = await store.api.patch(
            store.path(ref), {"metadata": {"finalizers": [*current, FINALIZER]}})
        store.observe(body)
    except ApiError as exc:
        if exc.code != 404:
            log.warning("could not add finalizer", extra={"resource": str(ref),
                                                          "code": exc.code})


async def finalize(store: KubeStore, world: BasicWorld, publisher: Publisher,
                   ref: ObjectRef) -> None:
    """Release selection (failover), update the published Secret, drop the finalizer."""
    try:
        now = world.clock()
        await world.events.emit(Event(ref, "Normal", "Deleting",
                                      f"{ref.kind} {ref.name!r} is being deleted; "
                                      "releasing its selection", _rfc3339(now)))
        await select_scope(ref.namespace, world)  # deleting objects do not take part
        await publisher.sync(ref.namespace)
        for _ in range(5):
            body = store.cached(ref) or await store.api.get(store.path(ref))
            rest = [f for f in (body.get("metadata") or {}).get("finalizers") or []
                    if f != FINALIZER]
            patch = {"metadata": {"finalizers": rest or None,
                                  "resourceVersion": body["metadata"]["resourceVersion"]}}
            try:
                await store.api.patch(store.path(ref), patch)
                break
            except ApiError as exc:
                if exc.code == 404:
                    break
                if exc.code != 409:
                    raise
                store.forget(ref)
    except ApiError as exc:
        if exc.code != 404:
            log.warning("finalizer cleanup failed", extra={"resource": str(ref),
                                                           "code": exc.code})


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
