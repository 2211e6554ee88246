"""The decision half of a pass, shared by ``reconcile`` and ``plan``.

:func:`assess` answers "what would a pass do with this object now?" without a side
effect: it validates the manifest, checks the OAuth2Provider gate, resolves credentials
(secret versions) and computes the plan digest, then decides:

* ``invalid`` - the manifest does not validate (``InvalidSpec``; only a change helps);
* ``blocked`` - the provider or the credentials stop the pass before any test;
* ``skip`` - the last test is for exactly these settings and secrets and not due yet;
* ``inherit`` - a new generation changed only untested fields (``selected``,
  ``refreshInterval``, ``priority``, ...): it inherits the result of the identical settings;
* ``test`` - a connection test is needed (``why`` says why).

``reconcile`` acts on the answer (writes, tests, selects); ``plan`` only reports it.
Because both call this one function they cannot disagree about when a test is needed or
what blocks it (they used to be two copies, and the copy in plan had drifted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from reconciler import catalog
from reconciler.credentials.base import CredentialError
from reconciler.engine import conditions as cond
from reconciler.engine.digest import plan_digest, tested_spec
from reconciler.engine.world import Credentials, World
from reconciler.resources import KIND_OAUTH2, ExternalSmtp, OAuth2Provider
from reconciler.stores.base import ObjectRef, StoredObject, TestMemo

Decision = Literal["invalid", "blocked", "skip", "inherit", "test"]

# Provider Ready reasons that mean "not checked yet" rather than a failure of its own.
_PENDING = frozenset({"", "Pending", "Testing"})


@dataclass(frozen=True, slots=True)
class Blocked:
    """Why a pass stops before a test, with the catalog flags of that reason."""

    reason: str
    message: str
    retryable: bool
    stalled: bool

    @classmethod
    def of(cls, reason: str, message: str) -> Blocked:
        entry = catalog.CATALOG.get(reason)
        retryable = bool(entry and entry.retryable)
        return cls(reason, message, retryable, bool(entry and entry.stalled) and not retryable)


@dataclass(frozen=True, slots=True)
class Assessment:
    decision: Decision
    why: str
    resource: ExternalSmtp | None = None
    creds: Credentials | None = None
    digest: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    # The digest differs from the last test's (spec or secrets changed): while it is
    # tested, Ready must not keep describing the old settings.
    fresh: bool = True
    blocked: Blocked | None = None


class HandedOver:
    """Models the input already validated, for the first assessment of the same manifest.

    ``apply`` validates every document while it reads its input (``inputs.load``), then
    the first pass over each relay validated the stored copy of it again: a second
    pydantic validation per resource for nothing.  The input offers (:meth:`offer`) each model
    it built; :meth:`take` hands it over once, to an assessment of a manifest with exactly
    the same content (the key is the canonical JSON of the whole manifest, sorted keys,
    through orjson; a manifest orjson cannot write as plain JSON, e.g. one holding a
    date, is never cached).  Taken means removed: a model serves one assessment and a
    later pass validates its own; a changed manifest has another key and is validated.
    Bounded: past ``limit`` entries nothing more is offered, because a held model costs
    ~3.4 KB until its pass takes it (10,000 held raised a first apply's peak RSS from 213
    to 247 MB for ~2 % of its CPU): the first 2,048 relays of an input are handed over,
    the rest validated by their pass as before.  Without orjson (an optional dependency)
    it holds nothing.
    """

    def __init__(self, limit: int = 2048) -> None:
        self.limit = limit
        self._models: dict[bytes, ExternalSmtp] = {}

    def __len__(self) -> int:
        return len(self._models)

    @staticmethod
    def _key(manifest: Mapping[str, Any]) -> bytes | None:
        try:
            import orjson
        except ImportError:  # pragma: no cover - orjson comes with the cli extra
            return None
        try:
            return orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS
                                | orjson.OPT_PASSTHROUGH_DATETIME
                                | orjson.OPT_PASSTHROUGH_DATACLASS
                                | orjson.OPT_PASSTHROUGH_SUBCLASS)
        except TypeError:  # not plain JSON (a date, a non-string key, ...): not cached
            return None

    def offer(self, manifest: Mapping[str, Any], model: ExternalSmtp) -> None:
        if len(self._models) >= self.limit:
            return
        key = self._key(manifest)
        if key is not None:
            self._models[key] = model

    def take(self, manifest: Mapping[str, Any]) -> ExternalSmtp | None:
        if not self._models:
            return None
        key = self._key(manifest)
        return self._models.pop(key, None) if key is not None else None

    def clear(self) -> None:
        self._models.clear()


HANDED_OVER = HandedOver()


def _validated(manifest: dict[str, Any]) -> ExternalSmtp:
    """The manifest's model: handed over by the input, else validated here."""
    model = HANDED_OVER.take(manifest)
    return model if model is not None else ExternalSmtp.model_validate(manifest)


def render_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """``loc: msg`` pairs only - never ``str(exc)``, which could echo input values."""
    parts = []
    for err in exc.errors(include_input=False)[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def status_matches_memo(status: Mapping[str, Any], memo: TestMemo) -> bool:
    """True when the conditions still show the memo's result (no test was interrupted
    after ``Reconciling=True`` was written, nothing else moved Ready): only then may a new
    generation inherit them; otherwise the engine tests."""
    return bool(cond.attr(status, cond.READY, "status") == ("True" if memo.passed else "False")
            and cond.attr(status, cond.RECONCILING, "reason") != "Testing"
            and cond.attr(status, cond.READY, "observedGeneration") == memo.generation)


async def provider_gate(namespace: str, name: str, world: World,
                        ) -> tuple[OAuth2Provider | None, str, Blocked | None]:
    """The referenced OAuth2Provider when it is Ready (and its version), or why not.

    A provider that failed its own check passes *its* reason on to the relay, with that
    reason's retry/stalled flags and the provider's own message (an invalid client secret
    is stalled, a token endpoint that is down is retried) - not a blanket "not ready".
    """
    pobj = await world.store.get(ObjectRef(KIND_OAUTH2, namespace, name))
    if pobj is None:
        return None, "", Blocked.of(
            "OAuth2ProviderNotFound",
            f"OAuth2Provider {name!r} does not exist in namespace {namespace}")
    try:
        provider = OAuth2Provider.model_validate(pobj.manifest)
    except ValidationError:
        return None, "", Blocked.of(
            "InvalidSpec", f"OAuth2Provider {name!r} is invalid (see its status)")
    if not cond.is_true(pobj.status, cond.READY):
        pready = cond.of(pobj.status, cond.READY)
        why = str(pready.get("reason", "")) if pready else ""
        if why in _PENDING or why not in catalog.CATALOG:
            return None, "", Blocked.of(
                "OAuth2ProviderNotReady",
                f"OAuth2Provider {name!r} is not Ready yet ({why or 'not checked'})")
        text = str(pready.get("message", "")) if pready else ""
        return None, "", Blocked.of(
            why, f"OAuth2Provider {name!r} is not Ready: {text or catalog.get(why).message}"
                 f" (action: {catalog.get(why).action})")
    return provider, pobj.memo.digest if pobj.memo else "", None


def _credential_block(exc: CredentialError) -> Blocked:
    # resolve wraps a token failure as OAuth2ProviderNotReady; its cause is the real reason.
    reason = exc.cause_reason if exc.cause_reason in catalog.CATALOG else exc.reason
    return Blocked.of(reason or exc.reason, exc.message)


async def assess(obj: StoredObject, world: World, *, force: str | None = None) -> Assessment:
    """What a pass over the ExternalSmtp ``obj`` would do now (no side effect).

    ``force``: a reason to test even when the last test is not due (``smtpctl reconcile
    --force``, the reconcile-request annotation); it never overrides a block.
    """
    try:
        res = _validated(obj.manifest)
    except ValidationError as exc:
        return Assessment("invalid", "invalid",
                          blocked=Blocked.of("InvalidSpec", render_validation_error(exc)))
    provider: OAuth2Provider | None = None
    versions: dict[str, str] = {}
    pref = res.spec.oauth2_provider_ref
    if res.spec.authentication == "OAuth2" and pref is not None:
        provider, pversion, block = await provider_gate(obj.ref.namespace, pref.name, world)
        if block is not None:
            return Assessment("blocked", block.message, res, blocked=block)
        versions["oauth2Provider"] = pversion
    try:
        creds = await world.resolve_credentials(res, provider)
    except CredentialError as exc:
        block = _credential_block(exc)
        return Assessment("blocked", f"credentials cannot be resolved ({block.reason})", res,
                          blocked=block)
    versions.update(creds.versions)
    digest = plan_digest(tested_spec(res.spec.model_dump(by_alias=True, mode="json")), versions)
    memo = obj.memo
    same = memo is not None and memo.digest == digest

    def out(decision: Decision, why: str) -> Assessment:
        return Assessment(decision, why, res, creds, digest, versions, fresh=not same)

    if memo is None or not memo.digest:
        return out("test", "never tested")
    if not same:
        why = ("secrets or provider changed" if memo.generation == obj.generation
               else "spec changed")
        return out("test", why)
    now = world.clock()
    if force:
        return out("test", force)
    if now >= memo.due_at:
        why = "re-verification due" if memo.passed else "retry of a failed test due"
        return out("test", why)
    if memo.generation == obj.generation and obj.status.get("observedGeneration") == obj.generation:
        left = memo.due_at - now
        why = (f"tested; next re-verification in {_human(left)}" if memo.passed
               else f"last test failed; next retry in {_human(left)}")
        return out("skip", why)
    if memo.tested_at > 0 and status_matches_memo(obj.status, memo):
        return out("inherit", "connection settings unchanged (only untested fields changed)")
    return out("test", "the last test of these settings was interrupted")


def _human(seconds: float) -> str:
    from reconciler.resources import format_duration

    return format_duration(seconds)
