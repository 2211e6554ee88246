"""The wire layer over a real socket pair: PIPELINING reply handling and bounds."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from reconciler.probe.redact import Redactor
from reconciler.probe.transcript import MAX_LINE_CHARS, MAX_LINES, Transcript
from reconciler.probe.wire import Wire

COMMANDS = ["MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "RSET"]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Wire, socket.socket]]:
    client, server = socket.socketpair()
    server.setblocking(False)
    wire = Wire(Transcript(Redactor()))
    await wire.open(client, tls=None, server_hostname=None, timeout=5)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(server, b"220 ready\r\n")
    assert (await wire.read_reply(5)).code == 220
    yield wire, server
    wire.close()
    server.close()


async def _read_commands(server: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    for _ in range(50):
        if data.count(b"\r\n") >= count:
            break
        data += await asyncio.wait_for(loop.sock_recv(server, 4096), 5)
    return data


async def test_replies_in_one_segment(pair: tuple[Wire, socket.socket]) -> None:
    wire, server = pair
    task = asyncio.create_task(wire.pipeline(COMMANDS, 5))
    sent = await _read_commands(server, 3)
    assert sent == b"".join(c.encode() + b"\r\n" for c in COMMANDS)  # one write, in order
    await asyncio.get_running_loop().sock_sendall(
        server, b"250 2.1.0 ok\r\n550 5.7.1 denied\r\n250 2.0.0 reset\r\n")
    replies = await task
    assert [r.code for r in replies] == [250, 550, 250]
    assert [t.direction for t in wire.transcript.lines()][-6:] == ["c", "c", "c", "s", "s", "s"]


async def test_replies_in_separate_segments(pair: tuple[Wire, socket.socket]) -> None:
    wire, server = pair
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(wire.pipeline(COMMANDS, 5))
    await _read_commands(server, 3)
    for chunk in (b"250 ok\r\n", b"25", b"0-multi\r\n250 line\r\n", b"250 reset\r\n"):
        await loop.sock_sendall(server, chunk)
        await asyncio.sleep(0.01)
    replies = await task
    assert [r.code for r in replies] == [250, 250, 250]
    assert replies[1].message == "multi\nline"


async def test_421_stops_reading(pair: tuple[Wire, socket.socket]) -> None:
    wire, server = pair
    task = asyncio.create_task(wire.pipeline(COMMANDS, 5))
    await _read_commands(server, 3)
    await asyncio.get_running_loop().sock_sendall(server, b"421 4.3.2 going down\r\n")
    replies = await task
    assert [r.code for r in replies] == [421]


async def test_flood_while_pipelining_is_bounded(pair: tuple[Wire, socket.socket]) -> None:
    from aiosmtplib.errors import SMTPResponseException

    wire, server = pair
    task = asyncio.create_task(wire.pipeline(COMMANDS, 5))
    await _read_commands(server, 3)
    await asyncio.get_running_loop().sock_sendall(server, b"250 ok\r\n" + b"250-" * 20000)
    with pytest.raises(SMTPResponseException):
        await task


def test_transcript_bounds_lines_and_length() -> None:
    t = Transcript(Redactor())
    t.add("s", "x" * (MAX_LINE_CHARS * 3))
    for i in range(MAX_LINES + 10):
        t.client(f"NOOP {i}")
    lines = t.lines()
    assert len(lines) == MAX_LINES + 1
    assert len(lines[0].line) < MAX_LINE_CHARS + 50
    assert lines[-1].line == "[11 more lines not recorded]"


def test_transcript_reply_lines_keep_the_wire_form() -> None:
    t = Transcript(Redactor())
    t.reply(250, "mx.example\nPIPELINING\nAUTH PLAIN")
    assert [x.line for x in t.lines()] == ["250-mx.example", "250-PIPELINING",
                                           "250 AUTH PLAIN"]


async def test_optional_tail_replies(pair: tuple[Wire, socket.socket]) -> None:
    wire, server = pair
    task = asyncio.create_task(wire.pipeline([*COMMANDS, "QUIT"], 5, required=2))
    await _read_commands(server, 4)
    await asyncio.get_running_loop().sock_sendall(server, b"250 ok\r\n250 ok\r\n")
    server.shutdown(socket.SHUT_WR)  # hangs up without answering RSET and QUIT
    replies = await task
    assert [r.code for r in replies] == [250, 250]
