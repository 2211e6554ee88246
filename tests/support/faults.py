"""A fault-injecting SMTP server for the probe tests (real sockets on loopback).

It speaks just enough SMTP to get a client to the point of the fault, and records every
byte it received *before* TLS (``Connection.plaintext``), so a test can assert that no
AUTH was ever sent in the clear.  Behaviours:

``ok``                 a well-behaved minimal server (combine with ``replies``/``extensions``)
``no_banner``          accept, never greet
``banner_close``       greet, then close
``busy``               ``421`` at the greeting
``garbage``            an HTTP reply instead of a greeting
``endless``            a multi-line greeting that never ends (bounded by ``limit`` bytes)
``huge_line``          a 1 MB greeting line
``drip``               the greeting one byte per second (bounded by its length)
``starttls_refused``   advertise STARTTLS, answer ``454`` to it
``no_starttls``        do not advertise STARTTLS (a downgrade), offer AUTH in the clear
``disconnect_after_auth``  close the connection when AUTH arrives

``close_after`` hangs up right after the reply to those verbs; ``delay`` makes the
command loop answer every command that many seconds late (a slow but live server: the
deadline case).

``tls="implicit"`` wraps the listener in TLS; ``tls_cert`` chooses the certificate
(the expired / wrong-host / self-signed cases).  ``replies`` overrides the reply to a
command verb (``{"AUTH": "535 5.7.139 ..."}``) for the provider-hint cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

BANNER = b"220 faults.test ESMTP fault server\r\n"


@dataclass
class Connection:
    plaintext: bytearray = field(default_factory=bytearray)
    tls: bool = False
    bytes_sent: int = 0
    commands: list[str] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)  # set when it ended


class FaultServer:
    def __init__(self, behaviour: str = "ok", *, tls: str = "none",
                 server_context: ssl.SSLContext | None = None,
                 replies: dict[str, str] | None = None,
                 extensions: tuple[str, ...] = ("PIPELINING", "AUTH PLAIN LOGIN"),
                 limit: int = 4_000_000, delay: float = 0.0,
                 close_after: tuple[str, ...] = ()) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.server_context = server_context
        self.replies = replies or {}
        self.extensions = extensions
        self.limit = limit
        self.delay = delay  # seconds before every reply of the command loop ("slow")
        self.close_after = close_after  # verbs after whose (overridden) reply we hang up
        self.port = 0
        self.connections: list[Connection] = []
        self.accepted = threading.Event()  # set when the first connection is accepted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    # --- lifecycle (same shape as RelayServer) ---
    def start(self) -> FaultServer:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            ssl_ctx = self.server_context if self.tls == "implicit" else None
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_ctx, limit=65536))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in self._writers:
                w.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def all_plaintext(self) -> bytes:
        return b"".join(bytes(c.plaintext) for c in self.connections)

    # --- the dialogue ---
    async def _send(self, conn: Connection, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        conn.bytes_sent += len(data)
        await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(tls=self.tls == "implicit")
        self.connections.append(conn)
        self._writers.append(writer)
        self.accepted.set()
        try:
            await self._dialogue(conn, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            conn.closed.set()

    async def _dialogue(self, conn: Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        b = self.behaviour
        if b == "no_banner":
            while await reader.read(4096):
                pass
            return
        if b == "banner_close":
            await self._send(conn, writer, BANNER)
            return
        if b == "busy":
            await self._send(conn, writer, b"421 4.3.2 Service not available, try later\r\n")
            return
        if b == "garbage":
            await self._send(conn, writer, b"HTTP/1.1 400 Bad Request\r\n\r\n")
            return
        if b == "endless":
            line = b"220-" + b"x" * 70 + b"\r\n"
            while conn.bytes_sent < self.limit:
                await self._send(conn, writer, line)
            return
        if b == "huge_line":
            await self._send(conn, writer, b"220 " + b"x" * 1_000_000 + b"\r\n")
            await reader.read(1)
            return
        if b == "drip":
            for i in range(len(BANNER)):
                await self._send(conn, writer, BANNER[i:i + 1])
                await asyncio.sleep(1.0)
            await reader.read(1)
            return
        await self._send(conn, writer, BANNER)
        await self._commands(conn, reader, writer)

    async def _commands(self, conn: Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        for _ in range(100):
            line = await reader.readline()
            if not line:
                return
            if not conn.tls:
                conn.plaintext.extend(line)
            text = line.decode("utf-8", "replace").strip()
            verb = text.split(" ", 1)[0].upper()
            conn.commands.append(verb)
            if self.delay:
                await asyncio.sleep(self.delay)
            if verb in self.replies:
                reply = self.replies[verb].replace("{line}", text)
                await self._send(conn, writer, reply.encode() + b"\r\n")
                if reply.startswith("221") or verb in self.close_after:
                    return
                continue
            if verb in ("EHLO", "HELO"):
                exts = list(self.extensions)
                if (not conn.tls and self.behaviour in ("starttls_refused", "ok")
                        and self.server_context is not None):
                    exts.insert(0, "STARTTLS")
                if self.behaviour == "starttls_refused":
                    exts.insert(0, "STARTTLS")
                lines = ["faults.test", *dict.fromkeys(exts)]
                out = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n"
                await self._send(conn, writer, out.encode())
            elif verb == "STARTTLS":
                if self.behaviour == "starttls_refused" or self.server_context is None:
                    await self._send(conn, writer, b"454 4.7.0 TLS not available\r\n")
                    continue
                await self._send(conn, writer, b"220 2.0.0 Ready to start TLS\r\n")
                await writer.start_tls(self.server_context)
                conn.tls = True
            elif verb == "AUTH":
                if self.behaviour == "disconnect_after_auth":
                    return
                await self._send(conn, writer, b"235 2.7.0 Authentication successful\r\n")
            elif verb == "QUIT":
                await self._send(conn, writer, b"221 2.0.0 Bye\r\n")
                return
            else:
                await self._send(conn, writer, b"250 2.0.0 OK\r\n")


def server_context(cert: Any) -> ssl.SSLContext:
    """A server-side context for a trustme LeafCert (or a CA used as a self-signed leaf)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


def self_signed_context(ca: Any) -> ssl.SSLContext:
    """Serve a trustme CA's own (self-signed) certificate as if it were a leaf."""
    import tempfile
    from pathlib import Path

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:
        cert = Path(tmp, "cert.pem")
        key = Path(tmp, "key.pem")
        cert.write_bytes(ca.cert_pem.bytes())
        key.write_bytes(ca.private_key_pem.bytes())
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


@pytest.fixture
def fault() -> Iterator[type[FaultServer]]:
    """``fault(...)`` builds a started FaultServer, stopped at the end of the test."""
    started: list[FaultServer] = []

    class Started(FaultServer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.start()
            started.append(self)

    yield Started
    for s in started:
        s.stop()
