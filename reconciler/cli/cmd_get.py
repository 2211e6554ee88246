"""``smtpctl get [externalsmtp|oauth2provider|all|active] [NAME] [-o ...]``.

``get active`` prints the selected relay of a namespace in a form an application can
consume (``-o json|env|javamail``); credentials are references unless ``--reveal``, which
resolves them to stdout only (never to disk).  Exit 1 when nothing is selected.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from reconciler.cli.cluster import add_cluster_options, cluster_errors, wants_cluster
from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_state
from reconciler.cli.localcmd import (
    HEADER,
    WIDE,
    dump,
    fail_usage,
    kind_of,
    object_json,
    open_store,
    print_table,
    row,
)

HELP = "list resources and their status, or the active relay (get active -o env)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="all",
                        help="externalsmtp | oauth2provider | all | active (default all)")
    parser.add_argument("name", nargs="?", help="resource name")
    parser.add_argument("-n", "--namespace", default=None,
                        help="namespace (default: all; `get active` uses 'default')")
    parser.add_argument("-o", "--output", default=None,
                        help="text | wide | json | yaml; for `get active`: json | env | "
                        "javamail")
    parser.add_argument("--reveal", action="store_true",
                        help="get active: include the password or a fresh access token")
    add_state(parser)
    add_cluster_options(parser)


def run(args: argparse.Namespace) -> int:
    what = args.what.lower()
    if what == "active":
        return _active(args)
    fmt = args.output or "text"
    if fmt not in ("text", "wide", "json", "yaml"):
        return fail_usage(f"-o {fmt}: expected text, wide, json or yaml")
    kinds: list[str]
    if what == "all":
        kinds = ["OAuth2Provider", "ExternalSmtp"]
    else:
        k = kind_of(what)
        if k is None:
            return fail_usage(f"unknown kind {args.what!r} (externalsmtp, oauth2provider, all, "
                              "active)")
        kinds = [k]
    if wants_cluster(args):
        from reconciler.cli.cluster import list_objects

        with cluster_errors() as failed:
            objs = list_objects(args, kinds, args.namespace)
        if failed:
            return EXIT_USAGE
    else:
        store = open_store(args.state, create=False)
        if store is None:
            return EXIT_USAGE
        try:
            objs = [o for k in kinds for o in store.list_sync(k, args.namespace)]
        finally:
            store.close()
    objs = [o for o in objs if args.name is None or o.ref.name == args.name]
    if args.name and not objs:
        print(f"smtpctl: {args.what} {args.name!r} not found", file=sys.stderr)
        return EXIT_FAILED
    if fmt in ("json", "yaml"):
        sys.stdout.write(dump([object_json(o) for o in objs], fmt, single=bool(args.name)))
        return EXIT_OK
    if not objs:
        print("No resources found.", file=sys.stderr)
        return EXIT_OK
    header = HEADER + (WIDE if fmt == "wide" else [])
    print_table(header, [row(o, wide=fmt == "wide") for o in objs])
    return EXIT_OK


def _active(args: argparse.Namespace) -> int:
    from reconciler.engine.active import ActiveRelayView, render_env, render_javamail, render_json

    fmt = args.output or "json"
    renderers = {"json": render_json, "env": render_env, "javamail": render_javamail}
    if fmt not in renderers:
        return fail_usage(f"-o {fmt}: expected json, env or javamail for `get active`")
    ns = args.namespace or "default"
    if wants_cluster(args):
        return _active_in_cluster(args, ns, renderers[fmt])
    store = open_store(args.state, create=False)
    if store is None:
        return EXIT_USAGE
    try:
        winners = [o for o in store.list_sync("ExternalSmtp", ns)
                   if o.status.get("selected") and o.status.get("active")]
        if not winners:
            print(f"smtpctl: no relay is selected in namespace {ns}", file=sys.stderr)
            return EXIT_FAILED
        w = winners[0]
        view = ActiveRelayView(ns, w.ref.name, dict(w.status["active"]))
        secret = None
        if args.reveal:
            try:
                secret = asyncio.run(_reveal(store, w, view))
            except Exception as exc:  # noqa: BLE001 - report the reason, never the text
                reason = getattr(exc, "reason", type(exc).__name__)
                print(f"smtpctl: cannot resolve the credentials ({reason})", file=sys.stderr)
                return EXIT_FAILED
        sys.stdout.write(renderers[fmt](view, secret))
        return EXIT_OK
    finally:
        store.close()


def _active_in_cluster(args: argparse.Namespace, ns: str, render: Any) -> int:
    from reconciler.cli.cluster import list_objects
    from reconciler.engine.active import ActiveRelayView

    if args.reveal:
        return fail_usage("--reveal reads credentials locally; in a cluster, mount the "
                          "Secret the operator publishes (default smtp-active-relay)")
    with cluster_errors() as failed:
        objs = list_objects(args, ["ExternalSmtp"], ns)
    if failed:
        return EXIT_USAGE
    winners = [o for o in objs if o.status.get("selected") and o.status.get("active")]
    if not winners:
        print(f"smtpctl: no relay is selected in namespace {ns}", file=sys.stderr)
        return EXIT_FAILED
    w = winners[0]
    sys.stdout.write(render(ActiveRelayView(ns, w.ref.name, dict(w.status["active"])), None))
    return EXIT_OK


async def _reveal(store: Any, obj: Any, view: Any) -> Any:
    """Resolve the active relay's password, or a fresh access token, in memory only."""
    from reconciler.credentials.sources import default_sources
    from reconciler.resources import SecretRef

    summary = view.summary
    sources = default_sources()
    if summary.get("authentication") == "UsernamePassword" and summary.get("passwordFrom"):
        ref = SecretRef.model_validate(summary["passwordFrom"])
        return (await sources.resolve(ref, view.namespace)).value
    if summary.get("authentication") == "OAuth2" and summary.get("oauth2Provider"):
        from reconciler.credentials.oauth import TokenManager
        from reconciler.resources import OAuth2Provider
        from reconciler.stores.base import ObjectRef

        pobj = store.get_sync(ObjectRef("OAuth2Provider", view.namespace,
                                        summary["oauth2Provider"]))
        if pobj is None:
            raise LookupError("OAuth2ProviderNotFound")
        provider = OAuth2Provider.model_validate(pobj.manifest)
        return await TokenManager(sources).token(provider)
    return None
