"""The SMTP wire: aiosmtplib's protocol, plus PIPELINING, plus the transcript.

aiosmtplib's :class:`~aiosmtplib.protocol.SMTPProtocol` does the byte work we want from a
well-kept library: reply parsing, the size bounds (8 KiB per line, 32 KiB per reply, so a
never-ending multi-line reply or a 1 MB line ends as an error instead of eating memory),
read timeouts, and STARTTLS with the RFC 3207 injection defence.  We use it directly
rather than through ``aiosmtplib.SMTP`` because the probe needs three things the
high-level client does not give: a transcript of every line, a socket we connected
ourselves (so the egress guard judges the exact address we use), and PIPELINING of
MAIL/RCPT/RSET (and, opted in, of AUTH PLAIN before them).  The last one needs the small
subclass below: the stock protocol drops bytes that arrive while no command is waiting,
which is exactly what pipelined replies do.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence
from typing import Any

from aiosmtplib.errors import SMTPResponseException, SMTPServerDisconnected, SMTPTimeoutError
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.response import SMTPResponse

from reconciler.probe.transcript import Transcript


class _PipeliningProtocol(SMTPProtocol):
    """Keeps replies that arrive before they are awaited (PIPELINING), size-bounded."""

    def __init__(self) -> None:
        super().__init__()
        self.pipelining = False
        self._overflow = False
        # Resolved when the transport is really closed.  (aiosmtplib's own
        # ``_closed_future`` is never resolved, so it cannot be waited on.)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        idle = waiter is not None and (waiter.done() or not self._response_pending)
        if self.pipelining and idle:
            if len(self._buffer) + len(data) > MAX_RESPONSE_LENGTH:
                self._overflow = True
                del self._buffer[:]
                return
            self._buffer.extend(data)
            return
        super().data_received(data)

    async def read_next(self, timeout: float | None) -> SMTPResponse:
        """The next reply: from the buffer if it is already complete, else from the wire."""
        if self._overflow:
            raise SMTPResponseException(-1, "Response too long")
        if self._buffer:
            response = self._read_response_from_buffer()
            if response is not None:
                return response
        return await self.read_response(timeout=timeout)


class Wire:
    """One SMTP connection with its transcript.  Not reusable after :meth:`close`."""

    def __init__(self, transcript: Transcript) -> None:
        self.transcript = transcript
        self.protocol: _PipeliningProtocol | None = None
        self.transport: asyncio.BaseTransport | None = None

    async def open(
        self, sock: socket.socket, *, tls: ssl.SSLContext | None, server_hostname: str | None,
        timeout: float,
    ) -> None:
        """Take over a connected socket; with ``tls``, run the handshake (implicit TLS)."""
        loop = asyncio.get_running_loop()
        protocol = _PipeliningProtocol()
        # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation
        # that coincides with the result (reconciler/probe/session.py, _token).
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: protocol, sock=sock, ssl=tls,
                server_hostname=server_hostname if tls is not None else None,
                ssl_handshake_timeout=timeout if tls is not None else None,
            )
        self.protocol, self.transport = protocol, transport

    def _proto(self) -> _PipeliningProtocol:
        # Not ``is_connected``: a reply may already be buffered from a server that sent
        # it and hung up (a 421 greeting); the protocol raises itself when it must write.
        if self.protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        return self.protocol

    async def read_reply(self, timeout: float) -> SMTPResponse:
        """Read one reply (the greeting) and record it."""
        response = await self._proto().read_response(timeout=timeout)
        self.transcript.reply(response.code, response.message)
        return response

    async def command(
        self, line: str, timeout: float, *, display: str | None = None,
    ) -> SMTPResponse:
        """Send one command line and record both sides.

        ``display`` replaces the line in the transcript (AUTH payloads); the redactor
        still runs over it.
        """
        self.transcript.client(line if display is None else display)
        response = await self._proto().execute_command(line.encode("utf-8"), timeout=timeout)
        self.transcript.reply(response.code, response.message)
        return response

    def send_group(self, lines: Sequence[str], *,
                   display: Sequence[str | None] | None = None) -> None:
        """Write several commands in one write (RFC 2920); read their replies in order
        with :meth:`next_reply`, then call :meth:`end_group`.

        ``display[i]`` replaces line ``i`` in the transcript (an AUTH payload)."""
        proto = self._proto()
        shown = list(display or ())
        shown += [None] * (len(lines) - len(shown))
        for line, text in zip(lines, shown, strict=True):
            if COMMAND_INJECTION_REGEX.search(line.encode("utf-8")):
                raise ValueError("Command contains a prohibited control character")
            self.transcript.client(line if text is None else text)
        proto.pipelining = True
        proto._response_pending = True
        proto.write("".join(f"{line}\r\n" for line in lines).encode("utf-8"))

    async def next_reply(self, timeout: float) -> SMTPResponse:
        """The next reply of a group sent with :meth:`send_group`, recorded."""
        proto = self._proto()
        response = await proto.read_next(timeout)
        self.transcript.reply(response.code, response.message)
        proto._response_pending = True
        return response

    def end_group(self) -> None:
        if self.protocol is not None:
            self.protocol.pipelining = False

    async def pipeline(
        self, lines: Sequence[str], timeout: float, *, required: int | None = None,
        tail_timeout: float = 5.0,
    ) -> list[SMTPResponse]:
        """Send several commands in one write (RFC 2920) and read their replies in order.

        Stops reading at the first reply that ends the session (421); the caller sees
        fewer replies than commands then.  Replies after the first ``required`` ones
        (RSET, QUIT) are read with ``tail_timeout`` and are optional: a server that hangs
        up or stays silent there does not turn the checks already answered into a failure.
        """
        need = len(lines) if required is None else required
        self.send_group(lines)
        try:
            replies: list[SMTPResponse] = []
            for i in range(len(lines)):
                optional = i >= need
                try:
                    response = await self.next_reply(
                        min(timeout, tail_timeout) if optional else timeout)
                except (SMTPResponseException, SMTPServerDisconnected, SMTPTimeoutError):
                    if optional:
                        break
                    raise
                replies.append(response)
                if response.code == 421:
                    break
            return replies
        finally:
            self.end_group()

    async def starttls(
        self, context: ssl.SSLContext, server_hostname: str, timeout: float
    ) -> SMTPResponse:
        """STARTTLS and the handshake; a non-220 reply raises SMTPResponseException."""
        proto = self._proto()
        self.transcript.client("STARTTLS")
        try:
            response = await proto.start_tls(context, server_hostname=server_hostname,
                                             timeout=timeout)
        except SMTPResponseException as exc:
            if exc.code > 0:
                self.transcript.reply(exc.code, exc.message)
            raise
        self.transcript.reply(response.code, response.message)
        self.transport = proto.transport
        return response

    def transport_info(self, key: str) -> Any:
        return None if self.transport is None else self.transport.get_extra_info(key)

    @property
    def encrypted(self) -> bool:
        return (self.transport_info("sslcontext") is not None
                or self.transport_info("ssl_object") is not None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.transport = None
        self.protocol = None

    async def aclose(self, grace: float = 0.25) -> None:
        """Close and wait (briefly) until the socket is really closed.

        A TLS transport's ``close()`` only starts the close_notify exchange; returning
        at once left the socket open until garbage collection whenever the caller's loop
        ended first (``asyncio.run(run_probe(...))``).  After ``grace`` seconds the
        transport is aborted: the SMTP session is over by then.
        """
        transport, protocol = self.transport, self.protocol
        self.close()
        if transport is None or protocol is None:
            return
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(protocol.closed)
        except Exception:  # noqa: BLE001 - timeout, or a connection error while closing
            if isinstance(transport, asyncio.Transport):
                transport.abort()
