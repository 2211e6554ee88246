"""Benchmark: the engine's own CPU per pass (``reconcile``), without SQLite, YAML or TLS.

    ./dev bench engine [--count N] [--repeat R] [--store memory|local]
                       [--ca-bundle PATH] [--profile] [--write docs/benchmarks/engine.md]

Both runtimes call the same ``reconcile(ref, world)``; this measures what it costs by
itself.  ``N`` password relays (like ``bench/fleet.py``'s: ``passwordFrom: {env: ...}``,
a CA bundle from a file, one relay with ``spec.selected: true``) are reconciled with the
local runtime's pass driver (``reconcile_objects``: 32 tests at once, one final
selection) twice:

* **first pass**: every relay is tested - assessment (model, secrets, digest), the
  connection test, the verdict's status, record, history and Event;
* **second pass**: nothing changed - every relay is assessed and skipped (no write).

The world is the local runtime's, except for two parts:

* the **store** is an in-memory one (``--store memory``, default: a dict; a write costs
  next to nothing, so what remains is the engine's) or the real SQLite ``LocalStore`` in a
  temporary directory (``--store local``: the local runtime's per-pass cost without input
  and probe);
* the **connection test** is a stand-in that returns a verdict shaped like a real passing
  one (details, stage times, transcript) after yielding to the event loop once, so the
  engine's handling of a test in flight (slots, the slow-test timer) is exercised.

Secrets are resolved by the real credentials layer (``default_sources`` with the CLI policy
and the per-pass cache, as ``smtpctl apply`` does), so reading the password and checking
the CA bundle count.  ``--ca-bundle PATH`` uses that bundle (e.g. certifi's, ~230 KB)
instead of the small test CA.

Reported: CPU (``time.process_time``, this process only) per resource for each pass,
median and min over ``--repeat`` rounds (a fresh store each round), and the load.
``--profile``: a cProfile (CPU clock) of one more first and second pass, top functions by
own and cumulative time.  ``--store local`` also counts the SQLite statements per resource
of each pass, by kind, in one more (untimed) round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

from bench_records import write_block  # noqa: E402 - bench/, the record files

from reconciler.engine.world import BasicWorld, Limits, StoreEventSink  # noqa: E402
from reconciler.probe.verdict import ProbeCredentials, TranscriptLine, Verdict  # noqa: E402
from reconciler.resources import ExternalSmtpSpec  # noqa: E402
from reconciler.stores.base import (  # noqa: E402
    Event,
    ObjectRef,
    StatusMutator,
    StoredObject,
    TestRecord,
)
from tests.support.store_rows import CountingConnection  # noqa: E402 - also the tests'

ENV = "BENCH_ENGINE_PW"


class MemoryStore:
    """The Store protocol over a dict: as little cost per call as a store can have."""

    def __init__(self) -> None:
        self.objects: dict[ObjectRef, StoredObject] = {}
        self.tests: list[TestRecord] = []
        self.events: list[Event] = []
        self._version = 0

    def put(self, manifest: dict[str, Any]) -> ObjectRef:
        md = manifest["metadata"]
        ref = ObjectRef(manifest["kind"], md.get("namespace", "default"), md["name"])
        self._version += 1
        self.objects[ref] = StoredObject(ref, manifest, 1, "2026-01-01T00:00:00Z", {}, None,
                                         str(self._version))
        return ref

    async def get(self, ref: ObjectRef) -> StoredObject | None:
        return self.objects.get(ref)

    async def list(self, kind: str, namespace: str | None = None) -> list[StoredObject]:
        return sorted((o for r, o in self.objects.items()
                       if r.kind == kind and (namespace is None or r.namespace == namespace)),
                      key=lambda o: (o.ref.namespace, o.ref.name))

    async def update_status(self, ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        cur = self.objects.get(ref)
        if cur is None:
            return None
        write = mutate(cur)
        if write is None:
            return cur
        self._version += 1
        new = replace(cur, status=write.status, memo=write.memo, version=str(self._version))
        self.objects[ref] = new
        return new

    async def record_test(self, record: TestRecord) -> None:
        self.tests.append(record)
        del self.tests[:-1000]

    async def record_event(self, event: Event) -> None:
        self.events.append(event)
        del self.events[:-1000]


def verdict_like_a_real_pass() -> Verdict:
    """The shape of a passing STARTTLS + AUTH PLAIN test's verdict (as the probe makes it)."""
    lines = [("s", "220 relay ESMTP"), ("c", "EHLO smtpctl.local"), ("s", "250-relay"),
             ("s", "250-STARTTLS"), ("s", "250 PIPELINING"), ("c", "STARTTLS"),
             ("s", "220 Ready to start TLS"), ("c", "EHLO smtpctl.local"),
             ("s", "250-relay"), ("s", "250 AUTH PLAIN LOGIN"), ("c", "AUTH PLAIN ****"),
             ("s", "235 2.7.0 Authentication successful"), ("c", "MAIL FROM:<a@b.test>"),
             ("s", "250 OK"), ("c", "RCPT TO:<a@b.test>"), ("s", "250 OK"), ("c", "QUIT"),
             ("s", "221 Bye")]
    transcript = [TranscriptLine("c" if d == "c" else "s", text, 0.001 * i)
                  for i, (d, text) in enumerate(lines)]
    stages = {s: 0.0004 for s in ("resolve", "connect", "banner", "ehlo", "starttls", "tls",
                                  "auth", "mail_from", "rcpt_to", "quit")}
    details = {"addresses": ["127.0.0.1"], "peer": "127.0.0.1:2525", "esmtp": True,
               "tlsMode": "starttls", "tlsVersion": "TLSv1.3",
               "tlsCipher": "TLS_AES_256_GCM_SHA384",
               "certificateNotAfter": "2036-01-01T00:00:00Z", "pipelining": True,
               "authPipelined": False, "mechanism": "PLAIN", "fallbackUsed": False}
    return Verdict(True, "quit", "TestPassed", "the relay accepted the test", "", False,
                   0.004, stage_seconds=stages, transcript=transcript, details=details)


@dataclass
class Fleet:
    manifests: list[dict[str, Any]]
    ca_file: Path


def make_fleet(tmp: Path, n: int, ca_pem: str) -> Fleet:
    ca = tmp / "ca.pem"
    ca.write_text(ca_pem)
    ca.chmod(0o644)
    out = []
    for i in range(n):
        out.append({"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
                    "metadata": {"name": f"relay-{i:05d}", "namespace": "default"},
                    "spec": {"host": "127.0.0.1", "port": 2525,
                             "authentication": "UsernamePassword", "startTLS": True,
                             "username": "app@example.test", "passwordFrom": {"env": ENV},
                             "selected": i == 0,
                             "tls": {"caBundleFrom": {"file": str(ca)}}}})
    return Fleet(out, ca)


def test_ca_pem() -> str:
    import trustme

    return trustme.CA().cert_pem.bytes().decode()


@dataclass
class PassCost:
    cpu: float
    wall: float
    tested: int
    actions: dict[str, int] = field(default_factory=dict)


def world_for(store: Any, root: Path) -> BasicWorld:
    from reconciler.credentials.policy import cli_policy
    from reconciler.credentials.sources import default_sources
    from reconciler.runtimes.live import live_functions

    sources = default_sources(policy=cli_policy(env=[ENV], file_roots=[str(root)]), pass_cache=True)
    live = live_functions(sources)
    verdict = verdict_like_a_real_pass()

    async def probe(spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        await asyncio.sleep(0)  # in flight for one turn of the loop, as a real test is
        return verdict

    return BasicWorld(store=store, resolve_fn=live.resolve_fn, probe_fn=probe,
                      check_provider_fn=live.check_provider_fn, events=StoreEventSink(store),
                      limits=Limits(32, 32), begin_pass=sources.begin_pass)


def one_pass(world: BasicWorld, refs: list[ObjectRef],
             profiler: cProfile.Profile | None = None) -> PassCost:
    from reconciler.runtimes.local import reconcile_objects

    async def run() -> list[Any]:
        return await reconcile_objects(refs, world)

    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    results = asyncio.run(run())
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    actions: dict[str, int] = {}
    for r in results:
        actions[str(r.action)] = actions.get(str(r.action), 0) + 1
    return PassCost(cpu, wall, sum(1 for r in results if r.tested), actions)


def one_round(kind: str, fleet: Fleet, tmp: Path, i: int,
              profile: Callable[[str], cProfile.Profile | None] = lambda _: None,
              statements: dict[str, Counter[str]] | None = None,
              ) -> tuple[PassCost, PassCost]:
    """One fresh store, a first and a second pass.  ``statements`` (``--store local``):
    count the SQLite statements of each pass by their first word (an untimed round: the
    trace callback costs CPU)."""
    from reconciler.engine.assess import HANDED_OVER

    HANDED_OVER.clear()  # no model handed over: every first pass validates its manifest
    first_apply: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if kind == "memory":
        store: Any = MemoryStore()
        refs = [store.put(m) for m in fleet.manifests]
        close: Callable[[], None] = lambda: None  # noqa: E731
    else:
        from reconciler.stores.local import LocalStore

        store = LocalStore(tmp / f"state-{i}")
        # As `smtpctl apply` does (runtimes.local.apply_manifests): the upsert and the
        # passes of one apply share the store's memory of the objects it wrote; the second
        # pass stands for the next apply, a new process that remembers nothing.
        first_apply = store.remember()
        first_apply.__enter__()
        refs = [u.obj.ref for u in store.upsert_many(fleet.manifests, now=time.time())]
        close = store.close
    counter: CountingConnection | None = None
    if statements is not None and kind == "local":
        # The statements the store runs, each pass apart (not the upsert before them).
        store._db = counter = CountingConnection(store._db)
    try:
        world = world_for(store, fleet.ca_file.parent)
        if counter is not None and statements is not None:
            counter.seen = statements.setdefault("first", Counter())
        try:
            first = one_pass(world, refs, profile("first"))
        finally:
            first_apply.__exit__(None, None, None)
        if counter is not None and statements is not None:
            counter.seen = statements.setdefault("second", Counter())
        second = one_pass(world, refs, profile("second"))
    finally:
        close()
    n = len(refs)
    if first.tested != n or second.tested != 0:
        raise RuntimeError(f"expected {n} tests then 0, got {first.tested} and "
                           f"{second.tested} ({first.actions}, {second.actions})")
    return first, second


def top(prof: cProfile.Profile, n: int, key: str, per: int) -> list[str]:
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(),  # type: ignore[attr-defined]
                  key=lambda kv: kv[1][2] if key == "own" else kv[1][3], reverse=True)
    total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
    out = [f"| {key} ms/resource | share | calls/resource | function |",
           "| ---: | ---: | ---: | --- |"]
    for (path, line, fn), (_cc, nc, tt, ct, _callers) in rows[:n]:
        t = tt if key == "own" else ct
        where = path.split("/site-packages/")[-1].replace(str(ROOT) + "/", "")
        out.append(f"| {1000 * t / per:.3f} | {100 * t / total:.1f} % | {nc / per:.1f} "
                   f"| `{fn} ({where}:{line})` |")
    return out


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./dev bench engine", description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000, help="relays (3000)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds (5)")
    ap.add_argument("--store", choices=("memory", "local"), default="memory")
    ap.add_argument("--ca-bundle", type=Path, help="CA bundle file (default: a test CA)")
    ap.add_argument("--profile", action="store_true", help="cProfile one more round")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--write", type=Path, help="replace the generated block of this file")
    args = ap.parse_args(argv)
    os.environ[ENV] = "bench-engine-password"
    import logging

    logging.disable(logging.WARNING)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(["./dev bench engine", *(argv if argv is not None else sys.argv[1:])])
    ca_pem = args.ca_bundle.read_text() if args.ca_bundle else test_ca_pem()
    lines = [f"### Engine benchmark run ({started})", "", f"Command: `{command}`", "",
             f"- {platform.python_implementation()} {platform.python_version()}, "
             f"`nproc` {os.cpu_count()}; store: {args.store}; CA bundle "
             f"{len(ca_pem.encode()) / 1024:.0f} KB; {args.count:,} relays.", "",
             "| round | first pass CPU ms/resource | wall s | second pass CPU ms/resource "
             "| wall s | load 1/5 min |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    firsts, seconds = [], []
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as t:
        tmp = Path(t)
        fleet = make_fleet(tmp, args.count, ca_pem)
        n = args.count
        one_round(args.store, fleet, tmp, 0)  # warm-up: imports, caches of code objects
        for i in range(1, args.repeat + 1):
            first, second = one_round(args.store, fleet, tmp, i)
            firsts.append(1000 * first.cpu / n)
            seconds.append(1000 * second.cpu / n)
            lines.append(f"| {i} | {firsts[-1]:.3f} | {first.wall:.2f} | {seconds[-1]:.3f} "
                         f"| {second.wall:.2f} | {load()} |")
        lines += ["", f"- first pass (every relay tested): **{statistics.median(firsts):.3f}** "
                      f"ms/resource median (min {min(firsts):.3f}, max {max(firsts):.3f})",
                  f"- second pass (nothing changed, no test): "
                  f"**{statistics.median(seconds):.3f}** ms/resource median "
                  f"(min {min(seconds):.3f}, max {max(seconds):.3f})", ""]
        if args.store == "local":
            counts: dict[str, Counter[str]] = {}
            one_round(args.store, fleet, tmp, args.repeat + 2, statements=counts)
            for name, c in counts.items():
                kinds = ", ".join(f"{k} {v / n:.2f}" for k, v in c.most_common())
                lines.append(f"- SQLite statements per resource, {name} pass (an untimed "
                             f"round): **{sum(c.values()) / n:.2f}** ({kinds})")
            lines.append("")
        if args.profile:
            profs: dict[str, cProfile.Profile] = {}

            def prof(name: str) -> cProfile.Profile:
                profs[name] = cProfile.Profile(time.process_time)
                return profs[name]

            one_round(args.store, fleet, tmp, args.repeat + 1, prof)
            for name, p in profs.items():
                lines += [f"#### cProfile of the {name} pass (CPU clock; cProfile inflates "
                          "Python-level calls, read the shares)", "",
                          *top(p, args.top, "own", n), "", *top(p, args.top, "cumulative", n),
                          ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_block(args.write, "engine", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
