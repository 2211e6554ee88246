"""The ``Store`` protocol: where desired state comes from and where status goes.

The engine (``reconciler.engine``) never talks to SQLite or to a Kubernetes API; it talks
to this protocol.  Two implementations exist:

* ``reconciler.stores.local.LocalStore`` - the embedded SQLite store of the local CLI;
* the Kubernetes store of the operator - desired state is the custom resource, status is
  the ``status`` subresource written with optimistic concurrency.

Design choices that make one protocol fit both:

* **Read-modify-write through a mutator.**  The engine never sends a whole status it
  computed from a possibly stale read.  It hands :meth:`Store.update_status` a pure
  function ``mutate(current) -> StatusWrite | None``.  The local store calls it inside one
  ``BEGIN IMMEDIATE`` transaction; the Kubernetes store calls it, writes with the
  object's ``resourceVersion``, and on ``409 Conflict`` re-reads and calls it *again*
  ("re-apply the decision, never blindly overwrite").  So a selection change written by
  one reconcile and a test result written by another never clobber each other.
* **Plain data.**  Objects cross the boundary as :class:`StoredObject` (the manifest and
  status as wire-form dicts, camelCase), so the Kubernetes store can hand over a CR body
  almost untouched, and the engine does validation itself (a CR that slipped past CEL
  still gets ``Ready=False, reason=InvalidSpec``).
* **The test memo** (:class:`TestMemo`: last tested digest, when, due time, consecutive
  failures) is separate from status because it is bookkeeping, not user-facing API.  The
  local store keeps it in a column; the Kubernetes store keeps it in an annotation (the
  digest survives an operator restart, so unchanged Ready resources are not re-tested).
* **Never a secret.**  Nothing that reaches a store holds a secret value: status and
  transcripts are redacted upstream, secret *versions* are keyed hashes
  (``reconciler.secret.keyed_version``).

Every method is ``async`` because the Kubernetes store does network I/O; the local store
does short synchronous SQLite transactions inside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """Identity of a resource: kind, namespace and name (like a Kubernetes object key)."""

    kind: str  # "ExternalSmtp" | "OAuth2Provider"
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


def manifest_ref(manifest: dict[str, Any]) -> ObjectRef:
    """The identity of a manifest as written (no namespace: ``default``)."""
    meta = manifest.get("metadata") or {}
    return ObjectRef(str(manifest["kind"]), str(meta.get("namespace", "default")),
                     str(meta["name"]))


@dataclass(frozen=True, slots=True)
class TestMemo:
    """What the engine remembers about the last connection test of a resource.

    ``digest`` is the plan digest (spec + secret versions + provider version) the test
    ran with; ``due_at`` is the epoch second after which the next test is due (the
    jittered ``refreshInterval`` after a pass or a permanent failure, the exponential
    backoff after a transient one); ``failures`` counts consecutive failures for the
    backoff.
    """

    digest: str
    generation: int
    tested_at: float
    due_at: float
    passed: bool
    failures: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "generation": self.generation,
                "testedAt": self.tested_at, "dueAt": self.due_at,
                "passed": self.passed, "failures": self.failures}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TestMemo:
        return cls(digest=str(data["digest"]), generation=int(data["generation"]),
                   tested_at=float(data["testedAt"]), due_at=float(data["dueAt"]),
                   passed=bool(data["passed"]), failures=int(data.get("failures", 0)))


# Not pytest test classes, despite the names.  Set after the class: a class-body
# ``__test__ = False`` compiled by mypyc becomes a dataclass field (docs/benchmarks/engine.md,
# Round 13).
setattr(TestMemo, "__test__", False)  # noqa: B010 (see above)


@dataclass(frozen=True, slots=True, weakref_slot=True)  # KubeStore keeps them weakly
class StoredObject:
    """One resource as the store holds it.

    ``manifest`` is the last applied document without status (``apiVersion``, ``kind``,
    ``metadata``, ``spec``); ``generation`` increments only when the spec changes;
    ``created_at`` is an RFC 3339 time (``metadata.creationTimestamp``); ``status`` is the
    wire form (camelCase) of ``ExternalSmtpStatus``/``OAuth2ProviderStatus``; ``version``
    is an opaque token for optimistic concurrency (a ``resourceVersion``).
    """

    ref: ObjectRef
    manifest: dict[str, Any]
    generation: int
    created_at: str
    status: dict[str, Any]
    memo: TestMemo | None
    version: str
    uid: str = ""


@dataclass(frozen=True, slots=True)
class StatusWrite:
    """The engine's decision for one object: the new status and the new memo."""

    status: dict[str, Any]
    memo: TestMemo | None


# mutate(current) -> the write to perform, or None when nothing changes.  Must be pure:
# a store may call it more than once (Kubernetes, after a 409).
StatusMutator = Callable[[StoredObject], StatusWrite | None]


@dataclass(frozen=True, slots=True)
class TestRecord:
    """One connection test for the history (``smtpctl describe``); already redacted."""

    ref: ObjectRef
    generation: int
    at: str  # RFC 3339
    passed: bool
    stage: str
    reason: str
    message: str
    duration_seconds: float
    digest: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "at": self.at, "passed": self.passed,
                "stage": self.stage, "reason": self.reason, "message": self.message,
                "durationSeconds": round(self.duration_seconds, 6), "digest": self.digest,
                "stageSeconds": self.stage_seconds, "transcript": self.transcript,
                "warnings": self.warnings, "details": self.details}


setattr(TestRecord, "__test__", False)  # noqa: B010


@dataclass(frozen=True, slots=True)
class Event:
    """A transition worth telling a human about (a Kubernetes Event, a local history row)."""

    ref: ObjectRef
    type: EventType
    reason: str  # a catalog name
    message: str
    at: str  # RFC 3339


class StoreError(Exception):
    """The store failed (I/O, corruption, unreachable API).  The message holds no secret."""


class Store(Protocol):
    """Desired state and status of the resources of one or more scopes (namespaces)."""

    async def get(self, ref: ObjectRef) -> StoredObject | None:
        """The object, or ``None`` when it does not exist (or was deleted)."""
        ...

    async def list(self, kind: str, namespace: str | None = None) -> list[StoredObject]:
        """Every object of ``kind`` in ``namespace`` (all namespaces when ``None``),
        ordered by (namespace, name)."""
        ...

    async def update_status(self, ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        """Atomically read the object, call ``mutate`` and write its result.

        Returns the object as stored afterwards (unchanged when ``mutate`` returned
        ``None``), or ``None`` when the object does not exist.  On a concurrent change the
        store re-reads and calls ``mutate`` again (bounded number of attempts).
        """
        ...

    async def record_test(self, record: TestRecord) -> None:
        """Append to the resource's test history (a store may keep only the last few)."""
        ...

    async def record_event(self, event: Event) -> None:
        """Persist or publish a transition event."""
        ...
