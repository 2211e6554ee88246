"""``smtpctl delete KIND NAME`` / ``-f PATH``: remove resources; selection moves on.

Deleting the active relay selects the next requested Ready one, if any (recorded as an
event).  Exit 1 when a named resource does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_state
from reconciler.cli.localcmd import (
    add_lock_timeout,
    fail_usage,
    kind_of,
    open_store,
    run_locked,
)

HELP = "delete resources from the local store (the next Ready relay takes over)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", help="externalsmtp | oauth2provider")
    parser.add_argument("name", nargs="?")
    parser.add_argument("-f", "--filename", dest="files", action="append", metavar="PATH",
                        help="delete the resources in these manifests")
    parser.add_argument("-n", "--namespace", default="default")
    add_state(parser)
    add_lock_timeout(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.runtimes.local import (
        InputError,
        build_world,
        delete_refs,
        load_manifests,
        ref_of,
    )
    from reconciler.stores.base import ObjectRef

    if args.files:
        try:
            refs = [ref_of(m) for m in load_manifests(args.files)]
        except InputError as exc:
            print(f"smtpctl: {exc}", file=sys.stderr)
            return EXIT_USAGE if exc.usage else EXIT_FAILED
    else:
        if not args.kind or not args.name:
            return fail_usage("give KIND NAME or -f PATH")
        kind = kind_of(args.kind)
        if kind is None:
            return fail_usage(f"unknown kind {args.kind!r}")
        refs = [ObjectRef(kind, args.namespace, args.name)]
    store = open_store(args.state, create=False)
    if store is None:
        return EXIT_USAGE
    gone: set[Any] = set()

    def body(locked: Any) -> int:
        gone.update(asyncio.run(delete_refs(locked, build_world(locked), refs)))
        return EXIT_OK

    code = run_locked(store, args.lock_timeout, body)
    if code != EXIT_OK:
        return code
    for r in refs:
        print(f"{r.kind}/{r.namespace}/{r.name} " + ("deleted" if r in gone else "not found"))
    return EXIT_OK if len(gone) == len(refs) or args.files else EXIT_FAILED
