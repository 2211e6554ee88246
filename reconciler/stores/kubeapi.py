"""A small async client for the few Kubernetes API calls the store and operator make.

Why not the ``kubernetes`` package for these: it is synchronous, so 10,000 status writes
would need a thread each trip; kopf (which does the watching) is async.  Connection
settings still come from the ``kubernetes`` package's kubeconfig / in-cluster loaders, so
a kubeconfig means exactly what it means to kubectl.  Secrets of resources are read by
the credentials layer (``KubeSecretSource``), not here.

Errors are :class:`ApiError` with the HTTP code and the Status ``reason``; the message
never includes a request body (it could be a Secret).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A failed API call: ``code`` is the HTTP status (0 when unreachable)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    server: str
    headers: dict[str, str]
    verify: ssl.SSLContext | bool
    namespace: str = "default"


def load_config(kubeconfig: str | None = None, context: str | None = None) -> ClusterConfig:
    """Connection settings from a kubeconfig file, or in-cluster when ``kubeconfig`` is None
    and the process runs in a pod (``KUBERNETES_SERVICE_HOST``)."""
    import os

    from kubernetes import client, config

    cfg = client.Configuration()
    namespace = "default"
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        ns_file = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
        if os.path.exists(ns_file):
            with open(ns_file) as fh:
                namespace = fh.read().strip() or namespace
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=cfg,
            persist_config=False)
        _contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig)
        if active and context is None:
            namespace = active.get("context", {}).get("namespace") or namespace
    headers: dict[str, str] = {"Accept": "application/json", "User-Agent": "smtpctl-operator"}
    token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    if token:
        prefix = cfg.api_key_prefix.get("authorization", "")
        headers["Authorization"] = token if token.startswith("Bearer ") or not prefix \
            else f"{prefix} {token}"
    verify: ssl.SSLContext | bool = bool(cfg.verify_ssl)
    if cfg.host.startswith("https://"):
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        verify = ctx
    return ClusterConfig(server=cfg.host.rstrip("/"), headers=headers, verify=verify,
                         namespace=namespace)


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


class KubeApi:
    """Async JSON calls against one API server; counts requests for the benchmark."""

    def __init__(self, cluster: ClusterConfig, *, timeout: float = 30,
                 max_connections: int = 32) -> None:
        self.cluster = cluster
        self.requests = 0
        self._http = httpx.AsyncClient(
            base_url=cluster.server, headers=cluster.headers, verify=cluster.verify,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str, *, body: Any = None,
                   params: dict[str, str] | None = None,
                   content_type: str = "application/json") -> dict[str, Any]:
        self.requests += 1
        headers = {"Content-Type": content_type} if body is not None else None
        try:
            resp = await self._http.request(method, path, json=body, params=params,
                                            headers=headers)
        except httpx.HTTPError as exc:
            raise ApiError(0, "Unreachable", f"{method} {path}: {type(exc).__name__}") from None
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if resp.status_code >= 400:
            reason = str(data.get("reason") or resp.reason_phrase) if isinstance(data, dict) else ""
            raise ApiError(resp.status_code, reason, f"{method} {path}")
        return data if isinstance(data, dict) else {}

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return await self.call("GET", path, params=params)

    async def list_all(self, path: str, params: dict[str, str] | None = None,
                       page: int = 500) -> tuple[list[dict[str, Any]], str]:
        """Every item (paginated with limit/continue) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        query = dict(params or {}, limit=str(page))
        rv = ""
        for _ in range(100_000):
            data = await self.get(path, query)
            items.extend(data.get("items") or [])
            meta = data.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or rv)
            token = meta.get("continue")
            if not token:
                break
            query["continue"] = str(token)
        return items, rv

    async def patch(self, path: str, body: Any) -> dict[str, Any]:
        return await self.call("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def put(self, path: str, body: Any) -> dict[str, Any]:
        return await self.call("PUT", path, body=body)

    async def post(self, path: str, body: Any) -> dict[str, Any]:
        return await self.call("POST", path, body=body)

    async def delete(self, path: str, body: Any = None) -> dict[str, Any]:
        return await self.call("DELETE", path, body=body)
