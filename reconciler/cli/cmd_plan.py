"""``smtpctl plan -f PATH...``: what ``apply`` would do; exit 0 no changes, 3 changes.

Like ``terraform plan -detailed-exitcode``: CI can gate on it.  Credentials are resolved
(to see rotated secrets) but nothing is tested and nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

from reconciler.cli.common import EXIT_CHANGES, EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_files
from reconciler.cli.common import add_state as _add_state
from reconciler.cli.trust import add_trust_options, policy_from_args

HELP = "show what apply would change and test (exit 0 nothing, 3 changes)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_files(parser)
    _add_state(parser)
    parser.add_argument("--prune", action="store_true", help="also show what --prune deletes")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_trust_options(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.runtimes.local import InputError, load_manifests

    try:
        manifests = load_manifests(args.files)
    except InputError as exc:
        print(f"smtpctl: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_FAILED
    return run_plan(args, manifests)


def run_plan(args: argparse.Namespace, manifests: list[dict[str, Any]]) -> int:
    from pathlib import Path

    from reconciler.stores.local import LocalStore

    # No side effects: a missing state directory is an empty store, not a new one.
    if not Path(args.state).exists():
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            store = LocalStore(tmp)
            try:
                return asyncio.run(_plan(store, manifests, args))
            finally:
                store.close()
    store = LocalStore(args.state, create=False)
    try:
        return asyncio.run(_plan(store, manifests, args))
    finally:
        store.close()


async def _plan(store: Any, manifests: list[dict[str, Any]], args: argparse.Namespace) -> int:
    from reconciler.engine.plan import PlanItem, plan_one
    from reconciler.runtimes.local import build_world, prune_candidates, ref_of

    # Offline: secrets are resolved for their versions, but no token endpoint or relay is
    # contacted and nothing is written (plan and apply --dry-run have no side effects).
    world = build_world(store, policy=policy_from_args(args), offline=True)
    items: list[PlanItem] = []
    for m in manifests:
        items.append(await plan_one(m, store.get_sync(ref_of(m)), world))
    # A relay whose provider changes is re-tested (the provider's version is in its digest).
    changing = {(i.ref.namespace, i.ref.name) for i in items
                if i.ref.kind == "OAuth2Provider" and i.action in ("create", "update")}
    for idx, (m, item) in enumerate(zip(manifests, items, strict=True)):
        pref = ((m.get("spec") or {}).get("oauth2ProviderRef") or {}).get("name")
        if item.ref.kind == "ExternalSmtp" and not item.test and pref and (
                (item.ref.namespace, pref) in changing):
            items[idx] = dataclasses.replace(item, test=True,
                                             why=f"OAuth2Provider {pref!r} changes")
    if getattr(args, "prune", False):
        items += [PlanItem(r, "prune") for r in prune_candidates(store, manifests)]
    if args.output == "json":
        print(json.dumps([{"kind": i.ref.kind, "namespace": i.ref.namespace,
                           "name": i.ref.name, "action": i.action, "diff": i.diff,
                           "test": i.test, "why": i.why, "generation": i.generation}
                          for i in items], indent=2))
    else:
        sym = {"create": "+", "update": "~", "metadata": "~", "unchanged": "=", "prune": "-"}
        for i in items:
            gen = f" (generation {i.generation})" if i.generation else ""
            test = f"test: {i.why}" if i.test else (f"no test: {i.why}" if i.why else "")
            print(f"{sym[i.action]} {i.action:9} {i.ref.kind}/{i.ref.namespace}/{i.ref.name}"
                  f"{gen}{'  ' + test if test else ''}")
            for d in i.diff:
                print(f"      {d}")
        n = sum(1 for i in items if i.changes)
        print(f"Plan: {sum(i.action == 'create' for i in items)} to create, "
              f"{sum(i.action in ('update', 'metadata') for i in items)} to update, "
              f"{sum(i.action == 'prune' for i in items)} to prune, "
              f"{sum(i.test for i in items)} to test" + ("" if n else " (no changes)"))
    return EXIT_CHANGES if any(i.changes for i in items) else EXIT_OK
