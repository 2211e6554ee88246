"""The Kubernetes store: desired state is the custom resource, status its subresource.

It implements :class:`reconciler.stores.base.Store` for the operator:

* **Reads come from a cache** of custom resource bodies that the operator keeps current
  from its watch streams (:meth:`KubeStore.observe` / :meth:`KubeStore.forget`) and primes
  with one paginated LIST at start (:meth:`KubeStore.prime`), like controller-runtime's
  cached client.  A cache miss falls back to a GET.  So a reconcile that decides "nothing
  to do" costs no API request, which is what lets a restarted operator catch up with
  10,000 unchanged resources quickly.
* **Status writes are optimistic**: a PUT to ``/status`` carrying the cached
  ``resourceVersion``.  On ``409 Conflict`` the store re-reads the object and calls the
  engine's mutator again on the fresh object (re-applying the *decision*, never blindly
  overwriting what another writer did), up to :data:`MAX_ATTEMPTS` times.
* **The test memo** (last tested digest, due time, failures) is ``status.testMemo``
  (:data:`MEMO_FIELD`), written in the *same* status PUT as the verdict it belongs to: one
  write per resource and pass, and the memo can never disagree with the conditions it was
  decided with.  The engine never sees the field in ``StoredObject.status`` (the store
  takes it out and hands it over as ``StoredObject.memo``, and puts ``StatusWrite.memo``
  back in when it writes).  Objects written by operators before session 12 carry the memo
  in the annotation :data:`MEMO_ANNOTATION` instead: it is read when the status has no
  memo, carried into the status by the next status write, and never written again, so a
  restart over such objects still tests nothing and writes nothing.  The digest is over
  the spec and the secrets' keyed *versions* (the same value as ``status.active.digest``):
  no secret and nothing a secret can be recovered from.
* **The finalizer** (``finalizer=``, ExternalSmtps only) goes only where a deletion needs
  handling: on a relay that is, or is about to be, *selected* (its deletion fails over
  and changes the published Secret).  The one place that makes a relay selected is a
  status write, so :meth:`KubeStore.update_status` adds the finalizer *before* a write
  whose status says ``selected`` (a merge patch of the list with the object's
  ``resourceVersion`` as precondition: another controller's finalizer is never dropped;
  on 409 re-read and re-decide), and the operator's pass re-adds it to a selected relay
  that lost it (:meth:`KubeStore.needs_finalizer`).  It is not removed when the relay is
  deselected, only when its deletion has been handled.  An unselected relay's deletion
  needs nothing but what the DELETED watch event does (selection recomputed; a published
  Secret has an owner reference).
* ``record_event`` posts a core/v1 Event on the object.  ``record_test`` keeps nothing:
  Kubernetes has no place for a test history, ``status.lastTest`` and the Events carry the
  last test and every transition, and a failed test's redacted transcript is logged at
  debug level (``smtpctl operator -v``).  (Keeping the last five records per resource in
  memory cost ~8 KB per resource that nothing read.)
* **Selection reads only what changed**: every change of the cache (a watch event, the
  answer of our own write, a GET after a miss or a conflict, a deletion) is journaled per
  scope (kind, namespace), so :meth:`KubeStore.changes_since` names the objects changed
  since a token and the engine's selection (engine/selection.py) re-reads only those
  instead of converting every object of the namespace on every run.  A LIST item that
  changes the cache (the priming list, a re-list after ``410 Gone`` or a watch outage:
  changes may have been missed) starts a new journal epoch instead: tokens of the old one
  answer "cannot tell" and the caller lists again.  :meth:`KubeStore.get` and
  :meth:`KubeStore.list` hand out the same :class:`StoredObject` for an unchanged cached
  body while anyone still holds it (``shares_objects``; kept weakly, so only what the
  engine keeps stays in memory).
* **Memory**: a cached body keeps only what the operator reads (no ``managedFields``, no
  kubectl last-applied annotation), and its keys and short strings are interned, so the
  10,000 copies of ``"observedGeneration"``, ``"True"``, ``"TestPassed"`` ... are one each
  (a cached ExternalSmtp body: ~12 KB as parsed, ~5.5 KB interned).

Never a secret: bodies here are custom resources, which hold only references.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from reconciler.resources import API_VERSION, KIND_OAUTH2, KIND_SMTP
from reconciler.stores.base import (
    Event,
    ObjectRef,
    StatusMutator,
    StatusWrite,
    StoredObject,
    StoreError,
    TestMemo,
    TestRecord,
)
from reconciler.stores.kubeapi import (
    ApiError,
    Conflict,
    Invalid,
    KubeApi,
    NotFound,
    resource_path,
)
from reconciler.stores.kubetypes import (
    KubeObject,
    ObjectMeta,
    as_object,
    finalizers_of,
    is_deleting,
    meta_of,
    name_of,
    namespace_of,
    resource_version,
    uid_of,
)

log = logging.getLogger(__name__)

MEMO_FIELD = "testMemo"  # status.testMemo: the test memo (see the module doc)
MEMO_ANNOTATION = "smtp.reconciler.dev/last-test"  # where operators before session 12 kept it
PLURALS = {KIND_SMTP: "externalsmtps", KIND_OAUTH2: "oauth2providers"}
MAX_ATTEMPTS = 8
JOURNAL_MIN = 4096  # a scope's journal starts a new epoch past max(this, 4 x its objects)
INTERN_MAX = 64  # strings up to this long are interned in cached bodies
AWAIT_SECONDS = 60.0  # stop waiting for our own write's watch event after this long
_META_KEYS = ("name", "namespace", "labels", "annotations", "generation", "uid",
              "resourceVersion", "creationTimestamp", "deletionTimestamp", "finalizers")

Key = tuple[str, str, str]  # kind, namespace, name


def ref_of(body: KubeObject) -> ObjectRef:
    return ObjectRef(str(body.get("kind")), namespace_of(body) or "default", name_of(body))


def _memo_of(raw: Any) -> TestMemo | None:
    try:
        return TestMemo.from_json(raw if isinstance(raw, dict) else json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a mangled memo only costs a re-test


def to_stored(body: KubeObject) -> StoredObject:
    """The engine's view of a custom resource body (its ``status`` is the body's own dict
    unless it holds the memo, which is taken out: cached bodies are never mutated in
    place, and stored objects are read-only)."""
    meta = meta_of(body)
    memo: TestMemo | None = None
    status = body.get("status") or {}
    if MEMO_FIELD in status:
        memo = _memo_of(status[MEMO_FIELD])
        status = {k: v for k, v in status.items() if k != MEMO_FIELD}
    else:  # written by an operator before session 12: the annotation, read only
        raw = (meta.get("annotations") or {}).get(MEMO_ANNOTATION)
        if raw:
            memo = _memo_of(raw)
    manifest = {
        "apiVersion": body.get("apiVersion", API_VERSION), "kind": body.get("kind"),
        "metadata": {k: v for k, v in meta.items() if k in (
            "name", "namespace", "labels", "annotations", "generation", "uid",
            "resourceVersion", "creationTimestamp")},
        "spec": body.get("spec") or {},
    }
    return StoredObject(
        ref=ref_of(body), manifest=manifest, generation=int(meta.get("generation") or 1),
        created_at=str(meta.get("creationTimestamp") or ""), status=status,
        memo=memo, version=resource_version(body), uid=uid_of(body),
    )


def status_body(write: StatusWrite) -> dict[str, Any]:
    """The ``status`` a write sends: the engine's status with the memo in it."""
    status = dict(write.status)
    status.pop(MEMO_FIELD, None)
    if write.memo is not None:
        status[MEMO_FIELD] = write.memo.to_json()
    return status


class KubeStore:
    """The operator's :class:`~reconciler.stores.base.Store` (see the module docstring)."""

    def __init__(self, api: KubeApi, *, namespaces: list[str] | None = None,
                 label_selector: str | None = None, finalizer: str | None = None) -> None:
        self.api = api
        self.finalizer = finalizer  # added to a relay before it is selected (module doc)
        self.namespaces = namespaces  # None: all namespaces
        self.label_selector = label_selector
        self._cache: dict[Key, KubeObject] = {}
        self._by_scope: dict[tuple[str, str], set[Key]] = {}  # (kind, namespace) -> keys
        self._selected: dict[tuple[str, str], set[Key]] = {}  # ... whose status.selected
        # key -> (resourceVersion our last write returned, when): watch events of the key
        # are older than the cache until the event with that version arrives.
        self._awaited: dict[Key, tuple[str, float]] = {}
        # key -> one list per write in flight: resourceVersions the watch delivered
        # meanwhile (a write's event can arrive before its response).
        self._inflight: dict[Key, list[list[str]]] = {}
        self.clock: Callable[[], float] = time.monotonic
        self.on_event: Callable[[Event], None] | None = None  # metrics hook
        # (kind, namespace) -> [epoch, names changed in it, in order] (changes_since)
        self._journal: dict[tuple[str, str], tuple[object, builtins.list[str]]] = {}
        # key -> the StoredObject handed out for the cached body (while it is held)
        self._stored: weakref.WeakValueDictionary[Key, StoredObject] = \
            weakref.WeakValueDictionary()

    #: :meth:`get` and :meth:`list` hand out the same object for an unchanged cached body
    #: (engine/selection.py keeps its view of a namespace with :meth:`changes_since`).
    shares_objects = True

    #: Status writes a selection run may have in flight at once (engine/selection.py:
    #: the verdicts and Selected conditions that do not change who is selected go
    #: alongside each other; each write waits for the API server).  Half of the client's
    #: connection pool: the passes keep the rest.
    concurrent_writes = 16

    # --- cache maintenance (driven by the operator's watches) ---------------------------
    @staticmethod
    def _key(ref: ObjectRef) -> Key:
        return (ref.kind, ref.namespace, ref.name)

    def observe(self, body: KubeObject, *, listed: bool = False) -> bool:
        """Take a watch event's body (``listed``: a LIST item) into the cache; False when it
        is older than what the cache holds (see "Read your writes" in the module doc)."""
        key = self._key(ref_of(body))
        rv = resource_version(body)
        for seen in self._inflight.get(key, ()):
            seen.append(rv)
        awaited = self._awaited.get(key)
        if awaited is not None:
            old = self._cache.get(key)
            if not (listed or old is None or rv == awaited[0]
                    or uid_of(old) != uid_of(body)
                    or _generation(body) > _generation(old)
                    or self.clock() - awaited[1] > AWAIT_SECONDS):
                return False  # older than our own write
            del self._awaited[key]
        old = self._cache.get(key)
        if old is not None and rv and rv == resource_version(old) \
                and uid_of(old) == uid_of(body):
            # The very version the cache holds (our own write's answer, now on the watch):
            # a resourceVersion names one state of one object, so there is nothing to take.
            return True
        self._put(key, body, listed=listed)
        return True

    @contextlib.contextmanager
    def _writing(self, key: Key) -> Iterator[list[str]]:
        """Collect the versions the watch delivers for ``key`` while a write is in flight."""
        seen: list[str] = []
        self._inflight.setdefault(key, []).append(seen)
        try:
            yield seen
        finally:
            lists = self._inflight.get(key, [])
            if seen in lists:
                lists.remove(seen)
            if not lists:
                self._inflight.pop(key, None)

    def _wrote(self, key: Key, body: KubeObject, seen: list[str]) -> None:
        """The response of our write: into the cache, and wait for its watch event -
        unless that event already came (then the cache holds it, or something newer)."""
        rv = resource_version(body)
        if rv and rv in seen:
            return
        self._put(key, body)
        if rv:
            self._awaited[key] = (rv, self.clock())

    async def patch(self, ref: ObjectRef, patch: dict[str, Any]) -> KubeObject:
        """A merge patch of the object (metadata), its answer taken into the cache."""
        key = self._key(ref)
        with self._writing(key) as seen:
            fresh = as_object(await self.api.patch(self.path(ref), patch))
            self._wrote(key, fresh, seen)
        return fresh

    def _put(self, key: Key, body: KubeObject, *, listed: bool = False) -> None:
        self._cache[key] = _slim(body, self._cache.get(key))
        self._stored.pop(key, None)
        keys = self._by_scope.setdefault((key[0], key[1]), set())
        keys.add(key)
        if listed:
            self._new_epoch(key[0], key[1])  # a LIST: what changed meanwhile is unknown
        else:
            self._changed(key, len(keys))
        sel = self._selected.setdefault((key[0], key[1]), set())
        if (body.get("status") or {}).get("selected"):
            sel.add(key)
        else:
            sel.discard(key)

    def forget(self, ref: ObjectRef) -> None:
        key = self._key(ref)
        if self._cache.pop(key, None) is not None:
            self._changed(key, len(self._by_scope.get((key[0], key[1]), ())))
        self._stored.pop(key, None)
        self._awaited.pop(key, None)
        self._by_scope.get((key[0], key[1]), set()).discard(key)
        self._selected.get((key[0], key[1]), set()).discard(key)

    # --- what changed (selection's index: engine/selection.py) ----------------------------
    def _new_epoch(self, kind: str, namespace: str) -> None:
        self._journal[(kind, namespace)] = (object(), [])

    def _changed(self, key: Key, objects: int) -> None:
        scope = (key[0], key[1])
        entry = self._journal.get(scope)
        if entry is None:
            return  # nobody asked about this scope yet: nothing to keep
        names = entry[1]
        names.append(key[2])
        if len(names) > max(JOURNAL_MIN, 4 * objects):
            self._new_epoch(*scope)  # bounded: whoever is behind lists once

    def changes_since(self, kind: str, namespace: str, token: object | None
                      ) -> tuple[object, set[str] | None]:
        """``(token, names)``: the names of ``kind`` in ``namespace`` whose cached object
        changed (watch event, our own write, a re-read, a deletion) since ``token``, which
        an earlier call returned; ``names`` is None when the store cannot tell - no token,
        a token of another store or of an older epoch (a LIST changed the cache since, or
        the journal outgrew its bound) - and the caller lists instead."""
        scope = (kind, namespace)
        entry = self._journal.get(scope)
        if entry is None:
            self._new_epoch(kind, namespace)
            entry = self._journal[scope]
        epoch, names = entry
        now = (epoch, len(names))
        if type(token) is not tuple or len(token) != 2 or token[0] is not epoch \
                or not 0 <= token[1] <= len(names):
            return now, None
        return now, set(names[token[1]:])

    def _stored_of(self, key: Key, body: KubeObject) -> StoredObject:
        """The engine's view of ``body``: the same object as last time while ``body`` is
        the cached one and that object is still held somewhere."""
        cached = self._cache.get(key) is body
        if cached:
            obj = self._stored.get(key)
            if obj is not None:
                return obj
        obj = to_stored(body)
        if cached:
            self._stored[key] = obj
        return obj

    def selected_in(self, kind: str, namespace: str) -> builtins.list[KubeObject]:
        """Cached bodies whose ``status.selected`` is true (normally zero or one)."""
        return [self._cache[k] for k in sorted(self._selected.get((kind, namespace), ()))
                if k in self._cache]

    def cached_in(self, kind: str, namespace: str) -> builtins.list[KubeObject]:
        """Bodies of one kind in one namespace, without scanning the whole cache."""
        return [self._cache[k] for k in sorted(self._by_scope.get((kind, namespace), ()))
                if k in self._cache]

    def cached(self, ref: ObjectRef) -> KubeObject | None:
        return self._cache.get(self._key(ref))

    def cached_objects(self, kind: str | None = None) -> list[KubeObject]:
        return [b for (k, _n, _m), b in self._cache.items() if kind is None or k == kind]

    async def prime(self) -> int:
        """One paginated LIST per kind and namespace; returns the number of objects."""
        params = {"labelSelector": self.label_selector} if self.label_selector else None
        count = 0
        for kind, plural in PLURALS.items():
            for ns in self.namespaces or [None]:  # type: ignore[list-item]
                items, _rv_list = await self.api.list_all(
                    resource_path(API_VERSION, plural, ns), params)
                for doc in items:
                    item = as_object(doc)
                    item.setdefault("kind", kind)
                    item.setdefault("apiVersion", API_VERSION)
                    self.observe(item, listed=True)
                    count += 1
        return count

    # --- Store protocol -------------------------------------------------------------------
    def path(self, ref: ObjectRef, subresource: str | None = None) -> str:
        return resource_path(API_VERSION, PLURALS[ref.kind], ref.namespace, ref.name, subresource)

    async def _fetch(self, ref: ObjectRef) -> KubeObject | None:
        try:
            body = as_object(await self.api.get(self.path(ref)))
        except NotFound:
            self.forget(ref)
            return None
        except ApiError as exc:
            raise StoreError(f"cannot read {ref}: {exc.code} {exc.reason}") from None
        key = self._key(ref)
        self._put(key, body)
        return self._as_cached(key, body)

    def _as_cached(self, key: Key, body: KubeObject) -> KubeObject:
        """The cached body when it holds the very version of ``body`` (a write's answer or
        a re-read just taken into the cache): converted once and handed out as the same
        object by :meth:`get`, instead of a conversion of the raw reply for this caller
        and another of the cached copy for the next."""
        cached = self._cache.get(key)
        if cached is not None and resource_version(cached) == resource_version(body) \
                and uid_of(cached) == uid_of(body):
            return cached
        return body

    async def get(self, ref: ObjectRef) -> StoredObject | None:
        body = self._cache.get(self._key(ref))
        if body is None:
            body = await self._fetch(ref)
        if body is None or is_deleting(body):
            return None  # a resource being deleted no longer takes part
        return self._stored_of(self._key(ref), body)

    async def list(self, kind: str, namespace: str | None = None) -> list[StoredObject]:
        keys = sorted(self._by_scope.get((kind, namespace), ())) if namespace is not None \
            else sorted(k for k in self._cache if k[0] == kind)
        out = []
        for key in keys:
            body = self._cache.get(key)
            if body is not None and not is_deleting(body):
                out.append(self._stored_of(key, body))
        return out

    async def update_status(self, ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        """One status PUT (verdict, conditions and the test memo together); before a write
        that makes the relay selected, our finalizer (see the module doc)."""
        key = self._key(ref)
        body = self._cache.get(key) or await self._fetch(ref)
        for _attempt in range(MAX_ATTEMPTS):
            if body is None:
                return None
            cur = self._stored_of(key, body)
            write = mutate(cur)
            if write is None:
                return cur
            if write.status == cur.status and write.memo == cur.memo:
                return cur  # (a memo still in the old annotation stays there: no write)
            try:
                if write.status.get("selected") and self._lacks_finalizer(ref, body):
                    if is_deleting(body):
                        return None  # being deleted: never selected (get() agrees)
                    # Our finalizer first, then decide again on the answer (the status a
                    # deletion would have to hand over is never written without it).
                    body = await self._add_finalizer(ref, body)
                    continue
                with self._writing(key) as seen:
                    stored = as_object(await self.api.put(
                        self.path(ref, "status"), {**body, "status": status_body(write)}))
                    self._wrote(key, stored, seen)
                body = self._as_cached(key, stored)
            except Conflict:  # someone else wrote: re-read, re-decide
                body = await self._fetch(ref)
                continue
            except NotFound:
                self.forget(ref)
                return None
            except ApiError as exc:
                raise StoreError(f"cannot write status of {ref}: {exc.code} {exc.reason}") \
                    from None
            return self._stored_of(key, body)
        raise StoreError(f"cannot write status of {ref}: still conflicting after "
                         f"{MAX_ATTEMPTS} attempts")

    def _lacks_finalizer(self, ref: ObjectRef, body: KubeObject) -> bool:
        return bool(self.finalizer and ref.kind == KIND_SMTP
                    and self.finalizer not in finalizers_of(body))

    def needs_finalizer(self, ref: ObjectRef, body: KubeObject | None) -> bool:
        """Is the store's finalizer (``finalizer=``) still to add: a selected ExternalSmtp
        without it, not being deleted (one whose finalizer a user removed, or selected by
        an older operator that crashed before its finalizer PATCH)?"""
        return bool(body is not None and (body.get("status") or {}).get("selected")
                    and not is_deleting(body) and self._lacks_finalizer(ref, body))

    async def _add_finalizer(self, ref: ObjectRef, body: KubeObject) -> KubeObject | None:
        """Our finalizer on ``body``'s object: a merge patch of the list read from ``body``
        with ``body``'s resourceVersion as precondition (409: someone else wrote - another
        controller's finalizer - so the caller re-reads and decides again)."""
        patch = {"metadata": {"finalizers": [*finalizers_of(body), self.finalizer],
                              "resourceVersion": resource_version(body)}}
        try:
            fresh = await self.patch(ref, patch)
        except Invalid as exc:  # 422: deletion started since our read (no new finalizers)
            again = await self._fetch(ref)
            if again is None or is_deleting(again):
                return again
            raise StoreError(f"cannot add the finalizer to {ref}: {exc.code} {exc.reason}") \
                from None
        return self._as_cached(self._key(ref), fresh)

    async def record_test(self, record: TestRecord) -> None:
        """No history is kept (see the module doc); a failure's transcript goes to the
        debug log (already redacted by the probe)."""
        if not record.passed:
            log.debug("connection test failed", extra={
                "resource": str(record.ref), "generation": record.generation,
                "stage": record.stage, "reason": record.reason,
                "transcript": record.transcript})

    async def record_event(self, event: Event) -> None:
        """Post a core/v1 Event on the resource (best effort: an Event is not state)."""
        if self.on_event is not None:
            self.on_event(event)
        body = self._cache.get(self._key(event.ref))
        ev = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{event.ref.name}.{uuid.uuid4().hex[:12]}",
                         "namespace": event.ref.namespace},
            "involvedObject": {"apiVersion": API_VERSION, "kind": event.ref.kind,
                               "name": event.ref.name, "namespace": event.ref.namespace,
                               "uid": uid_of(body),
                               "resourceVersion": resource_version(body)},
            "reason": event.reason, "message": event.message[:1024], "type": event.type,
            "firstTimestamp": event.at, "lastTimestamp": event.at, "count": 1,
            "source": {"component": "smtpctl-operator"},
            "reportingComponent": "smtp.reconciler.dev/operator",
        }
        try:
            await self.api.post(resource_path("v1", "events", event.ref.namespace), ev,
                                reply=False)
        except ApiError as exc:
            log.warning("could not post event", extra={"resource": str(event.ref),
                                                      "reason": event.reason, "code": exc.code})


def _generation(body: KubeObject) -> int:
    try:
        return int(meta_of(body).get("generation") or 0)
    except (TypeError, ValueError):
        return 0


def _slim(body: KubeObject, old: KubeObject | None = None) -> KubeObject:
    """Keep only what the store needs (kubectl's last-applied annotation can be large).

    ``old``: the cached body this one replaces; its ``spec`` and ``status`` are kept (the
    same objects) when equal to the new ones, instead of interning equal copies again (a
    status write leaves the spec as it was, a finalizer patch both).  Cached bodies are
    never mutated in place, so sharing is safe;
    :class:`~reconciler.runtimes.operator.controller.Controller` relies on an unchanged
    spec being the same object."""
    slim_meta = ObjectMeta(**{k: v for k, v in meta_of(body).items()  # type: ignore[typeddict-item]
                              if k in _META_KEYS})
    ann = slim_meta.get("annotations")
    if ann and "kubectl.kubernetes.io/last-applied-configuration" in ann:
        slim_meta["annotations"] = {k: v for k, v in ann.items()
                                    if k != "kubectl.kubernetes.io/last-applied-configuration"}
    out = KubeObject(apiVersion=_interned(body.get("apiVersion", API_VERSION)),
                     kind=_interned(str(body.get("kind"))), metadata=_interned(slim_meta),
                     spec=_kept(body.get("spec") or {}, old, "spec"))
    if "status" in body:
        out["status"] = _kept(body["status"], old, "status")
    return out


def _kept(value: Any, old: KubeObject | None, field: str) -> Any:
    """``old[field]`` when it equals ``value`` (a C-level comparison), else ``value``
    interned."""
    if old is not None and field in old:
        prev = old[field]  # type: ignore[literal-required]
        if prev == value:
            return prev
    return _interned(value)


def _interned(value: Any) -> Any:
    """``value`` with its dict keys and short strings interned (shared between bodies).

    One Python call per dict or list, not per value: the leaves (most of a body: strings,
    numbers, booleans) are handled inline in the comprehensions (a call per value cost
    ~8 % of the store's instructions per new resource: bench/operator_store.py)."""
    if type(value) is dict:
        return {_intern(k) if type(k) is str else k:
                _intern(v) if type(v) is str and len(v) <= INTERN_MAX
                else _interned(v) if type(v) is dict or type(v) is list else v
                for k, v in value.items()}
    if type(value) is list:
        return [_intern(v) if type(v) is str and len(v) <= INTERN_MAX
                else _interned(v) if type(v) is dict or type(v) is list else v
                for v in value]
    if type(value) is str and len(value) <= INTERN_MAX:
        return _intern(value)
    return value


_intern = sys.intern
