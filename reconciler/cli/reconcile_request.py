"""``smtpctl reconcile TYPE NAME... --kubeconfig ...``: ask the operator to re-verify now.

Like ``flux reconcile`` or ``cmctl renew``: the command sets the annotation
``smtp.reconciler.dev/reconcile-requested-at`` to a new value (the current time) on each
resource; the operator wakes the resource's worker, the engine tests it even if its test
is not due, and writes the value to ``status.lastHandledReconcileAt``.  With ``--wait``
the command waits (bounded by ``--timeout``) until every resource answered, then reports
its Ready condition: exit 0 when all are Ready, 1 otherwise, 2 on a usage or API error.

The only write is that annotation (a metadata PATCH): the spec, and so the generation,
do not change.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from reconciler.stores.base import ObjectRef

POLL_SECONDS = 1.0


def request_value(now: float | None = None) -> str:
    """A new annotation value: the time, with microseconds (two requests differ)."""
    t = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ready(body: dict[str, Any]) -> tuple[str, str, str]:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status")), str(c.get("reason", "")), str(c.get("message", ""))
    return "Unknown", "Pending", ""


async def request(args: argparse.Namespace, refs: list[ObjectRef]) -> int:
    from reconciler.engine.reconcile import RECONCILE_REQUEST
    from reconciler.resources import API_VERSION
    from reconciler.stores.kube import PLURALS
    from reconciler.stores.kubeapi import KubeApi, load_credentials, resource_path

    creds = load_credentials(args.kubeconfig, args.context)
    api = KubeApi(creds)
    value = request_value()
    try:
        paths = {}
        for ref in refs:
            ns = ref.namespace or creds.namespace
            path = resource_path(API_VERSION, PLURALS[ref.kind], ns, ref.name)
            await api.patch(path, {"metadata": {"annotations": {RECONCILE_REQUEST: value}}})
            paths[ObjectRef(ref.kind, ns, ref.name)] = path
            print(f"{ref.kind}/{ns}/{ref.name}: re-verification requested "
                  f"({RECONCILE_REQUEST}={value})")
        if not args.wait:
            return EXIT_OK
        deadline = time.monotonic() + args.timeout
        waiting = dict(paths)
        bodies: dict[ObjectRef, dict[str, Any]] = {}
        while waiting:
            for ref, path in list(waiting.items()):
                body = await api.get(path)
                if (body.get("status") or {}).get("lastHandledReconcileAt") == value:
                    bodies[ref] = body
                    del waiting[ref]
            if not waiting:
                break
            if time.monotonic() >= deadline:
                for ref in waiting:
                    print(f"smtpctl: {ref.kind}/{ref.namespace}/{ref.name}: not handled "
                          f"within {args.timeout:g}s (is the operator running?)",
                          file=sys.stderr)
                return EXIT_FAILED
            await asyncio.sleep(POLL_SECONDS)
        code = EXIT_OK
        for ref, body in bodies.items():
            status, reason, message = _ready(body)
            print(f"{ref.kind}/{ref.namespace}/{ref.name}: Ready={status} ({reason})"
                  + (f": {message}" if status != "True" and message else ""))
            if status != "True":
                code = EXIT_FAILED
        return code
    finally:
        await api.close()


def run(args: argparse.Namespace) -> int:
    """The cluster form of ``smtpctl reconcile`` (``--kubeconfig``/``--context``)."""
    from reconciler.cli.cluster import cluster_errors
    from reconciler.cli.names import NameError_, parse_targets

    if not args.targets:
        return _usage("name the resources to re-verify in the cluster: "
                      "smtpctl reconcile externalsmtp NAME... --kubeconfig ...")
    try:
        targets = parse_targets(args.targets, default=None)
    except NameError_ as exc:
        return _usage(str(exc))
    refs = []
    for t in targets:
        if t.name is None or len(t.kinds) != 1:
            return _usage("give one type and names (externalsmtp NAME..., or "
                          "oauth2provider/NAME)")
        refs.append(ObjectRef(t.kinds[0], args.namespace or "", t.name))
    with cluster_errors() as failed:
        code = asyncio.run(request(args, refs))
    return EXIT_USAGE if failed else code


def _usage(message: str) -> int:
    print(f"smtpctl: {message}", file=sys.stderr)
    return EXIT_USAGE
