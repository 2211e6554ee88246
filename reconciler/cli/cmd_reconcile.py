"""``smtpctl reconcile [--watch]``: reconcile what is in the local store.

Once: every resource whose test is due (or whose secrets changed) is tested.  With
``--watch``: keep running, re-verifying on ``refreshInterval`` with jitter and retrying
transient failures with backoff - the local equivalent of the operator.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_state
from reconciler.cli.localcmd import (
    HEADER,
    add_limits,
    add_lock_timeout,
    open_store,
    print_table,
    ready_cell,
    row,
    run_locked,
)
from reconciler.cli.trust import add_trust_options, policy_from_args

HELP = "reconcile the resources in the local store (once, or --watch)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_state(parser)
    parser.add_argument("--watch", action="store_true", help="keep running")
    add_limits(parser)
    add_lock_timeout(parser)
    add_trust_options(parser)


def run(args: argparse.Namespace) -> int:
    store = open_store(args.state, create=False)
    if store is None:
        return EXIT_USAGE
    return run_locked(store, args.lock_timeout, lambda locked: asyncio.run(_run(locked, args)))


async def _run(store: object, args: argparse.Namespace) -> int:
    from reconciler.cli.cmd_apply import Progress
    from reconciler.engine.world import Limits
    from reconciler.runtimes.local import build_world, reconcile_objects, watch
    from reconciler.stores.local import LocalStore

    assert isinstance(store, LocalStore)
    world = build_world(store, limits=Limits(args.concurrency, args.per_host),
                        policy=policy_from_args(args))
    if args.watch:
        print("watching (Ctrl-C to stop)", file=sys.stderr, flush=True)
        store.unlock()  # held only during each pass: `smtpctl apply` can run in between
        await watch(store, world, None, progress=Progress(0, enabled=True), max_sleep=10.0,
                    on_error=lambda m: print(f"smtpctl: {m}", file=sys.stderr, flush=True),
                    pass_lock=lambda: store.locked(args.lock_timeout))
        return EXIT_OK
    objs = store.list_sync()
    with Progress(len(objs), enabled=True) as progress:
        results = await reconcile_objects(objs, world, progress=progress)
    tested = {r.ref: ("tested" if r.tested else r.action) for r in results}
    fresh = [o for o in (store.get_sync(o.ref) for o in objs) if o is not None]
    print_table([*HEADER, "TEST"], [row(o, tested=tested.get(o.ref, "-")) for o in fresh])
    return EXIT_OK if all(ready_cell(o.status)[0] == "True" for o in fresh) else EXIT_FAILED
