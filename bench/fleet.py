"""Fleet benchmark: `smtpctl apply` of a fleet of ExternalSmtp against one relay.

    ./dev bench fleet [--count 1000 ...] [--repeat 3] [--clients 3] [--relay aiosmtpd]
                      [--profile] [--growth 1000,2000,5000,10000] [--write FILE]

Every row compares the apply with its peer **in the same run, against the same relay**:

* ``raw relay capacity``: the connection test alone (``run_probe`` in a loop: no engine,
  no store, no YAML) in ``--clients`` separate processes at once (default: CPUs + 1), so
  that the client is not the limit the way one process of it is.  Each process warms up,
  then all start together; tests per second of wall time over all processes.
* ``first apply``: ``smtpctl apply -f fleet.yaml`` in a subprocess
  (``bench/fleet_spawned.py apply``; fresh state): every resource tested (asserted
  through the relay's connection counter).  Wall time, tests/s, the ratio to the raw
  capacity, the CPU time of the apply process and everything it started (per
  resource), its peak RSS, and the number of SQLite write transactions it committed
  (per resource; counted by wrapping ``LocalStore.close``).
* ``bound peer`` (on unless ``--no-cold-peer``): what any correct apply of the fleet must
  do and nothing else, spawned as the apply is (``bench/fleet_spawned.py cold``): Python's
  start, the whole input read and validated before any relay is contacted, its client
  processes (``--cold-workers``, default 1: the fastest here, and what ``apply`` uses on 2
  CPUs), ``run_probe`` once per relay with the same concurrency.  No engine, no store.
  Reported as **cold:raw** (what validating first and starting cold cost at all) and
  **apply:cold** (what smtpctl costs on top of that).
* ``second apply``: the same again, unchanged: must run **zero** tests (asserted).
* the CPU time of the relay process(es) during each phase (``/proc``): how busy the relay
  was, per test and as a share of one core.
* ``--profile``: a py-spy profile of one first apply (the apply's process and its
  children), summarised by own time and by area; ``--profile-out DIR`` keeps the raw
  collapsed stacks.
* ``--timeline``: one more first apply, sampled every 25 ms (CPU of main process, workers
  and relay, idle CPU, tests in flight, passes, event loop lag; see ``_Sampler``).
* ``--growth``: first apply at several sizes (one raw capacity per size), with a fit of
  CPU time and wall time against N.

The relay (``--relay``): ``aiosmtpd`` (default; ``reconciler.devservers.smtp.RelayServer``,
STARTTLS + AUTH PLAIN, in its own process) or ``postfix`` (Postfix + Dovecot from
``tests/support/postfix.py``, its STARTTLS listener; ``in_flow_delay`` set to 0, see
docs/benchmarks/fleet.md for why).

Output: Markdown on stdout (``--write docs/benchmarks/fleet.md`` replaces the generated
block of that file and keeps the analysis around it).  The machine is shared: the load
average before and after each phase is printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.append(str(ROOT / "bench"))

from bench_records import write_block  # noqa: E402 - bench/, the record files
from fleet_spawned import after_import as _after_import  # noqa: E402 - bench/

USER = "fleet@example.test"
PASSWORD = "bench-password-not-secret"  # the bench relay's own test login
CLK_TCK = os.sysconf("SC_CLK_TCK")
SPAWNED = Path(__file__).resolve().with_name("fleet_spawned.py")  # the apply, the bound peer
COLD_WORKERS = 1  # the bound peer's client processes: 1 was fastest on 2 CPUs (fleet.md, round 8)


# --- CPU accounting from /proc ------------------------------------------------------------


def _proc_table() -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                out[int(d)] = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
    return out


def tree_cpu(roots: Sequence[int]) -> float:
    """CPU seconds (user + system) of ``roots`` and all their descendants, including the
    children they already reaped (``cutime``/``cstime``)."""
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, fields in table.items():
        kids.setdefault(int(fields[1]), []).append(pid)
    total = 0
    todo, seen = list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        f = table[pid]
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        todo += kids.get(pid, [])
    return total / CLK_TCK


def load() -> float:
    return os.getloadavg()[0]


# --- relays ---------------------------------------------------------------------------------


@dataclass
class RelayInfo:
    """A relay the benchmark runs against (its own process or processes)."""

    name: str
    port: int
    ca_pem: str
    user: str
    password: str
    pids_fn: Callable[[], list[int]]
    connections_fn: Callable[[], int]

    def pids(self) -> list[int]:
        """The relay's processes (their CPU time is the relay's)."""
        return self.pids_fn()

    @property
    def connections(self) -> int:
        """Connections the relay has accepted so far (= connection tests)."""
        return self.connections_fn()


def _aiosmtpd_main(conn: Connection) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # aiosmtpd's login_data
    from reconciler.devservers.smtp import RelayServer

    relay = RelayServer(mode="starttls", users={USER: PASSWORD})
    relay.start()
    conn.send((relay.port, relay.ca_pem))
    while True:
        cmd = conn.recv()
        if cmd == "connections":
            conn.send(relay.connections)
        elif cmd == "stop":
            relay.stop()
            conn.send("stopped")
            return


class Relay(RelayInfo):
    """The aiosmtpd relay (``reconciler.devservers.smtp.RelayServer``, STARTTLS + AUTH
    PLAIN, login ``USER``/``PASSWORD``) in its own process, started by ``Relay()``;
    ``stop()`` ends it.  ``bench/operator_scale.py`` uses it too (same relay class)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_aiosmtpd_main, args=(child,), daemon=True)
        self._proc.start()
        port, ca_pem = self._conn.recv()
        super().__init__(
            "aiosmtpd 1.4 (reconciler.devservers.smtp.RelayServer), one process, "
            "STARTTLS + AUTH PLAIN", port, ca_pem, USER, PASSWORD,
            lambda: [self.pid], self._connections)

    @property
    def pid(self) -> int:
        """The relay process."""
        pid = self._proc.pid
        assert pid is not None
        return pid

    def _connections(self) -> int:
        self._conn.send("connections")
        n: int = self._conn.recv()
        return n

    def stop(self) -> None:
        try:
            self._conn.send("stop")
            self._conn.recv()
        finally:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()


@contextmanager
def aiosmtpd_relay() -> Iterator[RelayInfo]:
    relay = Relay()
    try:
        yield relay
    finally:
        relay.stop()


@contextmanager
def postfix_relay() -> Iterator[RelayInfo]:
    from tests.support.postfix import start_peer

    with start_peer() as peer:
        etc = peer.root / "etc"
        # The connection test opens a transaction (MAIL FROM) and resets it; no message is
        # ever delivered, so Postfix's flow control (in_flow_delay, 1 s by default) would
        # pause every cleanup connection once its tokens are spent: 30 tests/s whatever the
        # client.  A relay that receives real mail gets tokens back from qmgr.
        subprocess.run(["postconf", "-c", str(etc), "-e", "in_flow_delay = 0"], check=True)
        subprocess.run(["postfix", "-c", str(etc), "reload"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # reload is asynchronous; let master re-read its configuration

        def pids() -> list[int]:
            master = (peer.root / "queue" / "pid" / "master.pid").read_text().split()[0]
            return [int(master), *([peer._dovecot_pid] if peer._dovecot_pid else [])]

        def connections() -> int:
            return sum(1 for line in peer.maillog.read_text("utf-8", "replace").splitlines()
                       if "/smtpd[" in line and ": disconnect from " in line)

        yield RelayInfo("Postfix 3.7 + Dovecot 2.3 (tests/support/postfix.py), STARTTLS "
                        "listener, in_flow_delay=0", peer.starttls_port, peer.ca_pem,
                        peer.user, peer.password.reveal(), pids, connections)


# --- raw relay capacity: the connection test alone, in several processes ---------------------


def _raw_worker(conn: Connection, port: int, ca_pem: str, user: str, password: str,
                count: int, concurrency: int, event_loop: str = "asyncio") -> None:
    from reconciler.probe import run_probe
    from reconciler.probe.verdict import ProbeCredentials
    from reconciler.resources import ExternalSmtpSpec
    from reconciler.secret import Secret

    spec = ExternalSmtpSpec.model_validate({
        "host": "127.0.0.1", "port": port, "authentication": "UsernamePassword",
        "startTLS": True, "username": user, "passwordFrom": {"env": "FLEET_PW"}})
    creds = ProbeCredentials(password=Secret(password), ca_bundle_pem=ca_pem)

    async def run() -> None:
        for _ in range(2):  # warm up: imports, TLS context, first connection
            v = await run_probe(spec, creds)
            if not v.passed:
                conn.send(("error", f"{v.reason}: {v.message}"))
                return
        conn.send(("ready", None))
        conn.recv()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        sem = asyncio.Semaphore(concurrency)
        failures = 0

        async def one() -> None:
            nonlocal failures
            async with sem:
                failures += not (await run_probe(spec, creds)).passed

        await asyncio.gather(*(one() for _ in range(count)))
        end = time.monotonic()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        conn.send(("done", (end, cpu, failures)))

    if event_loop == "uvloop":  # the operator's default loop (bench/operator_scale.py)
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


@dataclass
class RawResult:
    processes: int
    tests: int
    wall: float
    client_cpu: float
    relay_cpu: float
    load: tuple[float, float]

    @property
    def rate(self) -> float:
        return self.tests / self.wall


def raw_capacity(relay: RelayInfo, count: int, concurrency: int = 32,
                 processes: int | None = None, event_loop: str = "asyncio") -> RawResult:
    """The raw relay capacity: ``count`` connection tests (``run_probe`` alone: no engine,
    no store, no YAML) split over ``processes`` client processes (default: CPUs + 1) that
    warm up, then start together, ``concurrency`` tests in flight over all of them.

    ``relay``: a :class:`RelayInfo` (e.g. ``Relay()``); ``result.rate`` is tests per second
    of wall time, ``result.relay_cpu / result.wall`` how busy the relay was.  Raises when a
    test fails (a peer that is not measuring what it claims).  Used by
    ``bench/operator_scale.py`` too, so both benchmarks compare with the same peer."""
    processes = processes or (os.cpu_count() or 1) + 1
    ctx = mp.get_context("spawn")
    per = max(1, count // processes)
    workers: list[tuple[Any, Connection]] = []
    for _ in range(processes):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_raw_worker, daemon=True, args=(
            child, relay.port, relay.ca_pem, relay.user, relay.password, per,
            max(1, concurrency // processes), event_loop))
        proc.start()
        workers.append((proc, parent))
    try:
        for _, conn in workers:
            kind, detail = conn.recv()
            if kind != "ready":
                raise RuntimeError(f"raw probe client failed its warm-up: {detail}")
        load0 = load()
        cpu0 = tree_cpu(relay.pids())
        t0 = time.monotonic()
        for _, conn in workers:
            conn.send("go")
        results = [conn.recv()[1] for _, conn in workers]
        end = max(r[0] for r in results)
        relay_cpu = tree_cpu(relay.pids()) - cpu0
        failures = sum(r[2] for r in results)
        if failures:
            raise RuntimeError(f"{failures} raw connection tests failed")
        return RawResult(processes, per * processes, end - t0, sum(r[1] for r in results),
                         relay_cpu, (load0, load()))
    finally:
        for proc, _ in workers:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# --- the apply process -------------------------------------------------------------------------


class _Sampler:
    """``--timeline``: what the apply's processes do, every ``PERIOD`` seconds, sampled by a
    thread of the apply's main process (bench only; smtpctl is not changed, its functions
    are wrapped to count).  Per sample: CPU seconds of the main process, of its probe
    workers and of the relay (``/proc``), the machine's busy and idle CPU (``/proc/stat``),
    tests in flight in the workers (sent, no reply read yet), tests waiting for a slot or
    running (``Limits.slot``), passes running, passes done, and how long a callback
    scheduled from this thread waited for the event loop (its lag)."""

    PERIOD = 0.025

    def __init__(self, path: str) -> None:
        import threading

        self.path = path
        self.relay_pids = [int(p) for p in os.environ.get("FLEET_RELAY_PIDS", "").split(",")
                           if p]
        self.pools: list[Any] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.passes = [0, 0]  # running, done
        self.slots = [0, 0]  # waiting for a slot or holding one, holding one
        self.rows: list[list[float]] = []
        self.lags: list[tuple[float, float]] = []
        # Times are from the apply's spawn (the parent's CLOCK_MONOTONIC before Popen: the
        # same clock in every process), so the phases include Python's start and imports.
        self.t0 = float(os.environ.get("FLEET_SPAWNED") or time.monotonic())
        # smtpctl's modules are wrapped when smtpctl imports them, not imported here: the
        # apply's start-up (what it imports before it starts its probe workers) stays its own.
        _after_import({"reconciler.runtimes.probepool": self._wrap_pool,
                       "reconciler.runtimes.local": self._wrap_passes,
                       "reconciler.engine.world": self._wrap_slots})
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def _wrap_pool(self, probepool: Any) -> None:
        sampler = self
        init = probepool.ProbePool.__init__

        def pool_init(pool: Any, *a: Any, **kw: Any) -> None:
            init(pool, *a, **kw)
            sampler.pools.append(pool)

        setattr(probepool.ProbePool, "__init__", pool_init)  # noqa: B010

    def _wrap_passes(self, local_rt: Any) -> None:
        sampler = self
        reconcile = getattr(local_rt, "reconcile")  # noqa: B009

        async def counted(*a: Any, **kw: Any) -> Any:
            if sampler.loop is None:
                sampler.loop = asyncio.get_running_loop()
            sampler.passes[0] += 1
            try:
                return await reconcile(*a, **kw)
            finally:
                sampler.passes[0] -= 1
                sampler.passes[1] += 1

        setattr(local_rt, "reconcile", counted)  # noqa: B010

    def _wrap_slots(self, world_mod: Any) -> None:
        sampler = self
        slot = world_mod.Limits.slot

        @contextlib.asynccontextmanager
        async def counted_slot(limits: Any, *a: Any, **kw: Any) -> Any:
            sampler.slots[0] += 1
            try:
                async with slot(limits, *a, **kw):
                    sampler.slots[1] += 1
                    try:
                        yield
                    finally:
                        sampler.slots[1] -= 1
            finally:
                sampler.slots[0] -= 1

        setattr(world_mod.Limits, "slot", counted_slot)  # noqa: B010

    @staticmethod
    def _cpu(pid: int | str) -> float:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(f[11]) + int(f[12])) / CLK_TCK

    @staticmethod
    def _machine() -> tuple[float, float]:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        idle = f[3] + f[4]
        return (sum(f[:8]) - idle) / CLK_TCK, idle / CLK_TCK

    def run(self) -> None:
        while not self.done.wait(self.PERIOD):
            t = time.monotonic() - self.t0
            workers = [w for pool in self.pools for w in list(pool._workers)]
            inflight = sum(len(w.pending) for w in workers)
            busy, idle = self._machine()
            self.rows.append([
                t, self._cpu("self"), sum(self._cpu(w.proc.pid) for w in workers),
                sum(self._cpu(p) for p in self.relay_pids), busy, idle, inflight,
                self.slots[0], self.slots[1], self.passes[0], self.passes[1]])
            loop = self.loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._lag, time.monotonic())

    def _lag(self, sent: float) -> None:
        self.lags.append((sent - self.t0, time.monotonic() - sent))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        Path(self.path).write_text(json.dumps({"rows": self.rows, "lags": self.lags}))


def timeline_summary(path: Path, n: int, workers: str) -> list[str]:
    """The steady part of a ``--timeline`` run (from the first pass that finished to the
    last), CPU as shares of the machine's cores."""
    data = json.loads(path.read_text())
    rows, lags = data["rows"], data["lags"]
    cores = os.cpu_count() or 1
    done = [r for r in rows if r[10] > 0]
    if len(done) < 3:
        return ["(too short to summarise)"]
    # steady: from the first sample with 5 % done to the one with 95 % done
    lo = next(r for r in rows if r[10] >= 0.05 * n)
    hi = next((r for r in rows if r[10] >= 0.95 * n), rows[-1])
    span = [r for r in rows if lo[0] <= r[0] <= hi[0]]
    wall = float(hi[0] - lo[0])

    def share(i: int) -> float:
        return float(hi[i] - lo[i]) / wall

    main, worker, relay = share(1), share(2), share(3)
    busy, idle = share(4), share(5)
    inflight = sorted(r[6] for r in span)
    slots = sorted(r[8] for r in span)
    waiting = sorted(r[7] - r[8] for r in span)
    lag = sorted(x for t, x in lags if lo[0] <= t <= hi[0])
    starved = sum(1 for r in span if r[6] < 0.5 * 32) / max(1, len(span))

    def pct(xs: list[float], q: float) -> float:
        return float(xs[min(len(xs) - 1, int(q * len(xs)))]) if xs else float("nan")

    first_test = next((r[0] for r in rows if r[6] > 0 or r[8] > 0), float("nan"))
    first_done = next((r[0] for r in rows if r[10] > 0), float("nan"))
    all_done = next((r[0] for r in rows if r[10] >= n), float("nan"))
    end = rows[-1][0]
    if os.environ.get("FLEET_TIMELINE_KEEP"):
        Path(os.environ["FLEET_TIMELINE_KEEP"]).write_text(path.read_text())
    return [
        f"Probe workers {workers}; sampled every {_Sampler.PERIOD * 1000:.0f} ms by a thread of "
        f"the apply's main process.  Steady part (5 % to 95 % of the passes done): "
        f"{hi[0] - lo[0]:.2f} s at {0.9 * n / wall:.0f} passes/s.  Phases (s after the "
        f"apply process was spawned, Python's start and imports included): first test "
        f"in flight {first_test:.2f}, first pass done {first_done:.2f}, 5 % done {lo[0]:.2f}, "
        f"95 % done {hi[0]:.2f}, all done {all_done:.2f}, sampler stopped {end:.2f} (the "
        "process exits after that).",
        "",
        "| during the steady part | value |",
        "| --- | ---: |",
        f"| main process CPU (share of one core) | {main:.2f} |",
        f"| probe workers CPU (cores) | {worker:.2f} |",
        f"| relay CPU (cores) | {relay:.2f} |",
        f"| sum of the three (of {cores} cores) | **{main + worker + relay:.2f}** |",
        f"| machine busy / idle (cores, every process) | {busy:.2f} / {idle:.2f} |",
        f"| tests in flight in the workers, p5 / median / p95 | {pct(inflight, .05):.0f} / "
        f"{pct(inflight, .5):.0f} / {pct(inflight, .95):.0f} |",
        f"| samples with fewer than 16 tests in flight in the workers | {starved:.0%} |",
        f"| slots held (p5 / median / p95) | {pct(slots, .05):.0f} / {pct(slots, .5):.0f} / "
        f"{pct(slots, .95):.0f} |",
        f"| passes waiting for a slot (median / p95) | {pct(waiting, .5):.0f} / "
        f"{pct(waiting, .95):.0f} |",
        f"| event loop lag, median / p95 / max (ms) | {1000 * pct(lag, .5):.1f} / "
        f"{1000 * pct(lag, .95):.1f} / {1000 * (lag[-1] if lag else 0):.1f} |",
        "",
    ]


@dataclass
class ApplyResult:
    code: int
    wall: float
    cpu: float  # the apply process and everything it started (wait4)
    self_cpu: float | None
    maxrss_kib: int
    tests: int
    write_transactions: int | None
    relay_cpu: float
    load: tuple[float, float]


def run_apply(relay: RelayInfo, fleet: Path, state: Path, env: dict[str, str],
              concurrency: int, *, profile: Path | None = None,
              extra: Sequence[str] = ()) -> ApplyResult:
    stats = state.with_suffix(".stats.json")
    cmd = [sys.executable, "-P", str(SPAWNED), "apply", str(stats),
           "apply", "-f", str(fleet), "--state", str(state), "--concurrency", str(concurrency),
           "--per-host", str(concurrency), "--lock-timeout", "5", *extra]
    if profile is not None:
        cmd = ["py-spy", "record", "--subprocesses", "--rate", "200", "--format", "raw",
               "--output", str(profile), "--", *cmd]
        cmd[0] = str(Path(sys.executable).with_name("py-spy"))
    run = spawn_measured(cmd, relay, env, "apply")
    data = json.loads(stats.read_text()) if stats.exists() else {}
    return ApplyResult(
        code=0, wall=run.wall, cpu=run.usage.ru_utime + run.usage.ru_stime,
        self_cpu=data.get("self_cpu"), maxrss_kib=int(run.usage.ru_maxrss),
        tests=run.tests, write_transactions=data.get("write_transactions"),
        relay_cpu=run.relay_cpu, load=(run.load0, load()))


@dataclass
class Spawned:
    """One spawned child timed from ``Popen`` to its exit (``spawn_measured``)."""

    wall: float
    usage: resource.struct_rusage  # the child and its reaped children (wait4)
    tests: int  # connections the relay accepted meanwhile
    relay_cpu: float
    load0: float


def spawn_measured(cmd: list[str], relay: RelayInfo, env: dict[str, str],
                   what: str) -> Spawned:
    """Run ``cmd`` (the apply or the bound peer) to its exit: wall time from ``Popen``,
    its CPU (``wait4``), the relay's CPU and connections meanwhile.  ``FLEET_SPAWNED`` is
    the phases' zero for ``--timeline``.  Raises with the tail of its stderr unless it
    exits 0."""
    c0 = relay.connections
    load0 = load()
    cpu0 = tree_cpu(relay.pids())
    t0 = time.perf_counter()
    env = dict(env, FLEET_SPAWNED=repr(time.monotonic()))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    relay_cpu = tree_cpu(relay.pids()) - cpu0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{what} exited {code}:\n" + "\n".join(tail))
    return Spawned(wall=wall, usage=usage, tests=relay.connections - c0,
                   relay_cpu=relay_cpu, load0=load0)


@dataclass
class ColdResult:
    """One run of the bound peer (``fleet_spawned.cold_peer``)."""

    wall: float
    cpu: float  # the peer's main process and its client processes (wait4)
    self_cpu: float
    tests: int  # connections the relay accepted during the run
    relay_cpu: float
    workers: int
    phases: dict[str, float]  # s after the spawn: workers_spawned, validated, sent, done
    first_test: float | None
    load: tuple[float, float]


def run_cold(relay: RelayInfo, fleet: Path, env: dict[str, str], concurrency: int,
             workers: int, stats: Path) -> ColdResult:
    """The bound peer on ``fleet``, spawned as the apply is (this interpreter, ``-P``,
    the same environment, timed from ``Popen`` to its exit): Python's start, the whole
    input validated before any relay is contacted, ``workers`` client processes (started
    first, as apply starts its probe workers), ``run_probe`` once per relay with
    ``concurrency`` tests in flight over all of them.  Raises unless every relay of the
    fleet was tested once and passed."""
    cmd = [sys.executable, "-P", str(SPAWNED), "cold", str(stats), str(fleet),
           "--workers", str(workers), "--concurrency", str(concurrency)]
    run = spawn_measured(cmd, relay, env, "the bound peer")
    data = json.loads(stats.read_text())
    return ColdResult(wall=run.wall, cpu=run.usage.ru_utime + run.usage.ru_stime,
                      self_cpu=float(data["self_cpu"]), tests=run.tests,
                      relay_cpu=run.relay_cpu, workers=workers, phases=data["phases"],
                      first_test=data.get("first_test"), load=(run.load0, load()))


def is_requested(i: int, fraction: float) -> bool:
    """Relay ``i`` asks for ``spec.selected: true``: relay 0 always, then a ``fraction`` of
    the fleet spread evenly (1.0: every relay)."""
    return i == 0 or int((i + 1) * fraction) > int(i * fraction)


def write_fleet(path: Path, count: int, relay: RelayInfo, ca_file: Path,
                selected_fraction: float = 0.0) -> None:
    parts = []
    for i in range(count):
        parts.append(f"""apiVersion: smtp.reconciler.dev/v1alpha1
kind: ExternalSmtp
metadata:
  name: relay-{i:05d}
spec:
  host: 127.0.0.1
  port: {relay.port}
  authentication: UsernamePassword
  startTLS: true
  username: {relay.user}
  passwordFrom: {{env: FLEET_PW}}
  selected: {"true" if is_requested(i, selected_fraction) else "false"}
  tls: {{caBundleFrom: {{file: {ca_file}}}}}
""")
    path.write_text("---\n".join(parts))


# --- profiles ----------------------------------------------------------------------------------

AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("imports (module loading)", ("<frozen importlib._bootstrap",)),
    ("TLS (ssl, asyncio sslproto)", ("ssl.py", "sslproto.py")),
    ("SQLite (reconciler/stores/local.py)", ("stores/local.py",)),
    ("connection test (reconciler/probe)", ("reconciler/probe/",)),
    ("  of which transcript + redaction", ("probe/transcript.py", "probe/redact.py")),
    ("  of which tenacity (retry wrapper)", ("tenacity/",)),
    ("  of which aiosmtplib", ("aiosmtplib/",)),
    ("secrets (reconciler/credentials)", ("reconciler/credentials/",)),
    ("engine (reconciler/engine)", ("reconciler/engine/",)),
    ("  of which selection", ("engine/selection.py",)),
    ("input: YAML", ("yaml/",)),
    ("input: schema + models (schema, pydantic)", ("reconciler/schema/", "pydantic")),
    ("CLI report (reconciler/cli)", ("reconciler/cli/cmd_apply.py", "reconciler/cli/localcmd")),
    ("JSON (json)", ("json/",)),
]


# Own CPU time of the apply's main process by area (cProfile, --cprofile): file or
# function name fragments, the first match wins.
CPROFILE_AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("store: SQLite + JSON (stores/local.py, sqlite3, json)",
     ("stores/local.py", "sqlite3", "json/")),
    ("input: YAML, schema, models (schema/, yaml, pydantic, resources.py, inputs.py)",
     ("reconciler/schema/", "yaml/", "pydantic", "resources.py", "runtimes/inputs.py",
      "durations.py")),
    ("engine (engine/)", ("reconciler/engine/",)),
    ("secrets and policy (credentials/, pathlib, posixpath)",
     ("reconciler/credentials/", "pathlib.py", "posixpath")),
    ("probe worker pipe (probepool.py, pickle)", ("probepool.py", "pickle")),
    ("connection test in this process (probe/, ssl, aiosmtplib, tenacity)",
     ("reconciler/probe/", "ssl", "aiosmtplib/", "tenacity/")),
    ("CLI (cli/)", ("reconciler/cli/",)),
    ("asyncio event loop", ("asyncio/", "selectors.py", "Context' objects")),
    ("imports (importlib, compile, exec)", ("importlib", "builtins.compile",
                                            "builtins.exec", "marshal")),
    ("date and time formatting", ("strftime", "_strptime", "datetime")),
]


def cprofile_summary(path: Path, top: int = 15) -> list[str]:
    """Own CPU time by area and the top functions, from a --cprofile dump."""
    import pstats

    stats: dict[tuple[str, int, str], tuple[Any, ...]] = (
        pstats.Stats(str(path)).stats)  # type: ignore[attr-defined]
    areas: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0.0
    for (file, line, name), (_, _, tt, _, _) in stats.items():
        total += tt
        key = f"{file}:{name}"
        own[_short(f"{name} ({file}:{line})") if file != "~" else name] += tt
        label = next((lb for lb, needles in CPROFILE_AREAS
                      if any(x in key for x in needles)), "other (builtins, typing, re, ...)")
        areas[label] += tt
    if not total:
        return ["(empty profile)"]
    out = [f"{total:.2f} s of CPU under the profiler (cProfile inflates Python-level calls "
           "about 3x; read the shares, not the seconds).", "",
           "| area (own time) | share |", "| --- | ---: |"]
    out += [f"| {label} | {100 * t / total:.1f} % |" for label, t in areas.most_common()]
    out += ["", f"Top {top} functions by own CPU time:", "", "| own | function |",
            "| ---: | --- |"]
    out += [f"| {100 * t / total:.1f} % | `{name}` |" for name, t in own.most_common(top)]
    return out


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def profile_summary(path: Path, top: int = 20) -> list[str]:
    """Own time by function and inclusive time by area, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    per_process: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = _frames(stack)
        per_process[frames[0].split(" (")[0] if frames[0].startswith("process") else "-"] += count
        own[_short(frames[-1])] += count
        for label, needles in AREAS:
            if any(any(k in f for k in needles) for f in frames):
                areas[label] += count
    if not total:
        return ["(empty profile)"]
    out = [f"{total} samples at 200 Hz (CPU only: py-spy leaves out idle threads).", "",
           "Inclusive share by area (a sample counts for every area on its stack):", "",
           "| area | share |", "| --- | ---: |"]
    for label, _ in AREAS:
        out.append(f"| {label} | {100 * areas[label] / total:.1f} % |")
    out += ["", f"Top {top} functions by own time:", "", "| own | function |", "| ---: | --- |"]
    for name, hits in own.most_common(top):
        out.append(f"| {100 * hits / total:.1f} % | `{name}` |")
    if len(per_process) > 1:
        out += ["", "By process: " + ", ".join(f"{k} {100 * v / total:.0f} %"
                                               for k, v in per_process.most_common())]
    return out


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    where = where.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
    where = where.split("/lib/python3.11/")[-1]
    return f"{name} ({where})"


# --- report ------------------------------------------------------------------------------------


@dataclass
class Round:
    """One first apply between two raw capacity measurements (the load of the shared
    machine drifts: the apply is compared with the mean of the raw rate before and after)."""

    n: int
    raw: RawResult
    first: ApplyResult
    second: ApplyResult | None
    raw_after: RawResult | None = None
    workers: str = "auto"  # apply's --probe-workers
    cold: ColdResult | None = None  # the bound peer, same round (--cold-peer)

    @property
    def rate(self) -> float:
        return self.n / self.first.wall

    @property
    def cold_rate(self) -> float | None:
        return self.n / self.cold.wall if self.cold is not None else None

    @property
    def cold_ratio(self) -> float | None:
        """The bound peer against the raw capacity (cold:raw)."""
        return self.cold_rate / self.raw_rate if self.cold_rate is not None else None

    @property
    def apply_cold(self) -> float | None:
        """The apply against the bound peer (apply:cold)."""
        return self.rate / self.cold_rate if self.cold_rate is not None else None

    @property
    def raw_rate(self) -> float:
        rates = [self.raw.rate] + ([self.raw_after.rate] if self.raw_after else [])
        return sum(rates) / len(rates)

    @property
    def ratio(self) -> float:
        return self.rate / self.raw_rate

    @property
    def cpu_ratio(self) -> float:
        """The ratio this round's CPU costs predict for this machine with nothing else
        running (a projection from CPU time, which the other load barely changes; not a
        throughput measurement): each side's rate is capped by all cores shared by the
        client and the relay, by the relay's one process, and for the apply by its main
        process (one core) and by its probe workers (one core each)."""
        cores = os.cpu_count() or 1
        raws = [self.raw] + ([self.raw_after] if self.raw_after else [])
        client = sum(r.client_cpu / r.tests for r in raws) / len(raws)
        relay_raw = sum(r.relay_cpu / r.tests for r in raws) / len(raws)
        raw_rate = min(cores / (client + relay_raw), 1 / relay_raw)
        f = self.first
        total, relay = f.cpu / self.n, f.relay_cpu / self.n
        main = (f.self_cpu if f.self_cpu is not None else f.cpu) / self.n
        caps = [cores / (total + relay), 1 / relay, 1 / main]
        workers = self.probe_workers
        if workers and total > main:
            caps.append(workers / (total - main))
        return min(caps) / raw_rate

    @property
    def probe_workers(self) -> int:
        """The worker processes apply ran with (its own rule for ``auto``)."""
        from reconciler.cli.localcmd import probe_workers

        return probe_workers(argparse.Namespace(probe_workers=self.workers), self.n)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        for line in lines:
            print(line, file=sys.stderr, flush=True)


def machine() -> list[str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    mem = next((ln.split()[1] for ln in free.splitlines() if ln.startswith("Mem:")), "?")
    return [f"- CPU: {cpu}; `nproc`: {os.cpu_count()}; memory: {mem}; "
            f"Python {platform.python_version()}; kernel {platform.release()}",
            "- Shared with other engineers' test runs: the load average (1 min) before and "
            "after each phase is in the tables; compare ratios within one round."]


ROUND_HEADER = (
    "| N | round | probe workers | raw tests/s before / after (clients) | relay busy raw | "
    "first apply s | "
    "apply tests/s | **ratio apply:raw** | bound peer tests/s (clients; first test s; "
    "CPU ms/test) | "
    "**cold:raw** | **apply:cold** | idle projection | apply CPU ms/resource "
    "(main) | raw client CPU ms/test | relay CPU ms/test raw / apply | relay busy apply | "
    "write tx/resource | peak RSS first | second apply s (CPU s) | tests in second | "
    "peak RSS second | load before/after |",
    "|" + " ---: |" * 22)


def round_row(r: Round, i: int) -> str:
    f, s, raw = r.first, r.second, r.raw
    main = f" ({1000 * f.self_cpu / r.n:.2f})" if f.self_cpu is not None else ""
    tx = f"{f.write_transactions / r.n:.3f}" if f.write_transactions is not None else "?"
    second = (f"{s.wall:.2f} ({s.cpu:.2f}) | {s.tests} | {s.maxrss_kib / 1024:.0f} MB"
              if s is not None else "- | - | -")
    after = f" / {r.raw_after.rate:.0f}" if r.raw_after is not None else ""
    c = r.cold
    cold = (f"{r.cold_rate:.0f} ({c.workers}; {c.first_test or float('nan'):.2f}; "
            f"{1000 * c.cpu / r.n:.2f}) | "
            f"**{r.cold_ratio:.2f}** | **{r.apply_cold:.2f}**"
            if c is not None and r.cold_rate and r.cold_ratio and r.apply_cold
            else "- | - | -")
    return (f"| {r.n:,} | {i} | {r.workers} | {raw.rate:.0f}{after} ({raw.processes}) | "
            f"{raw.relay_cpu / raw.wall:.2f} | {f.wall:.2f} | {r.rate:.0f} | "
            f"**{r.ratio:.2f}** | {cold} | {r.cpu_ratio:.2f} | {1000 * f.cpu / r.n:.2f}{main} | "
            f"{1000 * raw.client_cpu / raw.tests:.2f} | "
            f"{1000 * raw.relay_cpu / raw.tests:.2f} / {1000 * f.relay_cpu / r.n:.2f} | "
            f"{f.relay_cpu / f.wall:.2f} | {tx} | {f.maxrss_kib / 1024:.0f} MB | {second} | "
            f"{raw.load[0]:.1f}/{(r.raw_after or f).load[1]:.1f} |")


def _cold_summary(rs: list[Round]) -> str:
    cold = [r for r in rs if r.cold is not None]
    if not cold:
        return ""
    cr = [r.cold_ratio or 0.0 for r in cold]
    ac = [r.apply_cold or 0.0 for r in cold]
    first = [r.cold.first_test for r in cold if r.cold is not None and r.cold.first_test]
    return (f"; bound peer ({cold[0].cold.workers if cold[0].cold else '?'} clients): "
            f"**cold:raw** median {statistics.median(cr):.2f} (min {min(cr):.2f}, max "
            f"{max(cr):.2f}), **apply:cold** median {statistics.median(ac):.2f} (min "
            f"{min(ac):.2f}, max {max(ac):.2f})"
            + (f", its first test {statistics.median(first):.2f} s after its spawn"
               if first else "")
            + f", its CPU {statistics.median(1000 * r.cold.cpu / r.n for r in cold if r.cold):.2f}"
            " ms/test (main process and client)")


def _lstsq2(xs: list[tuple[float, float]], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = p*x0 + q*x1 (normal equations); returns p, q and R^2."""
    s00 = sum(a * a for a, _ in xs)
    s01 = sum(a * b for a, b in xs)
    s11 = sum(b * b for _, b in xs)
    t0 = sum(a * y for (a, _), y in zip(xs, ys, strict=True))
    t1 = sum(b * y for (_, b), y in zip(xs, ys, strict=True))
    det = s00 * s11 - s01 * s01
    p, q = (t0 * s11 - t1 * s01) / det, (s00 * t1 - s01 * t0) / det
    mean = sum(ys) / len(ys)
    ss = sum((y - mean) ** 2 for y in ys)
    res = sum((y - p * a - q * b) ** 2 for (a, b), y in zip(xs, ys, strict=True))
    return p, q, (1 - res / ss) if ss else 1.0


def fit(points: list[tuple[float, float]]) -> str:
    """Least-squares fits y = a + b*N and y = b*N + c*N^2 (N in thousands), with R^2."""
    ns = [p[0] / 1000 for p in points]
    ys = [p[1] for p in points]
    a, b, r_lin = _lstsq2([(1.0, n) for n in ns], ys)
    qb, qc, r_quad = _lstsq2([(n, n * n) for n in ns], ys)
    return (f"{a:.2f} + {b:.2f}·N (R² {r_lin:.4f}); "
            f"{qb:.2f}·N + {qc:.3f}·N² (R² {r_quad:.4f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./dev bench fleet", description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, action="append", help="fleet size (repeatable; 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per size (3)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--clients", type=int, default=(os.cpu_count() or 1) + 1,
                    help="client processes of the raw capacity (CPUs + 1)")
    ap.add_argument("--raw-tests", type=int, default=1500,
                    help="tests of one raw capacity measurement (at most N)")
    ap.add_argument("--relay", choices=("aiosmtpd", "postfix"), default="aiosmtpd")
    ap.add_argument("--profile", action="store_true", help="py-spy profile of one first apply")
    ap.add_argument("--profile-out", type=Path, help="keep the collapsed stacks here")
    ap.add_argument("--cprofile", action="store_true",
                    help="cProfile (CPU clock) of one first apply's main process")
    ap.add_argument("--timeline", action="store_true",
                    help="one more first apply, sampled: CPU of main process, workers and "
                         "relay, idle CPU, tests in flight, event loop lag")
    ap.add_argument("--growth", help="comma-separated sizes for the growth fit")
    ap.add_argument("--no-second", action="store_true", help="skip the second apply")
    ap.add_argument("--probe-workers", action="append",
                    help="apply's --probe-workers (default: auto); repeat it to compare "
                         "settings in each round, between the same two raw measurements")
    ap.add_argument("--no-cold-peer", dest="cold_peer", action="store_false",
                    help="skip the bound peer (run by default in every round: see "
                         "bench/fleet_spawned.py)")
    ap.add_argument("--cold-workers", type=int, default=COLD_WORKERS,
                    help=f"client processes of the bound peer ({COLD_WORKERS})")
    ap.add_argument("--selected-fraction", type=float, default=0.0, metavar="F",
                    help="share of the relays with spec.selected: true (0: relay 0 only; "
                         "1: all)")
    ap.add_argument("--write", type=Path, help="replace the generated block of this file")
    args = ap.parse_args(argv)
    variants: list[str] = args.probe_workers or ["auto"]
    counts = args.count or [1000]
    growth = [int(x) for x in args.growth.split(",")] if args.growth else []
    report = Report()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(["./dev bench fleet", *(argv if argv is not None else sys.argv[1:])])
    relay_cm = aiosmtpd_relay() if args.relay == "aiosmtpd" else postfix_relay()
    with relay_cm as relay, tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        base = Path(tmp)
        ca = base / "ca.pem"
        ca.write_text(relay.ca_pem)
        env = dict(os.environ, FLEET_PW=relay.password, PYTHONWARNINGS="ignore",
                   SMTPCTL_ALLOW_ENV="FLEET_PW")
        report.add(f"### Fleet benchmark run ({started})", "", f"Command: `{command}`", "",
                   *machine(), "", f"Relay: {relay.name}.  Concurrency {args.concurrency} "
                   "(global and per host).  Raw capacity: the connection test alone in "
                   f"{args.clients} client processes, {args.raw_tests} tests (at most N).  "
                   + (f"Relays with `spec.selected: true`: {args.selected_fraction:.0%} of "
                      "the fleet." if args.selected_fraction > 0 else
                      "One relay has `spec.selected: true`."), "")
        rounds: list[Round] = []
        fleets: dict[int, Path] = {}

        def fleet_of(n: int) -> Path:
            if n not in fleets:
                fleets[n] = base / f"fleet-{n}.yaml"
                write_fleet(fleets[n], n, relay, ca, args.selected_fraction)
            return fleets[n]

        def one_round(n: int, i: int, *, second: bool,
                      settings: Sequence[str] = variants) -> list[Round]:
            """A raw capacity, a first (and second) apply per setting, a raw capacity."""
            raw = raw_capacity(relay, min(n, args.raw_tests), args.concurrency, args.clients)
            cold = None
            if args.cold_peer:
                cold = run_cold(relay, fleet_of(n), env, args.concurrency, args.cold_workers,
                                base / "cold.stats.json")
                if cold.tests != n:
                    raise RuntimeError(f"the bound peer ran {cold.tests} tests, expected {n}")
            done = []
            for workers in settings:
                extra = ["--probe-workers", workers]
                state = base / f"state-{n}-{i}-{workers}"
                first = run_apply(relay, fleet_of(n), state, env, args.concurrency, extra=extra)
                if first.tests != n:
                    raise RuntimeError(f"first apply ran {first.tests} tests, expected {n}")
                again = None
                if second:
                    again = run_apply(relay, fleet_of(n), state, env, args.concurrency,
                                      extra=extra)
                    if again.tests != 0:
                        raise RuntimeError(f"second apply ran {again.tests} tests, "
                                           "expected 0")
                done.append((workers, first, again))
            after = raw_capacity(relay, min(n, args.raw_tests), args.concurrency, args.clients)
            return [Round(n, raw, first, again, after, workers, cold)
                    for workers, first, again in done]

        if args.repeat > 0:
            report.add("#### Rounds", "", *ROUND_HEADER)
        for n in counts:
            for i in range(1, args.repeat + 1):
                for r in one_round(n, i, second=not args.no_second):
                    rounds.append(r)
                    report.add(round_row(r, i))
        if args.repeat > 0:
            report.add("")
        for n, workers in [(n, w) for n in counts for w in variants]:
            rs = [r for r in rounds if r.n == n and r.workers == workers]
            if not rs:  # --repeat 0: growth or profile only
                continue
            ratios = [r.ratio for r in rs]
            proj = [r.cpu_ratio for r in rs]
            cpu = [1000 * r.first.cpu / n for r in rs]
            raw_cpu = [1000 * r.raw.client_cpu / r.raw.tests for r in rs]
            rss = [r.first.maxrss_kib / 1024 for r in rs]
            report.add(
                f"- N = {n:,}, probe workers {workers}: ratio apply:raw median "
                f"**{statistics.median(ratios):.2f}** "
                f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {len(rs)} rounds); "
                f"idle projection median {statistics.median(proj):.2f} (min "
                f"{min(proj):.2f}, max {max(proj):.2f}); apply CPU "
                f"{statistics.median(cpu):.2f} ms/resource median (min {min(cpu):.2f}, max "
                f"{max(cpu):.2f}) vs raw client {statistics.median(raw_cpu):.2f} ms/test; "
                f"peak RSS {max(rss):.0f} MB; write transactions/resource "
                + (f"{rs[0].first.write_transactions / n:.3f}"
                   if rs[0].first.write_transactions is not None else "?")
                + _cold_summary(rs))
        report.add("")
        if growth:
            report.add("#### Growth", "", *ROUND_HEADER)
            pts: list[Round] = []
            for n in growth:
                [r] = one_round(n, 1, second=n == max(growth), settings=variants[:1])
                pts.append(r)
                report.add(round_row(r, 1))
            report.add("", "Fits (N in thousands):", "",
                       "- apply CPU seconds: " + fit([(r.n, r.first.cpu) for r in pts]),
                       "- first apply wall seconds: " + fit([(r.n, r.first.wall) for r in pts]),
                       "- ratio apply:raw by N: " + ", ".join(f"{r.n:,}: {r.ratio:.2f}"
                                                             for r in pts),
                       "- peak RSS by N: " + ", ".join(f"{r.n:,}: {r.first.maxrss_kib / 1024:.0f}"
                                                       " MB" for r in pts), "")
        if args.cprofile:
            n = min(counts)
            dump = base / "apply.cprofile"
            cp = run_apply(relay, fleet_of(n), base / "state-cprofile",
                           dict(env, FLEET_CPROFILE=str(dump)), args.concurrency,
                           extra=["--probe-workers", variants[0]])
            report.add(f"#### CPU profile of a first apply of {n:,}, main process "
                       f"(probe workers {variants[0]})", "",
                       f"Under the profiler: wall {cp.wall:.2f} s, CPU "
                       f"{1000 * cp.cpu / n:.2f} ms/resource (main "
                       f"{1000 * (cp.self_cpu or 0) / n:.2f}).  "
                       + ("Probe workers (not profiled here) run `run_probe` only, as the "
                          "raw peer does." if variants[0] != "0" else
                          "With no probe workers the connection tests run in this process "
                          "and are profiled too."), "",
                       *cprofile_summary(dump), "")
        if args.timeline:
            n = min(counts)
            dump = base / "apply.timeline.json"
            tl_env = dict(env, FLEET_TIMELINE=str(dump),
                          FLEET_RELAY_PIDS=",".join(str(p) for p in relay.pids()))
            tl = run_apply(relay, fleet_of(n), base / "state-timeline", tl_env,
                           args.concurrency, extra=["--probe-workers", variants[0]])
            report.add(f"#### Timeline of a first apply of {n:,} (`--timeline`)", "",
                       f"Wall {tl.wall:.2f} s ({n / tl.wall:.0f} tests/s), load "
                       f"{tl.load[0]:.1f}/{tl.load[1]:.1f}.", "",
                       *timeline_summary(dump, n, variants[0]))
        if args.profile:
            n = min(counts)
            prof = (args.profile_out or base) / f"apply-{n}.collapsed.txt"
            prof.parent.mkdir(parents=True, exist_ok=True)
            pr = run_apply(relay, fleet_of(n), base / "state-profile", env, args.concurrency,
                           profile=prof, extra=["--probe-workers", variants[0]])
            report.add(f"#### Profile of a first apply of {n:,} (py-spy)", "",
                       f"Wall {pr.wall:.2f} s under the profiler ({n / pr.wall:.0f} tests/s), "
                       f"CPU {1000 * pr.cpu / n:.2f} ms/resource.", "", *profile_summary(prof),
                       "")
    report.add(f"bench process peak RSS: "
               f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    text = "\n".join(report.lines)
    print(text)
    if args.write:
        write_block(args.write, "fleet", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
