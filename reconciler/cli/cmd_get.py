"""``smtpctl get [TYPE [NAME...] | TYPE/NAME...] [-o ...]`` and ``smtpctl get active``.

Lists resources with their status (every namespace unless ``-n``), or prints one.
``-o json|yaml`` prints the resources themselves (one object, or a kubectl ``List``), so
the output round-trips into ``apply -f -``, ``validate --allow-status`` and kubectl.

``get active`` prints the selected relay of a namespace in a form an application can
consume (``-o json|yaml|env|javamail``); credentials are references unless ``--reveal``,
which resolves them to stdout only (never to disk).  Exit 1 when nothing is selected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from reconciler.cli.cluster import add_cluster_options, cluster_errors, wants_cluster
from reconciler.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_namespace_options,
    add_store_options,
    add_trust_options,
)
from reconciler.cli.localcmd import (
    HEADER,
    WIDE,
    NoStore,
    dump,
    fail_usage,
    object_json,
    open_for_read,
    print_table,
    row,
    sort_key,
)

HELP = "list resources and their status, or the active relay (get active -o env)"
FORMATS = ("text", "wide", "json", "yaml", "name")
ACTIVE_FORMATS = ("json", "yaml", "env", "javamail")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", metavar="TYPE [NAME...] | TYPE/NAME...",
                        help="externalsmtp (esmtp), oauth2provider (oauth2p), smtp or all "
                        "(default), optionally names; or `active`")
    add_namespace_options(parser)
    parser.add_argument("-o", "--output", default=None,
                        help=f"{' | '.join(FORMATS)} (default text); for `get active`: "
                        f"{' | '.join(ACTIVE_FORMATS)} (default json)")
    parser.add_argument("--reveal", action="store_true",
                        help="get active: include the password - only the value that passed "
                        "the test (exit 1 otherwise); read through the same source policy as "
                        "apply; never an access token: get contacts no endpoint")
    parser.add_argument("--require-ready", action="store_true",
                        help="get active: exit 1 when the configuration in use failed its "
                        "latest re-verification (the output is still printed)")
    add_store_options(parser)
    add_cluster_options(parser)
    add_trust_options(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.cli.names import LookupProblem, NameError_, find, parse_targets

    if args.targets and args.targets[0].lower() == "active":
        if len(args.targets) > 1:
            return fail_usage("`get active` takes no name: use -n NAMESPACE")
        return _active(args)
    fmt = args.output or "text"
    if fmt not in FORMATS:
        return fail_usage(f"-o {fmt}: expected one of {', '.join(FORMATS)}")
    if args.reveal or args.require_ready:
        return fail_usage("--reveal and --require-ready are for `get active`")
    namespace = None if args.all_namespaces else args.namespace
    try:
        targets = parse_targets(args.targets)
    except NameError_ as exc:
        return fail_usage(str(exc))
    kinds = list(dict.fromkeys(k for t in targets for k in t.kinds))
    objs = _list(args, kinds, None if any(t.name for t in targets) else namespace)
    if isinstance(objs, int):
        return objs
    named = any(t.name for t in targets)
    code = EXIT_OK
    if named:
        picked = []
        for t in targets:
            try:
                picked.append(find(objs, t.kinds, str(t.name), namespace))
            except LookupProblem as exc:
                print(f"smtpctl: {exc}", file=sys.stderr)
                code = EXIT_FAILED
        objs = list({o.ref: o for o in picked}.values())
    else:
        objs = sorted(objs, key=sort_key)
    if fmt in ("json", "yaml"):
        single = named and len(targets) == 1 and len(objs) == 1
        if objs or not named:
            sys.stdout.write(dump([object_json(o) for o in objs], fmt, single=single))
        return code
    if fmt == "name":
        from reconciler.cli.names import display_kind

        for o in objs:
            print(f"{display_kind(o.ref.kind)}/{o.ref.name}")
        return code
    if not objs:
        if code == EXIT_OK:
            where = f" in namespace {namespace}" if namespace else ""
            print(f"No resources found{where}.", file=sys.stderr)
        return code
    header = HEADER + (WIDE if fmt == "wide" else [])
    print_table(header, [row(o, wide=fmt == "wide") for o in objs])
    return code


def _list(args: argparse.Namespace, kinds: list[str], namespace: str | None) -> Any:
    """Objects of ``kinds`` (every namespace unless ``namespace``), or an exit code."""
    if wants_cluster(args):
        from reconciler.cli.cluster import list_objects

        with cluster_errors() as failed:
            objs = list_objects(args, kinds, namespace)
        return EXIT_USAGE if failed else objs
    try:
        store = open_for_read(args)
    except NoStore as exc:
        return fail_usage(str(exc))
    if store is None:
        return []
    try:
        return [o for k in kinds for o in store.list_sync(k, namespace)]
    finally:
        store.close()


def _active(args: argparse.Namespace) -> int:
    from reconciler.engine.active import ActiveRelayView, render_env, render_javamail, to_json

    fmt = args.output or "json"
    if fmt not in ACTIVE_FORMATS:
        return fail_usage(f"-o {fmt}: expected one of {', '.join(ACTIVE_FORMATS)} for "
                          "`get active`")

    def render(view: Any, secret: Any) -> str:
        if fmt in ("json", "yaml"):
            from reconciler.cli.output import dumps

            data = to_json(view, secret)
            return json.dumps(data, indent=2) + "\n" if fmt == "json" else dumps(data, "yaml")
        return str({"env": render_env, "javamail": render_javamail}[fmt](view, secret))

    if wants_cluster(args) and args.reveal:
        return fail_usage("--reveal reads credentials locally; in a cluster, mount the "
                          "Secret the operator publishes (default smtp-active-relay)")
    namespace = None if args.all_namespaces else args.namespace
    objs = _list(args, ["ExternalSmtp"], namespace)
    if isinstance(objs, int):
        return objs
    winners = sorted((o for o in objs if o.status.get("selected") and o.status.get("active")),
                     key=sort_key)
    if not winners:
        print(f"smtpctl: {_why_none(args, objs, namespace)}", file=sys.stderr)
        return EXIT_FAILED
    if len(winners) > 1:
        spots = ", ".join(f"{w.ref.namespace} ({w.ref.name})" for w in winners)
        print(f"smtpctl: a relay is selected in several namespaces: {spots}; pick one with "
              "-n NAMESPACE", file=sys.stderr)
        return EXIT_FAILED
    w = winners[0]
    view = ActiveRelayView(w.ref.namespace, w.ref.name, dict(w.status["active"]))
    secret = None
    if args.reveal:
        from dataclasses import replace

        from reconciler.engine.active import NotTested
        from reconciler.runtimes.local import reveal_active

        store = open_for_read(args)  # installs the store's version key
        if store is None:
            return EXIT_FAILED
        try:
            from reconciler.cli.trust import policy_from_args

            revealed = asyncio.run(reveal_active(store, view.namespace, view.summary,
                                                 manifest=w.manifest,
                                                 policy=policy_from_args(args)))
        except NotTested as exc:
            print(f"smtpctl: not revealing {w.ref.namespace}/{w.ref.name}: {exc.message}",
                  file=sys.stderr)
            return EXIT_FAILED
        except Exception as exc:  # noqa: BLE001 - report the reason, never the text
            reason = getattr(exc, "reason", type(exc).__name__)
            # A CredentialError's message names references, never values.
            said = getattr(exc, "message", None)
            detail = f": {said}" if isinstance(said, str) else ""
            print(f"smtpctl: cannot resolve the credentials ({reason}){detail}",
                  file=sys.stderr)
            return EXIT_FAILED
        finally:
            store.close()
        secret = revealed.secret
        view = replace(view, token_expires_at=revealed.token_expires_at)
    sys.stdout.write(render(view, secret))
    if not view.ready:
        failure = view.summary.get("failure") or {}
        print(f"smtpctl: the relay in use ({w.ref.namespace}/{w.ref.name}, generation "
              f"{view.summary.get('generation')}) is failing since "
              f"{view.summary.get('failingSince')}: {failure.get('reason')}; last success "
              f"{view.last_success}", file=sys.stderr)
        if args.require_ready:
            return EXIT_FAILED
    return EXIT_OK


def _why_none(args: argparse.Namespace, objs: list[Any], namespace: str | None) -> str:
    """Why nothing is selected, and where to look instead."""
    where = f"namespace {namespace}" if namespace else "any namespace"
    text = f"no relay is selected in {where}"
    if namespace is not None:
        others = _list(args, ["ExternalSmtp"], None)
        spots = [] if isinstance(others, int) else sorted({
            o.ref.namespace for o in others
            if o.status.get("selected") and o.status.get("active")})
        if spots:
            return f"{text}; one is selected in namespace {', '.join(spots)} (use -n {spots[0]})"
    if not objs:
        return f"{text}: there is no ExternalSmtp (smtpctl apply -f FILE)"
    requested = [o for o in objs if (o.manifest.get("spec") or {}).get("selected")]
    if not requested:
        return (f"{text}: {len(objs)} ExternalSmtp, none with spec.selected: true (set it on "
                "the one applications should use)")
    names = ", ".join(f"{o.ref.namespace}/{o.ref.name}" for o in requested[:5])
    return (f"{text}: {names} asked to be selected but never passed a test (smtpctl "
            "describe esmtp NAME says why)")
