"""The local runtime: apply manifests to the embedded store and reconcile them.

This is the local equivalent of the operator.  It reads manifests, upserts them into the
:class:`~reconciler.stores.local.LocalStore` (generation rule of Kubernetes), and runs
the engine's ``reconcile`` for every resource that needs it, concurrently:

* OAuth2Provider resources first (an ExternalSmtp waits for its provider's Ready);
* then every ExternalSmtp, in tasks bounded by the world's limits (a global limit and a
  per-host limit on connection tests: one relay is not hammered by a fleet);
* a final selection pass per namespace touched (the engine already selects after each
  change; this one covers deletions and prunes).

``watch`` keeps running: it sleeps until the earliest ``requeue_after`` (re-verification
with jitter, backoff), and re-reads the input paths when a file changes.

Decisions where the issue is silent:

* invalid documents abort the whole apply before anything is written (exit 1): a GitOps
  pipeline must not half-apply a broken commit;
* ``--prune`` deletes resources of the *namespaces present in the input* that are not in
  the input (the scope is state directory + namespace);
* the apply lock is held for the whole apply; a watch holds it only during each pass, so
  an ``smtpctl apply`` from another shell runs between passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from reconciler.credentials.policy import SourcePolicy, stamp_manifest
from reconciler.engine.assess import render_validation_error
from reconciler.engine.backoff import ErrorBackoff
from reconciler.engine.reconcile import ReconcileAction, ReconcileResult, reconcile
from reconciler.engine.selection import select_scope
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.refresh import REFRESH_FLOOR
from reconciler.resources import KIND_OAUTH2, KIND_SMTP, parse_resource
from reconciler.secret import Secret
from reconciler.stores.base import Event, ObjectRef, StoredObject, StoreError, manifest_ref
from reconciler.stores.local import LocalStore, Upserted

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class InputError(Exception):
    """Unreadable or invalid input (exit 1 for invalid documents, 2 for I/O)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True, slots=True)
class Document:
    source: str  # file[:line]
    data: dict[str, Any]


def _expand(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            out.extend(str(f) for f in sorted(path.rglob("*"))
                       if f.is_file() and f.suffix in MANIFEST_SUFFIXES)
        elif path.exists():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or directory", usage=True)
    return out


def read_inputs(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(name, text) of every input file, directory entry and ``-`` (stdin)."""
    out: list[tuple[str, str]] = []
    for p in _expand(paths):
        try:
            text = sys.stdin.read() if p == "-" else Path(p).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{p}: cannot read: {exc.__class__.__name__}", usage=True) from None
        out.append(("<stdin>" if p == "-" else p, text))
    return out


def input_digest(inputs: list[tuple[str, str]]) -> str:
    """Identifies an input set (absolute names + bytes + smtpctl version) for the parse
    cache.  Absolute: a manifest's directory decides which files it may reference."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("smtpctl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ver = "dev"
    h = hashlib.sha256(ver.encode())
    for name, text in inputs:
        where = name if name == "<stdin>" else os.path.abspath(name)
        h.update(b"\0" + where.encode() + b"\0" + text.encode())
    return h.hexdigest()


def parse_texts(inputs: list[tuple[str, str]]) -> list[Document]:
    """YAML/JSON documents of the inputs (YAML is a superset of JSON)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs: list[Document] = []
    for name, text in inputs:
        try:
            for i, data in enumerate(yaml.load_all(text, Loader=loader)):
                if data is None:
                    continue
                if not isinstance(data, dict):
                    raise InputError(f"{name}: document {i + 1}: expected a mapping")
                # Where it came from decides which files it may reference (the CLI's
                # source policy); whatever the document claims is overwritten.
                stamp_manifest(data, None if name == "<stdin>" else name)
                docs.append(Document(f"{name}#{i + 1}", data))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise InputError(f"{name}{where}: {problem}") from None
    return docs


def load_documents(paths: Iterable[str]) -> list[Document]:
    """Read YAML/JSON documents from files, directories and ``-`` (stdin)."""
    return parse_texts(read_inputs(paths))


def schema_problems(inputs: list[tuple[str, str]]) -> str | None:
    """The schema layer's diagnostics (``file:line:col: error: path: message``) when the
    inputs are invalid, else None.  The same checks and wording as ``smtpctl validate``."""
    from reconciler.schema.report import render_text
    from reconciler.schema.validate import Options, Validator

    v = Validator(Options(allow_status=True))
    for name, text in inputs:
        v.add_bytes(name, text.encode("utf-8"))
    report = v.finish()
    if report.valid:
        return None
    return render_text(report).rstrip("\n")


def validate_inputs(inputs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Validated manifests of the inputs, or InputError with every problem.

    First the schema layer (file, line, JSON path, message), then the typed models (which
    must agree; they also catch duplicates across files)."""
    problems = schema_problems(inputs)
    if problems is not None:
        raise InputError("invalid input:\n" + problems)
    return validate_documents(parse_texts(inputs))


def load_manifests(paths: Iterable[str], *, allow_status: bool = True) -> list[dict[str, Any]]:
    """Valid manifests of ``paths`` by the rules every command shares
    (:mod:`reconciler.runtimes.inputs`), or InputError with every problem."""
    from reconciler.runtimes import inputs

    loaded = inputs.load_paths(paths, allow_status=allow_status)
    if not loaded.ok:
        raise InputError("invalid input:\n" + inputs.problems_text(loaded),
                         usage=bool(loaded.io_errors))
    return loaded.manifests


def validate_documents(docs: list[Document]) -> list[dict[str, Any]]:
    """Typed validation of every document; raises InputError listing every problem."""
    problems: list[str] = []
    manifests: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, str], str] = {}
    for d in docs:
        kind = d.data.get("kind")
        if kind not in (KIND_SMTP, KIND_OAUTH2):
            problems.append(f"{d.source}: kind: expected ExternalSmtp or OAuth2Provider")
            continue
        try:
            res = parse_resource(d.data)
        except ValidationError as exc:
            problems.append(f"{d.source}: {render_validation_error(exc, limit=10)}")
            continue
        key = (str(kind), res.metadata.namespace, res.metadata.name)
        if key in seen:
            problems.append(f"{d.source}: duplicate {kind} {key[1]}/{key[2]} (also in "
                            f"{seen[key]})")
            continue
        seen[key] = d.source
        m = {k: v for k, v in d.data.items() if k != "status"}
        meta = dict(m.get("metadata") or {})
        meta["namespace"] = res.metadata.namespace
        m["metadata"] = meta
        manifests.append(m)
    if problems:
        raise InputError("invalid input:\n  " + "\n  ".join(problems))
    return manifests


ref_of = manifest_ref  # the name the CLI commands use


# --- the world -------------------------------------------------------------------------


def build_world(store: LocalStore, *, limits: Limits | None = None,
                events: Any = None, announce_testing: bool = True,
                clock: Callable[[], float] = time.time,
                policy: SourcePolicy | None = None, egress: Any = None,
                offline: bool = False, refresh_floor: float | None = None,
                probe_workers: int = 0, prestarted: Any = None) -> BasicWorld:
    """A World wired to the real credentials layer and probe (imported lazily).

    ``policy``: which secret references manifests may use (default: the CLI's, with the
    ``SMTPCTL_ALLOW_*`` opt-ins of the environment; ``docs/security.md``).  ``offline``:
    ``plan`` and ``apply --dry-run`` (secrets resolved for their versions only; no token
    endpoint, no relay, no write).  Each reference is resolved at most once per pass
    (``begin_pass``): 10,000 relays usually share a handful of references.
    ``refresh_floor``: the shortest re-verification interval (``--min-refresh-interval``).
    ``probe_workers``: run connection tests in that many worker processes
    (:mod:`reconciler.runtimes.probepool`; started at the first connection test, so an
    apply that tests nothing starts none); call ``await world.aclose()`` when done with
    the world.  ``prestarted``: a :class:`~reconciler.runtimes.probepool.Prestarted` whose
    processes the pool adopts first (up to ``probe_workers``; the rest stay its owner's).
    """
    from reconciler.credentials.policy import cli_policy
    from reconciler.credentials.sources import default_sources
    from reconciler.runtimes.live import live_functions

    sources = default_sources(policy=policy if policy is not None else cli_policy(),
                              pass_cache=True)
    live = live_functions(sources, egress=egress, offline=offline)
    probe_fn, close_fn = live.probe_fn, None
    if probe_workers > 0 and not offline:
        from reconciler.probe.egress import EgressPolicy
        from reconciler.runtimes.probepool import ProbePool

        pool = ProbePool(probe_workers, policy=egress if egress is not None else EgressPolicy(),
                         fallback=live.probe_fn,
                         prestarted=prestarted.take(probe_workers) if prestarted else None)
        probe_fn, close_fn = pool.probe, pool.aclose
    return BasicWorld(store=store, resolve_fn=live.resolve_fn, probe_fn=probe_fn,
                      check_provider_fn=live.check_provider_fn, close_fn=close_fn,
                      events=events if events is not None else StoreEventSink(store),
                      limits=limits or Limits(), clock_fn=clock,
                      announce_testing=announce_testing, begin_pass=sources.begin_pass,
                      refresh_floor=REFRESH_FLOOR if refresh_floor is None else refresh_floor)


# --- handing out the active relay ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revealed:
    """A tested credential of the active relay, in memory only (``get active --reveal``)."""

    secret: Secret | None
    token_expires_at: str | None = None


async def reveal_active(store: LocalStore, namespace: str, record: Mapping[str, Any], *,
                        manifest: Mapping[str, Any], policy: SourcePolicy | None = None,
                        ) -> Revealed:
    """The password of the active record, but only when it is the tested one: raises
    :class:`reconciler.engine.active.NotTested` otherwise (the secret changed since the
    test and the new value has not passed).

    The reference is read through the source policy for the relay that holds it
    (``manifest``), as ``apply`` read it.  The comparison is of keyed versions (HMACs with
    the store's key), so the state file never holds a value; ``store`` must be open
    (opening it installs that key).  An OAuth 2.0 access token is never revealed: ``get``
    only reads and contacts no token endpoint (the operator publishes tokens).
    """
    from reconciler.credentials.base import CredentialError
    from reconciler.credentials.policy import cli_policy, sources_for
    from reconciler.credentials.sources import default_sources
    from reconciler.engine.active import require_tested
    from reconciler.resources import SecretRef

    del store  # open: its version key is installed
    sources = default_sources(policy=policy if policy is not None else cli_policy())
    auth = record.get("authentication")
    if auth == "UsernamePassword" and record.get("passwordFrom"):
        ref = SecretRef.model_validate(record["passwordFrom"])
        resolved = await sources_for(sources, dict(manifest)).resolve(ref, namespace)
        require_tested(record, "password", resolved.version)
        return Revealed(resolved.value)
    if auth == "OAuth2":
        raise CredentialError(
            "OAuth2TokenNotRevealed",
            "get only reads: it never contacts a token endpoint, so --reveal shows no access "
            "token (applications obtain tokens from the provider themselves; the operator "
            "publishes one)")
    return Revealed(None)


# --- apply -------------------------------------------------------------------------------


ProgressFn = Callable[[ReconcileResult], None]


@dataclass
class ApplyOutcome:
    upserted: list[Upserted] = field(default_factory=list)
    pruned: list[ObjectRef] = field(default_factory=list)
    held: list[tuple[ObjectRef, str]] = field(default_factory=list)  # prunes deferred
    results: list[ReconcileResult] = field(default_factory=list)
    # With apply_manifests(keep_objects=True): the applied objects as the store holds them
    # at the end, in store order (what list_sync would return for them).
    objects: list[StoredObject] | None = None

    @property
    def tests_run(self) -> int:
        return sum(1 for r in self.results if r.tested)


@dataclass(frozen=True, slots=True)
class PassError:
    """A reconcile that raised (a store error): retried with per-item backoff."""

    ref: ObjectRef
    message: str
    retry_after: float


async def reconcile_objects(refs: Iterable[ObjectRef], world: BasicWorld, *,
                            progress: ProgressFn | None = None,
                            max_tasks: int | None = None,
                            force_select: bool = False, force: bool = False,
                            errors: ErrorBackoff | None = None,
                            failed: list[PassError] | None = None,
                            ) -> list[ReconcileResult]:
    """Reconcile providers, then relays, concurrently, by key; one final selection per scope.

    Each pass reads its object when it starts (``reconcile`` is by key), so a relay sees
    what the provider pass just wrote.  A pass that raises a :class:`StoreError` does not
    stop the others: it is recorded in ``failed`` with its retry delay from ``errors``
    (per-item exponential backoff) and left out of the results; any other exception
    propagates (a bug).  ``force`` re-tests relays whose test is not due yet.
    """
    world.begin_pass()
    errors = errors if errors is not None else ErrorBackoff()
    limit = max_tasks or pass_tasks(world.limits)
    results: list[ReconcileResult] = []
    todo = list(dict.fromkeys(refs))

    async def one(ref: ObjectRef) -> None:
        try:
            r = await reconcile(ref, world, force=force)
        except StoreError as exc:
            delay = errors.failure(str(ref))
            if failed is not None:
                failed.append(PassError(ref, str(exc), delay))
            return
        errors.success(str(ref))
        if progress is not None:
            progress(r)
        # Keep the summary, not the verdict (its transcript): 10,000 of them add up.
        results.append(dataclasses.replace(r, verdict=None) if r.verdict is not None else r)

    providers = [r for r in todo if r.kind == KIND_OAUTH2]
    relays = [r for r in todo if r.kind == KIND_SMTP]
    # Group commit (LocalStore.batched): the passes' writes share a few transactions
    # instead of several each; crash safety is the store's (see there).
    batched = getattr(world.store, "batched", None)
    # LocalStore.remember: the final selection pass lists the relays the passes just
    # wrote without decoding their rows again.
    remember = getattr(world.store, "remember", None)
    with batched() if callable(batched) else contextlib.nullcontext(), \
            remember() if callable(remember) else contextlib.nullcontext():
        await _each(providers, one, limit)
        await _each(relays, one, limit)
        # A final selection pass per scope, unless nothing happened (the fast re-apply):
        # the engine already selected after every change it made.
        if force_select or any(r.action != ReconcileAction.SKIPPED for r in results):
            for ns in sorted({r.namespace for r in relays}):
                await select_scope(ns, world)
    order = {r: i for i, r in enumerate(todo)}
    results.sort(key=lambda r: order.get(r.ref, 0))
    return results


def pass_tasks(limits: Limits) -> int:
    """How many passes run at once: the global test limit + 4 when no host limit is below
    it (every pass that can test has a slot, and four more are ready to take one as a test
    ends), else ``max(64, 4 x concurrency)``: passes waiting for a busy host's slot must not
    keep the other hosts' relays waiting for a task (the CLI's default, ``--per-host 4``
    below ``--concurrency 16``).  Every extra pass does its work up to the test before the
    first tests are sent, and waits on a slot; 128 passes for 32 slots made the first test
    wait for 128 of them."""
    if limits.per_host >= limits.concurrency:
        return limits.concurrency + 4
    return max(64, limits.concurrency * 4)


async def _each(items: list[ObjectRef], fn: Callable[[ObjectRef], Any], limit: int) -> None:
    """``await fn(item)`` for every item, at most ``limit`` at a time: ``limit`` tasks take
    the next item when done, instead of a task per item queued on a semaphore (10,000
    waiting tasks cost memory, and waking them one by one cost 10 % of an unchanged
    re-apply's CPU)."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await fn(item)

    await asyncio.gather(*(worker() for _ in range(min(limit, len(items)))))


async def delete_refs(store: LocalStore, world: BasicWorld,
                      refs: list[ObjectRef]) -> list[ObjectRef]:
    """Delete, then re-run selection in the affected namespaces (the next relay takes over)."""
    gone: list[ObjectRef] = []
    for ref in refs:
        if store.delete_sync(ref):
            gone.append(ref)
            await world.events.emit(Event(ref, "Normal", "Deleted", f"{ref} was deleted",
                                          time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    for ns in sorted({r.namespace for r in gone if r.kind == KIND_SMTP}):
        await select_scope(ns, world)
    return gone


def prune_candidates(store: LocalStore, manifests: list[dict[str, Any]]) -> list[ObjectRef]:
    keep = {ref_of(m) for m in manifests}
    namespaces = {r.namespace for r in keep}
    return [o.ref for ns in sorted(namespaces) for o in store.list_sync(None, ns)
            if o.ref not in keep]


async def apply_manifests(store: LocalStore, world: BasicWorld, manifests: list[dict[str, Any]],
                          *, prune: bool = False, progress: ProgressFn | None = None,
                          on_upserted: Callable[[list[Upserted]], None] | None = None,
                          keep_objects: bool = False, as_read: bool = True) -> ApplyOutcome:
    """Upsert, reconcile, then prune (``prune``): removals come after the replacements were
    tested, and never take away the relay in use of a namespace without a Ready
    replacement (see :func:`safe_prunes`).  ``keep_objects``: fill ``objects`` for a
    report, from what the apply wrote (no decode of the rows it has in hand); with
    ``as_read`` False their statuses keep the key order they were built in (a report that
    does not print whole statuses need not re-encode 10,000 of them)."""
    with store.remember():
        out = await _apply_manifests(store, world, manifests, prune=prune, progress=progress,
                                     on_upserted=on_upserted)
        if keep_objects:
            wanted = {u.obj.ref for u in out.upserted}
            out.objects = [o for o in store.list_current_sync(as_read=as_read)
                           if o.ref in wanted]
    return out


async def _apply_manifests(store: LocalStore, world: BasicWorld,
                           manifests: list[dict[str, Any]], *, prune: bool,
                           progress: ProgressFn | None,
                           on_upserted: Callable[[list[Upserted]], None] | None,
                           ) -> ApplyOutcome:
    out = ApplyOutcome()
    out.upserted = store.upsert_many(manifests, now=world.clock())
    if on_upserted is not None:
        on_upserted(out.upserted)
    out.results = await reconcile_objects([u.obj.ref for u in out.upserted], world,
                                          progress=progress)
    if prune:
        safe, out.held = safe_prunes(store, prune_candidates(store, manifests), world.clock())
        for ref, why in out.held:
            await world.events.emit(Event(ref, "Warning", "PruneDeferred",
                                          f"not pruned: {why}", _rfc3339(world.clock())))
        out.pruned = await delete_refs(store, world, safe)
    return out


def safe_prunes(store: LocalStore, refs: list[ObjectRef], now: float,
                ) -> tuple[list[ObjectRef], list[tuple[ObjectRef, str]]]:
    """Split prune candidates into those safe to delete now and those held back.

    A namespace whose relay in use is a candidate keeps it while no remaining relay would
    be selected in its place (the replacement failed its test, or there is none): a prune
    must never leave applications without the relay that works.  The OAuth2Providers the
    held relays use are held too.  The next apply prunes them once a replacement is Ready.
    """
    from reconciler.engine.selection import candidate, decide

    doomed = set(refs)
    held: list[tuple[ObjectRef, str]] = []
    for ns in sorted({r.namespace for r in refs if r.kind == KIND_SMTP}):
        relays = store.list_sync(KIND_SMTP, ns)
        in_use = [o for o in relays if o.status.get("selected")]
        if not in_use or in_use[0].ref not in doomed:
            continue
        remaining = [candidate(o) for o in relays if o.ref not in doomed]
        if decide(remaining, now).winner is None:
            obj = in_use[0]
            held.append((obj.ref, "it is the relay in use in namespace "
                         f"{ns} and no remaining relay is Ready to take over; it is pruned "
                         "by a later apply once one is"))
            pref = ((obj.manifest.get("spec") or {}).get("oauth2ProviderRef") or {}).get("name")
            pkey = ObjectRef(KIND_OAUTH2, ns, str(pref)) if pref else None
            if pkey is not None and pkey in doomed:
                held.append((pkey, f"ExternalSmtp {obj.ref.name!r}, the relay in use, "
                             "uses it and is held"))
    kept = {r for r, _ in held}
    return [r for r in refs if r not in kept], held


# --- watch ---------------------------------------------------------------------------------


def _mtimes(paths: list[str]) -> dict[str, float]:
    from reconciler.schema.validate import describe_paths

    out: dict[str, float] = {}
    for p in describe_paths(paths):
        if p == "-":
            continue
        path = Path(p)
        files = [path] if path.is_file() else (
            [f for f in path.rglob("*") if f.suffix in MANIFEST_SUFFIXES] if path.is_dir() else [])
        for f in files:
            try:
                out[str(f)] = f.stat().st_mtime_ns / 1e9
            except OSError:
                continue
    return out


async def watch(store: LocalStore, world: BasicWorld, paths: list[str] | None, *,
                prune: bool = False, poll: float = 1.0, max_sleep: float = 60.0,
                stop: asyncio.Event | None = None, progress: ProgressFn | None = None,
                on_error: Callable[[str], None] | None = None,
                iterations: int | None = None,
                pass_lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
                load: Callable[[list[str]], list[dict[str, Any]]] | None = None,
                ) -> None:
    """Keep reconciling: re-verify when due, re-apply when an input file changes, and
    re-verify at once the resources whose ``file:`` secret changed (a rotated password or
    CA file is seen within ``poll`` seconds, not at the next ``refreshInterval``).

    ``paths`` None means reconcile what is in the store (``smtpctl reconcile --watch``).
    ``stop`` ends the loop; ``iterations`` bounds it (tests).  ``pass_lock`` is held
    around each pass and released while sleeping, so an ``smtpctl apply`` from another
    shell can run between passes (the CLI passes the store's apply lock).  ``load`` reads
    the paths (default :func:`load_manifests`; the CLI passes its options).
    """
    stop = stop or asyncio.Event()
    seen: dict[str, float] = {}
    due: dict[ObjectRef, float] = {}
    secret_files: dict[str, tuple[int, ...] | None] = {}
    errors = ErrorBackoff()
    n = 0
    while not stop.is_set() and (iterations is None or n < iterations):
        n += 1
        try:
            with (pass_lock or contextlib.nullcontext)():
                await _watch_pass(store, world, paths, seen, due, errors, prune=prune,
                                  progress=progress, on_error=on_error,
                                  load=load or load_manifests, secret_files=secret_files)
        except StoreError as exc:  # e.g. the lock was not free in time: try again later
            if on_error:
                on_error(str(exc))
        now = world.clock()
        nxt = min(due.values(), default=now + max_sleep)
        polling = paths is not None or bool(secret_files)
        sleep = max(0.05, min(nxt - world.clock(), poll if polling else max_sleep, max_sleep))
        # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that lands
        # in the step stop is set (tests/test_cancellation.py).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(sleep):
                await stop.wait()


async def _watch_pass(store: LocalStore, world: BasicWorld, paths: list[str] | None,
                      seen: dict[str, float], due: dict[ObjectRef, float],
                      errors: ErrorBackoff, *, prune: bool,
                      progress: ProgressFn | None,
                      on_error: Callable[[str], None] | None,
                      load: Callable[[list[str]], list[dict[str, Any]]] = load_manifests,
                      secret_files: dict[str, tuple[int, ...] | None] | None = None,
                      ) -> None:
    """One pass of :func:`watch`: re-apply changed inputs, reconcile what is due."""
    now = world.clock()
    if paths is not None:
        current = _mtimes(paths)
        if current != seen:
            seen.clear()
            seen.update(current)
            try:
                manifests = load(paths)
            except InputError as exc:
                if on_error:
                    on_error(str(exc))
            else:
                outcome = await apply_manifests(store, world, manifests, prune=prune,
                                                progress=progress)
                for r in outcome.results:
                    due[r.ref] = now + r.requeue_after if r.requeue_after is not None \
                        else float("inf")
    objs = {o.ref: o for o in store.list_sync()}
    for ref in list(due):
        if ref not in objs:
            del due[ref]
    if secret_files is not None:
        for ref in _changed_secret_files(list(objs.values()), secret_files):
            due[ref] = now
    todo = [ref for ref in objs if due.get(ref, 0.0) <= now]
    if todo:
        failed: list[PassError] = []
        for r in await reconcile_objects(todo, world, progress=progress, errors=errors,
                                         failed=failed):
            due[r.ref] = world.clock() + r.requeue_after if r.requeue_after is not None \
                else float("inf")
        for f in failed:
            due[f.ref] = world.clock() + f.retry_after
            if on_error:
                on_error(f"{f.ref}: {f.message} (retrying in {f.retry_after:.0f}s)")


_FILE_REFS = ("passwordFrom", "clientSecretFrom", "refreshTokenFrom")


def secret_files_of(obj: StoredObject) -> set[str]:
    """The ``file:`` secret references of a resource (password, CA, client secret, ...)."""
    spec = obj.manifest.get("spec") or {}
    refs = [spec.get(k) for k in _FILE_REFS] + [(spec.get("tls") or {}).get("caBundleFrom")]
    return {str(r["file"]) for r in refs if isinstance(r, dict) and isinstance(r.get("file"), str)}


def _stat(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _changed_secret_files(objs: list[StoredObject],
                          seen: dict[str, tuple[int, ...] | None]) -> set[ObjectRef]:
    """Resources whose ``file:`` secret changed since the last look (and the relays that
    use a provider whose secret file changed).  ``seen`` is updated; a file seen for the
    first time is not a change."""
    users: dict[str, set[ObjectRef]] = {}
    for o in objs:
        for f in secret_files_of(o):
            users.setdefault(f, set()).add(o.ref)
    changed: set[ObjectRef] = set()
    current = {f: _stat(f) for f in users}
    for f, st in current.items():
        if f in seen and seen[f] != st:
            changed |= users[f]
    seen.clear()
    seen.update(current)
    providers = {(r.namespace, r.name) for r in changed if r.kind == KIND_OAUTH2}
    if providers:
        for o in objs:
            pref = ((o.manifest.get("spec") or {}).get("oauth2ProviderRef") or {}).get("name")
            if o.ref.kind == KIND_SMTP and (o.ref.namespace, pref) in providers:
                changed.add(o.ref)
    return changed


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def default_state() -> str:
    return os.environ.get("SMTPCTL_STATE", ".smtpctl")
