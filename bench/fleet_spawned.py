"""The processes ``bench/fleet.py`` spawns, kept apart from it so that they start light.

    python -P bench/fleet_spawned.py apply STATS SMTPCTL-ARGS...
    python -P bench/fleet_spawned.py cold STATS FLEET.yaml --workers W --concurrency C
    python -P bench/fleet_spawned.py cold-worker            (started by ``cold``)

Both are spawned the same way (this interpreter, ``-P``, the bench's environment) and
timed from ``Popen`` to their exit.  This module imports nothing beyond ``os``, ``sys``,
``json``, ``time`` and ``resource`` before it runs its part: ``bench/fleet.py`` itself
costs ~35-40 ms of CPU to import (argparse, multiprocessing, statistics, its own
compilation), which neither side should pay.

``apply``: ``smtpctl ARGS`` in this process, its counters written to ``STATS``
(``child``).

``cold``: **the bound peer** (``cold_peer``): what any correct apply of the fleet has to
do, and nothing else - start Python, read and validate the whole input before any relay
is contacted, start its client processes, run ``run_probe`` once per relay with the same
concurrency, exit.  No engine, no store, no status, no report.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # as bench/fleet.py does: this checkout's smtpctl first
    sys.path.insert(0, ROOT)

KIND = "ExternalSmtp"
API_VERSION = "smtp.reconciler.dev/v1alpha1"


def _now() -> float:
    """Seconds since this process was spawned (the parent's monotonic clock before
    ``Popen``, passed as ``FLEET_SPAWNED``; the same clock in every process)."""
    return time.monotonic() - float(os.environ.get("FLEET_SPAWNED") or time.monotonic())


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- the apply ---------------------------------------------------------------------------------


def after_import(hooks: dict[str, Any]) -> None:
    """Call ``hooks[name](module)`` once module ``name`` is imported (now, if it is), so
    that wrapping a module of smtpctl does not import it earlier than smtpctl would.
    (A plain finder on ``sys.meta_path``: ``importlib.abc`` costs a few ms to import.)"""
    pending = dict(hooks)
    for name in list(pending):
        if name in sys.modules:
            pending.pop(name)(sys.modules[name])
    if not pending:
        return

    class Finder:
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            hook = pending.get(name)
            if hook is None:
                return None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None and spec.loader is not None:
                    break
            else:
                return None
            loader = spec.loader
            run = loader.exec_module

            def exec_module(module: Any) -> None:
                run(module)
                pending.pop(name, None)
                hook(module)

            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


def child(stats_path: str, argv: list[str]) -> int:
    """Run ``smtpctl ARGV`` in this process and write its counters to ``stats_path``.

    The counters are read where the store keeps them (``LocalStore.write_transactions``)
    when the CLI closes the store; nothing in smtpctl's behaviour changes.
    """
    totals: list[int] = []

    def count_writes(local: Any) -> None:
        orig_close = local.LocalStore.close

        def close(self: Any) -> None:
            totals.append(int(getattr(self, "write_transactions", -1)))
            orig_close(self)

        local.LocalStore.close = close

    # Wrapped when smtpctl imports it, not imported here: apply starts its probe workers
    # before it imports the store (a first apply), which an import here would undo.
    after_import({"reconciler.stores.local": count_writes})
    timeline = os.environ.pop("FLEET_TIMELINE", None)
    sampler = None
    if timeline:  # --timeline only: the sampler lives in bench/fleet.py
        sys.path.append(os.path.dirname(os.path.abspath(__file__)))
        from fleet import _Sampler

        sampler = _Sampler(timeline)
    from reconciler.cli.main import main
    from reconciler.gctune import tune_gc

    tune_gc()  # as the console script's entry() does, before main()
    cprofile = os.environ.pop("FLEET_CPROFILE", None)
    profiler = None
    if cprofile:  # --cprofile: this process only, on its CPU clock (not wall time)
        import cProfile

        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
    try:
        return main(argv)
    finally:
        if sampler is not None:
            sampler.stop()
        if profiler is not None and cprofile:
            profiler.disable()
            profiler.dump_stats(cprofile)
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(stats_path, "w") as fh:
            json.dump({
                "write_transactions": sum(totals) if totals and min(totals) >= 0 else None,
                "self_cpu": me.ru_utime + me.ru_stime,
                "children_cpu": kids.ru_utime + kids.ru_stime,
                "self_maxrss_kib": me.ru_maxrss}, fh)


# --- the bound peer ----------------------------------------------------------------------------


class InvalidInput(Exception):
    """The input does not validate: no relay may be contacted."""


def validate(data: bytes) -> list[dict[str, Any]]:
    """The ExternalSmtp manifests of ``data`` (a YAML stream), every one validated before
    any is returned; :class:`InvalidInput` names the first problem.

    The fastest correct check this peer knows: PyYAML's C loader (``CSafeLoader``), the
    resource's JSON Schema compiled once with ``jsonschema_rs`` (smtpctl's own schema file
    and compiled validator, ``reconciler.schema.schemas.validator``), and unique names per
    namespace.  It does less than ``smtpctl apply`` does (no duplicate-key detection, no
    Kubernetes scalar typing, no semantic rules beyond the schema, no models, no
    positions for messages), so it is a lower bound on any validation's cost, not a
    handicap.
    """
    import yaml

    from reconciler.schema.schemas import validator

    check = validator(KIND)
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    try:
        docs = list(yaml.load_all(data, Loader=yaml.CSafeLoader))
    except yaml.YAMLError as exc:
        raise InvalidInput(f"YAML: {exc}") from None
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise InvalidInput(f"document {i + 1}: not an {KIND}")
        if not check.is_valid(doc):
            first = next(iter(check.iter_errors(doc)))
            raise InvalidInput(f"document {i + 1}: {first.message}")
        meta = doc["metadata"]
        key = (str(meta.get("namespace") or "default"), str(meta["name"]))
        if key in seen:
            raise InvalidInput(f"document {i + 1}: {key[0]}/{key[1]} is defined twice")
        seen.add(key)
        out.append(doc)
    return out


def resolve(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None, str | None]]:
    """(spec, password, CA bundle PEM) of each manifest: ``env:`` passwords and ``file:``
    CA bundles, each distinct reference read once (the same string object is shared, so
    the pipe carries it once per worker)."""
    env: dict[str, str | None] = {}
    files: dict[str, str] = {}
    specs: dict[str, dict[str, Any]] = {}
    out = []
    for doc in docs:
        # Identical specs (a fleet's differ in their names only) become one object: the
        # pipe carries it once (pickle's memo), the worker builds its model once.
        spec = specs.setdefault(json.dumps(doc["spec"], sort_keys=True), doc["spec"])
        ref = (spec.get("passwordFrom") or {}).get("env")
        if ref is not None and ref not in env:
            env[ref] = os.environ.get(ref)
            if env[ref] is None:
                raise InvalidInput(f"{doc['metadata']['name']}: no environment variable {ref}")
        path = ((spec.get("tls") or {}).get("caBundleFrom") or {}).get("file")
        if path is not None and path not in files:
            with open(path, encoding="utf-8") as fh:
                files[path] = fh.read()
        out.append((spec, env[ref] if ref is not None else None,
                    files[path] if path is not None else None))
    return out


def split(items: list[Any], clients: int) -> list[list[Any]]:
    """``items`` dealt round-robin to ``clients`` (sizes differ by at most one)."""
    return [items[i::clients] for i in range(clients)]


def shares(concurrency: int, clients: int) -> list[int]:
    """Tests in flight per client: ``concurrency`` over all of them, as evenly as it goes
    (the first ``concurrency % clients`` get one more), at least one each."""
    base, extra = divmod(concurrency, clients)
    return [max(1, base + (i < extra)) for i in range(clients)]


class _ColdArgs:
    def __init__(self, fleet: str, workers: int, concurrency: int) -> None:
        self.fleet, self.workers, self.concurrency = fleet, workers, concurrency


def _cold_args(argv: list[str]) -> _ColdArgs:
    """``FLEET --workers W --concurrency C`` (no argparse: ~10 ms of start-up)."""
    fleet, opts = argv[0], dict(zip(argv[1::2], argv[2::2], strict=True))
    workers, concurrency = int(opts["--workers"]), int(opts["--concurrency"])
    if workers < 1 or concurrency < 1:
        raise SystemExit("--workers and --concurrency must be at least 1")
    return _ColdArgs(fleet, workers, concurrency)


def cold_peer(stats_path: str, argv: list[str]) -> int:
    """The bound peer's main process; exit 0 when every test passed, 1 for invalid input
    (no relay contacted), 2 when a test failed or a client died."""
    import pickle
    import subprocess

    args = _cold_args(argv)
    # Client processes first, as `apply` starts its probe workers before it parses (they
    # import the probe on the other core meanwhile); none contacts a relay before it is
    # sent its tests, which happens only after the whole input validated.
    procs = [subprocess.Popen([sys.executable, "-P", os.path.abspath(__file__), "cold-worker"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
             for _ in range(args.workers)]
    phases: dict[str, float] = {"workers_spawned": _now()}
    code = 0
    results: list[dict[str, Any]] = []
    try:
        with open(args.fleet, "rb") as fh:
            data = fh.read()
        try:
            tests = resolve(validate(data))
        except InvalidInput as exc:
            print(f"invalid input: {exc}", file=sys.stderr)
            code = 1
        phases["validated"] = _now()
        if code == 0:
            for proc, mine, inflight in zip(procs, split(tests, len(procs)),
                                            shares(args.concurrency, len(procs)),
                                            strict=True):
                assert proc.stdin is not None
                proc.stdin.write(pickle.dumps((mine, inflight),
                                              protocol=pickle.HIGHEST_PROTOCOL))
                proc.stdin.close()
            phases["sent"] = _now()
            for proc in procs:
                assert proc.stdout is not None
                raw = proc.stdout.read()
                results.append(pickle.loads(raw) if raw else {"died": True})
            phases["done"] = _now()
            passed = sum(r.get("passed", 0) for r in results)
            if passed != len(tests):
                print(f"{passed} of {len(tests)} tests passed", file=sys.stderr)
                code = 2
    finally:
        for proc in procs:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        for proc in procs:
            proc.wait()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(stats_path, "w") as fh:
        json.dump({"phases": phases, "self_cpu": _cpu(),
                   "children_cpu": kids.ru_utime + kids.ru_stime,
                   "first_test": min((r["first"] for r in results if "first" in r),
                                     default=None),
                   "workers": results}, fh)
    # Nothing left to do: no interpreter teardown (generous to the peer; apply has one).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cold_worker() -> None:
    """A client process of the bound peer: imports the probe and its SMTP stack (as an
    apply's probe worker does, with the same GC tuning), then waits for its tests on
    stdin: ``(tests, inflight)`` (EOF first: exit quietly); runs them, ``inflight`` at a
    time; writes a summary to stdout."""
    import asyncio
    import pickle

    # As apply's worker does: the test's own modules (aiosmtplib, tenacity) before the
    # tests arrive, not at the first test (reconciler.probe.run_probe imports them lazily).
    import reconciler.probe.runner  # noqa: F401 - see above
    from reconciler.gctune import tune_gc
    from reconciler.probe import run_probe
    from reconciler.probe.verdict import ProbeCredentials
    from reconciler.resources import ExternalSmtpSpec
    from reconciler.secret import Secret

    tune_gc()
    raw = sys.stdin.buffer.read()
    if not raw:
        os._exit(0)
    tests, inflight = pickle.loads(raw)  # our own parent
    cpu0 = _cpu()
    models: dict[int, ExternalSmtpSpec] = {}
    summary: dict[str, Any] = {"passed": 0, "failed": 0, "tests": len(tests)}

    def model(spec: dict[str, Any]) -> ExternalSmtpSpec:
        # One model per spec object (identical specs arrive as one object: see resolve).
        if id(spec) not in models:
            models[id(spec)] = ExternalSmtpSpec.model_validate(spec)
        return models[id(spec)]

    async def run() -> None:
        sem = asyncio.Semaphore(inflight)

        async def one(spec: dict[str, Any], password: str | None, ca: str | None) -> None:
            async with sem:
                summary.setdefault("first", _now())
                creds = ProbeCredentials(
                    password=Secret(password) if password is not None else None,
                    ca_bundle_pem=ca)
                v = await run_probe(model(spec), creds)
                summary["passed" if v.passed else "failed"] += 1

        await asyncio.gather(*(one(*t) for t in tests))

    asyncio.run(run())
    summary["end"] = _now()
    summary["cpu"] = _cpu() - cpu0
    sys.stdout.buffer.write(pickle.dumps(summary))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["cold-worker"]:
        cold_worker()
    elif len(sys.argv) > 2 and sys.argv[1] == "cold":
        sys.exit(cold_peer(sys.argv[2], sys.argv[3:]))
    elif len(sys.argv) > 2 and sys.argv[1] == "apply":
        code = child(sys.argv[2], sys.argv[3:])
        from reconciler.cli import main as cli_main

        # As the console script (reconciler.cli.main.entry) ends; an older tree (an A/B
        # against an earlier commit) has no exit_now and ends the way it did then.
        getattr(cli_main, "exit_now", sys.exit)(code)
    else:
        sys.exit("usage: fleet_spawned.py apply|cold STATS ARGS... | cold-worker")
