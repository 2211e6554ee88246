"""``smtpctl apply -f PATH...``: upsert resources and test what needs it ("Test And Save").

Exit codes (docs/cli.md): 0 when every resource this apply created or updated is Ready
(a relay that was already down and is unchanged is reported, not failed: GitOps applies
must not fail because a relay is down; ``--require-ready`` asks for every resource of
the input to be Ready); 1 invalid input or a changed resource that is not Ready; 2 usage
or I/O (including a lock held by another apply past ``--lock-timeout``); ``--dry-run``
exits like ``plan`` (0 nothing would change, 3 something would).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from typing import Any

from reconciler.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_input_options,
    add_namespace_options,
    add_output,
    add_store_options,
    state_dir,
)
from reconciler.cli.localcmd import (
    HEADER,
    add_limits,
    add_lock_timeout,
    add_probe_workers,
    is_tty,
    print_table,
    ready_cell,
    row,
    run_locked,
    sort_key,
)
from reconciler.cli.trust import add_egress_options, egress_from_args

HELP = "apply manifests to the local store and test what changed (Test Connection And Save)"
CACHE_TAG = "smtpctl.input/v2"


def configure(parser: argparse.ArgumentParser) -> None:
    add_input_options(parser)
    add_namespace_options(parser, all_flag=False, manifests=True)
    add_store_options(parser)
    parser.add_argument("--prune", action="store_true",
                        help="delete resources of the input's namespaces that are not in the "
                        "input (GitOps)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, resolve and plan; no test, no write (exits like `plan`)")
    parser.add_argument("--require-ready", action="store_true",
                        help="exit 1 unless every resource of the input is Ready (default: "
                        "only those this apply created or changed must be)")
    parser.add_argument("--watch", action="store_true",
                        help="keep running: re-verify on refreshInterval, re-apply on file "
                        "changes (lines with timestamps)")
    add_limits(parser)
    add_probe_workers(parser)
    add_egress_options(parser)
    add_lock_timeout(parser)
    add_output(parser, ("text", "wide", "json", "yaml", "name"))


def _structured(args: argparse.Namespace) -> bool:
    return bool(args.output in ("json", "yaml"))


class Progress:
    """A rich progress bar on a terminal, plain lines on stderr otherwise.

    ``stamp`` prefixes every line with the time (``--watch``: a log of what happened) and
    writes it at once.  Without it the lines of one apply are written together, at most
    :data:`LINES_EVERY` seconds after the first of them (and all at the end): one write per
    line to a pipe woke its reader (a CI runner, a pager) up to 300 times a second, and
    each wake-up could take this process's CPU at once, while tests were waiting for it.
    """

    def __init__(self, total: int, *, enabled: bool, stamp: bool = False) -> None:
        self.total = total
        self.done = 0
        self.stamp = stamp
        self.tty = enabled and not stamp and is_tty(sys.stderr)
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._lines: list[str] = []  # not written yet (see the class docstring)
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("reconciling"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        if self._bar is not None:
            self._bar.stop()

    def flush(self) -> None:
        """Write the lines not written yet (one write)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            sys.stderr.write(text)
            sys.stderr.flush()

    def _line(self, line: str) -> None:
        if self.stamp:
            say(line, stamp=True)
            return
        self._lines.append(line)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not called from a pass: nothing will come to flush it
                self.flush()
                return
            self._timer = loop.call_later(LINES_EVERY, self.flush)

    def __call__(self, result: Any) -> None:
        self.done += 1
        ref = result.ref
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{ref.namespace}/{ref.name}")
            return
        if not self.enabled or result.action == "skipped":
            return
        ready, reason = ready_cell(result.status)
        outcome = _test_word(result)
        line = f"{outcome:8} {ref.kind}/{ref.namespace}/{ref.name}: Ready={ready} ({reason})"
        if ready != "True":
            msg = _ready_message(result.status)
            if msg:
                line += f": {msg}"
        self._line(line)

    def event(self, e: Any) -> None:
        """A selection change while watching (Active, Failover, NotRequested)."""
        if self.enabled and e.reason in SELECTION_EVENTS:
            self._line(f"{'selection':8} {e.ref.kind}/{e.ref.namespace}/{e.ref.name}: "
                       f"{e.reason}: {e.message}")


# Seconds a progress line may wait to be written with the next ones (Progress).
LINES_EVERY = 0.1

SELECTION_EVENTS = ("Active", "Failover", "NotRequested", "Failback", "NoRelayInUse",
                    "ActiveRelayFailing", "PruneDeferred")


def say(line: str, *, stamp: bool = False) -> None:
    if stamp:
        import time

        line = time.strftime("%Y-%m-%dT%H:%M:%S%z ") + line
    print(line, file=sys.stderr, flush=True)


def _test_word(result: Any) -> str:
    """What the pass did about testing: passed, failed, skipped (not needed), blocked
    (credentials or provider), checked (a provider got a token), invalid, gone."""
    if result.tested:
        from reconciler.engine import conditions as cond

        return "passed" if cond.is_true(result.status, cond.READY) else "failed"
    action = str(result.action)
    return action if action in ("blocked", "checked", "invalid", "gone") else "skipped"


def _ready_message(status: dict[str, Any]) -> str:
    from reconciler.engine import conditions as cond

    c = cond.find(status.get("conditions") or [], cond.READY) or {}
    return str(c.get("message") or "")


class EventLog:
    """The store's event sink, also keeping (and optionally announcing) this run's events."""

    def __init__(self, store: Any, on_event: Any = None) -> None:
        from reconciler.engine.world import StoreEventSink

        self._inner = StoreEventSink(store)
        self.events: list[Any] = []
        self.on_event = on_event

    async def emit(self, event: Any) -> None:
        await self._inner.emit(event)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)


def run(args: argparse.Namespace) -> int:
    # Start-up order matters for a large first apply: read the input, start the probe
    # workers, and only then open the store and load the resource models (pydantic) and
    # the engine: the workers start on the other core while this process imports and
    # validates, instead of after.  With no state directory yet nothing can be cached and
    # every resource is new: they start right after the read, before the store's own
    # imports; else once the store's input cache missed (an unchanged re-apply starts
    # none).  localcmd and the store import the models where they are used
    # (tests/test_apply_startup_order.py).
    from reconciler.cli.output import Result
    from reconciler.runtimes import inputs

    result = Result("apply")
    if args.concurrency < 1 or args.per_host < 1:
        return _usage(args, result, "--concurrency and --per-host must be at least 1")
    if args.watch and _structured(args):
        return _usage(args, result, "--watch prints a log: use -o text (or wide)")
    try:
        args.egress = egress_from_args(args)
    except ValueError as exc:
        return _usage(args, result, str(exc))
    raw = inputs.read(args.files)
    sd = state_dir(args)
    ahead = _Ahead(args, raw)
    if not sd.exists:
        ahead.start()
    try:
        return _run_read(args, result, raw, sd, ahead)
    finally:
        ahead.close()


def _run_read(args: argparse.Namespace, result: Any, raw: Any, sd: Any, ahead: _Ahead) -> int:
    from reconciler.runtimes import inputs
    from reconciler.stores.local import LocalStore

    store = None
    if not args.dry_run and sd.exists:
        try:
            store = LocalStore(sd.path, create=False)
        except Exception as exc:  # noqa: BLE001 - StoreError, OSError: one line, exit 2
            return _usage(args, result, str(exc))
    # An input set applied before (same bytes, options and smtpctl) was validated then:
    # reuse the validated manifests instead of parsing YAML again (the 10,000-relay re-apply).
    digest = raw.digest(CACHE_TAG, args.allow_status, args.namespace)
    loaded = _cached(store, digest) if store is not None and not raw.unreadable else None
    if loaded is None:
        # Not applied before as it is: tests are likely.  Probe workers start now (unless
        # they already did), on another core, while the input is parsed (their ~0.2 s
        # start is not waited for).
        ahead.start()
        loaded = inputs.load(raw, allow_status=args.allow_status, namespace=args.namespace)
    return _run_loaded(args, result, raw, sd, store, digest, loaded, ahead.warm)


class _Ahead:
    """The probe workers of this input started ahead (:func:`_prestart`): at most once;
    ``close`` closes those the apply did not take."""

    def __init__(self, args: argparse.Namespace, raw: Any) -> None:
        self.args, self.raw = args, raw
        self.started = False
        self.warm: Any = None

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.warm = _prestart(self.args, self.raw)

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()


def _prestart(args: argparse.Namespace, raw: Any) -> Any:
    """Probe workers for this input, started ahead (None if it gets none).

    The number of resources is not known before parsing: each ``kind`` key of the input
    counts as one (a first guess; the pool takes what the parsed count allows and the
    rest are closed)."""
    from reconciler.cli.localcmd import probe_workers

    if args.dry_run:
        return None
    guess = sum(data.count(b"kind:") + data.count(b'"kind"') for _, data in raw.files)
    n = probe_workers(args, guess)
    if n <= 0:
        return None
    from reconciler.runtimes.probepool import Prestarted

    return Prestarted(n)


def _run_loaded(args: argparse.Namespace, result: Any, raw: Any, sd: Any, store: Any,
                digest: str, loaded: Any, warm: Any) -> int:
    from reconciler.cli.manifests import add_loaded, print_text_diagnostics
    from reconciler.stores.local import LocalStore

    code = add_loaded(result, loaded)
    if code != EXIT_OK or not loaded.manifests:
        if store is not None:
            store.close()
        if code == EXIT_OK:
            result.error("no ExternalSmtp or OAuth2Provider in the input")
            code = EXIT_USAGE
        return _finish(args, result, code)
    if not _structured(args):
        print_text_diagnostics(result, quiet_info=True)
    if args.dry_run:
        from reconciler.cli.cmd_plan import run_plan

        return run_plan(args, loaded.manifests, result)
    if store is None:
        try:
            store = LocalStore(sd.path, create=True)
        except Exception as exc:  # noqa: BLE001 - StoreError, OSError: one line, exit 2
            return _usage(args, result, str(exc))
        if sd.explicit:
            result.diag("info", f"created state directory {sd.path}")
            if not _structured(args):
                print(f"smtpctl: created state directory {sd.path}", file=sys.stderr)
    manifests = loaded.manifests

    def body(locked: Any) -> int:
        outcome, _events = asyncio.run(_apply(locked, manifests, args, result, warm))
        if digest and not raw.unreadable:
            _cache(locked, digest, loaded)
        return outcome

    code = run_locked(store, args.lock_timeout, body)
    if code == EXIT_USAGE and not result.items:
        # the lock: run_locked printed it; keep the envelope complete for scripts
        result.error(f"another smtpctl apply is using {sd.path}")
    return _finish(args, result, code, printed=True)


def _usage(args: argparse.Namespace, result: Any, message: str) -> int:
    result.error(message)
    return _finish(args, result, EXIT_USAGE)


def _finish(args: argparse.Namespace, result: Any, code: int, *, printed: bool = False) -> int:
    if _structured(args):
        return int(result.emit(args.output, code))
    if not printed:
        from reconciler.cli.manifests import print_text_diagnostics

        print_text_diagnostics(result, quiet_info=True)
    return code


def _cached(store: Any, digest: str) -> Any:
    from reconciler.runtimes.inputs import Loaded
    from reconciler.schema.diagnostics import Diagnostic

    data = store.cached_input(digest)
    if not data or not isinstance(data[0], dict) or CACHE_TAG not in data[0]:
        return None
    entry = data[0][CACHE_TAG]
    try:
        return Loaded(manifests=entry["manifests"], sources=entry["sources"],
                      diagnostics=[Diagnostic(*d) for d in entry["diagnostics"]],
                      documents=entry["documents"], skipped=entry["skipped"])
    except (KeyError, TypeError):
        return None


def _cache(store: Any, digest: str, loaded: Any) -> None:
    store.cache_input(digest, [{CACHE_TAG: {
        "manifests": loaded.manifests, "sources": loaded.sources,
        "diagnostics": [list(d) for d in loaded.diagnostics],
        "documents": loaded.documents, "skipped": loaded.skipped}}])


async def _apply(store: Any, manifests: list[dict[str, Any]], args: argparse.Namespace,
                 result: Any, warm: Any = None) -> tuple[int, list[Any]]:
    from reconciler.cli.trust import policy_from_args
    from reconciler.engine.world import Limits
    from reconciler.runtimes.local import build_world

    text = not _structured(args)
    progress = Progress(len(manifests), enabled=text)
    log = EventLog(store)
    from reconciler.cli.localcmd import probe_workers, refresh_floor

    world = build_world(store, limits=Limits(args.concurrency, args.per_host), events=log,
                        policy=policy_from_args(args), refresh_floor=refresh_floor(args),
                        egress=args.egress,
                        probe_workers=probe_workers(args, len(manifests)),
                        prestarted=warm)
    try:
        return await _apply_with(world, store, manifests, args, result, progress, log)
    finally:
        await world.aclose()


async def _apply_with(world: Any, store: Any, manifests: list[dict[str, Any]],
                      args: argparse.Namespace, result: Any, progress: Progress,
                      log: EventLog) -> tuple[int, list[Any]]:
    from reconciler.runtimes.local import apply_manifests, ref_of, watch

    with progress:
        # Whole statuses are printed by -o json|yaml only: there, as a read decodes them.
        outcome = await apply_manifests(store, world, manifests, prune=args.prune,
                                        progress=progress, keep_objects=True,
                                        as_read=_structured(args))
    refs = [ref_of(m) for m in manifests]
    code = report(store, refs, outcome, args, result, log.events)
    if args.watch:
        stamped = Progress(0, enabled=True, stamp=True)
        log.on_event = stamped.event
        say("watching for changes (Ctrl-C to stop)", stamp=True)
        # Between passes the lock is free, so `smtpctl apply` from another shell can run.
        store.unlock()

        def load(paths: list[str]) -> list[dict[str, Any]]:
            from reconciler.runtimes.local import load_manifests

            return load_manifests(paths, allow_status=args.allow_status)

        # Runs until Ctrl-C: asyncio.run cancels it and smtpctl exits 130 ("interrupted").
        await watch(store, world, args.files, prune=args.prune, progress=stamped,
                    on_error=lambda m: say(f"smtpctl: {m}", stamp=True),
                    pass_lock=lambda: store.locked(args.lock_timeout), load=load)
    return code, log.events


def item_fields(obj: Any, *, operation: str | None, test: str | None) -> dict[str, Any]:
    """The per-resource fields of apply/reconcile results (envelope and text)."""
    from reconciler import catalog
    from reconciler.engine import conditions as cond

    st = obj.status
    ready = cond.find(st.get("conditions") or [], cond.READY) or {}
    reason = str(ready.get("reason") or "Pending")
    entry = catalog.CATALOG.get(reason)
    warnings = list((st.get("lastTest") or {}).get("warnings") or st.get("warnings") or [])
    fields: dict[str, Any] = {
        "operation": operation, "generation": obj.generation, "test": test,
        "ready": str(ready.get("status") or "Unknown"), "reason": reason,
        "message": str(ready.get("message") or ""),
        "action": entry.action if entry is not None and ready.get("status") != "True"
        else None,
        # the verdict's own judgement (Stalled: only a change helps), not the catalog's
        # default: an unknown host is transient when DNS failed, permanent when NXDOMAIN
        "retryable": (not cond.is_true(st, cond.STALLED))
        if ready.get("status") == "False" else None,
        "warnings": warnings,
    }
    if obj.ref.kind == "ExternalSmtp":
        fields["selected"] = bool(st.get("selected"))
        fields["activeGeneration"] = st.get("activeGeneration")
        sel = cond.find(st.get("conditions") or [], "Selected") or {}
        if sel:
            fields["selection"] = {"reason": sel.get("reason"), "message": sel.get("message")}
    fields["status"] = st
    return fields


OPERATIONS = {"created": "create", "configured": "update", "unchanged": "unchanged",
              "metadata": "metadata"}


def report(store: Any, refs: list[Any], outcome: Any, args: argparse.Namespace, result: Any,
           events: list[Any]) -> int:
    import dataclasses

    results = {r.ref: r for r in outcome.results}
    operations = {u.obj.ref: OPERATIONS.get(u.change, u.change) for u in outcome.upserted}
    # The objects as the apply left them, from what it wrote (apply_manifests with
    # keep_objects: no second decode of 10,000 rows); else from the pass's results, or read.
    if outcome.objects is not None:
        objs = list(outcome.objects)
    elif all(r.action == "skipped" or r.ref.kind != "ExternalSmtp" for r in outcome.results):
        final = {r.ref: r.status for r in outcome.results}
        objs = [dataclasses.replace(u.obj, status=final.get(u.obj.ref, u.obj.status))
                for u in outcome.upserted]
    else:
        wanted = set(refs)
        objs = [o for o in store.list_sync() if o.ref in wanted]
    objs.sort(key=sort_key)
    return summarize(objs, results, operations, outcome.pruned, args, result, events,
                     command="apply")


def summarize(objs: list[Any], results: dict[Any, Any], operations: dict[Any, str],
              pruned: list[Any], args: argparse.Namespace, result: Any, events: list[Any],
              *, command: str) -> int:
    """Items, events, summary and exit code of apply/reconcile; the text report."""
    code = EXIT_OK
    not_ready_changed = not_ready = failed_tests = 0
    for o in objs:
        r = results.get(o.ref)
        test = _test_word(r) if r is not None else "-"
        op = operations.get(o.ref)
        fields = item_fields(o, operation=op, test=test)
        if args.output not in ("json", "yaml"):
            # the text outputs print fields, never the whole status (whose key order
            # is the store's only when the objects were read: see apply_manifests)
            del fields["status"]
        result.item(o.ref.kind, o.ref.namespace, o.ref.name, **fields)
        if fields["ready"] != "True":
            not_ready += 1
            changed = op in ("create", "update") if command == "apply" else (
                r is not None and r.tested)
            # Ready before this run and not after it: this run found it broken (a rotated
            # password, a lost refresh-token rotation) - a failure even with no input change.
            changed = changed or bool(r is not None and getattr(r, "regressed", False))
            if changed:
                not_ready_changed += 1
        if r is not None and r.tested and fields["ready"] != "True":
            failed_tests += 1
    for ref in pruned:
        result.item(ref.kind, ref.namespace, ref.name, operation="prune")
    for e in events:
        result.events.append({"kind": e.ref.kind, "namespace": e.ref.namespace,
                              "name": e.ref.name, "type": e.type, "reason": e.reason,
                              "message": e.message, "time": e.at})
    if not_ready_changed or (getattr(args, "require_ready", False) and not_ready):
        code = EXIT_FAILED
    ops = Counter(i.get("operation") for i in result.items)  # one pass, not one per op
    counts = {op: ops[op] for op in ("create", "update", "metadata", "unchanged", "prune")}
    result.summary.update({
        "resources": len(objs), **counts,
        "tested": sum(1 for r in results.values() if r.tested),
        "failedTests": failed_tests, "notReady": not_ready,
    })
    _conflicts(result)
    if args.output in ("json", "yaml"):
        return code
    if args.output == "name":
        from reconciler.cli.names import display_kind

        for i in result.items:
            print(f"{display_kind(i['kind'])}/{i['name']}")
        return code
    wide = args.output == "wide"
    rows = []
    # by key, not a scan per row: 10,000 rows made that 50 million comparisons
    items = {(i["kind"], i["namespace"], i["name"]): i for i in result.items
             if i.get("operation") != "prune"}
    for o in objs:
        item = items[(o.ref.kind, o.ref.namespace, o.ref.name)]
        cells = row(o, wide=wide)
        cells += [item.get("operation") or "-", item.get("test") or "-"]
        rows.append(cells)
    from reconciler.cli.localcmd import WIDE

    print_table([*HEADER, *(WIDE if wide else []), "CHANGE", "TEST"], rows)
    for r in pruned:
        print(f"pruned {r.kind}/{r.namespace}/{r.name}")
    _print_messages(result, command=command)
    s = result.summary
    changes = ", ".join(f"{s[k]} {w}" for k, w in (
        ("create", "created"), ("update", "updated"), ("metadata", "relabelled"),
        ("unchanged", "unchanged"), ("prune", "pruned")) if s.get(k)) or "no changes"
    tests = f"{s['tested']} tested" + (f" ({s['failedTests']} failed)" if s["failedTests"]
                                       else "")
    nr = f"; {s['notReady']} not Ready" if s["notReady"] else ""
    print(f"{len(objs)} resources: {changes}; {tests}{nr}")
    if code == EXIT_OK and not_ready and command == "apply":
        print("(exit 0: the resources that are not Ready were not changed by this apply; "
              "--require-ready fails on them too)", file=sys.stderr)
    return code


def _conflicts(result: Any) -> None:
    """Relays that ask to be selected but lose to another one: a warning each."""
    for i in result.items:
        sel = i.get("selection") or {}
        if sel.get("reason") == "SelectionConflict":
            result.warning(f"{i['namespace']}/{i['name']} asks to be selected, but "
                           f"{sel.get('message') or 'another relay is'}",
                           kind=i["kind"], name=i["name"], reason="SelectionConflict")


def _print_messages(result: Any, *, command: str) -> None:
    """Under the table: why each resource is not Ready and what to do, its warnings, and
    what happened to selection."""
    from reconciler import catalog

    for i in result.items:
        who = f"{i['namespace']}/{i['name']}"
        if i.get("ready") not in (None, "True") and i.get("operation") != "prune":
            again = "" if i.get("retryable") is None else (
                " (retry may help)" if i["retryable"] else " (needs a change)")
            print(f"{who}: {i['reason']}{again}: {i['message']}")
            if i.get("action"):
                print(f"  action: {i['action']}")
        for w in i.get("warnings") or []:
            entry = catalog.CATALOG.get(w)
            text = f"{entry.message}; {entry.action}" if entry else ""
            print(f"{who}: warning: {w}: {text}")
    for d in result.diagnostics:
        if d.get("reason") == "SelectionConflict":
            print(f"warning: {d['message']}")
    for e in result.events:
        if e["reason"] in SELECTION_EVENTS and e["type"] in ("Normal", "Warning"):
            if e["reason"] in ("Failover", "Failback") and any(
                    x is not e and x["reason"] == e["reason"] and x["message"] == e["message"]
                    for x in result.events[:result.events.index(e)]):
                continue  # the same fail-over/-back is recorded on both relays: show it once
            print(f"selection: {e['namespace']}: {e['reason']}: {e['message']}")

