"""A Kubernetes API server emulator, faithful where our operator depends on it.

No kube-apiserver can run on the CI machines, so the operator's end-to-end tests run it
against this emulator, built on kmock (kopf's author's mock server; kopf's own tests use
it).  kmock gives us the HTTP server, request parsing, API discovery and a DSL to inject
faults (``emu['patch', kmock.subresource('status')] << 409``); its stock
``KubernetesEmulator`` is a dict-merging store, so this subclass replaces the storage
semantics with the documented API server behaviour:

* ``metadata.resourceVersion`` from one global counter; ``uid``; ``creationTimestamp``;
  ``metadata.generation`` for custom resources, bumped only when something outside
  ``metadata`` and ``status`` changes (and when deletion starts, as the server does).
* Optimistic concurrency: PUT/PATCH carrying a ``resourceVersion`` that is not current
  is ``409 Conflict``; a PUT of a custom resource without one is ``422`` (custom
  resources do not allow unconditional updates).  A no-op write does not bump anything.
* The ``status`` subresource: writes to ``/status`` change only ``.status``; writes to
  the main resource ignore ``.status``; ``.status`` is dropped on create.
* Lists carry the list ``resourceVersion``; watches resume from a ``resourceVersion``,
  replaying what happened since; after :meth:`KubeEmulator.compact` (etcd compaction) a
  watch from an older version gets an ``ERROR`` event with a ``410 Expired`` Status.
  Label selectors (equality and set based) and field selectors filter lists and
  watches; an object whose labels stop (start) matching is a ``DELETED`` (``ADDED``)
  event for that watch, as in the real server.  ``timeoutSeconds``,
  ``sendInitialEvents`` and ``limit``/``continue`` are honoured.
* Finalizers: DELETE sets ``deletionTimestamp``; the object goes away when the last
  finalizer is removed; no finalizer may be added while deleting.  Garbage collection of
  dependents by ``ownerReferences`` (background propagation).
* Secrets and Events (core v1), Leases (coordination.k8s.io/v1), Events
  (events.k8s.io/v1), and CRDs: creating a ``CustomResourceDefinition`` (or
  :meth:`install_crd`) serves its kinds, validating every write of a custom resource
  against the CRD's ``openAPIV3Schema`` with pruning, defaults and CEL rules
  (tests/support/kube_schema.py) -> ``422 Invalid`` with causes.

* Server-side apply (``application/apply-patch+yaml``) and ``managedFields`` on every
  write (tests/support/kube_ssa.py: structured-merge-diff's rules and the API server's
  field manager): conflicts (409) unless ``force``, removal of what an applier stops
  applying, create-by-apply, ``/status`` apply, update managers from ``fieldManager`` or
  the User-Agent.  ``dryRun=All`` stores nothing; ``fieldValidation`` Strict / Warn (the
  default: ``Warning`` headers) / Ignore.

* Object validation (tests/support/kube_validation.py): the name rule of each kind,
  ``generateName``, labels, annotations, finalizers, owner references; Go's decoding of
  the built-in kinds' fields we use (Secret ``data`` base64, ``int32``, ``MicroTime``);
  Secret/ConfigMap keys, size and immutability; bodies up to 3 MiB.
* The garbage collector works from an owner index: dependents whose owners are all gone
  are deleted; one with a live owner loses the dangling reference; ``Orphan`` keeps them.

Known gaps (documented in docs/operator.md): no admission webhooks, strategic-merge
patches know the merge keys of the built-in kinds we serve only, a ``continue`` page reads the
state of its own instant, built-in kinds other than Secret, ConfigMap, Lease, Event and
Namespace accept unknown fields.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import secrets
import ssl
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import jsonpatch
import yaml
from kmock import KubernetesEmulator, ResourceInfo, Server
from kmock._internal import apps, enums, parsing, rendering

from tests.support import kube_api, kube_smp, kube_ssa, kube_validation
from tests.support.kube_auth import (
    ANONYMOUS,
    Authenticator,
    User,
    authorize,
    cert_subject,
    forbidden_message,
    query_bool,
    request_info,
)
from tests.support.kube_crd import default_crd, validate_crd
from tests.support.kube_schema import StructuralSchema
from tests.support.kube_selectors import parse_field_selector, parse_label_selector

Obj = dict[str, Any]
ResKey = tuple[str, str, str]  # group, version, plural


@dataclass
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    generation: bool = False
    schema: StructuralSchema | None = None
    unconditional_update: bool = True
    columns: tuple[dict[str, Any], ...] = ()
    fields_type: kube_ssa.Type | None = None

    def field_manager(self, subresource: str | None) -> kube_ssa.FieldManager:
        """The field manager of the resource or its ``/status`` (with the fields each
        strategy resets: ``status`` on the main resource when a status subresource exists,
        ``metadata`` and ``spec`` on ``/status``)."""
        if self.fields_type is None:
            self.fields_type = kube_ssa.crd_type(self.schema.schema) if self.schema \
                is not None else kube_ssa.builtin_type(self.group, self.kind)
        reset: kube_ssa.FieldSet
        if subresource == "status":
            reset = frozenset([(("f", "metadata"),), (("f", "spec"),)])
        elif self.status_subresource:
            reset = frozenset([(("f", "status"),)])
        else:
            reset = kube_ssa.EMPTY
        return kube_ssa.FieldManager(self.fields_type, self.api_version, subresource or "",
                                     reset)

    @property
    def key(self) -> ResKey:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


class ApiError(Exception):
    """An API failure rendered as a ``v1 Status`` body with the right HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def body(self) -> Obj:
        out: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            out["details"] = self.details
        return out


# Serving concurrently.  The real API server serves each request on its own goroutine, so a
# Lease renewal never waits for a 10,000-object LIST to be encoded.  The emulator has one
# event loop; what makes a request big (encoding a list, filtering its objects, replaying a
# watch) is done in slices, and the loop serves whatever else is ready between two slices.
# A slice ends after about SLICE_BYTES of a list or of watch events, or SLICE_OBJECTS
# objects filtered.  Every slice boundary increments KubeEmulator.slices.
SLICE_BYTES = 16 * 1024
SLICE_OBJECTS = 512


NAMESPACES: ResKey = ("", "v1", "namespaces")
IMMORTAL_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})


def _event_line(type_: str, obj: Obj) -> bytes:
    """One watch event as the stream carries it (a JSON document and a newline)."""
    return json.dumps({"type": type_, "object": obj}).encode() + b"\n"


@dataclass
class _Listing:
    """A list (or Table) answer rendered in slices: ``head`` is the body without the
    ``field`` holding the items (``items``; ``rows`` for a Table), which comes last."""
    head: Obj
    field: str
    items: list[Any]

    def __await__(self) -> Generator[Any, None, Obj]:
        """While a test has added a kmock reaction of its own, requests go through kmock's
        renderer, which awaits a payload it does not know: there the list is one JSON
        document (before, every list answered 500 "Unsupported payload type")."""
        return self._whole().__await__()

    async def _whole(self) -> Obj:
        return {**self.head, self.field: self.items}


async def _call(handler: Callable[[rendering.Request], Any], request: rendering.Request) -> Any:
    """A handler's payload: coroutines are awaited, async generators passed as streams."""
    result = handler(request)
    if asyncio.iscoroutine(result):
        return await result
    return result


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Event:
    rv: int
    type: str
    obj: Obj
    prev: Obj | None
    # the event as the stream carries it, by event type (a watch whose selector the object
    # starts or stops matching sends it as ADDED or DELETED): encoded once for every watcher
    lines: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def line(self, type_: str) -> bytes:
        encoded = self.lines.get(type_)
        if encoded is None:
            encoded = self.lines[type_] = _event_line(type_, self.obj)
        return encoded


BUILTIN_KINDS = (
    Kind("", "v1", "namespaces", "Namespace", namespaced=False),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "configmaps", "ConfigMap"),
    Kind("", "v1", "events", "Event"),
    Kind("events.k8s.io", "v1", "events", "Event"),
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
    Kind("", "v1", "serviceaccounts", "ServiceAccount"),
    Kind("", "v1", "services", "Service", status_subresource=True),
    Kind("apps", "v1", "deployments", "Deployment", status_subresource=True, generation=True),
    Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget",
         status_subresource=True, generation=True),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    Kind("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
         namespaced=False),
    Kind(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        status_subresource=True,
        generation=True,
    ),
)


_parse_path = parsing.parse_path
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"


def _parse_path_with_namespaces(path: str) -> parsing.ParsedPath:
    """kmock reads ``/api/v1/namespaces/NAME`` as "namespace NAME, no resource" (and fails
    on ``/api/v1/namespaces``); the API server means the cluster-scoped Namespace object."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
    ):
        name = parts[3] if len(parts) > 3 else None
        sub = parts[4] if len(parts) > 4 else None
        return parsing.ParsedPath("", "v1", "namespaces", None, name, sub)
    return _parse_path(path)


# The one place we patch kmock: its path parser, for the Namespace resource (kopf lists and
# watches namespaces).  Only this emulator uses kmock in this code base.
parsing.parse_path = _parse_path_with_namespaces


FIELD_MANAGER_MAX = 128  # FieldManagerMaxLength
MAX_REQUEST_BODY = 3 * 1024 * 1024  # apiserver's MaxRequestBodyBytes


@dataclass
class _WriteCtx:
    """One write request's options: field manager, ``fieldValidation``, ``dryRun``,
    ``force``; warnings go back in ``Warning`` headers."""

    manager: str = ""
    field_validation: str = "Warn"
    dry_run: bool = False
    force: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)


def _warning_header(text: str) -> str:
    """RFC 7234 warn-code 299 (what ``warning.AddWarning`` puts on the response)."""
    return '299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _random_suffix(n: int) -> str:
    """``utilrand.String``: consonants and digits that cannot spell words."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _drop_nulls(value: Any) -> Any:
    """A ``null`` decodes to a Go zero value, which is omitted (built-in kinds)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _set_managed(obj: Obj, managed: kube_ssa.Managed) -> None:
    entries = kube_ssa.encode_managed_fields(managed)
    if entries:
        obj["metadata"]["managedFields"] = entries
    else:
        obj["metadata"].pop("managedFields", None)


def _managed_for_update(old: Obj, incoming: Obj, subresource: str | None) -> kube_ssa.Managed:
    """``decodeLiveOrNew``: a request may carry managedFields (``[]`` or ``[{}]`` resets
    them); subresources and malformed ones use the live object's."""

    def live() -> kube_ssa.Managed:
        try:
            return kube_ssa.decode_managed_fields(old["metadata"].get("managedFields") or [])
        except ValueError:
            return {}

    requested = (incoming.get("metadata") or {}).get("managedFields")
    if subresource is not None or requested is None:
        return live()
    if kube_ssa.is_reset_request(requested):
        return {}
    try:
        decoded = kube_ssa.decode_managed_fields(requested)
    except ValueError:
        return live()
    return decoded or live()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@attrs.define(kw_only=True)
class KubeEmulator(KubernetesEmulator):
    """The emulated API server (see the module docstring for what it guarantees)."""

    history_limit: int = 500_000
    _kinds: dict[ResKey, Kind] = attrs.field(factory=dict, init=False)
    _data: dict[ResKey, dict[tuple[str, str], Obj]] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=1000, init=False)
    _hist: dict[ResKey, list[_Event]] = attrs.field(factory=dict, init=False)
    _hist_rvs: dict[ResKey, list[int]] = attrs.field(factory=dict, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _wake: dict[ResKey, asyncio.Event] = attrs.field(factory=dict, init=False)
    _epoch: int = attrs.field(default=0, init=False)
    # Bounded: the last writes for tests to inspect; counters for statistics (issue 15: an
    # unbounded request log scanned per request blocked the loop for seconds at 40k).
    request_log_limit: int = 2000
    write_log: collections.deque[tuple[str, str, str, str]] = attrs.field(
        factory=lambda: collections.deque(maxlen=10_000), init=False)
    _writes_by_plural: dict[str, int] = attrs.field(factory=dict, init=False)
    _writes_total: int = attrs.field(default=0, init=False)
    _requests_by_method: dict[str, int] = attrs.field(factory=dict, init=False)
    # Slices (see SLICE_BYTES): how many times a big request gave the loop back, and how
    # many answers are being rendered in slices right now (tests read both).
    slices: int = attrs.field(default=0, init=False)
    rendering_in_slices: int = attrs.field(default=0, init=False)
    _builtin_payloads: int = attrs.field(default=0, init=False)
    _crd_of: dict[ResKey, str] = attrs.field(factory=dict, init=False)
    _by_uid: dict[str, tuple[ResKey, tuple[str, str]]] = attrs.field(factory=dict, init=False)
    _dependents: dict[str, set[tuple[ResKey, tuple[str, str]]]] = attrs.field(
        factory=dict, init=False)
    # Strict mode: every request is authenticated (bearer token or client certificate) and
    # authorized by RBAC from the Role/ClusterRole/binding objects stored here.
    # (Not kmock's ``strict``, which re-raises served errors at exit.)
    secure: bool = True
    authenticator: Authenticator = attrs.field(factory=Authenticator)
    # Set by the entry points in strict mode: the cluster CA and a cluster-admin token.
    tls: ClusterTLS | None = attrs.field(default=None, init=False)
    admin_token: str = attrs.field(default="", init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[enums.method.PUT] << self._serve_replace
        self.fallback["get /_emulator/stats"] << self._serve_stats
        self._builtin_payloads = len(self._payloads)
        for kind in BUILTIN_KINDS:
            self.register(Kind(**kind.__dict__))
        for ns in ("default", "kube-system"):
            self._ensure_namespace(ns)

    def _ensure_namespace(self, name: str) -> None:
        """Namespaces come into being on first use (the real server would say 404 until
        one creates them; tests here would only be noisier for it)."""
        key: ResKey = ("", "v1", "namespaces")
        if ("", name) in self._data[key]:
            return
        kind = self._kinds[key]
        obj: Obj = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(),
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._data[key][("", name)] = obj
        self._record(kind, "ADDED", obj, None)

    # --- kinds and CRDs ----------------------------------------------------------------
    def register(self, kind: Kind) -> None:
        self._kinds[kind.key] = kind
        self._data.setdefault(kind.key, {})
        self._hist.setdefault(kind.key, [])
        self._hist_rvs.setdefault(kind.key, [])
        verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
        self.resources[f"{kind.api_version}/{kind.plural}"] = ResourceInfo(
            kind=kind.kind,
            namespaced=kind.namespaced,
            singular=kind.kind.lower(),
            verbs=verbs,
            subresources={"status"} if kind.status_subresource else set(),
        )

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        """Create a CRD as an administrator would (the object is stored, Established, and
        its kinds served), without going through HTTP.

        The CRD must pass the API server's admission (tests/support/kube_crd.py): a CRD a
        real server would refuse raises ``ValueError`` with its causes."""
        crd = default_crd(copy.deepcopy(dict(crd)))
        causes = validate_crd(crd)
        if causes:
            raise ValueError("; ".join(c["message"] for c in causes))
        kind = self._kinds[("apiextensions.k8s.io", "v1", "customresourcedefinitions")]
        if ("", crd["metadata"]["name"]) in self._data[kind.key]:
            raise ValueError(f'customresourcedefinitions "{crd["metadata"]["name"]}" already '
                             f"exists")
        self._create(kind, None, crd, _WriteCtx(manager="kube-emulator"))

    def _serve_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve a stored CRD's kinds (what the server does once a CRD is Established)."""
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            self._crd_of[(spec["group"], version["name"], spec["names"]["plural"])] = \
                crd["metadata"]["name"]
            self.register(
                Kind(
                    group=spec["group"],
                    version=version["name"],
                    plural=spec["names"]["plural"],
                    kind=spec["names"]["kind"],
                    namespaced=spec.get("scope") == "Namespaced",
                    status_subresource="status" in (version.get("subresources") or {}),
                    generation=True,
                    unconditional_update=False,
                    schema=StructuralSchema(schema) if schema else None,
                    columns=tuple(version.get("additionalPrinterColumns") or ()),
                )
            )

    def install_crd_files(self, directory: Path) -> int:
        count = 0
        for path in sorted(directory.glob("*.y*ml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.install_crd(doc)
                    count += 1
        return count

    def _kind(self, request: rendering.Request) -> Kind:
        res = request.resource
        key = (res.group, res.version, res.plural) if res is not None else None
        kind = self._kinds.get(key) if key is not None else None  # type: ignore[arg-type]
        if kind is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return kind

    # --- direct access for tests (not over HTTP) -------------------------------------
    @property
    def resource_version(self) -> int:
        return self._rv

    def get_object(self, api_version: str, plural: str, namespace: str, name: str) -> Obj | None:
        group, _, version = api_version.rpartition("/")
        obj = self._data.get((group, version, plural), {}).get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(
        self, api_version: str, plural: str, namespace: str | None = None
    ) -> list[Obj]:
        group, _, version = api_version.rpartition("/")
        return [
            copy.deepcopy(o)
            for (ns, _n), o in sorted(self._data.get((group, version, plural), {}).items())
            if namespace is None or ns == namespace
        ]

    def compact(self) -> int:
        """Forget all watch history up to now (etcd compaction); older watches get 410."""
        self._compacted_rv = self._rv
        for key in self._hist:
            self._hist[key] = []
            self._hist_rvs[key] = []
        return self._rv

    def interrupt_watches(self) -> None:
        """Close every open watch stream (a dropped connection or an API server restart)."""
        self._epoch += 1
        for key in list(self._wake):
            self._wake_up(key)

    def create_object(self, doc: Obj, manager: str = "test") -> Obj:
        """Store a new object as a cluster-admin's POST would (admission, validation,
        managedFields, watch events), without the HTTP round trip: for tests that need
        many objects quickly."""
        kind = next(k for k in self._kinds.values()
                    if (k.api_version, k.kind) == (doc["apiVersion"], doc["kind"]))
        return self._create(kind, (doc.get("metadata") or {}).get("namespace"), doc,
                            _WriteCtx(manager=manager))

    async def _slice(self) -> None:
        """End a slice of a big request: the loop serves what else is ready first."""
        self.slices += 1
        await asyncio.sleep(0)

    async def _write_listing(self, request: rendering.Request, listing: _Listing,
                             headers: Mapping[str, str] | None = None) -> Any:
        """Stream a list answer, one SLICE_BYTES slice at a time (the bytes are the same
        JSON document ``json.dumps`` makes of the whole body)."""
        import aiohttp.web

        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(
            headers={"Content-Type": "application/json", **(headers or {})})
        head = json.dumps(listing.head)
        parts = [head[:-1], ", " if listing.head else "", json.dumps(listing.field), ": ["]
        size = 0
        self.rendering_in_slices += 1
        try:
            await response.prepare(raw)
            for i, item in enumerate(listing.items):
                text = json.dumps(item)
                parts.append(", " + text if i else text)
                size += len(text)
                if size >= SLICE_BYTES:
                    await response.write("".join(parts).encode())
                    parts.clear()
                    size = 0
                    await self._slice()
            parts.append("]}")
            await response.write("".join(parts).encode())
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away mid-list
        finally:
            self.rendering_in_slices -= 1
        return response

    def stats(self) -> dict[str, Any]:
        """Request and write counts (benchmarks read them over ``GET /_emulator/stats``)."""
        by_method = dict(self._requests_by_method)
        return {"requests": sum(by_method.values()), "by_method": by_method,
                "writes": self._writes_total, "writes_by_plural": dict(self._writes_by_plural),
                "resourceVersion": self._rv}

    async def _serve_stats(self, request: rendering.Request) -> Any:
        return self.stats()

    # --- credentials for the tests' own clients (strict mode) ------------------------
    def client_ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context trusting the cluster CA (None for a lenient, plain-HTTP one)."""
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca_file))

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}

    def http_kwargs(self) -> dict[str, Any]:
        """``httpx.Client(**emu.http_kwargs())``: trust the CA, authenticate as admin."""
        ctx = self.client_ssl_context()
        return {"headers": self.admin_headers(), **({"verify": ctx} if ctx else {})}

    def kubeconfig(self, url: str, namespace: str = "default") -> str:
        """A cluster-admin kubeconfig (the CA and an admin token in strict mode)."""
        if self.tls is None:
            return kubeconfig_text(url, namespace)
        return kubeconfig_text(url, namespace, token=self.admin_token,
                               ca_file=self.tls.ca_file)

    def create_namespaces(self, names: Iterable[str]) -> None:
        """Namespaces an administrator created before the test (strict mode needs them)."""
        for name in names:
            self._ensure_namespace(name)

    def _become_cluster(self, tls: ClusterTLS | None) -> None:
        self.tls = tls
        if self.secure:
            self.admin_token = self.authenticator.add_token(
                User("kubernetes-admin", ("system:masters",)))

    # --- authentication and authorization (strict mode) ---------------------------------
    def _rbac_lookup(self, plural: str, namespace: str, name: str) -> list[Obj]:
        objs = self._data.get(("rbac.authorization.k8s.io", "v1", plural), {})
        if name:
            obj = objs.get((namespace, name))
            return [obj] if obj is not None else []
        return [o for (ns, _n), o in objs.items() if ns == namespace]

    def check_access(self, user: User, method: str, path: str,
                     query: Mapping[str, str]) -> ApiError | None:
        """None if ``user`` may make this request, else the 403 the server answers."""
        info = request_info(method, path, query)
        if authorize(user, info, self._rbac_lookup):
            return None
        details: Obj = {"kind": info.resource} if info.resource else {}
        if info.name:
            details["name"] = info.name
        if info.resource_request:
            details["group"] = info.api_group
        return ApiError(403, "Forbidden", forbidden_message(user, info), details)

    async def __call__(self, raw_request: Any) -> Any:
        # The API server reads bodies of up to 3 MiB (MaxRequestBodyBytes); aiohttp's
        # default is 1 MiB, which would refuse a Secret the server accepts.
        raw_request._client_max_size = MAX_REQUEST_BODY
        if not raw_request.path.startswith("/_emulator"):
            watch = query_bool(raw_request.query.get("watch"))
            key = f"{raw_request.method} {'watch' if watch else 'call'}"
            self._requests_by_method[key] = self._requests_by_method.get(key, 0) + 1
        if len(self._requests) > self.request_log_limit:  # keep the newest half
            del self._requests[: len(self._requests) - self.request_log_limit // 2]
        if self.secure:
            import aiohttp.web

            transport = raw_request.transport
            peercert = transport.get_extra_info("peercert") if transport is not None else None
            user = self.authenticator.authenticate(raw_request.headers.get("Authorization"),
                                                   cert_subject(peercert))
            if user is None or (user is ANONYMOUS and raw_request.path.rstrip("/") not in
                                ("/version", "/healthz", "/livez", "/readyz")):
                err = ApiError(401, "Unauthorized", "Unauthorized")
                return aiohttp.web.json_response(err.body(), status=401)
            denied = self.check_access(user, raw_request.method, raw_request.path,
                                       raw_request.query)
            if denied is not None:
                return aiohttp.web.json_response(denied.body(), status=403)
        return await super().__call__(raw_request)

    # --- the HTTP side -----------------------------------------------------------------
    def _crd_names(self) -> dict[tuple[str, str], Obj]:
        out: dict[tuple[str, str], Obj] = {}
        for crd in self._data[("apiextensions.k8s.io", "v1", "customresourcedefinitions")].values():
            out[(crd["spec"]["group"], crd["spec"]["names"]["plural"])] = crd["spec"]["names"]
        return out

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for kind in self._kinds.values():
            versions = groups.setdefault(kind.group, [])
            if kind.version not in versions:
                versions.append(kind.version)
        return groups

    def _kinds_of(self, group: str, version: str) -> list[Kind]:
        return [k for k in self._kinds.values() if (k.group, k.version) == (group, version)]

    def _api_surface(self, request: rendering.Request) -> Obj | None:
        """Discovery, /version and OpenAPI (tests/support/kube_api.py), or None."""
        if request.method != enums.method.GET:
            return None
        path = request.url.path.rstrip("/")
        parts = path.strip("/").split("/")
        if path == "/version":
            return kube_api.version_body()
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": request.url.host or ""}]}
        if path == "/api/v1" or (len(parts) == 3 and parts[0] == "apis"):
            group, version = ("", "v1") if path == "/api/v1" else (parts[1], parts[2])
            kinds = self._kinds_of(group, version)
            if not kinds:
                return None
            return {"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": f"{group}/{version}" if group else version,
                    "resources": kube_api.resource_entries(kinds, self._crd_names())}
        groups = {g: v for g, v in self._group_versions().items() if g}
        if path == "/apis" or (len(parts) == 2 and parts[0] == "apis"):
            def group_obj(name: str, versions: list[str]) -> Obj:
                vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
                return {"name": name, "versions": vs, "preferredVersion": vs[0]}
            if path == "/apis":
                return {"kind": "APIGroupList", "apiVersion": "v1",
                        "groups": [group_obj(g, v) for g, v in sorted(groups.items())]}
            if parts[1] not in groups:
                return None
            return {"kind": "APIGroup", "apiVersion": "v1", **group_obj(parts[1], groups[parts[1]])}
        if path == "/openapi/v3":
            # kube-openapi's handler3: each group-version's URL carries the hash of its
            # document (upper-case hex SHA-512), so a client's cache keyed by URL (kubectl's
            # ~/.kube/cache/http) never serves another spec for the same URL, even from
            # another server on a reused port (before: the resourceVersion, equal across
            # emulators after the same number of writes).
            out: Obj = {"paths": {}}
            for g, versions in self._group_versions().items():
                for v in versions:
                    key = f"apis/{g}/{v}" if g else f"api/{v}"
                    doc = kube_api.openapi_v3(g, v, self._kinds_of(g, v), {})
                    digest = hashlib.sha512(json.dumps(doc).encode()).hexdigest().upper()
                    out["paths"][key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
            return out
        if path.startswith("/openapi/v3/api"):
            rest = path.removeprefix("/openapi/v3/").split("/")
            group, version = ("", rest[1]) if rest[0] == "api" and len(rest) == 2 else (
                (rest[1], rest[2]) if len(rest) == 3 else ("", ""))
            kinds = self._kinds_of(group, version)
            return kube_api.openapi_v3(group, version, kinds, {}) if kinds else None
        if path == "/openapi/v2":
            return kube_api.openapi_v2(
                kube_api.openapi_v3(g, v, self._kinds_of(g, v), {})
                for g, versions in self._group_versions().items() for v in versions)
        return None

    async def _handle(self, request: rendering.Request) -> Any:
        surface = self._api_surface(request)
        if surface is not None:
            return await rendering.Response(payload=surface)(request)
        ctype = (request.headers.get("Content-Type") or "").lower()
        if "protobuf" in ctype:
            raise ApiError(415, "UnsupportedMediaType",
                           f'the body of the request was in an unknown format - accepted media '
                           f'types include: application/json, application/yaml, '
                           f'application/apply-patch+yaml (got "{ctype}"; this API server '
                           f'stand-in speaks JSON only)')
        # Skip the stock emulator's dict-merging bookkeeping: our handlers own the state.
        # kmock matches every request against every reaction (~20 ms per request); while a
        # test has added no reaction of its own, API calls go straight to our handlers.
        if len(self._payloads) == self._builtin_payloads and request.resource is not None \
                and request.resource.plural:
            handler = self._direct(request)
            if handler is not None:
                headers = {"Content-Type": "application/json"} \
                    if handler == self._serve_watch else None
                payload = await _call(handler, request)
                if isinstance(payload, _Listing):
                    return await self._write_listing(request, payload)
                return await rendering.Response(payload=payload, headers=headers)(request)
        return await apps.RawHandler._handle(self, request)

    def _direct(self, request: rendering.Request) -> Callable[[rendering.Request], Any] | None:
        action = request.action
        if request.method == enums.method.GET:
            # RequestInfoFactory and ListResource: a collection GET is a watch when its
            # first ``watch`` value reads as true (query_bool: watch=1, watch=True,
            # watch=yes, watch=); a GET of one object is a get whatever ``watch`` says
            # (kmock calls ``?watch=true`` a WATCH even with a name).
            if request.name is not None:
                return self._serve_fetch
            return self._serve_watch if query_bool(request.url.query.get("watch")) \
                else self._serve_list
        if request.method == enums.method.PUT and request.name is not None:
            return self._serve_replace
        return {
            enums.action.LIST: self._serve_list, enums.action.FETCH: self._serve_fetch,
            enums.action.CREATE: self._serve_create, enums.action.UPDATE: self._serve_update,
            enums.action.DELETE: self._serve_delete,
        }.get(action) if action is not None else None

    async def _render_error(self, exc: Exception) -> Any:
        import aiohttp.web

        if isinstance(exc, ApiError):
            return aiohttp.web.json_response(exc.body(), status=exc.code)
        return await super()._render_error(exc)

    def _not_found(self, kind: Kind, name: str) -> ApiError:
        return ApiError(
            404,
            "NotFound",
            f'{kind.qualified} "{name}" not found',
            {"name": name, "group": kind.group, "kind": kind.plural},
        )

    def _conflict(self, kind: Kind, name: str) -> ApiError:
        return ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            {"name": name, "group": kind.group, "kind": kind.plural},
        )

    def _invalid(self, kind: Kind, name: str, causes: list[dict[str, str]]) -> ApiError:
        # field.ErrorList.ToAggregate(): one error as is, several in brackets
        text = causes[0]["message"] if len(causes) == 1 else \
            "[" + ", ".join(c["message"] for c in causes) + "]"
        qualified = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
        return ApiError(
            422,
            "Invalid",
            f'{qualified} "{name}" is invalid: {text}',
            {"name": name, "group": kind.group, "kind": kind.kind, "causes": causes},
        )

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        kind = self._kind(request)
        obj = self._data[kind.key].get((request.namespace or "", request.name or ""))
        if obj is None:
            raise self._not_found(kind, request.name or "")
        if kube_api.wants_table(request.headers.get("Accept")):
            return kube_api.table(kind, list(kind.columns), [obj],
                                  {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                  request.params.get("includeObject", "Metadata"))
        return obj

    def _filters(self, request: rendering.Request) -> Callable[[Obj], bool]:
        try:
            labels = parse_label_selector(request.params.get("labelSelector"))
            fields = parse_field_selector(request.params.get("fieldSelector"))
        except ValueError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        ns, name = request.namespace, request.name

        def match(obj: Obj) -> bool:
            meta = obj.get("metadata", {})
            if ns is not None and meta.get("namespace") != ns:
                return False
            if name is not None and meta.get("name") != name:
                return False
            return labels(meta.get("labels") or {}) and fields(obj)

        return match

    async def _serve_list(self, request: rendering.Request) -> Any:
        kind = self._kind(request)
        match = self._filters(request)
        query = request.url.query
        selected = bool(query.get("labelSelector") or query.get("fieldSelector"))
        try:
            limit = int(query.get("limit") or 0)
            cont = query.get("continue")
            after = tuple(json.loads(base64.b64decode(cont, validate=True))) if cont else None
        except ValueError as exc:  # binascii.Error and JSONDecodeError are ValueErrors
            raise ApiError(400, "BadRequest", f"invalid list options: {exc}") from None
        if after is not None and (len(after) != 2 or not all(isinstance(a, str) for a in after)):
            raise ApiError(400, "BadRequest", "continue key is not valid")
        # The objects as of the list's resourceVersion, taken at one instant: a write
        # stores a new object and never changes a stored one, so the filtering and the
        # encoding can go on in slices while other requests are served.
        entries = sorted(self._data[kind.key].items())
        meta: Obj = {"resourceVersion": str(self._rv)}
        start = 0 if after is None else bisect.bisect_right(entries, after, key=lambda e: e[0])
        items: list[Obj] = []
        more = 0  # matching objects after the page
        for i in range(start, len(entries)):
            if (i - start) % SLICE_OBJECTS == SLICE_OBJECTS - 1:
                await self._slice()
            obj = entries[i][1]
            if not match(obj):
                continue
            if limit and len(items) == limit:
                more += 1
                if selected:
                    break  # etcd3 store: no remainingItemCount for a filtered list
                continue
            items.append(obj)
        if more:
            last = items[-1]["metadata"]
            meta["continue"] = base64.b64encode(
                json.dumps([last.get("namespace", ""), last["name"]]).encode()
            ).decode()
            if not selected:
                meta["remainingItemCount"] = more
        if kube_api.wants_table(request.headers.get("Accept")):
            table = kube_api.table(kind, list(kind.columns), items, meta,
                                   request.params.get("includeObject", "Metadata"))
            return _Listing({k: v for k, v in table.items() if k != "rows"}, "rows",
                            table["rows"])
        return _Listing({"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                         "metadata": meta}, "items", items)

    def _wake_up(self, key: ResKey) -> None:
        old = self._wake.get(key)
        self._wake[key] = asyncio.Event()
        if old is not None:
            old.set()

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        kind = self._kind(request)
        match = self._filters(request)
        params = request.params
        timeout = float(params.get("timeoutSeconds") or 0) or None
        raw_rv = params.get("resourceVersion")
        initial = query_bool(request.url.query.get("sendInitialEvents"))
        yield b""  # send the headers now: a watch with nothing to say is still a stream
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        epoch = self._epoch
        size = 0  # bytes sent in this slice (events are encoded here, one line each)
        # Events go out in batches: every event ready is written with the others in one
        # chunk (one TLS record, one send) of up to about SLICE_BYTES, not one each.
        batch: list[bytes] = []
        if raw_rv in (None, "", "0") or initial:
            cursor = self._rv
            for _k, obj in sorted(self._data[kind.key].items()):  # one instant, as a list
                if match(obj):
                    line = _event_line("ADDED", obj)
                    batch.append(line)
                    size += len(line)
                    if size >= SLICE_BYTES:
                        yield b"".join(batch)
                        batch.clear()
                        size = 0
                        await self._slice()
            if batch:
                yield b"".join(batch)
                batch.clear()
            if initial:
                yield {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": kind.kind,
                        "apiVersion": kind.api_version,
                        "metadata": {
                            "resourceVersion": str(cursor),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    },
                }
        else:
            try:
                cursor = int(raw_rv)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {raw_rv!r}") from None
        while True:
            if cursor < self._compacted_rv:
                yield {
                    "type": "ERROR",
                    "object": ApiError(
                        410, "Expired", f"too old resource version: {cursor} ({self._compacted_rv})"
                    ).body(),
                }
                return
            if epoch != self._epoch:
                return
            waiter = self._wake.setdefault(kind.key, asyncio.Event())
            rvs, hist = self._hist_rvs[kind.key], self._hist[kind.key]
            for ev in hist[bisect.bisect_right(rvs, cursor) :]:
                cursor = ev.rv
                now, before = match(ev.obj), ev.prev is not None and match(ev.prev)
                if ev.type == "MODIFIED" and now and not before:
                    line = ev.line("ADDED")
                elif ev.type == "MODIFIED" and before and not now:
                    line = ev.line("DELETED")
                elif now:
                    line = ev.line(ev.type)
                else:
                    continue
                batch.append(line)
                size += len(line)
                if size >= SLICE_BYTES:
                    yield b"".join(batch)
                    batch.clear()
                    size = 0
                    await self._slice()
                    if epoch != self._epoch:
                        return
            if batch:
                yield b"".join(batch)
                batch.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)

    # --- writes ------------------------------------------------------------------------
    def _record(self, kind: Kind, type_: str, obj: Obj, prev: Obj | None) -> None:
        hist, rvs = self._hist[kind.key], self._hist_rvs[kind.key]
        hist.append(_Event(int(obj["metadata"]["resourceVersion"]), type_, obj, prev))
        rvs.append(hist[-1].rv)
        if len(hist) > self.history_limit:
            drop = len(hist) - self.history_limit
            self._compacted_rv = max(self._compacted_rv, rvs[drop - 1])
            del hist[:drop], rvs[:drop]
        self.write_log.append(
            (type_, kind.plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        )
        self._writes_total += 1
        self._writes_by_plural[kind.plural] = self._writes_by_plural.get(kind.plural, 0) + 1
        self._index_owners(kind, type_, obj, prev)
        self._wake_up(kind.key)

    def _index_owners(self, kind: Kind, type_: str, obj: Obj, prev: Obj | None) -> None:
        """The garbage collector's graph: uid -> object, owner uid -> dependents (so
        deleting an owner does not scan every object of every kind)."""
        meta = obj["metadata"]
        ref = (kind.key, (meta.get("namespace", ""), meta["name"]))
        if prev is not None:
            for owner in prev["metadata"].get("ownerReferences") or []:
                deps = self._dependents.get(str(owner.get("uid")))
                if deps is not None:
                    deps.discard(ref)
                    if not deps:
                        del self._dependents[str(owner.get("uid"))]
        if type_ == "DELETED":
            self._by_uid.pop(meta.get("uid", ""), None)
            return
        self._by_uid[meta["uid"]] = ref
        for owner in meta.get("ownerReferences") or []:
            self._dependents.setdefault(str(owner.get("uid")), set()).add(ref)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _admit(self, kind: Kind, obj: Obj, old: Obj | None, ctx: _WriteCtx) -> Obj:
        """Decode, then prune, default and validate (the API server's order)."""
        if kind.schema is None:
            try:
                kube_validation.decode(kind.group, kind.kind, obj)
            except kube_validation.DecodeError as exc:
                raise ApiError(400, "BadRequest", f'{kind.kind} in version "{kind.version}" '
                                                  f"cannot be handled as a {kind.kind}: {exc}"
                               ) from None
            obj, unknown = kube_validation.split_unknown(kind.group, kind.kind, obj)
            self._unknown_fields(kind, unknown, ctx)
        if kind.key == ("", "v1", "secrets"):
            # The server folds the write-only stringData into base64 data.
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                obj["data"] = {
                    **(obj.get("data") or {}),
                    **{k: base64.b64encode(v.encode()).decode() for k, v in string_data.items()},
                }
            obj.setdefault("type", "Opaque")
        if kind.schema is None:
            obj = _drop_nulls(obj)  # a null decodes to Go's zero value: omitted
            causes = kube_validation.validate_builtin(kind.group, kind.kind, obj, old)
            if old is not None:
                causes = kube_validation.validate_common(
                    obj.get("metadata") or {},
                    kube_validation.uses_kube_finalizer_rule(kind.group, custom=False)
                ) + causes
            if causes:
                raise self._invalid(kind, obj["metadata"].get("name", ""), causes)
            return obj
        obj, unknown = kind.schema.admit(obj)  # prune, drop nulls, default
        self._unknown_fields(kind, unknown, ctx)
        causes = kind.schema.validate(obj, old)
        if old is not None:
            causes = kube_validation.validate_common(obj.get("metadata") or {},
                                                     kube_finalizers=False) + causes
        if causes:
            raise self._invalid(kind, obj["metadata"].get("name", ""), causes)
        ctx.warnings += kube_validation.finalizer_warnings(
            obj.get("metadata") or {}, None if old is None else old.get("metadata"))
        return obj

    @staticmethod
    def _unknown_fields(kind: Kind, unknown: list[str], ctx: _WriteCtx) -> None:
        """``fieldValidation``: Strict refuses unknown fields, Warn (the default) names
        them in Warning headers, Ignore says nothing; they are dropped either way."""
        if unknown and ctx.field_validation == "Strict":
            detail = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise ApiError(400, "BadRequest",
                           f'{kind.kind} in version "{kind.version}" cannot be handled as a '
                           f"{kind.kind}: strict decoding error: {detail}")
        if ctx.field_validation == "Warn":
            ctx.warnings += [f'unknown field "{u}"' for u in unknown]

    def _context(self, request: rendering.Request, options_kind: str,
                 patch_type: str = "") -> _WriteCtx:
        """The write options (``CreateOptions``/``UpdateOptions``/``PatchOptions``),
        validated as ``apimachinery/pkg/apis/meta/v1/validation`` does."""
        params = request.params
        manager = str(params.get("fieldManager") or "")
        causes: list[dict[str, str]] = []
        if patch_type == "application/apply-patch+yaml":
            if not manager:
                causes.append({"reason": "FieldValueRequired", "field": "fieldManager",
                               "message": "fieldManager: Required value: is required for "
                                          "apply patch"})
        elif params.get("force") is not None:
            causes.append({"reason": "FieldValueForbidden", "field": "force",
                           "message": "force: Forbidden: may not be specified for non-apply "
                                      "patch"})
        if len(manager) > FIELD_MANAGER_MAX:
            causes.append({"reason": "FieldValueTooLong", "field": "fieldManager",
                           "message": f"fieldManager: Too long: may not be more than "
                                      f"{FIELD_MANAGER_MAX} bytes"})
        for i, ch in enumerate(manager):
            if not ch.isprintable():
                causes.append({"reason": "FieldValueInvalid", "field": "fieldManager",
                               "message": f"fieldManager: Invalid value: {json.dumps(manager)}"
                                          f": invalid character U+{ord(ch):04X} (at position "
                                          f"{i})"})
        dry_run = [str(v) for v in request.url.query.getall("dryRun", [])]
        for value in dry_run:
            if value != "All":
                causes.append({"reason": "FieldValueNotSupported", "field": "dryRun",
                               "message": f'dryRun: Unsupported value: ["{value}"]: '
                                          f'supported values: "All"'})
        validation = str(params.get("fieldValidation") or "Warn")
        if validation not in ("Ignore", "Warn", "Strict"):
            causes.append({"reason": "FieldValueNotSupported", "field": "fieldValidation",
                           "message": f'fieldValidation: Unsupported value: "{validation}": '
                                      f'supported values: "Ignore", "Strict", "Warn"'})
        if causes:
            text = causes[0]["message"] if len(causes) == 1 else \
                "[" + ", ".join(c["message"] for c in causes) + "]"
            raise ApiError(422, "Invalid", f'{options_kind}.meta.k8s.io "" is invalid: {text}',
                           {"group": "meta.k8s.io", "kind": options_kind, "causes": causes})
        if not manager:  # managerOrUserAgent: the User-Agent up to its first "/"
            agent = (request.headers.get("User-Agent") or "").split("/")[0]
            manager = "".join(c for c in agent if c.isprintable())[:FIELD_MANAGER_MAX]
        return _WriteCtx(manager=manager, field_validation=validation, dry_run=bool(dry_run),
                         force=query_bool(request.url.query.get("force")))

    def _respond(self, ctx: _WriteCtx, obj: Obj, status: int = 200) -> Any:
        headers = {"Warning": ", ".join(_warning_header(w) for w in ctx.warnings)} \
            if ctx.warnings else None
        return rendering.Response(status=status, payload=obj, headers=headers)

    async def _serve_create(self, request: rendering.Request) -> Any:
        kind = self._kind(request)
        ctx = self._context(request, "CreateOptions")
        body = request.data
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was not a JSON object")
        if body.get("kind") not in (None, kind.kind) or body.get("apiVersion") not in (
            None,
            kind.api_version,
        ):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({body.get('apiVersion')}) does not match "
                f"the expected API version ({kind.api_version})",
            )
        obj = self._create(kind, request.namespace, body, ctx)
        return self._respond(ctx, obj, 201)

    def _create(self, kind: Kind, namespace: str | None, body: Obj, ctx: _WriteCtx,
                managed: kube_ssa.Managed | None = None) -> Obj:
        """Store a new object; ``managed`` is the ownership server-side apply computed
        (else the creator owns every field it set, as an ``Update``)."""
        obj: Obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        meta: Obj = obj.setdefault("metadata", {})
        if kind.namespaced:
            ns = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, ns):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does "
                    "not match the namespace sent on the request",
                )
            meta["namespace"] = ns
            if self.secure and ("", ns) not in self._data[NAMESPACES]:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                               {"name": ns, "kind": "namespaces"})
            home = self._data[NAMESPACES].get(("", ns))
            if home is not None and home["metadata"].get("deletionTimestamp"):
                # plugin/namespace/lifecycle: no new content in a Terminating namespace
                name = str(meta.get("name") or "")
                raise ApiError(
                    403, "Forbidden",
                    f'{kind.qualified} "{name}" is forbidden: unable to create new content '
                    f"in namespace {ns} because it is being terminated",
                    {"name": name, "group": kind.group, "kind": kind.plural, "causes": [
                        {"reason": "NamespaceTerminating", "field": "metadata.namespace",
                         "message": f"namespace {ns} is being terminated"}]})
            if not ctx.dry_run:
                self._ensure_namespace(ns)
        else:
            meta.pop("namespace", None)  # cluster-scoped: the namespace is cleared
        if meta.get("resourceVersion"):
            raise ApiError(
                400, "BadRequest", "resourceVersion should not be set on objects to be created"
            )
        if not meta.get("name") and meta.get("generateName"):
            # SimpleNameGenerator; a taken name is generated again (RetryGenerateName)
            for _ in range(8):
                meta["name"] = kube_validation.generated_name(str(meta["generateName"]),
                                                              _random_suffix)
                if (meta.get("namespace", ""), meta["name"]) not in self._data[kind.key]:
                    break
        causes = kube_validation.validate_metadata(
            kind.group, kind.kind, kind.namespaced, obj,
            kube_validation.uses_kube_finalizer_rule(kind.group, custom=kind.schema is not None))
        if causes:
            raise self._invalid(kind, str(meta.get("name") or ""), causes)
        key = (meta.get("namespace", ""), meta["name"])
        if key in self._data[kind.key]:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{kind.qualified} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": kind.group, "kind": kind.plural},
            )
        if kind.status_subresource:
            obj.pop("status", None)
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        for field in ("labels", "annotations", "finalizers", "ownerReferences"):
            if not meta.get(field):  # ObjectMeta's omitempty: an empty list or map is not kept
                meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if kind.generation:
            meta["generation"] = 1
        if kind.key == NAMESPACES:  # namespace strategy: PrepareForCreate
            obj["spec"] = {**(obj.get("spec") or {}), "finalizers": sorted(
                {*((obj.get("spec") or {}).get("finalizers") or []), "kubernetes"})}
            obj["status"] = {"phase": "Active"}
            meta["labels"] = {**(meta.get("labels") or {}),
                              "kubernetes.io/metadata.name": meta["name"]}
        requested = meta.pop("managedFields", None)
        obj = self._admit(kind, obj, None, ctx)
        if kind.plural == "customresourcedefinitions":
            obj = self._admit_crd(kind, obj)
        if managed is None:
            base: kube_ssa.Managed = {}
            if requested is not None and not kube_ssa.is_reset_request(requested):
                with contextlib.suppress(ValueError):
                    base = kube_ssa.decode_managed_fields(requested)
            managed = kind.field_manager(None).update(None, obj, base, ctx.manager)
        _set_managed(obj, managed)
        if ctx.dry_run:
            return obj
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._data[kind.key][key] = obj
        self._record(kind, "ADDED", obj, None)
        if kind.plural == "customresourcedefinitions":
            self._serve_crd(obj)
        return obj

    def _admit_crd(self, kind: Kind, obj: Obj) -> Obj:
        """apiextensions-apiserver: validate, then (the controllers) accept the names and
        establish the CRD, recording both as status conditions."""
        obj = default_crd(obj)
        causes = validate_crd(obj)
        if causes:
            raise self._invalid(kind, obj["metadata"].get("name", ""), causes)
        now = _now()
        names = obj["spec"]["names"]
        # the cleanup finalizer: deleting a CRD first deletes its custom resources
        obj["metadata"]["finalizers"] = [*obj["metadata"].get("finalizers", []), CRD_CLEANUP]
        obj["status"] = {
            "acceptedNames": {k: v for k, v in names.items()},
            "storedVersions": [v["name"] for v in obj["spec"]["versions"] if v.get("storage")],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
        }
        return obj

    async def _serve_update(self, request: rendering.Request) -> Any:
        """PATCH: server-side apply, merge patch, JSON patch; strategic merge for built-in
        kinds only."""
        kind = self._kind(request)
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        ctx = self._context(request, "PatchOptions", ctype)
        if ctype == "application/apply-patch+yaml":
            return await self._serve_apply(kind, request, ctx)
        old = self._existing(kind, request)
        try:
            if ctype == "application/json-patch+json":
                new = jsonpatch.apply_patch(old, request.data or [])
            elif ctype == "application/merge-patch+json":
                new = merge_patch(old, request.data or {})
            elif ctype == "application/strategic-merge-patch+json" and kind.schema is None \
                    and kind.group != "apiextensions.k8s.io":
                new = kube_smp.strategic_merge_patch(old, request.data, kind.group, kind.kind)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted "
                    f"media types include: application/json-patch+json, "
                    f"application/merge-patch+json, application/apply-patch+yaml "
                    f"(got {ctype!r})",
                )
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(422, "Invalid", f"the patch could not be applied: {exc}") from None
        except kube_smp.PatchError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        rv = (
            ((request.data or {}).get("metadata") or {}).get("resourceVersion")
            if isinstance(request.data, dict)
            else None
        )
        if rv is None and isinstance(request.data, list):
            rv = None  # a JSON patch may `test` the resourceVersion; applied above
        elif rv is not None and rv != old["metadata"]["resourceVersion"]:
            raise self._conflict(kind, old["metadata"]["name"])
        return self._respond(ctx, self._write(kind, old, new, request.subresource, ctx))

    async def _serve_apply(self, kind: Kind, request: rendering.Request, ctx: _WriteCtx) -> Any:
        """Server-side apply (``application/apply-patch+yaml``): merge the configuration
        into the live object by the schema, track ownership in ``managedFields``, refuse
        to change fields other managers own (409) unless ``force=true``, remove what the
        manager stopped applying, create the object if it does not exist."""
        try:
            config = yaml.safe_load(request.body or b"{}")
        except yaml.YAMLError as exc:
            raise ApiError(400, "BadRequest", f"error decoding patch: {exc}") from None
        if not isinstance(config, dict):
            raise ApiError(400, "BadRequest", "error decoding patch: the body is not an object")
        gvk = f"{config.get('apiVersion', '')}, Kind={config.get('kind', '')}"
        gvk = gvk if "/" in gvk.split(",")[0] else "/" + gvk
        if config.get("apiVersion") != kind.api_version or config.get("kind") != kind.kind:
            raise ApiError(400, "BadRequest", f"invalid object type: {gvk}")
        meta = config.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "error decoding patch: metadata is not an object")
        meta = meta or {}
        if meta.get("managedFields") is not None:
            raise ApiError(400, "BadRequest", "metadata.managedFields must be nil")
        name = request.name or ""
        if meta.get("name") != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({meta.get('name', '')}) "
                                              f"does not match the name on the URL ({name})")
        namespace = request.namespace or ""
        if kind.namespaced and meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                                              "match the namespace sent on the request")
        subresource = request.subresource
        if subresource not in (None, "status") or (subresource == "status"
                                                   and not kind.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        fm = kind.field_manager(subresource)
        errors = kube_ssa.validate(config, fm.root)
        if errors:
            text = str(errors[0]) if len(errors) == 1 else \
                "errors:\n" + "\n".join(f"  {e}" for e in errors)
            where = f"{namespace}/{name}; {kind.api_version if kind.group else '/' + kind.version}"
            raise ApiError(500, "", f"failed to create typed patch object ({where}, "
                                    f"Kind={kind.kind}): {text}")
        key = (namespace if kind.namespaced else "", name)
        live = self._data[kind.key].get(key)
        if live is None and subresource is not None:
            raise self._not_found(kind, name)
        rv = meta.get("resourceVersion")
        if rv is not None and (live is None or rv != live["metadata"]["resourceVersion"]):
            raise self._conflict(kind, name) if live is not None else self._not_found(kind, name)
        try:
            managed = kube_ssa.decode_managed_fields(
                (live or {}).get("metadata", {}).get("managedFields") or [])
        except ValueError as exc:
            raise ApiError(500, "", f"failed to decode managed fields: {exc}") from None
        try:
            new, managed = fm.apply(live, config, managed, ctx.manager, ctx.force)
        except kube_ssa.ConflictError as exc:
            raise ApiError(409, "Conflict", exc.message, {"causes": exc.causes}) from None
        except ValueError as exc:
            raise ApiError(500, "", str(exc)) from None
        if live is None:
            return self._respond(ctx, self._create(kind, namespace, new or config, ctx,
                                                   managed), 201)
        return self._respond(ctx, self._write(kind, live, new if new is not None else live,
                                              subresource, ctx, managed))

    async def _serve_replace(self, request: rendering.Request) -> Any:
        """PUT: a full replacement, optimistic on ``metadata.resourceVersion``."""
        kind = self._kind(request)
        ctx = self._context(request, "UpdateOptions")
        old = self._existing(kind, request)
        new = request.data
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the body of the request was not a JSON object")
        meta = new.get("metadata") or {}
        if meta.get("name") not in (None, old["metadata"]["name"]):
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does "
                f"not match the name on the URL ({old['metadata']['name']})",
            )
        rv = meta.get("resourceVersion")
        if rv is None and not kind.unconditional_update:
            raise self._invalid(
                kind,
                old["metadata"]["name"],
                [
                    {
                        "reason": "FieldValueInvalid",
                        "field": "metadata.resourceVersion",
                        "message": "metadata.resourceVersion: Invalid value: 0x0: "
                        "must be specified for an update",
                    }
                ],
            )
        if rv is not None and rv != old["metadata"]["resourceVersion"]:
            raise self._conflict(kind, old["metadata"]["name"])
        return self._respond(ctx, self._write(kind, old, new, request.subresource, ctx))

    def _existing(self, kind: Kind, request: rendering.Request) -> Obj:
        obj = self._data[kind.key].get((request.namespace or "", request.name or ""))
        if obj is None:
            raise self._not_found(kind, request.name or "")
        if request.subresource not in (None, "status") or (
            request.subresource == "status" and not kind.status_subresource
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return obj

    def _write(self, kind: Kind, old: Obj, incoming: Obj, subresource: str | None,
               ctx: _WriteCtx | None = None, managed: kube_ssa.Managed | None = None) -> Obj:
        """Replace ``old`` by ``incoming`` as the (sub)resource's strategy allows; the
        writer owns what it changed (``managed``: what server-side apply computed)."""
        ctx = ctx or _WriteCtx()
        # Stored objects are never changed in place, so the new object starts as a copy of
        # the old one's top level and metadata (each part this write changes is replaced,
        # never edited; admission rebuilds what it prunes and defaults), not a deep copy.
        new: Obj = {**old, "metadata": dict(old["metadata"])}
        old_meta = old["metadata"]
        if subresource == "status":
            if "status" in incoming:
                new["status"] = copy.deepcopy(incoming["status"])
            else:
                new.pop("status", None)
        else:
            for key in set(incoming) | set(old):
                if key in ("metadata", "apiVersion", "kind"):
                    continue
                if key == "status" and kind.status_subresource:
                    continue
                if key in incoming:
                    # a part a patch left alone is the stored (never changed) part itself
                    new[key] = old[key] if incoming[key] is old.get(key) \
                        else copy.deepcopy(incoming[key])
                else:
                    new.pop(key, None)
            in_meta = incoming.get("metadata") or {}
            for field in ("labels", "annotations", "finalizers", "ownerReferences"):
                if in_meta.get(field):
                    new["metadata"][field] = old_meta[field] \
                        if in_meta[field] is old_meta.get(field) \
                        else copy.deepcopy(in_meta[field])
                else:
                    new["metadata"].pop(field, None)
            if old_meta.get("deletionTimestamp"):
                added = set(new["metadata"].get("finalizers", [])) - set(
                    old_meta.get("finalizers", [])
                )
                if added:
                    raise self._invalid(
                        kind,
                        old_meta["name"],
                        [
                            {
                                "reason": "FieldValueForbidden",
                                "field": "metadata.finalizers",
                                "message": "metadata.finalizers: Forbidden: no new "
                                "finalizers can be added if the object is being deleted",
                            }
                        ],
                    )
        new = self._admit(kind, new, old, ctx)
        content = ("metadata", "status")  # compared after defaulting, as the strategy does
        if kind.generation and {k: v for k, v in new.items() if k not in content} != {
            k: v for k, v in old.items() if k not in content
        }:
            new["metadata"]["generation"] = int(old_meta.get("generation", 1)) + 1
        if kind.plural == "customresourcedefinitions" and subresource is None \
                and new.get("spec") != old.get("spec"):
            causes = validate_crd(default_crd(new))
            if causes:
                raise self._invalid(kind, old_meta["name"], causes)
        if managed is None:
            managed = _managed_for_update(old, incoming, subresource)
            managed = kind.field_manager(subresource).update(old, new, managed, ctx.manager)
        _set_managed(new, managed)
        if new == old or ctx.dry_run:
            return old if new == old else new  # a no-op write is not a write
        new["metadata"]["resourceVersion"] = self._next_rv()
        obj_key = (str(old_meta.get("namespace", "")), str(old_meta["name"]))
        self._data[kind.key][obj_key] = new
        self._record(kind, "MODIFIED", new, old)
        if kind.plural == "customresourcedefinitions" and new.get("spec") != old.get("spec"):
            self._serve_crd(new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(kind, obj_key)
        return new

    def _remove(self, kind: Kind, key: tuple[str, str]) -> Obj:
        obj = self._data[kind.key].pop(key)
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._record(kind, "DELETED", gone, obj)
        self._collect_dependents(obj["metadata"]["uid"])
        crd_name = self._crd_of.get(kind.key)
        if crd_name is not None:
            self._finish_crd_deletion(crd_name)
        elif kind.plural == "customresourcedefinitions":
            self._unregister_crd(obj)
        if kind.namespaced and key[0]:
            self._finish_namespace_deletion(key[0])
        return gone

    def _crd_kinds(self, crd_name: str) -> list[ResKey]:
        return [k for k, name in self._crd_of.items() if name == crd_name]

    def _start_crd_deletion(self, crd: Obj) -> None:
        """The CRD is Terminating: delete every object of its kinds (their finalizers hold
        them), then drop the cleanup finalizer (apiextensions' finalizer controller)."""
        name = crd["metadata"]["name"]
        for key in self._crd_kinds(name):
            kind = self._kinds.get(key)
            if kind is None:
                continue
            for obj_key in list(self._data[key]):
                if obj_key in self._data[key]:
                    self._delete(kind, obj_key)
        self._finish_crd_deletion(name)

    def _finish_crd_deletion(self, crd_name: str) -> None:
        crd_kind = self._kinds[("apiextensions.k8s.io", "v1", "customresourcedefinitions")]
        crd = self._data[crd_kind.key].get(("", crd_name))
        if crd is None or not crd["metadata"].get("deletionTimestamp"):
            return
        if any(self._data.get(k) for k in self._crd_kinds(crd_name)):
            return
        finalizers = [f for f in crd["metadata"].get("finalizers", []) if f != CRD_CLEANUP]
        if finalizers == crd["metadata"].get("finalizers", []):
            return
        new = copy.deepcopy(crd)
        new["metadata"]["finalizers"] = finalizers
        if not finalizers:
            new["metadata"].pop("finalizers")
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._data[crd_kind.key][("", crd_name)] = new
        self._record(crd_kind, "MODIFIED", new, crd)
        if not finalizers:
            self._remove(crd_kind, ("", crd_name))

    def _unregister_crd(self, crd: Obj) -> None:
        for key in self._crd_kinds(crd["metadata"]["name"]):
            kind = self._kinds.pop(key, None)
            self._crd_of.pop(key, None)
            if kind is not None:
                self.resources.pop(f"{kind.api_version}/{kind.plural}", None)

    def _collect_dependents(self, owner_uid: str, orphan: bool = False) -> None:
        """The garbage collector (``attemptToDeleteItem``), background propagation: a
        dependent whose owners are all gone is deleted; one that still has a live owner
        only loses its reference to the deleted one.  ``orphan``: every dependent keeps
        living without the reference (``propagationPolicy: Orphan``)."""
        for res, key in sorted(self._dependents.pop(owner_uid, set())):
            kind = self._kinds.get(res)
            obj = self._data.get(res, {}).get(key)
            if kind is None or obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(r.get("uid") == owner_uid for r in refs):
                continue
            rest = [r for r in refs if r.get("uid") != owner_uid]
            if orphan or any(r.get("uid") in self._by_uid for r in rest):
                incoming = copy.deepcopy(obj)
                incoming["metadata"]["ownerReferences"] = rest
                self._write(kind, obj, incoming, None,
                            _WriteCtx(manager="generic-garbage-collector"))
            else:
                self._delete(kind, key)

    def _delete_namespace(self, name: str) -> Obj:
        """A namespace is Terminating until the namespace controller has deleted its
        content (each object honouring its finalizers), then ``spec.finalizers`` loses
        ``kubernetes`` (``/finalize``) and it goes."""
        if name in IMMORTAL_NAMESPACES:  # plugin/namespace/lifecycle
            raise ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this '
                           "namespace may not be deleted", {"name": name, "kind": "namespaces"})
        kind = self._kinds[NAMESPACES]
        obj = self._data[NAMESPACES][("", name)]
        if not obj["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {**(new.get("status") or {}), "phase": "Terminating"}
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._data[NAMESPACES][("", name)] = new
            self._record(kind, "MODIFIED", new, obj)
            obj = new
        for res, content_kind in list(self._kinds.items()):
            if not content_kind.namespaced:
                continue
            for obj_key in [k for k in self._data.get(res, {}) if k[0] == name]:
                if obj_key in self._data[res]:
                    self._delete(content_kind, obj_key)
        self._finish_namespace_deletion(name)
        return obj

    def _finish_namespace_deletion(self, name: str) -> None:
        obj = self._data[NAMESPACES].get(("", name))
        if obj is None or not obj["metadata"].get("deletionTimestamp"):
            return
        if any(k[0] == name for res, kind in self._kinds.items() if kind.namespaced
               for k in self._data.get(res, {})):
            return
        kind = self._kinds[NAMESPACES]
        if "kubernetes" in (obj.get("spec") or {}).get("finalizers", []):
            new = copy.deepcopy(obj)
            new["spec"]["finalizers"] = [f for f in new["spec"]["finalizers"]
                                         if f != "kubernetes"]
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._data[NAMESPACES][("", name)] = new
            self._record(kind, "MODIFIED", new, obj)
            obj = new
        if not obj["spec"].get("finalizers") and not obj["metadata"].get("finalizers"):
            self._remove(kind, ("", name))

    def _delete(self, kind: Kind, key: tuple[str, str]) -> Obj:
        if kind.key == NAMESPACES:
            return self._delete_namespace(key[1])
        obj = self._data[kind.key][key]
        meta = obj["metadata"]
        if not meta.get("finalizers"):
            return self._remove(kind, key)
        if meta.get("deletionTimestamp"):
            return obj
        new = copy.deepcopy(obj)
        new["metadata"]["deletionTimestamp"] = _now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        if kind.generation:  # the server bumps generation when graceful deletion starts
            new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._data[kind.key][key] = new
        self._record(kind, "MODIFIED", new, obj)
        if kind.plural == "customresourcedefinitions":
            self._start_crd_deletion(new)
            return self._data[kind.key].get(key, new)
        return new

    async def _serve_delete(self, request: rendering.Request) -> Any:
        kind = self._kind(request)
        key = (request.namespace or "", request.name or "")
        obj = self._data[kind.key].get(key)
        if obj is None:
            raise self._not_found(kind, request.name or "")
        pre = (request.data or {}).get("preconditions") if isinstance(request.data, dict) else None
        if pre:
            if pre.get("resourceVersion") not in (
                None,
                obj["metadata"]["resourceVersion"],
            ) or pre.get("uid") not in (None, obj["metadata"]["uid"]):
                raise self._conflict(kind, obj["metadata"]["name"])
        policy = (request.data or {}).get("propagationPolicy") if isinstance(
            request.data, dict) else None
        policy = policy or request.params.get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise ApiError(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: '
                                           f'propagationPolicy: Unsupported value: "{policy}": '
                                           f'supported values: "Foreground", "Background", '
                                           f'"Orphan", "nil"')
        if policy == "Orphan":
            self._collect_dependents(obj["metadata"]["uid"], orphan=True)
        return self._delete(kind, key)


# --- running it for tests and subprocesses --------------------------------------------


class ClusterTLS:
    """A private CA, the API server's certificate, and client credentials, in files.

    ``ca_file`` is what clients trust; ``admin_token`` and ``admin_cert_file`` /
    ``admin_key_file`` (CN=kubernetes-admin, O=system:masters, like kind's admin
    kubeconfig) are cluster-admin credentials.
    """

    def __init__(self, directory: Path) -> None:
        import trustme

        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="smtpctl emulator CA")
        self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost", "::1",
                                              common_name="kube-apiserver")
        self.ca_file = directory / "ca.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        admin = self.ca.issue_cert("kubernetes-admin.emulator.invalid",
                                   common_name="kubernetes-admin",
                                   organization_name="system:masters")
        self.admin_cert_file = directory / "admin.crt"
        self.admin_key_file = directory / "admin.key"
        admin.cert_chain_pems[0].write_to_path(str(self.admin_cert_file))
        admin.private_key_pem.write_to_path(str(self.admin_key_file))
        for path in (self.admin_key_file,):
            path.chmod(0o600)

    def client_cert(self, user: str, groups: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """(cert file, key file) of a client certificate for ``user`` in ``groups``."""
        leaf = self.ca.issue_cert(f"{user.replace(':', '-')}.emulator.invalid",
                                  common_name=user,
                                  organization_name=groups[0] if groups else None)
        safe = user.replace(":", "_").replace("/", "_")
        cert, key = self.dir / f"{safe}.crt", self.dir / f"{safe}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return cert, key

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        self.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # client certificates authenticate when given
        return ctx


def kubeconfig_text(url: str, namespace: str = "default", *, token: str | None = "emulator-token",
                    ca_file: Path | None = None, cert_file: Path | None = None,
                    key_file: Path | None = None) -> str:
    cluster: Obj = {"server": url}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    user: Obj = {}
    if cert_file is not None and key_file is not None:
        user = {"client-certificate": str(cert_file), "client-key": str(key_file)}
    elif token is not None:
        user = {"token": token}
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": cluster}],
            "users": [{"name": "emulator", "user": user}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                }
            ],
        }
    )


def _server_cls(tls: ClusterTLS | None) -> Any:
    """kmock's server class, serving HTTPS with the cluster's certificate when ``tls``."""
    import aiohttp.test_utils

    if tls is None:
        return aiohttp.test_utils.RawTestServer
    context = tls.server_context()

    class TLSServer(aiohttp.test_utils.RawTestServer):
        async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
            await super().start_server(loop=loop, ssl=context, **kwargs)

    return TLSServer


class EmulatorThread:
    """The emulator on its own event loop in a thread, for sync tests and subprocesses.

    ``with EmulatorThread(crd_dir=...) as kube:`` runs it as a cluster does: HTTPS with a
    private CA, every request authenticated and authorized by RBAC; ``kube.url``,
    ``kube.tls.ca_file``, ``kube.admin_token``, ``kube.write_kubeconfig(path)`` (admin)
    and ``kube.call(fn, *args)`` to run a function on the emulator's loop (e.g.
    ``kube.call(kube.emu.compact)``).  ``workdir`` holds the CA and credentials (a
    temporary directory if not given); ``namespaces`` are created up front.

    ``lenient=True`` (plain HTTP, no authentication, namespaces on first use) is for the
    emulator's own unit tests only: tests/test_kube_emulator_strict_default.py fails any
    other test that uses it.
    """

    def __init__(self, crd_dir: Path | None = None, *, workdir: Path | None = None,
                 lenient: bool = False, namespaces: Iterable[str] = (),
                 **options: Any) -> None:
        if options.pop("strict", True) is not True:
            raise TypeError("EmulatorThread is strict; lenient=True is for the emulator's "
                            "own unit tests")
        self._options = options
        self._crd_dir = crd_dir
        self._namespaces = tuple(namespaces)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.emu: KubeEmulator | None = None
        self.url = ""
        self.strict = not lenient
        self.tls: ClusterTLS | None = None
        if self.strict:
            if workdir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="kube-emulator-")
                workdir = Path(self._tmp.name)
            self.tls = ClusterTLS(workdir / "kube-pki")
        self.admin_token = ""

    def __enter__(self) -> EmulatorThread:
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("emulator did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with KubeEmulator(secure=self.strict, **self._options) as emu, \
                Server(emu, server_cls=_server_cls(self.tls)) as server:
            emu._become_cluster(self.tls)
            emu.create_namespaces(self._namespaces)
            if self._crd_dir is not None:
                emu.install_crd_files(self._crd_dir)
            self.admin_token = emu.admin_token
            self.emu = emu
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()
            emu.interrupt_watches()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None

        async def _go() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(_go(), self._loop).result(10)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """An admin kubeconfig (in strict mode: the CA and a cluster-admin token)."""
        if self.tls is not None:
            path.write_text(kubeconfig_text(self.url, namespace, token=self.admin_token,
                                            ca_file=self.tls.ca_file))
        else:
            path.write_text(kubeconfig_text(self.url, namespace))
        return path

    # --- strict-mode credentials ----------------------------------------------------
    def write_cert_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """An admin kubeconfig with a client certificate (CN=kubernetes-admin,
        O=system:masters), as kind writes it."""
        assert self.tls is not None, "client certificates need strict mode"
        path.write_text(kubeconfig_text(self.url, namespace, ca_file=self.tls.ca_file,
                                        cert_file=self.tls.admin_cert_file,
                                        key_file=self.tls.admin_key_file))
        return path

    def service_account_token(self, namespace: str, name: str) -> str:
        """A new token for the ServiceAccount (older ones stay valid until revoked)."""
        assert self.emu is not None
        return str(self.call(self.emu.authenticator.issue_service_account_token, namespace, name))

    def revoke_token(self, token: str) -> None:
        assert self.emu is not None
        self.call(self.emu.authenticator.revoke, token)

    def write_service_account_kubeconfig(self, path: Path, namespace: str, name: str,
                                         default_namespace: str = "default") -> Path:
        assert self.tls is not None
        token = self.service_account_token(namespace, name)
        path.write_text(kubeconfig_text(self.url, default_namespace, token=token,
                                        ca_file=self.tls.ca_file))
        return path

    def in_cluster(self, directory: Path, namespace: str, name: str) -> dict[str, str]:
        """Files and environment of a pod running as ``namespace/name``: ``directory``
        gets ``token``, ``ca.crt`` and ``namespace`` (what the kubelet mounts at
        /var/run/secrets/kubernetes.io/serviceaccount); returns the environment
        (``KUBERNETES_SERVICE_HOST``/``_PORT``).  Call :meth:`rotate_in_cluster_token` to
        write a new token into the same file, as the kubelet does."""
        assert self.tls is not None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(self.tls.ca_file.read_bytes())
        (directory / "namespace").write_text(namespace)
        self.rotate_in_cluster_token(directory, namespace, name)
        host, _, port = self.url.removeprefix("https://").rpartition(":")
        return {"KUBERNETES_SERVICE_HOST": host.strip("[]"), "KUBERNETES_SERVICE_PORT": port}

    def rotate_in_cluster_token(self, directory: Path, namespace: str, name: str,
                                revoke_old: bool = False) -> str:
        token_file = directory / "token"
        old = token_file.read_text() if token_file.exists() else None
        token = self.service_account_token(namespace, name)
        tmp = directory / ".token.tmp"
        tmp.write_text(token)
        tmp.replace(token_file)  # atomic, like the kubelet's projected volume update
        if revoke_old and old:
            self.revoke_token(old)
        return token

    def apply_files(self, *paths: Path) -> list[Obj]:
        """Create (or replace) every object in ``paths`` as cluster-admin (manifests this
        test installs: CRDs, RBAC, namespaces); namespaces go first."""
        docs = [d for p in paths for d in iter_docs(p)]
        return self.apply_objects(docs)

    def apply_objects(self, docs: list[Obj]) -> list[Obj]:
        import httpx

        docs = sorted(docs, key=lambda d: (d.get("kind") != "Namespace",
                                           d.get("kind") != "CustomResourceDefinition"))
        out = []
        verify: Any = ssl.create_default_context(cafile=str(self.tls.ca_file)) \
            if self.tls is not None else True
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        with httpx.Client(base_url=self.url, verify=verify, headers=headers, timeout=10) as http:
            for doc in docs:
                path = object_path(doc, self._kinds())
                r = http.post(path, json=doc)
                if r.status_code == 409:
                    name = doc["metadata"]["name"]
                    current = http.get(f"{path}/{name}").json()
                    doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion":
                                               current["metadata"]["resourceVersion"]}}
                    r = http.put(f"{path}/{name}", json=doc)
                if r.status_code >= 300:
                    raise RuntimeError(f"{doc.get('kind')} {doc['metadata'].get('name')}: "
                                       f"{r.status_code} {r.text}")
                out.append(r.json())
        return out

    def _kinds(self) -> dict[tuple[str, str], Kind]:
        assert self.emu is not None
        return {(k.api_version, k.kind): k for k in self.emu._kinds.values()}

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        if self._tmp is not None:
            self._tmp.cleanup()


def object_path(doc: Mapping[str, Any], kinds: Mapping[tuple[str, str], Kind]) -> str:
    """The collection URL of ``doc``'s kind (in its namespace, default "default")."""
    kind = kinds.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if kind is None:
        raise KeyError(f"no such kind served: {doc.get('apiVersion')} {doc.get('kind')}")
    prefix = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    if kind.namespaced:
        ns = (doc.get("metadata") or {}).get("namespace") or "default"
        return f"{prefix}/namespaces/{ns}/{kind.plural}"
    return f"{prefix}/{kind.plural}"


@contextlib.asynccontextmanager
async def running_emulator(
    crd_dir: Path | None = None, *, workdir: Path | None = None, lenient: bool = False,
    namespaces: Iterable[str] = (), tls: ClusterTLS | None = None, **options: Any
) -> AsyncIterator[tuple[KubeEmulator, str]]:
    """The emulator on the current loop: ``async with running_emulator() as (emu, url)``.

    Strict like a cluster (HTTPS with a private CA, authentication, RBAC, namespaces that
    must exist: pass ``namespaces``).  The test's clients use ``emu.http_kwargs()``
    (httpx), ``emu.kubeconfig(url)``, or ``emu.admin_token`` with
    ``emu.client_ssl_context()``.  ``lenient=True`` is for the emulator's own unit tests
    only (plain HTTP, no authentication)."""
    if options.pop("strict", True) is not True:
        raise TypeError("running_emulator is strict; lenient=True is for the emulator's own "
                        "unit tests")
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if not lenient and tls is None:
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="kube-emulator-")
            workdir = Path(tmp.name)
        tls = ClusterTLS(workdir / "kube-pki")
    try:
        async with KubeEmulator(secure=not lenient, **options) as emu, \
                Server(emu, server_cls=_server_cls(None if lenient else tls)) as server:
            emu._become_cluster(None if lenient else tls)
            emu.create_namespaces(namespaces)
            if crd_dir is not None:
                emu.install_crd_files(crd_dir)
            try:
                yield emu, str(server.url).rstrip("/")
            finally:
                emu.interrupt_watches()
    finally:
        if tmp is not None:
            tmp.cleanup()


def iter_docs(path: Path) -> Iterator[Obj]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            yield doc


def main() -> None:
    """``python -m tests.support.kube_emulator [--crd-dir DIR] [--workdir DIR]``: serve
    until stdin closes, strict like a cluster.

    Prints the URL on the first line of stdout and the path of a cluster-admin kubeconfig
    (with the CA: ``WORKDIR/kubeconfig``) on the second (benchmarks run the emulator in its
    own process so it does not share a GIL with what they measure).
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--crd-dir", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the CA, credentials and kubeconfig go (default: a "
                             "temporary directory)")
    args = parser.parse_args()

    async def serve() -> None:
        with tempfile.TemporaryDirectory(prefix="kube-emulator-") as tmp:
            workdir: Path = args.workdir or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            async with running_emulator(args.crd_dir, workdir=workdir) as (emu, url):
                kubeconfig = workdir / "kubeconfig"
                kubeconfig.write_text(emu.kubeconfig(url))
                print(url, flush=True)
                print(kubeconfig, flush=True)
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, sys.stdin.read)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
