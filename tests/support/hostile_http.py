"""Hostile HTTP endpoints on loopback: what a token endpoint named by a manifest may do.

A plain socket server in a daemon thread (no HTTP library on the server side: a hostile
peer does not follow one).  Each accepted connection reads the request (headers and a
Content-Length body, bounded) and then misbehaves as ``mode`` says:

* ``drip``      - a valid header, then the body one byte every ``interval`` seconds;
* ``flood``     - ``200``, no Content-Length, then ``flood_bytes`` bytes as fast as the
  socket takes them (close-delimited: the client cannot know the size in advance);
* ``flood-declared`` - the same with ``Content-Length: flood_bytes``;
* ``redirect``  - ``302`` to ``location``;
* ``echo``      - ``400`` with an OAuth error whose ``error_description`` is built by
  ``describe(request)`` (the request's raw bytes: form body and headers) - an endpoint
  that quotes what it received;
* ``raw``       - ``200`` with ``raw_body`` as it is (JSON a library would never write,
  such as ``"expires_in": 1e400``).

Counters a test asserts on: ``connections``, ``requests`` (raw request bytes each),
``bytes_sent`` per connection, and ``closed_early`` (the client hung up before the
server finished).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["drip", "flood", "flood-declared", "redirect", "echo", "raw"]


@dataclass
class HostileHttp:
    mode: Mode
    host: str = "127.0.0.1"
    interval: float = 0.2
    drip_body: bytes = b'{"access_token": "' + b"x" * 4000 + b'", "token_type": "Bearer"}'
    flood_bytes: int = 300 * 1024 * 1024
    location: str = ""
    describe: Callable[[bytes], str] = lambda raw: ""
    raw_body: bytes = b""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    bytes_sent: list[int] = field(default_factory=list)
    closed_early: int = 0
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    def __enter__(self) -> HostileHttp:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        t = threading.Thread(target=self._accept, daemon=True, name=f"hostile-{self.mode}")
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
                index = len(self.bytes_sent)
                self.bytes_sent.append(0)
            t = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            t.start()
            self._threads.append(t)

    def _read_request(self, conn: socket.socket) -> bytes:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = min(int(value.strip()), 65536)
        while len(body) < length:
            chunk = conn.recv(4096)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _send(self, conn: socket.socket, index: int, data: bytes) -> bool:
        try:
            conn.sendall(data)
        except OSError:
            with self._lock:
                self.closed_early += 1
            return False
        with self._lock:
            self.bytes_sent[index] += len(data)
        return True

    def _serve(self, conn: socket.socket, index: int) -> None:
        with conn:
            try:
                raw = self._read_request(conn)
            except OSError:
                return
            with self._lock:
                self.requests.append(raw)
            conn.settimeout(30)
            if self.mode == "drip":
                head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(self.drip_body))
                if not self._send(conn, index, head):
                    return
                for i in range(len(self.drip_body)):
                    if self._stop.wait(self.interval):
                        return
                    if not self._send(conn, index, self.drip_body[i:i + 1]):
                        return
            elif self.mode in ("flood", "flood-declared"):
                length = (b"Content-Length: %d\r\n" % self.flood_bytes
                          if self.mode == "flood-declared" else b"Connection: close\r\n")
                if not self._send(conn, index, b"HTTP/1.1 200 OK\r\nContent-Type: "
                                               b"application/json\r\n" + length + b"\r\n"):
                    return
                chunk = b'{"access_token": "' + b"a" * (1 << 20)
                sent = 0
                started = time.monotonic()
                while sent < self.flood_bytes and time.monotonic() - started < 120:
                    if self._stop.is_set() or not self._send(conn, index, chunk):
                        return
                    sent += len(chunk)
                    chunk = b"a" * (1 << 20)
            elif self.mode == "redirect":
                self._send(conn, index, b"HTTP/1.1 302 Found\r\nLocation: "
                           + self.location.encode() + b"\r\nContent-Length: 0\r\n\r\n")
            elif self.mode == "raw":
                self._send(conn, index, b"HTTP/1.1 200 OK\r\nContent-Type: application/json"
                           b"\r\nContent-Length: %d\r\n\r\n" % len(self.raw_body) + self.raw_body)
            else:  # echo
                body = json.dumps({"error": "invalid_client",
                                   "error_description": self.describe(raw)}).encode()
                self._send(conn, index, b"HTTP/1.1 400 Bad Request\r\nContent-Type: "
                           b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@dataclass
class RecordingProxy:
    """An HTTP proxy that records every byte it receives from clients.

    ``CONNECT host:port`` is tunnelled to ``upstream`` (host, port) whatever the host (so a
    test can use a name that does not resolve); any other request (a proxied plain-HTTP
    request, which carries its body in clear) is recorded and answered ``502``.
    """

    upstream: tuple[str, int] | None = None
    connections: int = 0
    connects: list[bytes] = field(default_factory=list)  # CONNECT request lines
    received: bytearray = field(default_factory=bytearray)
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._sock is not None
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> RecordingProxy:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        t = threading.Thread(target=self._accept, daemon=True, name="recording-proxy")
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.received += data

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self._record(data)
                line = data.split(b"\r\n", 1)[0]
                if not line.startswith(b"CONNECT ") or self.upstream is None:
                    # A plain request through the proxy: read what follows, refuse.
                    conn.settimeout(0.5)
                    try:
                        while chunk := conn.recv(4096):
                            self._record(chunk)
                    except OSError:
                        pass
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                with self._lock:
                    self.connects.append(line)
                up = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                return
            with up:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                rest = data.split(b"\r\n\r\n", 1)[1]
                if rest:
                    up.sendall(rest)
                pump = threading.Thread(target=self._pipe, args=(up, conn, False), daemon=True)
                pump.start()
                self._pipe(conn, up, True)
                pump.join(10)

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        src.settimeout(10)
        try:
            while not self._stop.is_set():
                chunk = src.recv(65536)
                if not chunk:
                    break
                if record:
                    self._record(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
