"""Read resources and their status from a Kubernetes cluster for ``get`` / ``describe``.

One tool serves both worlds: with ``--kubeconfig`` or ``--context`` these commands read
the custom resources (and their Events) through the API, the way the operator's
:class:`~reconciler.stores.kube.KubeStore` sees them, instead of the local store.  Read
only: nothing is written to the cluster.  The per-test history of ``describe`` lives only
in the local store; in a cluster the last test comes from ``status.lastTest``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from reconciler.stores.base import Event, ObjectRef, StoredObject


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None, metavar="PATH",
                        help="read from the cluster of this kubeconfig instead of the local "
                        "store")
    parser.add_argument("--context", default=None,
                        help="kubeconfig context (implies cluster mode)")


def wants_cluster(args: argparse.Namespace) -> bool:
    return bool(args.kubeconfig or args.context)


@contextlib.contextmanager
def cluster_errors() -> Iterator[list[bool]]:
    """Turn an unreachable or refusing API (or a bad kubeconfig) into one clear line.

    Yields a list that holds ``True`` after a failure (the caller exits 2)."""
    failed: list[bool] = []
    try:
        yield failed
    except Exception as exc:  # noqa: BLE001 - ApiError, StoreError, ConfigException, OSError
        code = getattr(exc, "code", None)
        what = f"{code} {getattr(exc, 'reason', '')}".strip() if code else type(exc).__name__
        detail = getattr(exc, "message", None) or str(exc).splitlines()[0][:300]
        print(f"smtpctl: cannot read from the cluster ({what}): {detail}", file=sys.stderr)
        failed.append(True)


async def _with_store(args: argparse.Namespace, namespace: str | None, body: Any) -> Any:
    from reconciler.stores.kube import KubeStore
    from reconciler.stores.kubeapi import KubeApi, load_credentials

    api = KubeApi(load_credentials(args.kubeconfig, args.context))
    try:
        store = KubeStore(api, namespaces=[namespace] if namespace else None)
        await store.prime()
        return await body(store, api)
    finally:
        await api.close()


def list_objects(args: argparse.Namespace, kinds: list[str],
                 namespace: str | None) -> list[StoredObject]:
    async def body(store: Any, _api: Any) -> list[StoredObject]:
        return [o for k in kinds for o in await store.list(k, namespace)]

    result: list[StoredObject] = asyncio.run(_with_store(args, namespace, body))
    return result


def describe_object(args: argparse.Namespace, ref: ObjectRef
                    ) -> tuple[StoredObject | None, list[dict[str, Any]], list[Event]]:
    """The object, its last test (from status) and its Events."""
    from reconciler.stores.kubeapi import resource_path

    async def body(store: Any, api: Any) -> tuple[Any, list[dict[str, Any]], list[Event]]:
        obj = await store.get(ref)
        if obj is None:
            return None, [], []
        params = {"fieldSelector": f"involvedObject.kind={ref.kind},"
                                   f"involvedObject.name={ref.name}"}
        items, _ = await api.list_all(resource_path("v1", "events", ref.namespace), params)
        events = [Event(ref, e.get("type", "Normal"), e.get("reason", ""), e.get("message", ""),
                        e.get("lastTimestamp") or e.get("eventTime")
                        or (e.get("metadata") or {}).get("creationTimestamp", ""))
                  for e in items]
        events.sort(key=lambda e: e.at or "")
        return obj, _last_test(obj.status), events[-20:]

    result: tuple[StoredObject | None, list[dict[str, Any]], list[Event]] = asyncio.run(
        _with_store(args, ref.namespace, body))
    return result


def _last_test(status: dict[str, Any]) -> list[dict[str, Any]]:
    last = status.get("lastTest")
    if not last:
        return []
    return [dict(last, at=status.get("lastTestTime"))]
