"""Connection tests in worker processes: the other CPU cores for a large apply.

One ``apply`` runs the engine, the store and every connection test on one event loop,
so it uses one core however many the machine has; the connection test (TLS handshake,
the SMTP dialogue) is most of that work.  A :class:`ProbePool` runs the tests of
password (and unauthenticated) relays in worker processes instead, while this process
keeps the engine, the store, selection and everything that writes; so a fleet is
limited by the relays (or by all the machine's cores), not by one core.

What crosses to a worker, over a pipe between this process and its own child (memory,
never a file): the spec (its wire form, a plain dict: pickling the pydantic model cost this
process three times as much; the worker builds the model again), the resolved password
and the CA bundle of one test - each distinct CA bundle once per worker, then its SHA-256
digest (a fleet shares a few bundles; a bundle can be a 200 KB public-CA file).  Both
sides keep the same bounded list of the bundles the worker holds (the
:data:`MAX_BUNDLES` most recently used, in the order of the pipe's messages), so the
parent always knows whether to send the PEM or the digest; a replacement worker starts
with none and gets each again.  What comes back: the verdict.  A passed test's
transcript is not sent back (``apply`` keeps only failures' transcripts; redacting a
transcript is most of a test's CPU); a failed test's is redacted in the worker, which
knows the secrets it was given.

Not sent to a worker (tested in this process, as without a pool): OAuth 2.0 relays (the
token is refreshed by this process's token manager when a server rejects it) and a test
that sends a message.  A worker that dies fails nothing: its tests in flight and every
later test run here, and the pool stays closed.  A worker exits when its pipe closes,
so none outlives the apply, even one killed with ``kill -9``.

Workers are started with the interpreter and module search path of this process
(``sys.executable``, ``PYTHONPATH`` = this ``sys.path``) and ``-P`` (the current directory
is not searched: a checkout under test cannot substitute modules), and only the part of
the environment Python, OpenSSL and the locale use (:func:`worker_environment`): an
``env:`` password is an environment variable of this process, never of a worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import pickle
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.probe.egress import EgressPolicy
from reconciler.probe.verdict import ProbeCredentials, TranscriptLine, Verdict
from reconciler.secret import Secret

if TYPE_CHECKING:
    # Not imported at run time here: the models load pydantic, and `apply` starts its
    # workers (Prestarted) before it has loaded them; the worker imports them itself.
    from reconciler.resources import ExternalSmtpSpec

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 16 * 1024 * 1024  # a verdict is bounded far below this (transcript caps)
_READ_CHUNK = 256 * 1024  # bytes per read of a pipe (a message may span several reads)

MAX_BUNDLES = 64  # CA bundles a worker keeps by digest (least recently used forgotten)

# The fields of a Verdict that travel as they are (the transcript is handled apart).
_FIELDS = ("passed", "stage", "reason", "message", "action", "retryable",
           "duration_seconds", "warnings", "stage_seconds", "details", "token_rejected")


def default_workers() -> int:
    """One worker per CPU beyond the first (this process keeps one busy), at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


# What a worker inherits of the environment: what Python, OpenSSL and the locale need.
# Not the rest: an ``env:`` reference makes a password an environment variable, and a
# worker gets the one secret each test needs over its pipe, nothing else.
_ENV_KEEP = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                       "SSL_CERT_FILE", "SSL_CERT_DIR", "LD_LIBRARY_PATH"})
_ENV_KEEP_PREFIXES = ("LC_", "OPENSSL_", "PYTHON")


def worker_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # this process's modules
    return env


# --- framing (both sides) --------------------------------------------------------------------


async def _read_message(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(_HEADER.size)
    (size,) = _HEADER.unpack(head)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes")
    return pickle.loads(await reader.readexactly(size))  # noqa: S301 - our own child/parent


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _split(buf: bytearray) -> list[Any]:
    """The complete messages at the start of ``buf`` (removed from it); an incomplete
    last one stays for the next read."""
    out: list[Any] = []
    at, end = 0, len(buf)
    view = memoryview(buf)
    try:
        while end - at >= _HEADER.size:
            (size,) = _HEADER.unpack_from(view, at)
            if size > MAX_MESSAGE:
                raise ValueError(f"message of {size} bytes")
            if end - at - _HEADER.size < size:
                break
            at += _HEADER.size
            out.append(pickle.loads(view[at:at + size]))  # noqa: S301 - our own child
            at += size
    finally:
        view.release()
    del buf[:at]
    return out


# --- the worker process ----------------------------------------------------------------------


def worker_main() -> None:
    """Entry point of a worker process (stdin: requests, stdout: replies)."""
    import signal

    # A SIGINT sent to this process alone: the parent handles Ctrl-C and closes our pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol gets the pipes; anything printed goes to stderr, never into a reply.
    requests, replies = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    asyncio.run(_serve(requests, replies))
    # The parent closed the pipe: nothing is left to say.  Exit now rather than tearing the
    # interpreter down (~25 ms, which the parent waits for at the end of every apply);
    # except under coverage (the test suite), which saves its data at exit.
    if "coverage" not in sys.modules:
        sys.stderr.flush()
        os._exit(0)


async def _serve(requests: int, replies: int) -> None:
    # The test's own modules (aiosmtplib, tenacity, the session) too: ``run_probe`` imports
    # them at its first call, which in a worker was its first test, after the parent had
    # sent it; imported now, while the parent still validates its input.
    import reconciler.probe.runner  # noqa: F401 - see above
    from reconciler.gctune import tune_gc
    from reconciler.probe import run_probe
    from reconciler.resources import ExternalSmtpSpec

    # Its heap is the modules just imported, its garbage almost all acyclic (as smtpctl's
    # own process): ~2 % of a test's CPU (0.05 ms of ~2.3 ms).
    tune_gc()

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_MESSAGE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(requests, "rb", buffering=0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(replies, "wb", buffering=0))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        policy: EgressPolicy = await _read_message(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        return  # closed before any work (started ahead, then not needed): exit quietly
    tasks: set[asyncio.Task[None]] = set()
    # The CA bundles this worker holds, by digest: the parent's _Worker.bundles mirrors
    # it (same insertions, uses and evictions, in the order of the pipe's messages).
    bundles: collections.OrderedDict[str, str] = collections.OrderedDict()

    async def one(rid: int, wire: dict[str, Any], password: str | None,
                  ca_pem: str | None) -> None:
        creds = ProbeCredentials(password=Secret(password) if password is not None else None,
                                 ca_bundle_pem=ca_pem)
        try:
            spec = ExternalSmtpSpec.model_validate(wire)
            v = await run_probe(spec, creds, policy=policy)
            reply: Any = (rid, {k: getattr(v, k) for k in _FIELDS},
                          None if v.passed else [(t.direction, t.line, t.elapsed_seconds)
                                                 for t in v.transcript])
        except Exception as exc:  # noqa: BLE001 - run_probe never raises; if it did: say so
            reply = (rid, None, f"{type(exc).__name__}")
        writer.write(_frame(reply))
        await writer.drain()

    buf = bytearray()
    while True:
        try:
            chunk = await reader.read(_READ_CHUNK)
        except ConnectionError:
            break
        if not chunk:
            break  # the parent closed the pipe (or is gone): no new work
        buf += chunk
        for rid, wire, password, ca in _split(buf):  # in the pipe's order (bundles)
            try:
                ca_pem = _bundle_received(bundles, ca)
            except KeyError:  # a digest this worker does not hold: a protocol bug; say so
                writer.write(_frame((rid, None, "UnknownCaBundle")))
                await writer.drain()
                continue
            task = asyncio.create_task(one(rid, wire, password, ca_pem))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    for task in list(tasks):
        task.cancel()
    with contextlib.suppress(Exception):
        transport.close()


def _bundle_received(bundles: collections.OrderedDict[str, str],
                     ca: str | tuple[str, str] | None) -> str | None:
    """The CA bundle of a request: ``None``, ``(digest, pem)`` (new to this worker: kept)
    or ``digest`` (one it holds; ``KeyError`` if not)."""
    if ca is None:
        return None
    digest, pem = ca if isinstance(ca, tuple) else (ca, bundles[ca])
    _hold(bundles, digest, pem)
    return pem


_V = TypeVar("_V")


def _hold(held: collections.OrderedDict[str, _V], digest: str, value: _V) -> None:
    """``digest`` becomes the most recently used of ``held`` (added with ``value`` when
    new; past :data:`MAX_BUNDLES`, the least recently used is forgotten).  The worker's
    bundles and the parent's record of them both change only through this, in the pipe's
    order, so they stay in step."""
    if digest in held:
        held.move_to_end(digest)
        return
    held[digest] = value
    if len(held) > MAX_BUNDLES:
        held.popitem(last=False)


# --- this process ------------------------------------------------------------------------------


_WORKER_CODE = "from reconciler.runtimes.probepool import worker_main; worker_main()"
# Workers run in a session, and so a process group, of their own
# (``start_new_session=True``, the one spawn option asyncio's, uvloop's and Popen's
# spawns all take; uvloop rejects ``process_group``): Ctrl-C at a terminal
# signals its foreground group, the apply, which closes their pipes (they exit then).  In
# the apply's group, a Ctrl-C while a worker was still importing (the first ~0.2 s; with
# workers started ahead, while the input is parsed) printed its KeyboardInterrupt traceback.


def _worker_argv() -> list[str]:
    """The command of a worker process (spawned by the pool, or started ahead)."""
    return [sys.executable, "-P", "-c", _WORKER_CODE]


class Prestarted:
    """Worker processes started before the event loop runs, for a :class:`ProbePool` to
    adopt at its first test.

    A worker needs ~0.2 s to start Python and import the probe.  Started when the pool
    needs it (at the first test), that time is spent with nothing tested; ``apply``
    starts them while it parses its input instead (on another core), when the input
    changed since the last apply and is large enough for workers (``docs/cli.md``).
    Processes the pool does not take are closed by :meth:`close` (their pipe closes; they
    exit), which the owner calls in any case when done.
    """

    def __init__(self, count: int) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        env = worker_environment()
        try:
            for _ in range(count):
                self._procs.append(subprocess.Popen(
                    _worker_argv(), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, env=env, bufsize=0, start_new_session=True))
        except OSError as exc:
            log.warning("probe workers could not start ahead (%s): started when needed",
                        type(exc).__name__)

    def __len__(self) -> int:
        return len(self._procs)

    def take(self, count: int) -> list[subprocess.Popen[bytes]]:
        """Hand over up to ``count`` processes (the caller owns them then)."""
        taken, self._procs = self._procs[:count], self._procs[count:]
        return taken

    def close(self) -> None:
        """Close the processes not taken: their pipes close, they exit, they are reaped."""
        procs, self._procs = self._procs, []
        self._close_all(procs)

    @staticmethod
    def _close_all(procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class _Adopted:
    """A prestarted worker (``subprocess.Popen``) with the interface the pool uses of an
    ``asyncio.subprocess.Process``: ``pid``, ``returncode``, ``wait()``, ``kill()``."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    async def wait(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self._popen.wait)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._popen.kill()

    def reap(self) -> None:
        self._popen.wait()


async def _close_popens(procs: list[subprocess.Popen[bytes]]) -> None:
    """:meth:`Prestarted.close` for processes in this loop (waited for in a thread)."""
    if procs:
        await asyncio.get_running_loop().run_in_executor(None, Prestarted._close_all, procs)


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process | _Adopted
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[Verdict]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None
    ended: bool = False  # its pipe closed: it takes no more tests (it may not be reaped yet)
    # Digests of the CA bundles the worker holds (see _bundle_received), oldest first.
    bundles: collections.OrderedDict[str, None] = field(
        default_factory=collections.OrderedDict)

    def sent_bundle(self, digest: str) -> None:
        """Note that a request naming (or carrying) this bundle was written: the worker
        holds it from then on, as its most recently used."""
        _hold(self.bundles, digest, None)


RESTART_WINDOW = 60.0  # seconds
MIN_RESTARTS = 4  # replacement workers per window: this, or the pool's size if larger


class ProbePool:
    """Runs ``run_probe`` in worker processes; see the module docstring.

    Use it as the world's probe function (``await pool.probe(spec, creds)``) and
    ``await pool.aclose()`` at the end.  The first ``probe`` launches the workers (an
    apply that tests nothing, an unchanged re-apply, starts none); ``start()`` does it
    ahead of time.  ``prestarted``: processes started before the event loop
    (:class:`Prestarted`), adopted then instead of spawning new ones; the pool closes
    them if it never starts.  A test sent before a worker has imported the probe waits
    in its pipe.

    A worker that ends (OOM-killed, ``kill -9``, a crash) is replaced at the next test
    that needs a worker, at most ``max_restarts`` times in any ``restart_window``
    seconds (default: :data:`MIN_RESTARTS` or the pool's size if larger, per 60 s) so a
    worker that keeps dying cannot turn into a fork loop.  While that budget is spent,
    tests go to the workers still running, or run in this process if none is (one
    warning per episode; :attr:`restarts_refused` counts them); restarts resume once
    the oldest restart has left the window.  ``clock``: monotonic seconds (tests).
    """

    def __init__(self, workers: int, *, policy: EgressPolicy,
                 fallback: Callable[[ExternalSmtpSpec, ProbeCredentials], Any],
                 max_restarts: int | None = None, restart_window: float = RESTART_WINDOW,
                 clock: Callable[[], float] = time.monotonic,
                 prestarted: list[subprocess.Popen[bytes]] | None = None) -> None:
        self.size = workers
        # Started ahead (Prestarted.take): adopted at the first test, before any spawn.
        self._prestarted = list(prestarted or ())
        self.policy = policy
        self._fallback = fallback  # the in-process probe (OAuth, a dead pool)
        self._workers: list[_Worker] = []
        self._next_id = 0
        self._starting: asyncio.Task[None] | None = None
        self._replacing: asyncio.Task[None] | None = None
        self.max_restarts = max(MIN_RESTARTS, workers) if max_restarts is None else max_restarts
        self.restart_window = restart_window
        self._clock = clock
        self._restart_times: collections.deque[float] = collections.deque()
        self._refusing = False  # the budget is spent (logged once per episode)
        self.closed = False
        self.offloaded = 0  # tests run by the workers (a test reads this)
        self.restarts = 0  # replacement workers started
        self.restarts_refused = 0  # tests run here: no worker running, none could start
        self.lost = 0  # tests in flight on a worker that ended (run again here)
        self.bundles_sent = 0  # CA bundles sent in full (once per worker and bundle)
        self._digests: dict[str, str] = {}  # CA bundle PEM -> its SHA-256 (bounded)

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [w.proc.pid for w in self._live()]

    def _live(self) -> list[_Worker]:
        return [w for w in self._workers if not w.ended and w.proc.returncode is None]

    def _start_task(self) -> asyncio.Task[None]:
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())
        return self._starting

    async def start(self) -> None:
        """Launch the workers (once; every caller waits until they are launched)."""
        await asyncio.shield(self._start_task())

    async def _spawn(self, env: dict[str, str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            *_worker_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            start_new_session=True)  # a group of its own (see _WORKER_CODE)
        assert proc.stdin is not None and proc.stdout is not None
        self._add(_Worker(proc, proc.stdin), proc.stdout)

    def _add(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        w.writer.write(_frame(self.policy))
        w.reader_task = asyncio.create_task(self._replies(w, reader))
        self._workers.append(w)

    async def _adopt(self, popen: subprocess.Popen[bytes]) -> None:
        """Use a prestarted worker: its pipes as this loop's streams."""
        assert popen.stdin is not None and popen.stdout is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_MESSAGE)
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                         popen.stdout)
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, popen.stdin)
        except BaseException:
            await _close_popens([popen])
            raise
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self._add(_Worker(_Adopted(popen), writer), reader)

    async def _start(self) -> None:
        env = worker_environment()
        prestarted, self._prestarted = self._prestarted, []
        try:
            while prestarted and len(self._workers) < self.size:
                await self._adopt(prestarted.pop(0))
            await _close_popens(prestarted)  # more than asked for: not used
            prestarted = []
            for _ in range(self.size - len(self._workers)):
                await self._spawn(env)
        except Exception as exc:  # noqa: BLE001 - any failure to start: test in this process
            # Not only OSError: an event loop can refuse the spawn itself (uvloop rejected
            # ``process_group=`` with ValueError; a loop without subprocesses raises
            # NotImplementedError).  Left to propagate, the failed start was cached and
            # re-raised by every later test, each one reported as failed instead of run.
            log.warning("probe workers could not start (%s): testing in this process",
                        type(exc).__name__)
            await _close_popens(prestarted)
            await self._close_workers()

    def _restart_allowed(self) -> bool:
        """Take one restart from the budget (False: spent for now)."""
        now = self._clock()
        while self._restart_times and now - self._restart_times[0] >= self.restart_window:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.max_restarts:
            return False
        self._restart_times.append(now)
        return True

    async def _replace(self) -> None:
        """Start a worker for each one that ended, as far as the restart budget allows."""
        env = worker_environment()
        for _ in range(self.size - len(self._live())):
            if self.closed:
                return
            if not self._restart_allowed():
                if not self._refusing:
                    self._refusing = True
                    log.warning(
                        "probe workers ended %d times within %.0f s: not restarting them "
                        "for now; tests run in the workers left or in this process",
                        self.max_restarts, self.restart_window)
                return
            self._refusing = False
            try:
                await self._spawn(env)
            except Exception as exc:  # noqa: BLE001 - as at start: test in this process
                log.warning("a probe worker could not be restarted (%s)", type(exc).__name__)
                return
            self.restarts += 1
            log.warning("probe worker restarted (%d of at most %d per %.0f s)",
                        len(self._restart_times), self.max_restarts, self.restart_window)

    async def _replenish(self) -> None:
        """Replace ended workers (single flight: concurrent tests wait for one attempt)."""
        if self._replacing is None or self._replacing.done():
            if len(self._live()) >= self.size:
                return
            self._replacing = asyncio.get_running_loop().create_task(self._replace())
        await asyncio.shield(self._replacing)

    async def probe(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        if creds.token_provider is not None or self.closed:
            verdict: Verdict = await self._fallback(spec, creds)
            return verdict
        starting = self._starting
        if starting is None or not starting.done() or starting.cancelled() \
                or starting.exception() is not None:
            await self.start()
        live = self._live()
        if len(live) < self.size:  # one ended (or never started): replace it first
            await self._replenish()
            live = self._live()
        if not live:
            if not self.closed:
                self.restarts_refused += 1
            return await self._fallback(spec, creds)  # type: ignore[no-any-return]
        worker = min(live, key=lambda w: len(w.pending))
        rid = self._next_id
        self._next_id += 1
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        worker.pending[rid] = future
        password = creds.password.reveal() if creds.password is not None else None
        # The CA bundle: its digest alone when the worker holds it, else both.
        ca: str | tuple[str, str] | None = None
        digest = None
        if creds.ca_bundle_pem is not None:
            digest = self._digest(creds.ca_bundle_pem)
            ca = digest if digest in worker.bundles else (digest, creds.ca_bundle_pem)
        try:
            frame = _frame((rid, spec.model_dump(by_alias=True), password, ca))
            if digest is not None:  # nothing between here and the write: same order
                worker.sent_bundle(digest)
                self.bundles_sent += isinstance(ca, tuple)
            worker.writer.write(frame)
            await worker.writer.drain()
        except (ConnectionError, RuntimeError):
            worker.pending.pop(rid, None)
            worker.ended = True
            self.lost += 1
            return await self._fallback(spec, creds)  # type: ignore[no-any-return]
        del password
        try:
            verdict = await asyncio.shield(future)
            self.offloaded += 1
            return verdict
        except _WorkerLost:
            self.lost += 1
            return await self._fallback(spec, creds)  # type: ignore[no-any-return]
        finally:
            worker.pending.pop(rid, None)

    def _digest(self, pem: str) -> str:
        digest = self._digests.get(pem)
        if digest is None:
            if len(self._digests) >= 4 * MAX_BUNDLES:
                self._digests.clear()
            digest = self._digests[pem] = hashlib.sha256(pem.encode()).hexdigest()
        return digest

    async def _replies(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        # Every reply that has arrived is handled per wake-up (not one read per reply).
        buf = bytearray()
        try:
            while True:
                chunk = await reader.read(_READ_CHUNK)
                if not chunk:
                    break  # the worker closed its end: it ended
                buf += chunk
                for rid, fields, extra in _split(buf):
                    future = worker.pending.get(rid)
                    if future is None or future.done():
                        continue
                    if fields is None:  # the worker's probe raised (a bug): test it here
                        future.set_exception(_WorkerLost(str(extra)))
                        continue
                    transcript = tuple(TranscriptLine(d, line, at)
                                       for d, line, at in extra or ())
                    future.set_result(Verdict(**fields, transcript=transcript))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError,
                pickle.UnpicklingError, EOFError):
            pass
        except asyncio.CancelledError:
            raise
        finally:
            worker.ended = True
            for future in worker.pending.values():
                if not future.done():
                    future.set_exception(_WorkerLost("the worker process ended"))
            if not self.closed:
                log.warning("probe worker %d ended: its tests in flight run in this "
                            "process; it is replaced at the next test", worker.proc.pid)
                with contextlib.suppress(Exception):
                    worker.writer.close()
                # Forget it (the event loop's child watcher reaps the process; a
                # prestarted one is reaped by a thread of the loop's executor).
                if isinstance(worker.proc, _Adopted):
                    asyncio.get_running_loop().run_in_executor(None, worker.proc.reap)
                with contextlib.suppress(ValueError):
                    self._workers.remove(worker)

    async def aclose(self) -> None:
        """Stop the workers (their pipes close; each exits) and wait for them."""
        self.closed = True
        prestarted, self._prestarted = self._prestarted, []
        await _close_popens(prestarted)  # never needed: no test ran
        for task in (self._starting, self._replacing):
            if task is not None and not task.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
        await self._close_workers()

    async def _close_workers(self) -> None:
        self.closed = True
        workers, self._workers = self._workers, []
        for w in workers:
            with contextlib.suppress(Exception):
                w.writer.close()
        for w in workers:
            try:
                async with asyncio.timeout(5):
                    await w.proc.wait()
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()
            if w.reader_task is not None:
                w.reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w.reader_task


class _WorkerLost(Exception):
    """A worker ended (or failed) with this test in flight: it runs in this process."""
