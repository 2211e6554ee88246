"""Fleet benchmark: `smtpctl apply` of 1,000 and 10,000 ExternalSmtp against one relay.

    ./dev bench fleet [--count 1000 --count 10000] [--concurrency 32] [--no-profile]

What it measures, per fleet size, with a loopback aiosmtpd relay (STARTTLS with a trustme
CA + AUTH PLAIN) running in its own process (so it does not share our GIL):

* ``raw probe``: the relay's capacity - ``run_probe`` alone, N tests at the chosen
  concurrency, no engine, no store (the peer we compare against: the ratio
  ``apply tests/s : raw tests/s`` says how much of the relay's capacity the engine uses);
* ``first apply``: ``python -m reconciler apply -f fleet.yaml`` in a subprocess - every
  resource tested; wall time, tests/s, peak RSS of the apply process;
* ``second apply``: the same, unchanged - must run **zero** connection tests (asserted
  through the relay's connection counter); wall time, peak RSS;
* a cProfile summary of a first apply (the smallest count) - where the time goes.

Output: a Markdown report on stdout (paste into docs/benchmarks/fleet.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

USER = "fleet@example.test"
PASSWORD = "bench-password-not-secret"


# --- the relay, in its own process ---------------------------------------------------------


def _relay_main(conn: Connection) -> None:
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


class Relay:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_relay_main, args=(child,), daemon=True)
        self._proc.start()
        self.port, self.ca_pem = self._conn.recv()

    @property
    def pid(self) -> int:
        """The relay process (bench/operator.py reads its CPU time)."""
        pid = self._proc.pid
        assert pid is not None
        return pid

    @property
    def connections(self) -> int:
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


# --- helpers ---------------------------------------------------------------------------------


def write_fleet(path: Path, count: int, port: int, ca_file: Path) -> None:
    parts = []
    for i in range(count):
        parts.append(f"""apiVersion: smtp.reconciler.dev/v1alpha1
kind: ExternalSmtp
metadata:
  name: relay-{i:05d}
spec:
  host: 127.0.0.1
  port: {port}
  authentication: UsernamePassword
  startTLS: true
  username: {USER}
  passwordFrom: {{env: FLEET_PW}}
  selected: {"true" if i == 0 else "false"}
  tls: {{caBundleFrom: {{file: {ca_file}}}}}
""")
    path.write_text("---\n".join(parts))


def run_apply(args: list[str], env: dict[str, str]) -> tuple[int, float, int]:
    """Run a child, return (exit code, wall seconds, peak RSS in KiB of that child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, int(usage.ru_maxrss)


async def raw_probe(count: int, concurrency: int, port: int, ca_pem: str) -> float:
    """The relay's capacity: run_probe alone, no engine, no store; returns tests/s."""
    from reconciler.probe import run_probe
    from reconciler.probe.verdict import ProbeCredentials
    from reconciler.resources import ExternalSmtpSpec
    from reconciler.secret import Secret

    spec = ExternalSmtpSpec.model_validate({
        "host": "127.0.0.1", "port": port, "authentication": "UsernamePassword",
        "startTLS": True, "username": USER, "passwordFrom": {"env": "FLEET_PW"}})
    creds = ProbeCredentials(password=Secret(PASSWORD), ca_bundle_pem=ca_pem)
    sem = asyncio.Semaphore(concurrency)
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with sem:
            v = await run_probe(spec, creds)
            failures += not v.passed

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    dt = time.perf_counter() - t0
    assert failures == 0, f"{failures} raw probes failed"
    return count / dt


def seed_state(fleet: Path, state: Path, env: dict[str, str]) -> None:
    """Fill a store as a first apply would, but with an instant passing probe.

    Only for sizes where a real first apply takes too long on a shared machine: the
    digests are computed by the real credentials layer, so the real second apply must
    still run zero tests (asserted).  The report marks such rows.
    """
    code = (
        "import asyncio, sys\n"
        "from reconciler.probe.verdict import Verdict\n"
        "from reconciler.runtimes.local import apply_manifests, build_world, "
        "load_documents, validate_documents\n"
        "from reconciler.stores.local import LocalStore\n"
        "async def ok(spec, creds):\n"
        "    return Verdict(True, 'quit', 'TestPassed', 'seeded', 'None', False, 0.0)\n"
        "store = LocalStore(sys.argv[2])\n"
        "world = build_world(store, announce_testing=False)\n"
        "world.probe_fn = ok\n"
        "ms = validate_documents(load_documents([sys.argv[1]]))\n"
        "asyncio.run(apply_manifests(store, world, ms))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(fleet), str(state)], env=env, check=True,
                   cwd=ROOT)


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    free = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip()
    return (f"- nproc: {os.cpu_count()}\n- CPU: {cpu}\n- Python: {platform.python_version()}"
            f"\n- free -h:\n\n```\n{free}\n```")


def profile_summary(path: Path, top: int = 18) -> str:
    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    rows: list[tuple[float, float, str]] = []
    for (fn, line, name), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = fn.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        rows.append((tt, ct, f"{short}:{line}({name})"))
    rows.sort(reverse=True)
    out = [f"Total profiled time {total:.2f}s. Top functions by own time:", "",
           "| own s | cumulative s | function |", "| ---: | ---: | --- |"]
    for tt, ct, name in rows[:top]:
        out.append(f"| {tt:.3f} | {ct:.3f} | `{name}` |")
    steps = {
        "connection tests (run_probe, incl. TLS)": "reconciler/probe/runner.py",
        "status/memo writes (update_status_sync)": "update_status_sync",
        "test history (record_test)": "record_test",
        "events (record_event)": "record_event",
        "input: schema check (schema_problems)": "schema_problems",
        "input: YAML + typed models (parse_texts, validate_documents)": "parse_texts|"
                                                                        "validate_documents",
        "upsert (upsert_many)": "upsert_many",
        "credentials (resolve_smtp_credentials)": "resolve_smtp_credentials",
        "selection (select_scope)": "select_scope",
    }
    out += ["", "Cumulative time of the main steps (coroutines: time while running, not "
            "while suspended):", ""]
    for label, pat in steps.items():
        keys = pat.split("|")
        best = max((ct for _tt, ct, name in rows if any(k in name for k in keys)
                    and ("run_probe" in name or "runner.py" not in pat)), default=0.0)
        out.append(f"- {label}: {best:.2f}s ({100 * best / total:.0f}%)")
    buckets = {"waiting for the network (epoll)": ("poll", "select"),
               "TLS (ssl)": ("ssl.py", "_ssl"),
               "SQLite": ("sqlite3", "execute", "commit"),
               "YAML": ("yaml", "_yaml"),
               "pydantic": ("pydantic",)}
    out += ["", "Own time by area (heuristic, by function/file name):", ""]
    for label, names in buckets.items():
        s = sum(tt for tt, _ct, name in rows if any(k in name for k in names))
        out.append(f"- {label}: {s:.2f}s ({100 * s / total:.0f}%)")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, action="append", help="fleet size (repeatable)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--seed-above", type=int, default=None, metavar="N",
                    help="for fleets larger than N, seed the store with an instant probe "
                    "instead of a real first apply (the second apply stays real)")
    args = ap.parse_args()
    counts = args.count or [1000, 10000]
    conc = args.concurrency
    relay = Relay()
    lines = ["# Fleet benchmark (`./dev bench fleet`)", "",
             f"Command: `{' '.join(['./dev bench fleet', *sys.argv[1:]])}`", "",
             "Machine (shared with four other engineers' test runs while measured: numbers "
             "are noisy):", "", machine(), "",
             f"Concurrency {conc} (global and per host: one relay). Relay: aiosmtpd "
             "(devservers.smtp.RelayServer), STARTTLS + AUTH PLAIN, in its own process.", "",
             "| resources | raw probe tests/s | first apply s | first apply tests/s | "
             "ratio apply:raw | second apply s | tests in second apply | peak RSS first | "
             "peak RSS second |", "|" + " ---: |" * 9]
    profile = ""
    try:
        with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
            base = Path(tmp)
            ca = base / "ca.pem"
            ca.write_text(relay.ca_pem)
            env = dict(os.environ, FLEET_PW=PASSWORD, PYTHONWARNINGS="ignore")
            for n in counts:
                fleet = base / f"fleet-{n}.yaml"
                write_fleet(fleet, n, relay.port, ca)
                raw = asyncio.run(raw_probe(min(n, 300), conc, relay.port, relay.ca_pem))
                state = base / f"state-{n}"
                cmd = [sys.executable, "-m", "reconciler", "apply", "-f", str(fleet),
                       "--state", str(state), "--concurrency", str(conc), "--per-host",
                       str(conc), "--lock-timeout", "5"]
                seeded = args.seed_above is not None and n > args.seed_above
                c0 = relay.connections
                if seeded:
                    seed_state(fleet, state, env)
                    rc1, t1, rss1 = 0, float("nan"), 0
                else:
                    rc1, t1, rss1 = run_apply(cmd, env)
                c1 = relay.connections
                assert rc1 == 0, f"first apply exited {rc1}"
                assert seeded or c1 - c0 == n, f"first apply ran {c1 - c0} tests, expected {n}"
                rc2, t2, rss2 = run_apply(cmd, env)
                c2 = relay.connections
                assert rc2 == 0, f"second apply exited {rc2}"
                assert c2 == c1, f"second apply ran {c2 - c1} connection tests, expected 0"
                rate = n / t1
                label = f"{n:,} (seeded)" if seeded else f"{n:,}"
                lines.append(f"| {label} | {raw:.0f} | {t1:.1f} | {rate:.0f} | {rate / raw:.2f} | "
                             f"{t2:.2f} | {c2 - c1} | {rss1 / 1024:.0f} MB | "
                             f"{rss2 / 1024:.0f} MB |")
                print(lines[-1], file=sys.stderr, flush=True)
            if not args.no_profile:
                n = min(counts)
                prof = base / "apply.prof"
                state = base / "state-prof"
                rc, _t, _r = run_apply(
                    [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "reconciler",
                     "apply", "-f", str(base / f"fleet-{n}.yaml"), "--state", str(state),
                     "--concurrency", str(conc), "--per-host", str(conc)], env)
                assert rc == 0, f"profiled apply exited {rc}"
                profile = f"## Profile of a first apply of {n:,} (cProfile)\n\n" + \
                    profile_summary(prof)
    finally:
        relay.stop()
    print("\n".join(lines))
    if profile:
        print("\n" + profile)
    print(f"\nbench process peak RSS: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
