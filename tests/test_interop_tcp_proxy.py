"""The recording proxy the interop tests and bench/probe.py rely on: what it counts.

Round trips and the cleartext-AUTH detector are instruments; these tests pin them down
with a scripted line server so a wrong count cannot hide behind a real SMTP dialogue.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.tcp_proxy import Connection, TcpProxy


@pytest.fixture
def line_server() -> Iterator[int]:
    """Greets with "220 hi", then answers every line with "250 ok" (one thread)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)  # accept() wakes up to notice `stop` (bounded loop)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn:
                conn.sendall(b"220 hi\r\n")
                buf = b""
                while True:
                    data = conn.recv(4096)
                    if not data:
                        break
                    buf += data
                    while b"\r\n" in buf:
                        line, buf = buf.split(b"\r\n", 1)
                        conn.sendall(b"250 ok\r\n")
                        if line == b"QUIT":
                            break

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()
    t.join(timeout=5)


def _read_replies(sock: socket.socket, count: int) -> None:
    got = b""
    while got.count(b"\r\n") < count:
        data = sock.recv(4096)
        assert data, "server closed early"
        got += data


def _dialogue(port: int, batches: list[list[bytes]]) -> Connection:
    with TcpProxy("127.0.0.1", port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            _read_replies(sock, 1)  # banner
            for batch in batches:
                sock.sendall(b"".join(line + b"\r\n" for line in batch))
                _read_replies(sock, len(batch))
        [conn] = proxy.wait_closed(1)
    return conn


def test_each_wait_for_a_reply_is_one_round_trip(line_server: int) -> None:
    conn = _dialogue(line_server, [[b"EHLO a"], [b"MAIL FROM:<a@b>"], [b"RCPT TO:<a@b>"]])
    assert conn.round_trips == 4  # banner + three commands


def test_pipelined_commands_cost_one_round_trip(line_server: int) -> None:
    conn = _dialogue(line_server, [[b"EHLO a"], [b"MAIL FROM:<a@b>", b"RCPT TO:<a@b>",
                                                 b"RSET", b"QUIT"]])
    assert conn.round_trips == 3
    assert bytes(conn.client_bytes).count(b"\r\n") == 5


def test_cleartext_auth_is_detected_only_before_tls() -> None:
    plain = Connection(client_bytes=bytearray(b"EHLO a\r\nAUTH PLAIN xyz\r\nQUIT\r\n"))
    assert plain.sent_auth_in_cleartext()
    upgraded = Connection(client_bytes=bytearray(
        b"EHLO a\r\nSTARTTLS\r\n\x16\x03\x01\x00\x10AUTH PLAIN inside-tls"))
    assert not upgraded.sent_auth_in_cleartext()
    implicit = Connection(client_bytes=bytearray(b"\x16\x03\x01\x02\x00AUTH PLAIN"))
    assert not implicit.sent_auth_in_cleartext()
    refused = Connection(client_bytes=bytearray(
        b"EHLO a\r\nSTARTTLS\r\nAUTH LOGIN\r\n"))  # STARTTLS refused, client went on
    assert refused.sent_auth_in_cleartext()
