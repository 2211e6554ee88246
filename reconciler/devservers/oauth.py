"""A real OAuth 2.0 authorization server on loopback, for ``smtpctl demo`` and the tests.

Decision: a small server on the standard library's ``http.server`` (one daemon thread),
not authlib's server components.  authlib's ``AuthorizationServer`` needs a web framework
integration (Flask/Django) that we do not ship, and the subset we need is small and
specified precisely by the RFCs, so it is written here faithfully and kept readable:

* ``POST /token`` (RFC 6749 section 3.2): grants ``client_credentials`` (4.4),
  ``refresh_token`` (6) and ``authorization_code`` (4.1.3, with PKCE S256, RFC 7636);
  client authentication ``client_secret_basic`` (HTTP Basic, form-urlencoded credentials)
  or ``client_secret_post``, and ``none`` for public clients; errors as in 5.2
  (``invalid_request``, ``invalid_client`` with 401 + ``WWW-Authenticate``,
  ``invalid_grant``, ``unauthorized_client``, ``unsupported_grant_type``,
  ``invalid_scope``); successful responses with ``Cache-Control: no-store``,
  ``expires_in`` and optional refresh-token rotation (the old token dies).
* ``GET /authorize`` (4.1.1): auto-approves (no consent screen; ``deny_next`` simulates a
  user saying no) and redirects to a loopback ``redirect_uri`` with ``code`` and ``state``.
* ``POST /revoke`` (RFC 7009): revokes access or refresh tokens; 200 even for unknown ones.
* ``GET /test``: a protected resource for ``testEndpoint``: 200 with the subject and scope
  for a live Bearer token, 401 ``invalid_token`` otherwise (RFC 6750 section 3).
* ``POST /introspect`` (RFC 7662): ``{"active": true, "username", "sub", "scope",
  "client_id", "exp"}`` for a live access token, ``{"active": false}`` otherwise.  RFC 7662
  wants the caller authenticated; this loopback development server accepts anonymous
  callers so that a resource server such as Dovecot's ``oauth2`` passdb
  (``introspection_mode = post``) can use it unchanged.

It records every issued access token with expiry, subject and scope; an SMTP relay's
XOAUTH2/OAUTHBEARER validator asks :meth:`OAuthServer.is_valid` / :meth:`token_info` so it
accepts only tokens this server issued and that have not expired.

Fault switches for tests: :meth:`fail_next` (answer 5xx N times), :meth:`delay_next`
(answer slowly N times), :meth:`error_next` (answer an OAuth error such as
``temporarily_unavailable``), :meth:`respond_next` (answer exactly this JSON).
Binds to 127.0.0.1 (or ::1) on port 0 only; start and stop from synchronous code
(``with OAuthServer(...) as server:``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

__all__ = ["ClientConfig", "OAuthServer", "TokenInfo"]

_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost", "[::1]"}


def _is_loopback_address(host: str) -> bool:
    """Any loopback address (127.0.0.0/8): tests use 127.0.0.2 as "another host"."""
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ClientConfig:
    """A registered client.  ``secret=None`` makes it a public client (PKCE login only)."""

    client_id: str
    secret: str | None = None
    grants: tuple[str, ...] = ("client_credentials", "refresh_token", "authorization_code")
    scopes: tuple[str, ...] = ()  # allowed scopes; empty: any scope
    default_scopes: tuple[str, ...] = ()
    auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post")
    subject: str | None = None  # subject of client-credentials tokens (default: client_id)


@dataclass(frozen=True)
class TokenInfo:
    client_id: str
    subject: str
    scope: tuple[str, ...]
    expires_at: float  # a deadline on the server's clock (time.monotonic() by default)

    def live(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.expires_at


@dataclass
class _Grant:
    client_id: str
    subject: str
    scope: tuple[str, ...]


@dataclass
class _Code:
    client_id: str
    subject: str
    scope: tuple[str, ...]
    redirect_uri: str
    challenge: str
    expires_at: float


@dataclass
class _Faults:
    fail_count: int = 0
    fail_status: int = 503
    delay_count: int = 0
    delay_seconds: float = 0.0
    error_count: int = 0
    error: str = "temporarily_unavailable"
    deny_next: bool = False
    raw: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


@dataclass
class OAuthServer:
    """The authorization server.  Use as a context manager or call start()/stop()."""

    clients: Iterable[ClientConfig] = ()
    token_lifetime: float = 3600.0
    rotate_refresh_tokens: bool = False
    access_token_prefix: str = "at-"  # noqa: S105 - a prefix, not a credential
    refresh_token_prefix: str = "rt-"  # noqa: S105
    login_subject: str = "user@example.test"  # the user who "consents" at /authorize
    host: str = "127.0.0.1"
    ssl_context: ssl.SSLContext | None = None
    token_factory: Callable[[str], str] | None = None  # prefix -> token (tests: canaries)
    # when issued tokens and codes expire (tests inject the clock their client reads, so
    # a token's life does not depend on how fast a loaded machine runs the test)
    clock: Callable[[], float] = time.monotonic

    _clients: dict[str, ClientConfig] = field(init=False, default_factory=dict)
    _access: dict[str, TokenInfo] = field(init=False, default_factory=dict)
    _refresh: dict[str, _Grant] = field(init=False, default_factory=dict)
    _codes: dict[str, _Code] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = field(init=False, default=None)
    _thread: threading.Thread | None = field(init=False, default=None)
    faults: _Faults = field(init=False, default_factory=_Faults)
    requests: list[tuple[str, str]] = field(init=False, default_factory=list)  # (path, grant)

    def __post_init__(self) -> None:
        if self.host not in _LOOPBACK_HOSTS and not _is_loopback_address(self.host):
            raise ValueError("the development OAuth server binds to loopback only")
        for c in self.clients:
            self._clients[c.client_id] = c

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> str:
        """Bind to an ephemeral loopback port, serve in a daemon thread; returns the base URL."""
        if self._server is not None:
            return self.url
        server_cls = _V6Server if ":" in self.host else _Server
        server = server_cls((self.host.strip("[]"), 0), _make_handler(self))
        server.daemon_threads = True
        if self.ssl_context is not None:
            server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="oauth-devserver", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> OAuthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def authorize_url(self) -> str:
        return self.url + "/authorize"

    @property
    def revoke_url(self) -> str:
        return self.url + "/revoke"

    @property
    def test_url(self) -> str:
        return self.url + "/test"

    @property
    def introspect_url(self) -> str:
        return self.url + "/introspect"

    # --- administration (tests, demo) ---------------------------------------------------

    def add_client(self, client: ClientConfig) -> None:
        with self._lock:
            self._clients[client.client_id] = client

    def add_refresh_token(self, token: str, client_id: str, *, subject: str | None = None,
                          scope: Iterable[str] = ()) -> None:
        """Register a refresh token as if a user had consented earlier."""
        with self._lock:
            self._refresh[token] = _Grant(client_id, subject or self.login_subject, tuple(scope))

    def is_valid(self, token: str, *, scope: str | None = None) -> bool:
        """True for an access token this server issued that has not expired or been revoked."""
        info = self.token_info(token)
        return info is not None and (scope is None or scope in info.scope)

    def token_info(self, token: str) -> TokenInfo | None:
        with self._lock:
            info = self._access.get(token)
        if info is None or not info.live(self.clock()):
            return None
        return info

    def expire_access_tokens(self) -> None:
        """Make every issued access token expire now (simulates the clock running out)."""
        with self._lock:
            for k, v in list(self._access.items()):
                self._access[k] = TokenInfo(v.client_id, v.subject, v.scope, 0.0)

    def revoke_refresh_token(self, token: str) -> None:
        with self._lock:
            self._refresh.pop(token, None)

    def refresh_tokens(self) -> list[str]:
        with self._lock:
            return list(self._refresh)

    def issued_access_tokens(self) -> int:
        with self._lock:
            return len(self._access)

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` token requests with HTTP ``status`` (5xx faults)."""
        with self._lock:
            self.faults.fail_count, self.faults.fail_status = count, status

    def delay_next(self, count: int, seconds: float) -> None:
        """Sleep ``seconds`` before answering the next ``count`` token requests."""
        with self._lock:
            self.faults.delay_count, self.faults.delay_seconds = count, seconds

    def error_next(self, count: int, error: str = "temporarily_unavailable") -> None:
        """Answer the next ``count`` token requests with an OAuth error body (HTTP 400)."""
        with self._lock:
            self.faults.error_count, self.faults.error = count, error

    def respond_next(self, status: int, body: dict[str, Any]) -> None:
        """Answer the next token request with exactly this JSON (a misbehaving provider)."""
        with self._lock:
            self.faults.raw.append((status, body))

    def deny_next(self) -> None:
        """The next /authorize request is refused by the "user" (error=access_denied)."""
        with self._lock:
            self.faults.deny_next = True

    # --- protocol (called from handler threads) -----------------------------------------

    def _new_token(self, prefix: str) -> str:
        if self.token_factory is not None:
            return self.token_factory(prefix)
        return prefix + secrets.token_urlsafe(24)

    def _issue(self, client_id: str, subject: str, scope: tuple[str, ...],
               refresh: bool) -> dict[str, Any]:
        access = self._new_token(self.access_token_prefix)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(self.token_lifetime) if self.token_lifetime >= 1
            else self.token_lifetime,
        }
        if scope:
            body["scope"] = " ".join(scope)
        self._access[access] = TokenInfo(client_id, subject, scope,
                                         self.clock() + self.token_lifetime)
        if refresh:
            rt = self._new_token(self.refresh_token_prefix)
            self._refresh[rt] = _Grant(client_id, subject, scope)
            body["refresh_token"] = rt
        return body

    def _authenticate(self, headers: Any, form: dict[str, str]) -> tuple[ClientConfig | None,
                                                                          str | None, bool]:
        """Client authentication (RFC 6749 2.3.1).  Returns (client, error, used_basic)."""
        auth = headers.get("Authorization")
        body_id = form.get("client_id")
        body_secret = form.get("client_secret")
        if auth and auth.lower().startswith("basic "):
            if body_secret is not None:
                return None, "invalid_request:more than one client authentication method", True
            try:
                raw = base64.b64decode(auth[6:].strip(), validate=True).decode()
                cid, _, secret = raw.partition(":")
                cid, secret = unquote_plus(cid), unquote_plus(secret)
            except (binascii.Error, UnicodeDecodeError):
                return None, "invalid_client:malformed Basic credentials", True
            client = self._clients.get(cid)
            if (client is None or client.secret is None
                    or "client_secret_basic" not in client.auth_methods
                    or not hmac.compare_digest(client.secret.encode(), secret.encode())):
                return None, "invalid_client:client authentication failed", True
            return client, None, True
        if body_id is None:
            return None, "invalid_client:no client authentication", False
        client = self._clients.get(body_id)
        if client is None:
            return None, "invalid_client:client authentication failed", False
        if client.secret is None:  # public client: identified, not authenticated
            return client, None, False
        if (body_secret is None or "client_secret_post" not in client.auth_methods
                or not hmac.compare_digest(client.secret.encode(), body_secret.encode())):
            return None, "invalid_client:client authentication failed", False
        return client, None, False

    def _scope(self, client: ClientConfig, requested: str | None,
               granted: tuple[str, ...] | None) -> tuple[tuple[str, ...], str | None]:
        if requested is None or not requested.strip():
            return (granted if granted is not None else client.default_scopes), None
        scope = tuple(requested.split())
        allowed = set(granted) if granted is not None and granted else set(client.scopes)
        if allowed and not set(scope) <= allowed:
            bad = sorted(set(scope) - allowed)
            return (), f"invalid_scope:scope {' '.join(bad)} is not allowed for this client"
        return scope, None

    def handle_token(self, headers: Any, form: dict[str, str]) -> tuple[int, dict[str, Any],
                                                                         dict[str, str]]:
        grant = form.get("grant_type", "")
        with self._lock:
            self.requests.append(("/token", grant))
            client, err, basic = self._authenticate(headers, form)
            if client is None:
                assert err is not None
                code, _, desc = err.partition(":")
                extra = {"WWW-Authenticate": 'Basic realm="token"'} if basic else {}
                status = 401 if code == "invalid_client" else 400
                return status, {"error": code, "error_description": desc}, extra
            if grant not in ("client_credentials", "refresh_token", "authorization_code"):
                return 400, {"error": "unsupported_grant_type",
                             "error_description": f"grant_type {grant!r} is not supported"}, {}
            if grant not in client.grants:
                return 400, {"error": "unauthorized_client",
                             "error_description": f"client may not use {grant}"}, {}
            if grant == "client_credentials":
                if client.secret is None:
                    return 400, {"error": "unauthorized_client",
                                 "error_description": "public clients cannot use "
                                 "client_credentials"}, {}
                scope, err = self._scope(client, form.get("scope"), None)
                if err:
                    return 400, _err(err), {}
                return 200, self._issue(client.client_id, client.subject or client.client_id,
                                        scope, refresh=False), {}
            if grant == "refresh_token":
                rt = form.get("refresh_token")
                if not rt:
                    return 400, {"error": "invalid_request",
                                 "error_description": "refresh_token is missing"}, {}
                g = self._refresh.get(rt)
                if g is None or g.client_id != client.client_id:
                    return 400, {"error": "invalid_grant", "error_description":
                                 "the refresh token is invalid, expired or revoked"}, {}
                scope, err = self._scope(client, form.get("scope"), g.scope)
                if err:
                    return 400, _err(err), {}
                body = self._issue(client.client_id, g.subject, scope or g.scope,
                                   refresh=self.rotate_refresh_tokens)
                if self.rotate_refresh_tokens:
                    del self._refresh[rt]
                return 200, body, {}
            # authorization_code
            code_grant = self._codes.pop(form.get("code", ""), None)
            if code_grant is None or code_grant.client_id != client.client_id or \
                    code_grant.expires_at < self.clock():
                return 400, {"error": "invalid_grant",
                             "error_description": "the authorization code is invalid or "
                             "expired"}, {}
            if form.get("redirect_uri") != code_grant.redirect_uri:
                return 400, {"error": "invalid_grant",
                             "error_description": "redirect_uri does not match"}, {}
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if not verifier or not hmac.compare_digest(digest.rstrip(b"=").decode(),
                                                       code_grant.challenge):
                return 400, {"error": "invalid_grant",
                             "error_description": "PKCE verification failed"}, {}
            return 200, self._issue(client.client_id, code_grant.subject, code_grant.scope,
                                    refresh=True), {}

    def handle_authorize(self, query: dict[str, str]) -> tuple[int, str, str]:
        """Returns (status, Location or "", text body)."""
        with self._lock:
            self.requests.append(("/authorize", query.get("response_type", "")))
            client = self._clients.get(query.get("client_id", ""))
            redirect = query.get("redirect_uri", "")
            parts = urlsplit(redirect)
            # Errors about the client or redirect URI are shown, never redirected (4.1.2.1).
            if client is None:
                return 400, "", "unknown client_id"
            if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS:
                return 400, "", "redirect_uri must be a loopback http URI"
            state = query.get("state")
            extra = {"state": state} if state is not None else {}
            if query.get("response_type") != "code":
                return 302, _with_query(redirect, {"error": "unsupported_response_type",
                                                   **extra}), ""
            if self.faults.deny_next:
                self.faults.deny_next = False
                return 302, _with_query(redirect, {"error": "access_denied",
                                                   "error_description": "the user said no",
                                                   **extra}), ""
            if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
                return 302, _with_query(redirect, {"error": "invalid_request",
                                                   "error_description": "PKCE S256 required",
                                                   **extra}), ""
            scope, err = self._scope(client, query.get("scope"), None)
            if err:
                code_, _, desc = err.partition(":")
                return 302, _with_query(redirect, {"error": code_, "error_description": desc,
                                                   **extra}), ""
            code = secrets.token_urlsafe(24)
            self._codes[code] = _Code(client.client_id, self.login_subject, scope, redirect,
                                      query["code_challenge"], self.clock() + 600)
            return 302, _with_query(redirect, {"code": code, **extra}), ""

    def handle_revoke(self, headers: Any, form: dict[str, str]) -> tuple[int, dict[str, Any],
                                                                          dict[str, str]]:
        with self._lock:
            self.requests.append(("/revoke", form.get("token_type_hint", "")))
            client, err, basic = self._authenticate(headers, form)
            if client is None:
                assert err is not None
                code, _, desc = err.partition(":")
                extra = {"WWW-Authenticate": 'Basic realm="revoke"'} if basic else {}
                return 401, {"error": code, "error_description": desc}, extra
            token = form.get("token", "")
            g = self._refresh.get(token)
            if g is not None and g.client_id == client.client_id:
                del self._refresh[token]
            info = self._access.get(token)
            if info is not None and info.client_id == client.client_id:
                del self._access[token]
            return 200, {}, {}

    def handle_test(self, headers: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        auth = headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        with self._lock:
            self.requests.append(("/test", ""))
        info = self.token_info(token) if token else None
        if info is None:
            return 401, {"error": "invalid_token"}, {
                "WWW-Authenticate": 'Bearer error="invalid_token"'}
        return 200, {"sub": info.subject, "scope": " ".join(info.scope),
                     "client_id": info.client_id}, {}

    def handle_introspect(self, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(("/introspect", form.get("token_type_hint", "")))
        info = self.token_info(form.get("token", ""))
        if info is None:
            return {"active": False}
        exp = int(time.time() + (info.expires_at - self.clock()))
        return {"active": True, "username": info.subject, "sub": info.subject,
                "scope": " ".join(info.scope), "client_id": info.client_id, "exp": exp,
                "token_type": "Bearer"}

    def take_raw(self) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            return self.faults.raw.pop(0) if self.faults.raw else None

    def take_fault(self) -> tuple[float, int | None, str | None]:
        """(delay seconds, fail status, oauth error) for the next token request."""
        with self._lock:
            delay = 0.0
            if self.faults.delay_count > 0:
                self.faults.delay_count -= 1
                delay = self.faults.delay_seconds
            status = None
            if self.faults.fail_count > 0:
                self.faults.fail_count -= 1
                status = self.faults.fail_status
            error = None
            if status is None and self.faults.error_count > 0:
                self.faults.error_count -= 1
                error = self.faults.error
            return delay, status, error


def _err(text: str) -> dict[str, Any]:
    code, _, desc = text.partition(":")
    return {"error": code, "error_description": desc}


def _with_query(uri: str, params: dict[str, str]) -> str:
    sep = "&" if urlsplit(uri).query else "?"
    return uri + sep + urlencode(params)


def _single(qs: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in qs.items() if v}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away before its answer (a probe past its deadline, a test that
        # ended) is not a server error: no traceback on stderr, which may be closed by then.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _V6Server(_Server):
    address_family = socket.AF_INET6


def _make_handler(server: OAuthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "smtpctl-oauth-dev/1"

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: request lines can carry codes and tokens in query strings."""

        def _send_json(self, status: int, body: dict[str, Any],
                       headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Pragma", "no-cache")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _send_text(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain;charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _form(self) -> dict[str, str] | None:
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(min(length, 1 << 20)).decode("utf-8", "replace")
            if ctype != "application/x-www-form-urlencoded":
                return None
            return _single(parse_qs(raw, keep_blank_values=True))

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            form = self._form()
            if path not in ("/token", "/revoke", "/introspect"):
                self._send_json(404, {"error": "not_found"})
                return
            if form is None:
                self._send_json(400, {"error": "invalid_request", "error_description":
                                      "body must be application/x-www-form-urlencoded"})
                return
            if path == "/revoke":
                self._send_json(*server.handle_revoke(self.headers, form))
                return
            if path == "/introspect":
                self._send_json(200, server.handle_introspect(form))
                return
            delay, fail, error = server.take_fault()
            if delay:
                time.sleep(delay)
            if fail is not None:
                self._send_text(fail, "the token service is having a bad day\n")
                return
            if error is not None:
                self._send_json(400 if error != "server_error" else 500,
                                {"error": error, "error_description": "try again later"})
                return
            raw = server.take_raw()
            if raw is not None:
                self._send_json(*raw)
                return
            self._send_json(*server.handle_token(self.headers, form))

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/authorize":
                status, location, text = server.handle_authorize(_single(parse_qs(parts.query)))
                if location:
                    self.send_response(status)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send_text(status, text + "\n")
                return
            if parts.path == "/test":
                self._send_json(*server.handle_test(self.headers))
                return
            self._send_json(404, {"error": "not_found"})

    return Handler
