"""A TCP proxy on loopback that records what crosses it and can add network latency.

Two jobs, one tool:

* **A wire tap for tests**: every byte the client sent (``client_bytes``) and the server
  sent (``server_bytes``) per connection, so a test can assert what really went over the
  socket - e.g. that no ``AUTH`` command reached a plaintext listener - rather than
  trusting the client's own transcript.
* **Injected latency for ``bench/probe.py``**: ``delay`` seconds added to each direction
  (one way), so RTT = 2 x delay.  The upstream connection itself is delayed by ``delay``
  too, so the banner arrives one full RTT after ``connect()`` as on a real network (SYN
  out, banner back).  ``tc netem`` in a network namespace would be the other way; this
  machine's kernel has no ``sch_netem``, so the bench uses this proxy (docs say so).

Round trips are counted at the proxy: a *round trip* is one burst of server bytes that
follows client bytes (or the connection start) - the moments a client had to wait for
the server.  Pipelined commands therefore cost one round trip, as they should.

It runs its own event loop in a daemon thread so synchronous tests (swaks subprocesses)
and asyncio tests (the probe, on pytest's loop) can share it.  Loopback only, bounded:
``stop()`` closes the listener and every open connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeVar

_T = TypeVar("_T")
_CHUNK = 64 * 1024


@dataclass
class Connection:
    """What one proxied connection carried."""

    client_bytes: bytearray = field(default_factory=bytearray)
    server_bytes: bytearray = field(default_factory=bytearray)
    round_trips: int = 0
    closed: bool = False
    opened_at: float = field(default_factory=time.monotonic)  # accepted by the proxy
    client_closed_at: float | None = None  # the client's EOF reached the proxy
    closed_at: float | None = None  # both directions finished

    @property
    def seconds(self) -> float:
        """How long the client was busy, as seen on the wire: connect to its close.

        Ends at the client's EOF, not when the proxy has finished delivering it (that
        adds up to one more delayed trip the client never waits for).
        """
        end = self.client_closed_at or self.closed_at or time.monotonic()
        return end - self.opened_at
    _last: Literal["c", "s", ""] = ""

    @property
    def cleartext_client_bytes(self) -> bytes:
        """What the client sent before its bytes became TLS records.

        Implicit TLS (first byte a TLS handshake record): nothing.  STARTTLS: everything
        up to the first TLS record after the ``STARTTLS`` command (a refused STARTTLS
        leaves the rest in the clear too).  Otherwise: all of it.
        """
        sent = bytes(self.client_bytes)
        if sent[:1] == b"\x16":
            return b""
        at = sent.upper().find(b"STARTTLS\r\n")
        if at < 0:
            return sent
        tls = sent.find(b"\x16\x03", at)
        return sent if tls < 0 else sent[:tls]

    def sent_auth_in_cleartext(self) -> bool:
        return any(line.upper().startswith(b"AUTH ")
                   for line in self.cleartext_client_bytes.split(b"\r\n"))

    def observe(self, direction: Literal["c", "s"], data: bytes) -> None:
        if direction == "c":
            self.client_bytes += data
        else:
            self.server_bytes += data
            if self._last != "s":
                self.round_trips += 1
        self._last = direction


class TcpProxy:
    """``127.0.0.1:port`` -> ``target``, with a tap and an optional one-way delay."""

    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.connections: list[Connection] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.down = False

    # --- lifecycle (called from any thread) ---
    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(_close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, coro: Awaitable[_T], timeout: float = 10.0) -> _T:
        async def _wrap() -> _T:
            return await coro

        return asyncio.run_coroutine_threadsafe(_wrap(), self._loop).result(timeout)

    def set_down(self, down: bool) -> None:
        """Simulate an outage: while down, new connections are closed at once and the
        open ones are cut (a crashed or partitioned server)."""
        self.down = down
        if down:
            async def _cut() -> None:
                for task in list(self._tasks):
                    task.cancel()

            self._call(_cut())

    def reset(self) -> None:
        """Forget recorded connections (between benchmark repetitions)."""
        self.connections = []

    def wait_closed(self, count: int = 1, timeout: float = 5.0) -> list[Connection]:
        """Block until ``count`` connections have finished (bounded), then return them.

        From a coroutine use :meth:`closed`: blocking the caller's event loop would keep
        the client's own transport from closing.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [c for c in self.connections if c.closed]
            if len(done) >= count:
                return done
            time.sleep(0.01)
        return [c for c in self.connections if c.closed]

    async def closed(self, count: int = 1, timeout: float = 5.0) -> list[Connection]:
        """:meth:`wait_closed` for async callers: yields so their transports can close."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [c for c in self.connections if c.closed]
            if len(done) >= count:
                return done
            await asyncio.sleep(0.01)
        return [c for c in self.connections if c.closed]

    # --- the proxy (runs on the proxy thread) ---
    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection()
        self.connections.append(conn)
        if self.down:
            c_writer.close()
            conn.closed = True
            self._tasks.discard(task)
            return
        try:
            if self.delay:
                await asyncio.sleep(self.delay)  # the SYN's one-way trip
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            conn.closed = True
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                self._pump(c_reader, s_writer, "c", conn),
                self._pump(s_reader, c_writer, "s", conn),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (c_writer, s_writer):
                w.close()
            conn.closed_at = time.monotonic()
            conn.closed = True
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: Literal["c", "s"], conn: Connection) -> None:
        """Copy one direction; each chunk is delivered ``delay`` after it was read."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK)
                if data:
                    conn.observe(direction, data)
                elif direction == "c":
                    conn.client_closed_at = time.monotonic()
                await queue.put((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

