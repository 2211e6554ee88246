"""The operator's one way to talk to the cluster: one credential source, one aiohttp client.

Every Kubernetes call of the operator (store reads and status writes, watches, the
Secret reads of the credentials, Events, the published Secret, the Lease) goes through
:class:`KubeApi`, and every :class:`KubeApi` takes its server, TLS and bearer token from a
:class:`Credentials`:

* **Where**: ``--kubeconfig`` when given; else in a pod (``KUBERNETES_SERVICE_HOST``) the
  in-cluster ServiceAccount; else ``$KUBECONFIG``, then ``~/.kube/config`` (see
  :func:`load_credentials`).
* **TLS**: the cluster CA (``certificate-authority[-data]`` or the mounted ``ca.crt``),
  client certificates (``client-certificate[-data]``/``client-key[-data]``, as kind's admin
  kubeconfig has), ``insecure-skip-tls-verify`` and ``tls-server-name`` honoured.
* **Bearer token**: a kubeconfig ``token`` or ``tokenFile``; an ``exec`` credential plugin
  (run by the ``kubernetes`` package's kubeconfig loader, which this module uses only to
  *read* kubeconfig files); in a pod the mounted ServiceAccount token, **re-read from the
  file** every minute and after any ``401``, because bound tokens are rotated by the
  kubelet.  A ``401`` reloads the credentials once and retries the request.

Why aiohttp and not httpx: with 32 connections and requests queued behind them, httpx
spent 3.3 ms of client CPU per request and failed with ``PoolTimeout`` at 1,000 queued
requests; aiohttp spent 0.29-0.33 ms, flat with the queue (docs/operator.md, "Client").

Errors are :class:`ApiError` subclasses by HTTP status (:class:`NotFound`,
:class:`Conflict`, :class:`Gone`, ...), so callers catch the case they handle instead of
comparing codes.  A message never includes a request or response body (it could be a
Secret).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REREAD_SECONDS = 60.0  # what client-go does for the mounted token
MAX_EVENT_BYTES = 8 << 20  # one watch event (a Secret is at most 1 MiB)


# --- typed errors ------------------------------------------------------------------------


class ApiError(Exception):
    """A failed API call: ``code`` is the HTTP status (0 when unreachable)."""

    code = 0

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class Unreachable(ApiError):
    """No HTTP answer: connection refused or reset, TLS failure, timeout."""


class BadRequest(ApiError):
    code = 400


class Unauthorized(ApiError):
    code = 401


class Forbidden(ApiError):
    code = 403


class NotFound(ApiError):
    code = 404


class Conflict(ApiError):
    code = 409


class Gone(ApiError):
    """410: the resourceVersion is too old (compacted); re-list."""

    code = 410


class Invalid(ApiError):
    code = 422


class TooManyRequests(ApiError):
    code = 429


class ServerError(ApiError):
    code = 500


_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    410: Gone, 422: Invalid, 429: TooManyRequests,
}


def api_error(code: int, reason: str, message: str) -> ApiError:
    cls = _BY_CODE.get(code) or (ServerError if code >= 500 else ApiError)
    return cls(code, reason, message)


# --- credentials -------------------------------------------------------------------------


class ConfigError(Exception):
    """No usable cluster configuration (bad kubeconfig, missing in-cluster files)."""


@dataclass
class Credentials:
    """Server, TLS and bearer token for every client of the process (see module doc)."""

    server: str
    namespace: str = "default"
    ssl_context: ssl.SSLContext | None = None
    token: str | None = None  # static token (kubeconfig ``token``)
    token_file: str | None = None  # re-read: in-cluster, kubeconfig ``tokenFile``
    kubeconfig: str | None = None  # reloaded after a 401 (exec plugins, rotated files)
    context: str | None = None
    source: str = ""  # "in-cluster" | "kubeconfig PATH": for messages
    _file_token: str | None = field(default=None, repr=False)
    _read_at: float = field(default=-1e9, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reloaded_at: float = field(default=-1e9, repr=False)

    def authorization(self) -> str | None:
        """The ``Authorization`` header value now (thread-safe, cheap)."""
        with self._lock:
            if self.token_file:
                now = time.monotonic()
                if now - self._read_at >= TOKEN_REREAD_SECONDS or self._file_token is None:
                    self._file_token = _read_token(self.token_file) or self._file_token
                    self._read_at = now
                if self._file_token:
                    return f"Bearer {self._file_token}"
            return f"Bearer {self.token}" if self.token else None

    def refresh(self) -> bool:
        """After a 401: re-read the token file; reload the kubeconfig (runs exec plugins,
        at most once a second).  True when the credentials changed."""
        with self._lock:
            now = time.monotonic()
            if self.token_file:
                fresh_token = _read_token(self.token_file)
                self._read_at = now
                if fresh_token and fresh_token != self._file_token:
                    self._file_token = fresh_token
                    return True
            if self.kubeconfig is None or now - self._reloaded_at < 1.0:
                return False
            self._reloaded_at = now
            try:
                fresh = _from_kubeconfig(self.kubeconfig, self.context)
            except ConfigError as exc:
                log.warning("cannot reload the kubeconfig", extra={"error": str(exc)})
                return False
            changed = (fresh.token, fresh.token_file) != (self.token, self.token_file)
            self.token, self.token_file = fresh.token, fresh.token_file
            if fresh.token_file:
                self._file_token = _read_token(fresh.token_file)
            if fresh.ssl_context is not None:
                self.ssl_context = fresh.ssl_context  # a new client certificate (exec)
                changed = True
            return changed


def _read_token(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        log.warning("cannot read the token file", extra={"path": path,
                                                         "error": type(exc).__name__})
        return None


def load_credentials(kubeconfig: str | None = None, context: str | None = None, *,
                     environ: Mapping[str, str] | None = None) -> Credentials:
    """Choose the configuration like client-go: ``kubeconfig`` when given; else in a pod
    (``KUBERNETES_SERVICE_HOST``) the ServiceAccount; else ``$KUBECONFIG`` (first file),
    then ``~/.kube/config``.  Raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    if kubeconfig:
        return _from_kubeconfig(kubeconfig, context)
    if env.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster(env)
    path = (env.get("KUBECONFIG") or "").split(os.pathsep)[0]
    if not path:
        path = str(Path(env.get("HOME") or "~").expanduser() / ".kube" / "config")
    return _from_kubeconfig(path, context)


def in_cluster(environ: Mapping[str, str] | None = None) -> Credentials:
    """The pod's ServiceAccount: host from the environment, CA, token and namespace files.

    ``SMTPCTL_SERVICEACCOUNT_DIR`` moves the directory (tests simulate a pod with it)."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT",
                                                                  "443")
    if not host:
        raise ConfigError("not running in a cluster (KUBERNETES_SERVICE_HOST is not set)")
    sa = Path(env.get("SMTPCTL_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_DIR)
    token, ca = sa / "token", sa / "ca.crt"
    if not token.is_file() or not ca.is_file():
        raise ConfigError(f"in-cluster files missing in {sa} (token, ca.crt)")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the cluster CA {ca}: {type(exc).__name__}") from None
    ns_file = sa / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
    return Credentials(server=f"https://{host}:{port}", namespace=namespace or "default",
                       ssl_context=ctx, token_file=str(token), source="in-cluster")


def _from_kubeconfig(path: str, context: str | None) -> Credentials:
    """Read a kubeconfig with the ``kubernetes`` package's loader (exec plugins included)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if not Path(path).expanduser().exists():
        raise ConfigError(f"kubeconfig {path} does not exist")
    cfg = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context, client_configuration=cfg, persist_config=False)
        _contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=path)
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"kubeconfig {path}: {str(exc).splitlines()[0][:200]}") from None
    namespace = "default"
    if context is None and active:
        namespace = (active.get("context") or {}).get("namespace") or namespace
    elif context is not None:
        for c in _contexts or []:
            if c.get("name") == context:
                namespace = (c.get("context") or {}).get("namespace") or namespace
    raw = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken") or ""
    token = raw.split(" ", 1)[1] if raw.lower().startswith("bearer ") else raw or None
    token_file = _kubeconfig_token_file(path, context)
    ctx: ssl.SSLContext | None = None
    if cfg.host.startswith("https://"):
        try:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
            if cfg.cert_file and cfg.key_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"kubeconfig {path}: cannot load TLS files "
                              f"({type(exc).__name__})") from None
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    return Credentials(server=cfg.host.rstrip("/"), namespace=namespace, ssl_context=ctx,
                       token=token, token_file=token_file, kubeconfig=path, context=context,
                       source=f"kubeconfig {path}")


def _kubeconfig_token_file(path: str, context: str | None) -> str | None:
    """The current user's ``tokenFile`` (re-read like the in-cluster token), if any."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).expanduser().read_text()) or {}
        ctx_name = context or doc.get("current-context")
        ctx = next(c["context"] for c in doc.get("contexts") or [] if c.get("name") == ctx_name)
        user = next(u["user"] for u in doc.get("users") or [] if u.get("name") == ctx["user"])
    except (OSError, yaml.YAMLError, StopIteration, KeyError, TypeError, AttributeError):
        return None
    token_file = user.get("tokenFile") if isinstance(user, dict) else None
    if not token_file:
        return None
    p = Path(token_file).expanduser()
    return str(p if p.is_absolute() else Path(path).expanduser().parent / p)


# --- paths --------------------------------------------------------------------------------


def resource_path(api_version: str, plural: str, namespace: str | None,
                  name: str | None = None, subresource: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name)}"
    if subresource:
        base += f"/{subresource}"
    return base


def resource_of(path: str) -> str:
    """The resource a request path addresses, for metrics: ``externalsmtps``,
    ``externalsmtps/status``, ``secrets``, ``events``, ... (never a name or namespace)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:] if parts[:1] == ["apis"] else []
    if len(rest) >= 2 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return "namespaces" if "namespaces" in parts else "discovery"
    return rest[0] + (f"/{rest[2]}" if len(rest) >= 3 else "")


# --- the client ---------------------------------------------------------------------------


class KubeApi:
    """Async JSON calls against one API server; counts requests for the benchmark.

    Create it on the event loop that uses it (aiohttp sessions belong to one loop)."""

    def __init__(self, creds: Credentials, *, timeout: float = 30,
                 max_connections: int = 32,
                 on_request: Callable[[str, str], None] | None = None) -> None:
        self.creds = creds
        self.requests = 0
        self.on_request = on_request  # (verb, resource) of every request sent (metrics)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._ssl_for: ssl.SSLContext | None = None

    @property
    def server(self) -> str:
        return self.creds.server

    def _http(self) -> aiohttp.ClientSession:
        ctx = self.creds.ssl_context
        if self._session is None or self._session.closed or ctx is not self._ssl_for:
            old = self._session
            if old is not None and not old.closed:
                asyncio.get_running_loop().create_task(old.close())
            connector = aiohttp.TCPConnector(limit=self._max, ssl=ctx if ctx is not None
                                             else False)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout,
                headers={"Accept": "application/json", "User-Agent": "smtpctl-operator"})
            self._ssl_for = ctx
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Content-Type": content_type} if content_type else {}
        auth = self.creds.authorization()
        if auth:
            headers["Authorization"] = auth
        return headers

    async def call(self, method: str, path: str, *, body: Any = None,
                   params: Mapping[str, str] | None = None,
                   content_type: str = "application/json",
                   reply: bool = True) -> dict[str, Any]:
        """One request (a 401 retried once with fresh credentials); the decoded reply, or
        ``{}`` when ``reply`` is False and the call succeeded (a reply nobody reads - an
        Event's echo - is not decoded)."""
        for attempt in range(2):
            self.requests += 1
            if self.on_request is not None:
                self.on_request(method, resource_of(path))
            # orjson: a tenth of json's encoding time and half its decoding time, on the
            # operator's one event loop (JSON was a sixth of its CPU per resource).
            data = None if body is None else orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
            headers = self._headers(content_type if body is not None else None)
            try:
                async with self._http().request(
                        method, self.creds.server + path, data=data, params=params,
                        headers=headers) as resp:
                    raw = await resp.read()
                    status, phrase = resp.status, resp.reason or ""
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise Unreachable(0, "Unreachable",
                                  f"{method} {path}: {type(exc).__name__}") from None
            if status == 401 and attempt == 0 and (
                    self.creds.authorization() != headers.get("Authorization")
                    or await asyncio.to_thread(self.creds.refresh)):
                continue  # a rotated token (seen by us or another client): retry once
            if not reply and status < 400:
                return {}
            try:
                doc = orjson.loads(raw) if raw else {}
            except ValueError:
                doc = {}
            if status >= 400:
                reason = str(doc.get("reason") or phrase) if isinstance(doc, dict) else phrase
                raise api_error(status, reason, f"{method} {path}")
            return doc if isinstance(doc, dict) else {}
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self.call("GET", path, params=params)

    async def list_page(self, path: str, params: Mapping[str, str] | None = None
                        ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        """Pages of a paginated list (limit/continue) with the list's resourceVersion."""
        query = dict(params or {})
        query.setdefault("limit", "500")
        for _ in range(100_000):
            data = await self.get(path, query)
            meta = data.get("metadata") or {}
            yield list(data.get("items") or []), str(meta.get("resourceVersion") or "")
            token = meta.get("continue")
            if not token:
                return
            query["continue"] = str(token)

    async def list_all(self, path: str, params: Mapping[str, str] | None = None,
                       page: int = 500) -> tuple[list[dict[str, Any]], str]:
        """Every item (paginated with limit/continue) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        rv = ""
        async for chunk, chunk_rv in self.list_page(path, dict(params or {}, limit=str(page))):
            items.extend(chunk)
            rv = chunk_rv or rv
        return items, rv

    async def watch(self, path: str, params: Mapping[str, str], *, timeout_seconds: int,
                    on_open: Callable[[], None] | None = None
                    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request (``ERROR`` events raised as :class:`ApiError`)."""
        query = dict(params, watch="true", timeoutSeconds=str(timeout_seconds),
                     allowWatchBookmarks="true")
        self.requests += 1
        if self.on_request is not None:
            self.on_request("WATCH", resource_of(path))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total,
                                        sock_read=timeout_seconds + 30)
        try:
            async with self._http().get(self.creds.server + path, params=query,
                                        headers=self._headers(None), timeout=timeout) as resp:
                if resp.status >= 400:
                    raw = await resp.content.read(65536)
                    try:
                        doc = orjson.loads(raw)
                    except ValueError:
                        doc = {}
                    if resp.status == 401:
                        await asyncio.to_thread(self.creds.refresh)
                    reason = str(doc.get("reason") or resp.reason) if isinstance(doc, dict) \
                        else str(resp.reason)
                    raise api_error(resp.status, reason, f"WATCH {path}")
                if on_open is not None:
                    on_open()
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    if b"\n" not in chunk:
                        if len(buf) > MAX_EVENT_BYTES:
                            raise Unreachable(0, "EventTooLarge", f"WATCH {path}")
                        continue
                    # Every complete line at once (splitting one line off at a time
                    # copied the rest of a replay's chunk for each event: quadratic).
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield _watch_event(line, path)
                    if len(buf) > MAX_EVENT_BYTES:
                        raise Unreachable(0, "EventTooLarge", f"WATCH {path}")
                if buf.strip():
                    yield _watch_event(buf, path)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(0, "Unreachable", f"WATCH {path}: {type(exc).__name__}") from None

    async def patch(self, path: str, body: Any) -> dict[str, Any]:
        return await self.call("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def put(self, path: str, body: Any) -> dict[str, Any]:
        return await self.call("PUT", path, body=body)

    async def post(self, path: str, body: Any, *, reply: bool = True) -> dict[str, Any]:
        return await self.call("POST", path, body=body, reply=reply)

    async def delete(self, path: str, body: Any = None) -> dict[str, Any]:
        return await self.call("DELETE", path, body=body)


def _watch_event(line: bytes, path: str) -> dict[str, Any]:
    try:
        event = orjson.loads(line)
    except ValueError:
        raise Unreachable(0, "BadWatchEvent", f"WATCH {path}") from None
    if not isinstance(event, dict):
        raise Unreachable(0, "BadWatchEvent", f"WATCH {path}")
    if event.get("type") == "ERROR":
        obj = event.get("object") or {}
        code = int(obj.get("code") or 500) if isinstance(obj, dict) else 500
        reason = str(obj.get("reason") or "") if isinstance(obj, dict) else ""
        raise api_error(code, reason, f"WATCH {path}")
    return event


def describe_server(creds: Credentials) -> str:
    """``https://host:port`` for messages (never a token)."""
    parts = urlsplit(creds.server)
    return f"{parts.scheme}://{parts.netloc}"
