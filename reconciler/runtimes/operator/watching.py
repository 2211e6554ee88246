"""List+watch streams (reflectors), dispatched to the controller.

One :class:`Reflector` per watched collection (a kind in one namespace, or in all):

* :meth:`Reflector.list` - a paginated LIST; every item goes to ``on_event(body, None)``
  and objects known before but missing from the list (deleted while we were not
  watching) to ``on_event(body, "DELETED")``; the list's resourceVersion is where the
  watch starts.
* :meth:`Reflector.run` - watch from there, forever: a watch that ends (server timeout)
  is resumed from the last resourceVersion seen (bookmarks keep it fresh); ``410 Gone``
  re-lists; a failure (API unreachable, 5xx, 401/403) is logged as one line naming the
  server and retried with capped exponential backoff, and the reflector reports itself
  not connected meanwhile (``/readyz`` is false).

It never returns on its own: if a reflector's task ends, the operator exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from reconciler.stores.kubeapi import ApiError, Gone, KubeApi, describe_server
from reconciler.stores.kubetypes import (
    KubeObject,
    ObjectMeta,
    as_object,
    name_of,
    namespace_of,
    resource_version,
    uid_of,
)

log = logging.getLogger("smtpctl.operator")

OnEvent = Callable[[KubeObject, "str | None"], None]
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
WATCH_TIMEOUT = 300


class Backoff:
    """Capped exponential backoff with jitter (reset on success)."""

    def __init__(self, start: float = BACKOFF_START, cap: float = BACKOFF_MAX) -> None:
        self.start, self.cap, self.failures = start, cap, 0

    def next(self) -> float:
        self.failures += 1
        delay = min(self.cap, self.start * 2 ** (self.failures - 1))
        return float(delay * random.uniform(0.8, 1.2))

    def reset(self) -> None:
        self.failures = 0


def key_of(body: KubeObject) -> tuple[str, str]:
    return namespace_of(body), name_of(body)


class Reflector:
    def __init__(self, api: KubeApi, path: str, on_event: OnEvent, *, kind: str | None = None,
                 api_version: str | None = None, params: dict[str, str] | None = None,
                 what: str = "", page: int = 500, rv_only: bool = False,
                 on_resync: Callable[[], None] | None = None,
                 on_gap: Callable[[], None] | None = None) -> None:
        self.api = api
        self.path = path
        self.on_event = on_event
        self.kind = kind
        self.api_version = api_version
        self.params = dict(params or {})
        self.what = what or path
        self.page = page
        # rv_only: the LIST only fetches where to start watching (limit=1), nothing is
        # dispatched: for Secrets, whose referenced ones are read by name on demand;
        # ``on_resync`` is told after every re-list (changes may have been missed).
        self.rv_only = rv_only
        self.on_resync = on_resync
        self.on_gap = on_gap  # told when a list or watch fails (events may be missed)
        self.resource_version = ""
        self.connected = False
        # key -> uid: what a DELETED synthesized after a re-list needs (a uid string per
        # object, not a body: ~0.6 KB per resource less at 10,000).
        self._known: dict[tuple[str, str], str] = {}
        self._backoff = Backoff()
        self.listed = asyncio.Event()

    def _fill(self, body: KubeObject) -> KubeObject:
        if self.kind:
            body.setdefault("kind", self.kind)
        if self.api_version:
            body.setdefault("apiVersion", self.api_version)
        return body

    def _remember(self, body: KubeObject, deleted: bool) -> None:
        if self.rv_only:
            return  # nothing is synthesized for a start-point-only list (Secrets)
        key = key_of(body)
        if deleted:
            self._known.pop(key, None)
        else:
            self._known[key] = uid_of(body)

    def _gone(self, key: tuple[str, str], uid: str) -> KubeObject:
        """The body of a DELETED event synthesized for an object a re-list no longer has."""
        return self._fill(KubeObject(metadata=ObjectMeta(name=key[1], namespace=key[0],
                                                         uid=uid)))

    async def list(self) -> None:
        """LIST (retried until it succeeds) and dispatch; sets the watch's start point."""
        while True:
            try:
                if self.rv_only:
                    first = await self.api.get(self.path, dict(self.params, limit="1"))
                    self.resource_version = resource_version(as_object(first))
                    self._ok()
                    if self.listed.is_set() and self.on_resync is not None:
                        self.on_resync()
                    self.listed.set()
                    return
                seen: set[tuple[str, str]] = set()
                rv = ""
                async for items, page_rv in self.api.list_page(
                        self.path, dict(self.params, limit=str(self.page))):
                    for doc in items:
                        item = self._fill(as_object(doc))
                        seen.add(key_of(item))
                        self._remember(item, False)
                        self.on_event(item, None)
                    rv = page_rv or rv
                for key in [k for k in self._known if k not in seen]:
                    self.on_event(self._gone(key, self._known.pop(key)), "DELETED")
                self.resource_version = rv
                self._ok()
                self.listed.set()
                return
            except ApiError as exc:
                await self._failed("list", exc)

    def _ok(self) -> None:
        if not self.connected and self._backoff.failures:
            log.info("API server reachable again", extra={
                "server": describe_server(self.api.creds), "watch": self.what})
        self.connected = True
        self._backoff.reset()

    async def _failed(self, verb: str, exc: ApiError) -> None:
        self.connected = False
        if self.on_gap is not None:
            self.on_gap()
        delay = self._backoff.next()
        log.warning(f"cannot {verb} {self.what} on {describe_server(self.api.creds)}: "
                    f"{exc.code or ''} {exc.reason}; retrying in {delay:.1f}s".replace("  ", " "),
                    extra={"server": describe_server(self.api.creds), "watch": self.what,
                           "code": exc.code, "reason": exc.reason})
        await asyncio.sleep(delay)

    def dispatch(self, event: dict[str, Any]) -> None:
        """One decoded watch event: where to resume from, then ``on_event`` (bookmarks
        and events without an object only move the start point)."""
        etype = str(event.get("type") or "")
        raw = event.get("object")
        if not isinstance(raw, dict):
            return
        obj = as_object(raw)
        rv = resource_version(obj)
        if rv:
            self.resource_version = rv
        if etype == "BOOKMARK":
            return
        self._fill(obj)
        self._remember(obj, etype == "DELETED")
        self.on_event(obj, etype)

    async def run(self) -> None:
        """Watch forever (after :meth:`list`); re-list after 410 Gone."""
        if not self.listed.is_set():
            await self.list()
        while True:
            params = dict(self.params, resourceVersion=self.resource_version)
            try:
                async for event in self.api.watch(self.path, params, on_open=self._ok,
                                                  timeout_seconds=WATCH_TIMEOUT):
                    self._ok()
                    self.dispatch(event)
                self._ok()  # the server ended the watch (timeout): resume
            except Gone:
                log.info("watch expired; re-listing", extra={"watch": self.what})
                await self.list()
            except ApiError as exc:
                await self._failed("watch", exc)
                if self.rv_only:  # Secret changes during the outage were not seen
                    await self.list()
