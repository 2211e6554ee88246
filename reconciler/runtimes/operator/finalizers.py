"""The finalizer ``smtp.reconciler.dev/finalizer`` on the ExternalSmtps whose deletion needs
handling: the selected relays (their deletion fails over and changes the published
Secret).  An unselected relay's deletion needs only what its DELETED watch event does.

* **Added** before the status write that selects a relay
  (:meth:`reconciler.stores.kube.KubeStore.update_status`), and by a pass
  (:func:`add_finalizer`) to a selected relay that lost it; kept when the relay is
  deselected.  Both are a merge patch of the list read from the object *with that
  object's resourceVersion as a precondition*: if anyone changed the object since
  (another controller adding or removing its own finalizer), the API answers 409, the
  object is re-read and the patch recomputed - another controller's finalizer is never
  dropped.  (Operators before session 12 put it on every ExternalSmtp; those objects keep
  it until their deletion is handled.)
* **Removed** when the deletion has been handled (selection recomputed in the namespace -
  failover - and the published Secret updated), the same way (precondition, re-read on
  409).  The whole handling is retried with a per-object exponential backoff until it
  succeeds or the object is gone: while the operator runs, a deleted object never stays
  stuck behind our finalizer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from reconciler.engine.selection import select_scope
from reconciler.engine.world import BasicWorld
from reconciler.runtimes.operator.settings import FINALIZER
from reconciler.runtimes.operator.workers import error_backoff
from reconciler.runtimes.publish import Publisher
from reconciler.stores.base import Event, ObjectRef, StoreError
from reconciler.stores.kube import KubeStore
from reconciler.stores.kubeapi import ApiError, Conflict, NotFound
from reconciler.stores.kubetypes import KubeObject, as_object, finalizers_of, resource_version

log = logging.getLogger("smtpctl.operator")
MAX_CONFLICTS = 16


def has_finalizer(body: KubeObject | None) -> bool:
    return FINALIZER in finalizers_of(body)


async def _patch_finalizers(store: KubeStore, ref: ObjectRef, *, add: bool) -> None:
    """Add or remove ours with a resourceVersion precondition; re-read on 409."""
    body = store.cached(ref)
    for _ in range(MAX_CONFLICTS):
        if body is None:
            body = as_object(await store.api.get(store.path(ref)))
        current = finalizers_of(body)
        if (FINALIZER in current) == add:
            return
        wanted = [*current, FINALIZER] if add else [f for f in current if f != FINALIZER]
        try:
            await store.patch(ref, {"metadata": {
                "finalizers": wanted or None, "resourceVersion": resource_version(body)}})
        except Conflict:
            body = None  # someone else wrote: re-read, recompute
            continue
        return
    raise StoreError(f"cannot update the finalizers of {ref}: still conflicting")


async def add_finalizer(store: KubeStore, ref: ObjectRef) -> None:
    try:
        await _patch_finalizers(store, ref, add=True)
    except NotFound:
        pass


async def remove_finalizer(store: KubeStore, ref: ObjectRef) -> None:
    try:
        await _patch_finalizers(store, ref, add=False)
    except NotFound:
        pass


async def finalize_once(store: KubeStore, world: BasicWorld, publisher: Publisher,
                        ref: ObjectRef) -> None:
    """Release selection (failover), update the published Secret, drop the finalizer."""
    await select_scope(ref.namespace, world)  # deleting objects do not take part
    await publisher.sync(ref.namespace)
    await remove_finalizer(store, ref)


async def finalize(store: KubeStore, world: BasicWorld, publisher: Publisher,
                   ref: ObjectRef, *, backoff: Callable[[int], float] = error_backoff) -> None:
    """:func:`finalize_once`, retried with exponential backoff until it succeeds."""
    await world.events.emit(Event(ref, "Normal", "Deleting",
                                  f"{ref.kind} {ref.name!r} is being deleted; "
                                  "releasing its selection", _rfc3339(world.clock())))
    failures = 0
    while True:
        try:
            await finalize_once(store, world, publisher, ref)
            return
        except asyncio.CancelledError:
            raise
        except (ApiError, StoreError) as exc:
            failures += 1
            delay = backoff(failures)
            log.warning("finalizer cleanup failed; retrying", extra={
                "resource": str(ref), "error": str(exc), "retryAfter": delay})
        except Exception as exc:
            failures += 1
            delay = backoff(failures)
            log.exception("finalizer cleanup crashed; retrying", extra={
                "resource": str(ref), "error": type(exc).__name__, "retryAfter": delay})
        await asyncio.sleep(delay)


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
