"""Connection tests in worker processes (``reconciler.runtimes.probepool``): the same
verdicts as in this process, secrets only over the pipe, nothing lost when a worker dies,
no worker outliving its parent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.probe import run_probe
from reconciler.probe.egress import EgressPolicy
from reconciler.probe.verdict import ProbeCredentials
from reconciler.resources import ExternalSmtpSpec
from reconciler.runtimes import probepool
from reconciler.runtimes.probepool import Prestarted, ProbePool
from reconciler.secret import Secret
from tests.support import canary
from tests.support.engine_env import USER, Env, cond, e2e_fixture  # noqa: F401
from tests.support.probe_pool import Fallback
from tests.support.probe_pool import relay_spec as _spec
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture(name="pool")
async def pool_fixture() -> AsyncIterator[tuple[ProbePool, Fallback]]:
    fallback = Fallback()
    pool = ProbePool(2, policy=EgressPolicy(), fallback=fallback)
    await pool.start()
    try:
        yield pool, fallback
    finally:
        await pool.aclose()


def _creds(e2e: Env) -> ProbeCredentials:
    return ProbeCredentials(password=Secret(canary.PASSWORD), ca_bundle_pem=e2e.relay.ca_pem)


async def test_workers_give_the_verdicts_this_process_gives(
        e2e: Env, pool: tuple[ProbePool, Fallback]) -> None:
    p, fallback = pool
    creds = _creds(e2e)
    good = await asyncio.gather(*(p.probe(_spec(e2e.relay.port), creds) for _ in range(8)))
    bad = await p.probe(_spec(e2e.relay.port, "nobody@example.test"), creds)
    here = await run_probe(_spec(e2e.relay.port, "nobody@example.test"), creds)
    assert p.offloaded == 9 and fallback.calls == 0
    assert all(v.passed and v.reason == "TestPassed" for v in good)
    assert good[0].details["tlsMode"] == "starttls" and good[0].details["mechanism"] == "PLAIN"
    assert tuple(good[0].transcript) == ()  # a passed test's transcript is not sent back
    assert (bad.passed, bad.stage, bad.reason) == (here.passed, here.stage, here.reason)
    assert [t.line for t in bad.transcript] == [t.line for t in here.transcript]
    assert "AUTH PLAIN ******" in [t.line for t in bad.transcript]
    canary.assert_no_canary(repr(bad), where="a verdict from a worker")


async def test_oauth_tests_stay_in_this_process(e2e: Env,
                                                pool: tuple[ProbePool, Fallback]) -> None:
    p, fallback = pool

    async def token(force: bool) -> Secret:
        return Secret("not-a-token")

    creds = ProbeCredentials(token_provider=token, ca_bundle_pem=e2e.relay.ca_pem)
    spec = ExternalSmtpSpec.model_validate({
        "host": "127.0.0.1", "port": e2e.relay.port, "authentication": "OAuth2",
        "startTLS": True, "username": USER, "oauth2ProviderRef": {"name": "idp"}})
    await p.probe(spec, creds)
    assert fallback.calls == 1 and p.offloaded == 0


def _cmdline_and_environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()


async def test_no_secret_in_a_workers_command_line_or_environment(
        e2e: Env, pool: tuple[ProbePool, Fallback]) -> None:
    p, _ = pool
    assert (await p.probe(_spec(e2e.relay.port), _creds(e2e))).passed
    pids = p.pids()
    assert len(pids) == 2
    assert os.environ["SMTP_PW"] == canary.PASSWORD  # the env: source of this process
    for pid in pids:
        data = _cmdline_and_environ(pid)
        assert canary.PASSWORD.encode() not in data
        assert b"SMTP_PW" not in data


class GatedProxy(TcpProxy):
    """Holds each new connection until released, and says when one arrived."""

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port)
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def _handle(self, c_reader: asyncio.StreamReader,
                      c_writer: asyncio.StreamWriter) -> None:
        self.arrived.set()
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
        await super()._handle(c_reader, c_writer)


async def test_a_worker_that_dies_mid_test_fails_no_test(
        e2e: Env, pool: tuple[ProbePool, Fallback]) -> None:
    p, fallback = pool
    creds = _creds(e2e)
    gate = GatedProxy(e2e.relay.port)
    gate.start()
    try:
        task = asyncio.create_task(p.probe(_spec(gate.port), creds))
        arrived = await asyncio.get_running_loop().run_in_executor(None, gate.arrived.wait, 30)
        assert arrived, "the worker never connected"
        for pid in p.pids():  # every worker dies with the test in flight
            os.kill(pid, signal.SIGKILL)
        gate.release.set()
        verdict = await task
    finally:
        gate.release.set()
        gate.stop()
    assert verdict.passed  # tested again in this process
    assert fallback.calls == 1 and p.lost == 1 and not p.closed


async def _kill_workers(p: ProbePool) -> list[int]:
    """kill -9 every running worker and wait until the pool has seen each pipe close."""
    workers = list(p._workers)  # to wait for the pool's own reader tasks
    pids = p.pids()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    tasks = [w.reader_task for w in workers if w.reader_task is not None]
    async with asyncio.timeout(30):
        await asyncio.gather(*tasks)
    assert p.pids() == []
    return pids


async def test_a_dead_worker_is_replaced_at_the_next_test(
        e2e: Env, pool: tuple[ProbePool, Fallback]) -> None:
    """A long-running operator lost its probe workers for good when one died (OOM, kill -9):
    every later test ran in its loop until the pod restarted.  Failed before: the test
    after the kill ran in this process (fallback.calls == 1, no worker)."""
    p, fallback = pool
    creds = _creds(e2e)
    assert (await p.probe(_spec(e2e.relay.port), creds)).passed
    killed = await _kill_workers(p)
    verdicts = await asyncio.gather(*(p.probe(_spec(e2e.relay.port), creds) for _ in range(4)))
    assert all(v.passed for v in verdicts)
    assert fallback.calls == 0 and p.offloaded == 5  # every test ran in a worker
    new = p.pids()
    assert len(new) == 2 and not set(new) & set(killed)  # two new worker processes
    assert all("worker_main" in Path(f"/proc/{pid}/cmdline").read_text() for pid in new)
    assert p.restarts == 2 and p.restarts_refused == 0


async def test_restarts_are_bounded_per_window(e2e: Env) -> None:
    """A worker that keeps dying cannot become a fork loop: at most ``max_restarts``
    replacements in any ``restart_window`` seconds (an injected clock); meanwhile tests
    run in this process, and restarts resume when the oldest leaves the window."""
    now = [1000.0]
    fallback = Fallback()
    p = ProbePool(1, policy=EgressPolicy(), fallback=fallback, max_restarts=2,
                  restart_window=60.0, clock=lambda: now[0])
    creds = _creds(e2e)
    spec = _spec(e2e.relay.port)
    try:
        assert (await p.probe(spec, creds)).passed  # the first start is not a restart
        for t in (0.0, 10.0):  # two restarts, at 1000 and 1010
            await _kill_workers(p)
            now[0] = 1000.0 + t
            assert (await p.probe(spec, creds)).passed
            assert len(p.pids()) == 1
        assert p.restarts == 2 and fallback.calls == 0 and p.offloaded == 3
        await _kill_workers(p)
        for t in (20.0, 59.9):  # the budget is spent: tests run here, nothing is started
            now[0] = 1000.0 + t
            assert (await p.probe(spec, creds)).passed
            assert p.pids() == []
        assert p.restarts == 2 and p.restarts_refused == 2 and fallback.calls == 2
        now[0] = 1060.0  # the restart at 1000 has left the window
        assert (await p.probe(spec, creds)).passed
        assert len(p.pids()) == 1 and p.restarts == 3 and p.offloaded == 4
        assert fallback.calls == 2
    finally:
        await p.aclose()


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after ``timeout`` (waits on pidfds: no polling)."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    try:
        alive = dict(fds)
        while alive:
            ready, _, _ = select.select(list(alive), [], [], timeout)
            if not ready:
                break
            for fd in ready:
                alive.pop(fd)
        return sorted(alive.values())
    finally:
        for fd in fds:
            os.close(fd)


async def test_workers_end_with_the_pool(pool: tuple[ProbePool, Fallback]) -> None:
    p, _ = pool
    pids = p.pids()
    assert len(pids) == 2
    await p.aclose()
    assert _wait_gone(pids, 10) == []


PARENT = """
import asyncio, os, signal, sys
from reconciler.probe.egress import EgressPolicy
from reconciler.runtimes.probepool import ProbePool

async def main():
    pool = ProbePool(2, policy=EgressPolicy(), fallback=None)
    await pool.start()
    print(" ".join(str(p) for p in pool.pids()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_no_worker_outlives_a_killed_parent(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2
    assert _wait_gone(pids, 20) == []


def test_apply_with_probe_workers(e2e: Env) -> None:
    docs = [e2e.smtp(f"r{i}", selected=i == 0) for i in range(6)]
    docs.append(e2e.smtp("bad", user="nobody@example.test"))
    code, out = e2e.cli("apply", "-f", str(e2e.write("fleet.yaml", *docs)),
                        "--probe-workers", "2")
    assert code == 1  # "bad" was created and is not Ready
    for i in range(6):
        assert cond(e2e.status(f"r{i}"), "Ready")["status"] == "True"
    assert cond(e2e.status("bad"), "Ready")["reason"] == "AuthenticationFailed"
    assert "AuthenticationFailed" in out
    code, out = e2e.cli("apply", "-f", str(e2e.root / "fleet.yaml"), "--probe-workers", "x")
    assert code == 2 and "--probe-workers" in out


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_kill_9_during_an_apply_with_probe_workers(e2e: Env) -> None:
    """The crash test of tests/test_crash.py with worker processes: the store keeps its
    invariants and no worker survives its apply."""
    import random
    import time

    from tests.test_crash import _check_store

    rng = random.Random(3)
    n = 40

    def fleet(broken: set[int]) -> Path:
        docs = [e2e.smtp(f"r{i:03d}", selected=i % 7 == 0,
                         user="nobody@example.test" if i in broken else USER)
                for i in range(n)]
        return e2e.write("fleet.yaml", *docs)

    def apply(path: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", "apply", "-f", str(path), "--state",
             str(e2e.state), "--concurrency", "8", "--per-host", "8", "--probe-workers", "2",
             "--lock-timeout", "20"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONWARNINGS="ignore"))

    t0 = time.monotonic()
    assert apply(fleet(set(range(0, n, 5)))).wait(timeout=120) == 1  # broken ones: exit 1
    span = max(1.0, time.monotonic() - t0)
    _check_store(e2e.state)
    killed = 0
    for i in range(8):  # 4 rounds, and up to 4 more while none was interrupted
        if i >= 4 and killed:
            break
        proc = apply(fleet({j for j in range(n) if rng.random() < 0.2}))
        started = time.monotonic()
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.0) * span)
            # It finished before the kill: the first apply was slowed by the shared
            # machine's load. Aim the next kills within what an apply takes now.
            span = max(0.3, time.monotonic() - started)
        except subprocess.TimeoutExpired:
            workers = _children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            killed += 1
            assert _wait_gone(workers, 20) == [], "a probe worker outlived its apply"
        _check_store(e2e.state)
        if i % 2 == 1:  # a rotated password: every relay is tested again
            new = canary.canary(f"rot{i}")
            e2e.relay.users[USER] = new
            os.environ["SMTP_PW"] = new
    assert killed >= 1, "no apply was interrupted: the loop tested nothing"
    assert apply(fleet(set())).wait(timeout=120) == 0
    _check_store(e2e.state)


class _Counted(Prestarted):
    """A Prestarted that remembers its processes' ids (they are handed over later)."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.pids = [p.pid for p in self._procs]


def _count_workers(monkeypatch: pytest.MonkeyPatch) -> tuple[list[object], list[_Counted]]:
    """Workers started when needed (asyncio) and ahead (Prestarted), as they start."""
    spawned: list[object] = []
    ahead: list[_Counted] = []
    real_exec = asyncio.create_subprocess_exec

    async def counting(*args: object, **kw: object) -> object:
        spawned.append(args)
        return await real_exec(*args, **kw)  # type: ignore[arg-type]

    class Counted(_Counted):
        def __init__(self, count: int) -> None:
            super().__init__(count)
            ahead.append(self)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", counting)
    monkeypatch.setattr(probepool, "Prestarted", Counted)
    return spawned, ahead


def test_an_apply_that_tests_nothing_starts_no_worker(e2e: Env,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: the pool started its workers when the world was built, so an unchanged
    re-apply paid ~0.3 s of CPU for processes it never used.  Failed before: 2 started."""
    spawned, ahead = _count_workers(monkeypatch)
    fleet = e2e.write("fleet.yaml", *(e2e.smtp(f"r{i}", selected=i == 0) for i in range(3)))
    code, _ = e2e.cli("apply", "-f", str(fleet), "--probe-workers", "2")
    # tests ran: the workers were started for them, ahead (the input was new)
    assert code == 0 and spawned == [] and [len(a.pids) for a in ahead] == [2]
    ahead.clear()
    code, out = e2e.cli("apply", "-f", str(fleet), "--probe-workers", "2")
    assert code == 0 and spawned == [] and ahead == [], out  # unchanged: no worker


def test_workers_started_ahead_are_the_ones_that_test(e2e: Env,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: a first apply's workers start while it parses its input (they took
    ~0.4 s from the first test to the first verdict); they are the workers that test."""
    spawned, ahead = _count_workers(monkeypatch)
    fleet = e2e.write("fleet.yaml", *(e2e.smtp(f"r{i}", selected=i == 0) for i in range(4)))
    tested: list[list[int]] = []
    real_aclose = ProbePool.aclose

    async def aclose(self: ProbePool) -> None:
        tested.append(sorted(self.pids()))
        assert self.offloaded == 4
        await real_aclose(self)

    monkeypatch.setattr(ProbePool, "aclose", aclose)
    code, out = e2e.cli("apply", "-f", str(fleet), "--probe-workers", "2")
    assert code == 0, out
    assert spawned == [] and tested == [sorted(ahead[0].pids)]
    assert _wait_gone(ahead[0].pids, 20) == []


def test_workers_started_ahead_for_an_input_that_fails_end(e2e: Env,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Started ahead, then not needed: an input with an error, or fewer resources than
    ``auto`` starts workers for, or a store another apply holds: none outlives its apply."""
    _, ahead = _count_workers(monkeypatch)
    bad = e2e.write("bad.yaml", e2e.smtp("r0"), e2e.smtp("r0"))  # defined twice
    code, out = e2e.cli("apply", "-f", str(bad), "--probe-workers", "2")
    assert code != 0 and "defined more than once" in out
    # 'auto' guesses from the input's `kind` keys: 300 of them in comments, 1 resource
    tricky = e2e.write("tricky.yaml", e2e.smtp("r1"))
    tricky.write_text("".join(f"# kind: {i}\n" for i in range(300)) + tricky.read_text())
    code, out = e2e.cli("apply", "-f", str(tricky), "--probe-workers", "auto")
    assert code == 0, out
    from reconciler.runtimes.probepool import default_workers

    assert [len(a.pids) for a in ahead] == [2, default_workers()] if default_workers() else [2]
    for a in ahead:
        assert _wait_gone(a.pids, 20) == []
        assert len(a) == 0


async def test_a_pool_adopts_what_it_needs_and_closes_the_rest(e2e: Env) -> None:
    os.environ["SMTP_PW"] = canary.PASSWORD  # the env: source, as in an apply
    ahead = Prestarted(3)
    pids = [p.pid for p in ahead._procs]
    pool = ProbePool(2, policy=EgressPolicy(), fallback=Fallback(),
                     prestarted=ahead.take(2))
    assert len(ahead) == 1
    try:
        verdicts = await asyncio.gather(*(pool.probe(_spec(e2e.relay.port), _creds(e2e))
                                          for _ in range(4)))
        assert all(v.passed for v in verdicts) and pool.offloaded == 4
        assert sorted(pool.pids()) == sorted(pids[:2])
        for pid in pids:  # started ahead, with the same reduced environment
            data = _cmdline_and_environ(pid)
            assert canary.PASSWORD.encode() not in data and b"SMTP_PW" not in data
    finally:
        await pool.aclose()
        ahead.close()
    assert _wait_gone(pids, 20) == []


async def test_a_pool_that_never_tests_closes_the_workers_it_was_given() -> None:
    ahead = Prestarted(2)
    pids = [p.pid for p in ahead._procs]
    pool = ProbePool(1, policy=EgressPolicy(), fallback=Fallback(), prestarted=ahead.take(2))
    await pool.aclose()
    assert _wait_gone(pids, 20) == []


async def test_a_dead_prestarted_worker_is_replaced(e2e: Env) -> None:
    ahead = Prestarted(1)
    [proc] = ahead.take(1)
    proc.kill()
    proc.wait()
    pool = ProbePool(1, policy=EgressPolicy(), fallback=Fallback(), prestarted=[proc])
    try:
        v = await pool.probe(_spec(e2e.relay.port), _creds(e2e))
        assert v.passed
        v = await pool.probe(_spec(e2e.relay.port), _creds(e2e))
        assert v.passed and pool.offloaded >= 1 and proc.pid not in pool.pids()
    finally:
        await pool.aclose()


def test_a_worker_closed_before_any_work_exits_quietly() -> None:
    """A worker started ahead and then not needed gets its pipe closed before the first
    message.  Failed before: it exited 1 with a traceback (IncompleteReadError) on the
    user's terminal."""
    proc = subprocess.run([sys.executable, "-P", "-c", probepool._WORKER_CODE],
                          input=b"", capture_output=True, timeout=60,
                          env=probepool.worker_environment(), check=False)
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, b"", b"")


CTRL_C_PARENT = """
import sys
from reconciler.runtimes.probepool import Prestarted

warm = Prestarted(1)
try:
    print(warm._procs[0].pid, flush=True)  # the test sends Ctrl-C once it reads this
    sys.stdin.read()
except KeyboardInterrupt:
    pass
warm.close()
print("closed", flush=True)
"""


def test_ctrl_c_while_a_worker_starts_prints_nothing_from_it(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's foreground process group) while a worker started
    ahead is still importing.  Failed before: the worker, in the apply's process group,
    printed a KeyboardInterrupt traceback (and exited 1)."""
    script = tmp_path / "parent.py"
    script.write_text(CTRL_C_PARENT)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=dict(os.environ))
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    assert os.getpgid(worker) == worker != os.getpgid(proc.pid)  # a group of its own
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == b"closed", err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err
    assert _wait_gone([worker], 20) == []


def test_messages_split_anywhere_between_reads_come_out_whole_and_in_order() -> None:
    """The pipe is read in chunks that end anywhere (inside a header, inside a message, or
    after several messages): every message comes out once, whole, in order; a header that
    announces more than MAX_MESSAGE is refused."""
    msgs = [(i, {"host": "h" * i, "port": i}, None if i % 2 else "x" * 300, "pem")
            for i in range(7)]
    stream = b"".join(probepool._frame(m) for m in msgs)
    for step in (1, 2, 3, 5, 17, 64, len(stream)):
        buf, got = bytearray(), []
        for at in range(0, len(stream), step):
            buf += stream[at:at + step]
            got += probepool._split(buf)
        assert got == msgs, step
        assert buf == bytearray()
    with pytest.raises(ValueError):
        probepool._split(bytearray(probepool._HEADER.pack(probepool.MAX_MESSAGE + 1)))


@pytest.mark.parametrize("error", [
    ValueError("unexpected kwargs: process_group"),  # uvloop's answer to process_group=
    NotImplementedError(),  # an event loop without subprocess support
    OSError(24, "Too many open files"),
], ids=lambda e: type(e).__name__)
async def test_workers_that_cannot_start_leave_the_tests_to_this_process(
        e2e: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        error: Exception) -> None:
    """A pool whose workers cannot be spawned runs every test in this process.  Failed
    before for ValueError and NotImplementedError: only OSError was caught, the failed
    start was kept and re-raised by every later test, so each relay was reported as failed
    without being tested."""
    async def refuse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(asyncio, "create_subprocess_exec", refuse)
    fallback = Fallback()
    pool = ProbePool(2, policy=EgressPolicy(), fallback=fallback)
    try:
        verdicts = [await pool.probe(_spec(e2e.relay.port), _creds(e2e)) for _ in range(3)]
    finally:
        await pool.aclose()
    assert [v.passed for v in verdicts] == [True, True, True]
    assert fallback.calls == 3 and pool.offloaded == 0 and pool.pids() == []
    assert f"probe workers could not start ({type(error).__name__})" in caplog.text
