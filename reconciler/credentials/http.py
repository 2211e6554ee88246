"""The HTTP stack of every OAuth 2.0 exchange: guarded, bounded, never proxied in clear.

A token, revoke or test endpoint is named by a manifest, so it may be hostile (or a
manifest may point it at something that is not an OAuth server at all).  Every request
the credentials layer makes goes through :class:`GuardedTransport`, an
``httpx.AsyncBaseTransport`` on top of httpcore's connection pool:

* **egress guard** - the same :class:`~reconciler.probe.egress.EgressPolicy` as the SMTP
  probe, judged on the exact address connected to: the host name is resolved here, every
  address is judged, and the socket is connected to an allowed address (a second DNS
  answer cannot differ).  A refusal is :class:`EgressRefused`;
* **size cap** - a response body larger than ``max_body`` bytes is not read further
  (:class:`ResponseTooLarge`); a token response is a few kilobytes, so a flood costs at
  most the cap in memory;
* **no proxy in clear** - ``http://`` (allowed for loopback only) never goes through a
  proxy; ``https://`` may use the environment's ``HTTPS_PROXY``/``ALL_PROXY`` (honouring
  ``NO_PROXY``), which tunnels TLS end to end (CONNECT), and loopback is never proxied.
  With a proxy the endpoint's host is judged as it resolves here (the proxy resolves it
  again; a name that does not resolve here is left to the proxy);
* **no redirects** - clients are built with ``follow_redirects=False``; a redirect is an
  error of the exchange (the caller says so).

The overall deadline of an exchange (retries included) is the caller's
(``TokenManager``): per-request timeouts alone let an endpoint that drips one byte a
second hold a request for ever.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

from reconciler.probe.egress import EgressPolicy

__all__ = ["MAX_BODY", "EgressRefused", "GuardedTransport", "ResponseTooLarge"]

MAX_BODY = 256 * 1024  # a token response is a few KiB; Microsoft's largest are ~10 KiB

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class EgressRefused(httpx.TransportError):
    """The endpoint resolves only to addresses the egress policy refuses."""

    def __init__(self, host: str, address: str, why: str) -> None:
        super().__init__(f"{host!r} resolves to {address}: {why}")
        self.host = host
        self.address = address
        self.why = why


class ResponseTooLarge(httpx.TransportError):
    """The response body exceeded the cap; the rest was not read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response is larger than {limit // 1024} KiB")
        self.limit = limit


# --- the guarded network backend -------------------------------------------------------


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, judges every address, connects to an allowed one (never by name)."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve(host, port)
        allowed = [a for a in addresses if self._policy.permits(a)]
        if not allowed:
            first = addresses[0] if addresses else "no address"
            why = self._policy.refusal(first) if addresses else "it has no address"
            raise _Refused(host, first, why or "refused")
        last: Exception | None = None
        for address in allowed[:4]:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout,
                                                     local_address=local_address,
                                                     socket_options=socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not OAuth endpoints")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Refused(httpcore.ConnectError):
    def __init__(self, host: str, address: str, why: str) -> None:
        super().__init__(f"egress refused: {host} -> {address}")
        self.refusal = EgressRefused(host, address, why)


async def _resolve(host: str, port: int) -> list[str]:
    """Addresses of ``host`` in resolver order (an IP literal is itself)."""
    literal = host.strip("[]")
    try:
        return [str(ipaddress.ip_address(literal))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(literal, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {literal}: {exc.strerror}") from None
    out: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in out:
            out.append(address)
    return out


# --- the response size cap --------------------------------------------------------------


class _Capped(httpx.AsyncByteStream):
    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in _mapped(self._inner):
            seen += len(chunk)
            if seen > self._limit:
                raise ResponseTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


async def _mapped(stream: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except httpcore.TimeoutException as exc:
        raise httpx.ReadTimeout(str(exc)) from None
    except httpcore.NetworkError as exc:
        raise httpx.ReadError(str(exc)) from None
    except httpcore.ProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc)) from None


_MAPPING: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


def _httpx_error(exc: Exception) -> httpx.TransportError:
    for core, mapped in _MAPPING:
        if isinstance(exc, core):
            return mapped(str(exc))
    return httpx.TransportError(str(exc))


# --- the transport ------------------------------------------------------------------------


class GuardedTransport(httpx.AsyncBaseTransport):
    """See the module docstring.  One per client (it owns a connection pool)."""

    def __init__(self, *, verify: ssl.SSLContext | bool | str = True,
                 egress: EgressPolicy | None = None, max_body: int = MAX_BODY,
                 trust_env: bool = True) -> None:
        self._verify = verify
        self._egress = egress if egress is not None else EgressPolicy()
        self._max_body = max_body
        self._trust_env = trust_env
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify), max_connections=4,
            network_backend=_GuardedBackend(self._egress))
        self._proxied: dict[str, httpx.AsyncHTTPTransport] = {}

    def _proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy for ``url``: https only, never loopback, as the environment says."""
        if not self._trust_env or url.scheme != "https":
            return None
        host = url.host
        if host.lower() in _LOOPBACK_NAMES or _is_loopback(host):
            return None
        proxies = urllib.request.getproxies()
        proxy = proxies.get("https") or proxies.get("all")
        if not proxy or urllib.request.proxy_bypass(host):
            return None
        return str(proxy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._proxy_for(request.url)
        if proxy is not None:
            return await self._via_proxy(request, proxy)
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream,
            extensions=request.extensions)
        try:
            resp = await self._pool.handle_async_request(req)
        except _Refused as exc:
            raise exc.refusal from None
        except Exception as exc:
            if isinstance(exc, httpcore.TimeoutException | httpcore.NetworkError
                          | httpcore.ProtocolError | httpcore.ProxyError
                          | httpcore.UnsupportedProtocol):
                raise _httpx_error(exc) from None
            raise
        if self._too_long(resp.headers):
            await resp.aclose()
            raise ResponseTooLarge(self._max_body)
        return httpx.Response(status_code=resp.status, headers=resp.headers,
                              stream=_Capped(resp.stream, self._max_body),
                              extensions=resp.extensions)

    async def _via_proxy(self, request: httpx.Request, proxy: str) -> httpx.Response:
        host = request.url.host
        try:
            addresses = await _resolve(host, request.url.port or 443)
        except httpcore.ConnectError:
            addresses = []  # only the proxy can resolve it: its business
        for address in addresses:
            why = self._egress.refusal(address)
            if why is not None:
                raise EgressRefused(host, address, why)
        transport = self._proxied.get(proxy)
        if transport is None:
            transport = self._proxied[proxy] = httpx.AsyncHTTPTransport(
                verify=self._verify, proxy=proxy)
        response = await transport.handle_async_request(request)
        if self._too_long(response.headers.raw):
            await response.aclose()
            raise ResponseTooLarge(self._max_body)
        response.stream = _Capped(response.stream, self._max_body)
        return response

    def _too_long(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """A declared Content-Length above the cap: refused before reading the body."""
        for name, value in headers:
            if name.lower() == b"content-length":
                raw = value.strip()
                return raw.isdigit() and int(raw) > self._max_body
        return False

    async def aclose(self) -> None:
        await self._pool.aclose()
        for transport in self._proxied.values():
            await transport.aclose()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
