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
from reconciler.cli.trust import add_trust_options, policy_from_args

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
                        help="get active: include the password (read through the same source "
                        "policy as apply; never an access token: get contacts no endpoint)")
    add_state(parser)
    add_cluster_options(parser)
    add_trust_options(parser)


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
                secret = asyncio.run(_reveal(store, w, view, args))
            except Exception as exc:  # noqa: BLE001 - report the reason, never the text
                reason = getattr(exc, "reason", type(exc).__name__)
                # A CredentialError's message names references, never values.
                said = getattr(exc, "message", None)
                detail = f": {said}" if isinstance(said, str) else ""
                print(f"smtpctl: cannot resolve the credentials ({reason}){detail}",
                      file=sys.stderr)
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


async def _reveal(store: Any, obj: Any, view: Any, args: argparse.Namespace) -> Any:
    """Resolve the active relay's password in memory only, for the relay that holds the
    reference (the source policy judges it as `apply` did).  An OAuth 2.0 access token is
    not revealed: `get` only reads and never contacts a token endpoint."""
    from reconciler.credentials.base import CredentialError
    from reconciler.credentials.policy import sources_for
    from reconciler.credentials.sources import default_sources
    from reconciler.resources import SecretRef

    summary = view.summary
    sources = default_sources(policy=policy_from_args(args))
    if summary.get("authentication") == "UsernamePassword" and summary.get("passwordFrom"):
        ref = SecretRef.model_validate(summary["passwordFrom"])
        return (await sources_for(sources, obj.manifest).resolve(ref, view.namespace)).value
    if summary.get("authentication") == "OAuth2":
        raise CredentialError(
            "OAuth2TokenNotRevealed",
            "get only reads: it never contacts a token endpoint, so --reveal shows no access "
            "token (applications obtain tokens from the provider themselves)")
    return None
