"""Benchmark: the opt-in pipelined AUTH (``connectionTest.pipelineAuth``) - round trips and
wall time of one connection test, off vs on.

    ./dev bench pipelining [--reps N] [--delay SECONDS] [--no-postfix] [--write FILE]

The dialogue: STARTTLS + AUTH PLAIN + relay check (MAIL FROM / RCPT TO / RSET / QUIT), the
probe's default, run ``--reps`` times per variant (interleaved, rotating order, after one
warm-up each) against the same server through the TCP proxy of ``tests/support/tcp_proxy.py``,
which counts round trips on the wire (bursts of server bytes that follow client bytes: the
moments the client waited) and can delay each direction.  Two runs per server: the plain
loopback (RTT ~0: what the test costs in CPU and scheduling on this machine) and with the
given one-way delay (RTT = 2 x delay: what a round trip fewer saves on a real network).

Servers: the aiosmtpd relay (``reconciler.devservers``) and, unless ``--no-postfix``, real
Postfix 3.7 + Dovecot (``tests/support/postfix.py``; needs root and the Debian packages).
The 1-minute load average is recorded before and after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

from bench_records import write_block  # noqa: E402 - bench/, the record files

from reconciler.devservers.smtp import RelayServer  # noqa: E402
from reconciler.probe import ProbeCredentials, run_probe  # noqa: E402
from reconciler.resources import ExternalSmtpSpec  # noqa: E402
from reconciler.secret import Secret  # noqa: E402
from tests.support import canary  # noqa: E402
from tests.support.postfix import skip_reason, start_peer  # noqa: E402
from tests.support.tcp_proxy import TcpProxy  # noqa: E402

USER = "bench@relay.test"
VARIANTS = {"pipelineAuth: false": False, "pipelineAuth: true": True}


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    ca_pem: str
    user: str
    password: Secret


@dataclass(frozen=True)
class Sample:
    wall: float  # the probe's own wall time (run_probe, in-process)
    wire: float | None  # connect to close at the proxy
    round_trips: int
    ok: bool
    pipelined: bool


def _load() -> float:
    return os.getloadavg()[0]


def _once(target: Target, proxy: TcpProxy, pipeline: bool) -> Sample:
    spec = ExternalSmtpSpec.model_validate({
        "host": "127.0.0.1", "port": proxy.port, "authentication": "UsernamePassword",
        "startTLS": True, "username": target.user, "passwordFrom": {"env": "UNUSED"},
        "connectionTest": {"timeoutSeconds": 30, "pipelineAuth": pipeline},
    })
    creds = ProbeCredentials(password=target.password, ca_bundle_pem=target.ca_pem)
    proxy.reset()
    started = time.perf_counter()
    verdict = asyncio.run(run_probe(spec, creds))
    wall = time.perf_counter() - started
    if not verdict.passed:
        print(f"  probe failed: {verdict.reason}: {verdict.message}", file=sys.stderr)
    conns = proxy.wait_closed(1, timeout=2)
    conn = conns[0] if conns else (proxy.connections[0] if proxy.connections else None)
    return Sample(wall, conn.seconds if conns and conn else None,
                  conn.round_trips if conn else 0, verdict.passed,
                  bool(verdict.details.get("authPipelined")))


def _run(target: Target, delay: float, reps: int) -> tuple[dict[str, list[Sample]], float, float]:
    samples: dict[str, list[Sample]] = {name: [] for name in VARIANTS}
    before = _load()
    with TcpProxy(target.host, target.port, delay=delay) as proxy:
        for flag in VARIANTS.values():  # warm-up
            _once(target, proxy, flag)
        names = list(VARIANTS)
        for i in range(reps):
            for name in names[i % 2:] + names[:i % 2]:
                samples[name].append(_once(target, proxy, VARIANTS[name]))
    return samples, before, _load()


@contextmanager
def _devserver() -> Iterator[Target]:
    password = Secret(canary.PASSWORD)
    with RelayServer(mode="starttls", users={USER: password.reveal()}) as relay:
        yield Target("aiosmtpd relay (reconciler.devservers)", "127.0.0.1", relay.port,
                     relay.ca_pem, USER, password)


@contextmanager
def _postfix() -> Iterator[Target]:
    with start_peer() as peer:
        yield Target("Postfix 3.7 + Dovecot 2.3 (tests/support/postfix.py)", peer.host,
                     peer.starttls_port, peer.ca_pem, peer.user, peer.password)


def _rows(samples: dict[str, list[Sample]], rtt: float, label: str,
          load: tuple[float, float]) -> list[str]:
    off = statistics.median(s.wall for s in samples["pipelineAuth: false"])
    out = []
    for name, ss in samples.items():
        rts = "/".join(map(str, sorted({s.round_trips for s in ss})))
        wall = statistics.median(s.wall for s in ss)
        wires = [s.wire for s in ss if s.wire is not None]
        wire = f"{statistics.median(wires):.4f}" if wires else "n/a"
        out.append(
            f"| {label} | {name} | {sum(s.ok for s in ss)}/{len(ss)} "
            f"| {sum(s.pipelined for s in ss)}/{len(ss)} | {rts} | {wall:.4f} "
            f"| {min(s.wall for s in ss):.4f} | {wire} | {wall / off:.3f} "
            f"| {(off - wall) / rtt if rtt else float('nan'):.2f} "
            f"| {load[0]:.2f} -> {load[1]:.2f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench pipelining",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="repetitions per variant (20)")
    parser.add_argument("--delay", type=float, default=0.025,
                        help="one-way delay per direction in seconds (0.025: RTT 50 ms)")
    parser.add_argument("--no-postfix", action="store_true", help="only the aiosmtpd relay")
    parser.add_argument("--write", type=Path,
                        help="also write the report into the generated block of this file")
    args = parser.parse_args(argv)
    if not 1 <= args.reps <= 500 or not 0 < args.delay <= 1:
        parser.error("--reps must be 1..500 and --delay in (0, 1]")
    cmd = (f"./dev bench pipelining --reps {args.reps} --delay {args.delay}"
           + (" --no-postfix" if args.no_postfix else ""))
    report = ["Command: `" + cmd + "` (run " + time.strftime("%Y-%m-%d %H:%M UTC",
                                                              time.gmtime()) + ")", "",
              f"`nproc`: {os.cpu_count()}; Python {sys.version.split()[0]}. {args.reps} "
              "interleaved repetitions per variant after one warm-up each; each row is one "
              "variant of one run; load = the 1-minute load average before -> after the run.",
              "",
              "| server, RTT | variant | passed | AUTH pipelined | round trips (wire) "
              "| wall median (s) | wall min (s) | wire median (s) | wall vs off "
              "| saved / RTT | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    targets = [_devserver]
    if not args.no_postfix:
        why = skip_reason()
        if why:
            print(f"bench pipelining: Postfix skipped: {why}", file=sys.stderr)
        else:
            targets.append(_postfix)
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-pipelining-"):
        for make in targets:
            with make() as target:
                short = target.name.split(" (")[0]
                for delay in (0.0, args.delay):
                    print(f"bench pipelining: {short}, delay {delay} ...", file=sys.stderr)
                    samples, before, after = _run(target, delay, args.reps)
                    label = f"{short}, RTT {2 * delay * 1000:.0f} ms"
                    report += _rows(samples, 2 * delay, label, (before, after))
                    ok = ok and all(s.ok for ss in samples.values() for s in ss)
    if not ok:
        report.append("\n**Some runs failed: see stderr.**")
    text = "\n".join(report)
    canary.assert_no_canary(text, where="benchmark report")
    print(text)
    if args.write:
        write_block(args.write, "pipelining", text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
