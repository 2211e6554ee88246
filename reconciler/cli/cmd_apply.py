"""``smtpctl apply -f PATH...``: upsert resources and test what needs it ("Test And Save").

Exit codes: 0 when every applied resource is Ready, 1 when any is not (or the input is
invalid), 2 on usage/I/O errors (including a lock held by another apply past
``--lock-timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from reconciler.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_files, add_state
from reconciler.cli.localcmd import (
    HEADER,
    add_limits,
    add_lock_timeout,
    fail_usage,
    is_tty,
    open_store,
    print_table,
    row,
    run_locked,
)
from reconciler.cli.trust import add_trust_options, policy_from_args

HELP = "apply manifests to the local store and test what changed (Test Connection And Save)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_files(parser)
    add_state(parser)
    parser.add_argument("--prune", action="store_true",
                        help="delete resources of the input's namespaces that are not in the "
                        "input (GitOps)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, resolve and plan; no test, no write (like `plan`)")
    parser.add_argument("--watch", action="store_true",
                        help="keep running: re-verify on refreshInterval, re-apply on file "
                        "changes")
    add_limits(parser)
    add_lock_timeout(parser)
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text",
                        help="final report format (default text)")
    add_trust_options(parser)


class Progress:
    """A rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.tty = enabled and is_tty(sys.stderr)
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("reconciling"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, result: Any) -> None:
        self.done += 1
        ref = result.ref
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{ref.namespace}/{ref.name}")
        elif self.enabled and result.action != "skipped":
            from reconciler.cli.localcmd import ready_cell

            ready, reason = ready_cell(result.status)
            print(f"{result.action:8} {ref.kind}/{ref.namespace}/{ref.name}: Ready={ready} "
                  f"({reason})", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reconciler.runtimes.local import (
        InputError,
        input_digest,
        read_inputs,
        validate_inputs,
    )

    if args.concurrency < 1 or args.per_host < 1:
        return fail_usage("--concurrency and --per-host must be at least 1")
    try:
        inputs = read_inputs(args.files)
    except InputError as exc:
        return fail_usage(str(exc))
    # An input set applied before (same bytes, same smtpctl) was validated then: reuse the
    # validated manifests instead of parsing YAML again (the 10,000-relay re-apply).
    digest = input_digest(inputs)
    store = None
    if not args.dry_run and Path(args.state).exists():
        store = open_store(args.state, create=False)
        if store is None:
            return EXIT_USAGE
    manifests = store.cached_input(digest) if store is not None else None
    if manifests is None:
        try:
            manifests = validate_inputs(inputs)
        except InputError as exc:
            if store is not None:
                store.close()
            print(f"smtpctl: {exc}", file=sys.stderr)
            return EXIT_USAGE if exc.usage else EXIT_FAILED
    if not manifests:
        return fail_usage("no resources in the input")
    if args.dry_run:
        from reconciler.cli.cmd_plan import run_plan

        code = run_plan(args, manifests)
        return EXIT_OK if code in (0, 3) else code
    store = store or open_store(args.state, create=True)
    if store is None:
        return EXIT_USAGE

    def body(locked: Any) -> int:
        code = asyncio.run(_apply(locked, manifests, args))
        locked.cache_input(digest, manifests)
        return code

    return run_locked(store, args.lock_timeout, body)


async def _apply(store: Any, manifests: list[dict[str, Any]], args: argparse.Namespace) -> int:
    from reconciler.engine.world import Limits
    from reconciler.runtimes.local import apply_manifests, build_world, ref_of, watch

    world = build_world(store, limits=Limits(args.concurrency, args.per_host),
                        policy=policy_from_args(args))
    with Progress(len(manifests), enabled=args.output == "text") as progress:
        outcome = await apply_manifests(store, world, manifests, prune=args.prune,
                                        progress=progress)
    refs = [ref_of(m) for m in manifests]
    code = report(store, refs, outcome, args.output)
    if args.watch:
        print("watching for changes (Ctrl-C to stop)", file=sys.stderr, flush=True)
        # Between passes the lock is free, so `smtpctl apply` from another shell can run.
        store.unlock()
        # Runs until Ctrl-C: asyncio.run cancels it and smtpctl exits 130 ("interrupted").
        await watch(store, world, args.files, prune=args.prune,
                    progress=Progress(0, enabled=args.output == "text"),
                    on_error=lambda m: print(f"smtpctl: {m}", file=sys.stderr, flush=True),
                    pass_lock=lambda: store.locked(args.lock_timeout))
    return code


def report(store: Any, refs: list[Any], outcome: Any, fmt: str) -> int:
    import dataclasses

    tested = {r.ref: ("tested" if r.tested else r.action) for r in outcome.results}
    # Rows from what the pass wrote (no re-read of 10,000 rows); selection may have
    # changed other relays' Selected after their own pass, so relays are re-read when
    # anything was tested.
    if all(r.action == "skipped" or r.ref.kind != "ExternalSmtp" for r in outcome.results):
        final = {r.ref: r.status for r in outcome.results}
        objs = [dataclasses.replace(u.obj, status=final.get(u.obj.ref, u.obj.status))
                for u in outcome.upserted]
    else:
        order = {r: i for i, r in enumerate(refs)}
        objs = sorted((o for o in store.list_sync() if o.ref in order),
                      key=lambda o: order[o.ref])  # the input's order, as in the fast path
    all_ready = True
    rows = []
    from reconciler.cli.localcmd import ready_cell

    for o in objs:
        ready, _ = ready_cell(o.status)
        all_ready &= ready == "True"
        rows.append(row(o, tested=tested.get(o.ref, "-")))
    if fmt == "json":
        print(json.dumps({
            "resources": [{"kind": o.ref.kind, "namespace": o.ref.namespace,
                           "name": o.ref.name, "generation": o.generation,
                           "action": tested.get(o.ref, "-"), "status": o.status}
                          for o in objs],
            "pruned": [str(r) for r in outcome.pruned],
            "testsRun": outcome.tests_run}, indent=2))
    else:
        print_table([*HEADER, "TEST"], rows)
        for r in outcome.pruned:
            print(f"pruned {r.kind}/{r.namespace}/{r.name}")
        changed = sum(1 for u in outcome.upserted if u.change != "unchanged")
        print(f"{len(objs)} resources: {changed} changed, {outcome.tests_run} tested, "
              f"{len(objs) - outcome.tests_run} not tested")
    return EXIT_OK if all_ready else EXIT_FAILED
