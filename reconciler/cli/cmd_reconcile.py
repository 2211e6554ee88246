"""``smtpctl reconcile [--watch]``: reconcile what is in the local store.

Once: every resource whose test is due (or whose secrets changed) is tested; exit 1 when
a test run by this pass failed (or, with ``--require-ready``, when any resource is not
Ready).  With ``--watch``: keep running, re-verifying on ``refreshInterval`` with jitter
and retrying transient failures with backoff - the local equivalent of the operator; one
timestamped line per test and selection change.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from reconciler.cli.common import (
    EXIT_USAGE,
    add_namespace_options,
    add_output,
    add_store_options,
    add_trust_options,
)
from reconciler.cli.localcmd import (
    NoStore,
    add_limits,
    add_lock_timeout,
    fail_usage,
    open_for_read,
    run_locked,
    sort_key,
)
from reconciler.cli.trust import add_egress_options, egress_from_args

HELP = "reconcile the resources in the local store (once, or --watch); in a cluster, ask " \
    "the operator to re-verify now"


def configure(parser: argparse.ArgumentParser) -> None:
    from reconciler.cli.cluster import add_cluster_options

    parser.add_argument("targets", nargs="*", metavar="TYPE NAME... | TYPE/NAME...",
                        help="only these resources (default: all); with --kubeconfig/"
                        "--context: the resources the operator re-verifies now")
    add_store_options(parser)
    add_trust_options(parser)
    add_namespace_options(parser, all_flag=False)
    parser.add_argument("--watch", action="store_true",
                        help="keep running (lines with timestamps)")
    parser.add_argument("--force", action="store_true",
                        help="re-verify now: test every relay, even those not due yet")
    parser.add_argument("--require-ready", action="store_true",
                        help="exit 1 unless every resource is Ready (default: only a test "
                        "run by this pass that failed does)")
    add_limits(parser)
    add_egress_options(parser)
    add_lock_timeout(parser)
    add_output(parser, ("text", "wide", "json", "yaml", "name"))
    add_cluster_options(parser)
    parser.add_argument("--wait", action="store_true",
                        help="cluster: wait until the operator handled the request, then "
                        "report Ready (exit 1 when not Ready)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="cluster: how long --wait waits (default 60)")


def run(args: argparse.Namespace) -> int:
    from reconciler.cli.cluster import wants_cluster
    from reconciler.cli.output import Result

    if wants_cluster(args):
        from reconciler.cli import reconcile_request

        return reconcile_request.run(args)
    if args.targets:
        from reconciler.cli.names import NameError_, parse_targets

        try:
            parse_targets(args.targets, default=None)
        except NameError_ as exc:
            return fail_usage(str(exc))
    result = Result("reconcile")
    if args.watch and args.output in ("json", "yaml"):
        return fail_usage("--watch prints a log: use -o text (or wide)")
    try:
        args.egress = egress_from_args(args)
    except ValueError as exc:
        return fail_usage(str(exc))
    try:
        store = open_for_read(args)
    except NoStore as exc:
        if args.output in ("json", "yaml"):
            result.error(str(exc))
            return result.emit(args.output, EXIT_USAGE)
        return fail_usage(str(exc))
    if store is None:
        store_path = "the state directory"
        msg = f"nothing to reconcile: {store_path} does not exist yet (run `smtpctl apply`)"
        if args.output in ("json", "yaml"):
            result.diag("info", msg)
            result.summary = {"resources": 0}
            return result.emit(args.output, 0)
        print(f"smtpctl: {msg}", file=sys.stderr)
        return 0
    code = run_locked(store, args.lock_timeout,
                      lambda locked: asyncio.run(_run(locked, args, result)))
    if args.output in ("json", "yaml"):
        return result.emit(args.output, code)
    return code


async def _run(store: Any, args: argparse.Namespace, result: Any) -> int:
    from reconciler.cli.cmd_apply import EventLog, Progress, say, summarize
    from reconciler.cli.trust import policy_from_args
    from reconciler.engine.world import Limits
    from reconciler.runtimes.local import build_world, reconcile_objects, watch

    text = args.output not in ("json", "yaml")
    log = EventLog(store)
    from reconciler.cli.localcmd import refresh_floor

    world = build_world(store, limits=Limits(args.concurrency, args.per_host), events=log,
                        policy=policy_from_args(args), refresh_floor=refresh_floor(args),
                        egress=args.egress)
    if args.watch:
        stamped = Progress(0, enabled=True, stamp=True)
        log.on_event = stamped.event
        say("watching (Ctrl-C to stop)", stamp=True)
        store.unlock()  # held only during each pass: `smtpctl apply` can run in between
        await watch(store, world, None, progress=stamped, max_sleep=10.0,
                    on_error=lambda m: say(f"smtpctl: {m}", stamp=True),
                    pass_lock=lambda: store.locked(args.lock_timeout))
        return 0
    objs = [o for o in store.list_sync() if args.namespace in (None, o.ref.namespace)]
    if args.targets:
        from reconciler.cli.names import parse_targets

        wanted = parse_targets(args.targets, default=None)
        objs = [o for o in objs if any(o.ref.kind in t.kinds and t.name in (None, o.ref.name)
                                       for t in wanted)]
    with Progress(len(objs), enabled=text) as progress:
        results = await reconcile_objects([o.ref for o in objs], world, progress=progress,
                                          force=args.force)
    fresh = sorted((o for o in (store.get_sync(o.ref) for o in objs) if o is not None),
                   key=sort_key)
    return summarize(fresh, {r.ref: r for r in results}, {}, [], args, result, log.events,
                     command="reconcile")

