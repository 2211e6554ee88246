"""One idempotent, level-triggered reconcile pass for one resource.

``await reconcile(obj, world) -> ReconcileResult(status, requeue_after, ...)`` is the
function every runtime calls (the local CLI's apply loop, the Kubernetes operator's
per-resource worker, tests).  Runtimes differ only in the :class:`World` they pass
(``reconciler.engine.world``) and in what they do with ``requeue_after`` (sleep and call
again, unless woken earlier by a change).

Steps for an ``ExternalSmtp``:

1. **validate** the stored manifest (``InvalidSpec`` -> ``Stalled``; no test);
2. **provider**: for OAuth2, the referenced ``OAuth2Provider`` must exist and be Ready
   (``OAuth2ProviderNotFound`` / ``OAuth2ProviderNotReady``, retried with backoff);
3. **resolve** credentials (``CredentialError`` reason, retried or stalled per catalog);
4. **plan**: digest = spec + secret versions + provider version
   (``reconciler.engine.digest``).  Same digest as the last test and not yet due -> no
   test, no write, ``requeue_after`` = time until due;
5. **probe** within the world's concurrency limits (``Reconciling=True`` is written first
   when ``world.announce_testing``; a fresh digest also sets ``Ready=Unknown``, because
   Ready must only describe a test of the current generation with current secrets; a
   rejected OAuth token is refreshed and retried once by the probe itself);
6. **commit**: conditions, last test, last-known-good (``activeGeneration`` + ``active``
   summary move only on a pass), test history, events - then selection of the scope
   (``reconciler.engine.selection``) if this relay takes part in it.

Conditions (kstatus):

* ``Ready`` - True only after a passed test of the current generation and secrets.
* ``Stalled`` - True when the catalog says only a user change helps; absent otherwise.
* ``Reconciling`` - True while a test is in flight (reason ``Testing``) and after a
  *retryable* failure, while the engine keeps retrying with backoff (reason = the
  failure); absent otherwise.  Locally this means it is written True before the test and
  removed by the commit that records a pass or a permanent failure.
* ``Selected`` - written by selection.

Permanent failures are still re-verified every ``refreshInterval`` (the world may have
changed under them); transient ones retry with capped exponential backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from reconciler import catalog
from reconciler.credentials.base import CredentialError
from reconciler.engine import conditions as cond
from reconciler.engine.backoff import backoff_delay, refresh_delay
from reconciler.engine.digest import plan_digest, tested_spec
from reconciler.engine.selection import select_scope
from reconciler.engine.world import Credentials, World
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import KIND_OAUTH2, KIND_SMTP, ExternalSmtp, OAuth2Provider
from reconciler.stores.base import (
    Event,
    ObjectRef,
    StatusWrite,
    StoredObject,
    TestMemo,
    TestRecord,
)

log = logging.getLogger(__name__)

PROVIDER_REFRESH = 3600.0  # an OAuth2Provider has no refreshInterval: re-check hourly


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What one pass did.

    ``status`` is the status as written (wire form); ``requeue_after`` seconds until the
    next pass is due (``None``: only a change can help, e.g. an invalid spec);
    ``action`` is one of ``tested``, ``skipped``, ``invalid``, ``blocked`` (credentials or
    provider), ``checked`` (OAuth2Provider) or ``gone`` (deleted meanwhile).
    """

    ref: ObjectRef
    status: dict[str, Any]
    requeue_after: float | None
    action: str
    tested: bool = False
    verdict: Verdict | None = None


def render_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """``loc: msg`` pairs only - never ``str(exc)``, which could echo input values."""
    parts = []
    for err in exc.errors(include_input=False)[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def reconcile(obj: StoredObject, world: World) -> ReconcileResult:
    """One pass for ``obj`` (an ExternalSmtp or an OAuth2Provider)."""
    if obj.ref.kind == KIND_OAUTH2:
        return await _reconcile_provider(obj, world)
    if obj.ref.kind == KIND_SMTP:
        return await _reconcile_smtp(obj, world)
    raise ValueError(f"unknown kind {obj.ref.kind!r}")


# --- helpers ------------------------------------------------------------------------------


def _key(ref: ObjectRef) -> str:
    return f"{ref.kind}/{ref.namespace}/{ref.name}"


async def _write(world: World, ref: ObjectRef,
                 build: Callable[[StoredObject], tuple[dict[str, Any], TestMemo | None]],
                 ) -> StoredObject | None:
    """update_status with a no-op check: nothing is written when nothing changed."""

    def mutate(cur: StoredObject) -> StatusWrite | None:
        status, memo = build(cur)
        if status == cur.status and memo == cur.memo:
            return None
        return StatusWrite(status=status, memo=memo)

    return await world.store.update_status(ref, mutate)


def _active_summary(res: ExternalSmtp, generation: int, digest: str) -> dict[str, Any]:
    s = res.spec
    out: dict[str, Any] = {"generation": generation, "host": s.host, "port": s.connect_port,
                           "authentication": s.authentication, "tlsMode": s.tls_mode,
                           "digest": digest}
    if s.username:
        out["username"] = s.username
    if s.sender:
        out["from"] = s.sender
    if s.oauth2_provider_ref:
        out["oauth2Provider"] = s.oauth2_provider_ref.name
    if s.password_from:
        out["passwordFrom"] = s.password_from.model_dump(by_alias=True, exclude_none=True)
    if not s.tls.verify:
        out["tlsVerify"] = False
    return out


def _lkg_suffix(status: dict[str, Any], generation: int, digest: str) -> str:
    """'; generation 6 remains in use' when a last-known-good differs from what failed."""
    active = status.get("active") or {}
    agen = status.get("activeGeneration")
    if agen is None:
        return ""
    if agen != generation:
        return f"; generation {agen} remains in use"
    if active.get("digest") != digest:
        return (f"; generation {agen} with its previously tested credentials remains in use")
    return ""


def _failure_status(cur: StoredObject, *, generation: int, reason: str, message: str,
                    now: float, retrying: bool, digest: str, what: str) -> dict[str, Any]:
    st = dict(cur.status)
    entry = catalog.CATALOG.get(reason)
    stalled = bool(entry and entry.stalled) and not retrying
    lkg = _lkg_suffix(st, generation, digest)
    text = f"{what} failed ({reason}): {message}{lkg}"
    conds = list(st.get("conditions") or [])
    conds = cond.set_condition(conds, cond.READY, "False", reason, text,
                               generation=generation, now=now)
    if stalled:
        action = entry.action if entry else ""
        conds = cond.set_condition(conds, cond.STALLED, "True", reason,
                                   f"only a change can help: {action}",
                                   generation=generation, now=now)
    else:
        conds = cond.remove_condition(conds, cond.STALLED)
    if retrying:
        conds = cond.set_condition(conds, cond.RECONCILING, "True", reason,
                                   "retrying with backoff", generation=generation, now=now)
    else:
        conds = cond.remove_condition(conds, cond.RECONCILING)
    st["conditions"] = conds
    st["observedGeneration"] = generation
    return st


def _not_requested(st: dict[str, Any], generation: int, now: float) -> dict[str, Any]:
    """A relay that does not ask to be selected gets its Selected condition here."""
    st["conditions"] = cond.set_condition(
        list(st.get("conditions") or []), cond.SELECTED, "False", "NotRequested",
        "spec.selected is false", generation=generation, now=now)
    st["selected"] = False
    return st


# --- ExternalSmtp ------------------------------------------------------------------------


async def _blocked(obj: StoredObject, world: World, *, generation: int, reason: str,
                   message: str, requested: bool, digest: str = "") -> ReconcileResult:
    """Commit a failure that happened before any test (spec, provider, credentials)."""
    now = world.clock()
    entry = catalog.CATALOG.get(reason)
    retryable = bool(entry and entry.retryable)
    key = _key(obj.ref)
    prev = obj.memo
    failures = (prev.failures + 1) if prev else 1
    invalid = reason == "InvalidSpec"

    def build(cur: StoredObject) -> tuple[dict[str, Any], TestMemo | None]:
        st = _failure_status(cur, generation=generation, reason=reason, message=message,
                             now=now, retrying=retryable, digest=digest,
                             what=f"generation {generation}")
        if not requested and cur.ref.kind == KIND_SMTP:
            st = _not_requested(st, generation, now)
        old = cur.memo
        # due_at=0: whatever blocked us, the next pass after it is fixed must test again.
        memo = TestMemo(digest=old.digest if old else "", generation=generation,
                        tested_at=old.tested_at if old else 0.0, due_at=0.0,
                        passed=False, failures=failures)
        return st, memo

    written = await _write(world, obj.ref, build)
    if written is None:
        return ReconcileResult(obj.ref, {}, None, "gone")
    if cond.find(obj.status.get("conditions") or [], cond.READY) != cond.find(
            written.status.get("conditions") or [], cond.READY):
        await world.events.emit(Event(obj.ref, "Warning", reason, message, cond.rfc3339(now)))
    if obj.ref.kind == KIND_SMTP and (requested or obj.status.get("selected")):
        await select_scope(obj.ref.namespace, world)
        written = await world.store.get(obj.ref) or written
    if invalid:
        requeue: float | None = None
    elif retryable:
        requeue = backoff_delay(failures, key)
    else:
        requeue = refresh_delay(PROVIDER_REFRESH, key)
    return ReconcileResult(obj.ref, written.status, requeue, "invalid" if invalid else "blocked")


async def _probe(world: World, res: ExternalSmtp, creds: ProbeCredentials) -> Verdict:
    """The probe within the limits.

    A rejected OAuth token is not retried here: the probe itself fetches a fresh token
    once and retries AUTH (or reconnects) before it reports ``token_rejected`` - retrying
    again would only add failed logins that servers throttle on.
    """
    async with world.limits.slot(res.spec.host):
        return await _safe_probe(world, res, creds)


async def _safe_probe(world: World, res: ExternalSmtp, creds: ProbeCredentials) -> Verdict:
    try:
        return await world.probe(res.spec, creds)
    except Exception as exc:  # noqa: BLE001 - a probe bug must not kill the loop or leak text
        log.error("probe raised %s for %s/%s", type(exc).__name__,
                  res.metadata.namespace, res.metadata.name)
        entry = catalog.get("ProtocolError")
        return Verdict(passed=False, stage="connect", reason="ProtocolError",
                       message=f"internal error in the connection test ({type(exc).__name__})",
                       action=entry.action, retryable=True, duration_seconds=0.0)


async def _reconcile_smtp(obj: StoredObject, world: World) -> ReconcileResult:
    ref = obj.ref
    gen = obj.generation
    requested = bool((obj.manifest.get("spec") or {}).get("selected", False))
    try:
        res = ExternalSmtp.model_validate(obj.manifest)
    except ValidationError as exc:
        return await _blocked(obj, world, generation=gen, reason="InvalidSpec",
                              message=render_validation_error(exc), requested=requested)

    provider: OAuth2Provider | None = None
    versions: dict[str, str] = {}
    pref = res.spec.oauth2_provider_ref
    if res.spec.authentication == "OAuth2" and pref is not None:
        pobj = await world.store.get(ObjectRef(KIND_OAUTH2, ref.namespace, pref.name))
        if pobj is None:
            return await _blocked(
                obj, world, generation=gen, reason="OAuth2ProviderNotFound", requested=requested,
                message=f"OAuth2Provider {pref.name!r} does not exist in namespace "
                        f"{ref.namespace}")
        if not cond.is_true(pobj.status, cond.READY):
            pready = cond.find(pobj.status.get("conditions") or [], cond.READY) or {}
            why = pready.get("reason", "Pending")
            return await _blocked(
                obj, world, generation=gen, reason="OAuth2ProviderNotReady", requested=requested,
                message=f"OAuth2Provider {pref.name!r} is not Ready ({why})")
        try:
            provider = OAuth2Provider.model_validate(pobj.manifest)
        except ValidationError:
            return await _blocked(obj, world, generation=gen, reason="OAuth2ProviderNotReady",
                                  requested=requested,
                                  message=f"OAuth2Provider {pref.name!r} is invalid")
        versions["oauth2Provider"] = pobj.memo.digest if pobj.memo else ""

    try:
        creds: Credentials = await world.resolve_credentials(res, provider)
    except CredentialError as exc:
        return await _blocked(obj, world, generation=gen, reason=exc.reason,
                              message=exc.message, requested=requested)
    versions.update(creds.versions)
    spec_json = res.spec.model_dump(by_alias=True, mode="json")
    digest = plan_digest(tested_spec(spec_json), versions)
    key = _key(ref)
    memo = obj.memo
    now = world.clock()
    if memo is not None and memo.digest == digest and now < memo.due_at:
        if memo.generation == gen and obj.status.get("observedGeneration") == gen:
            return ReconcileResult(ref, obj.status, memo.due_at - now, "skipped")
        if memo.tested_at > 0 and _status_matches_memo(obj.status, memo):
            return await _carry_over(obj, world, res, memo, digest, requested)

    fresh = not (memo is not None and memo.digest == digest)
    if world.announce_testing:
        await _write(world, ref, lambda cur: (_testing_status(cur, gen, fresh, now), cur.memo))

    verdict = await _probe(world, res, creds.probe)
    done = world.clock()
    if verdict.passed:
        new_memo = TestMemo(digest, gen, done, done + refresh_delay(res.spec.refresh_seconds, key),
                            True, 0)
    else:
        failures = (memo.failures + 1) if memo and not memo.passed else 1
        delay = (backoff_delay(failures, key) if verdict.retryable
                 else refresh_delay(res.spec.refresh_seconds, key))
        new_memo = TestMemo(digest, gen, done, done + delay, False, failures)

    summary = _active_summary(res, gen, digest)

    def build(cur: StoredObject) -> tuple[dict[str, Any], TestMemo | None]:
        return _commit_status(cur, res, verdict, gen, digest, done, summary, requested), new_memo

    before_ready = cond.find(obj.status.get("conditions") or [], cond.READY) or {}
    # The history first, then the status: a process killed in between leaves a recorded
    # test that status does not reflect yet (harmless: the next pass tests again), never a
    # Ready without its test in the history.
    await world.store.record_test(_record(ref, gen, done, verdict, digest))
    written = await _write(world, ref, build)
    if written is None:
        return ReconcileResult(ref, {}, None, "gone", tested=True, verdict=verdict)
    await _emit_test_events(world, ref, verdict, before_ready, written.status, done)
    if requested or obj.status.get("selected") or written.status.get("selected"):
        await select_scope(ref.namespace, world)
        written = await world.store.get(ref) or written
    return ReconcileResult(ref, written.status, max(0.0, new_memo.due_at - world.clock()),
                           "tested", tested=True, verdict=verdict)


def _status_matches_memo(status: dict[str, Any], memo: TestMemo) -> bool:
    """True when the conditions still show the memo's result (no test was interrupted
    after ``Reconciling=True`` was written, nothing else moved Ready): only then may a new
    generation inherit them; otherwise the engine tests."""
    ready = cond.find(status.get("conditions") or [], cond.READY) or {}
    testing = cond.find(status.get("conditions") or [], cond.RECONCILING) or {}
    return (ready.get("status") == ("True" if memo.passed else "False")
            and testing.get("reason") != "Testing"
            and ready.get("observedGeneration") == memo.generation)


async def _carry_over(obj: StoredObject, world: World, res: ExternalSmtp, memo: TestMemo,
                      digest: str, requested: bool) -> ReconcileResult:
    """A new generation that changed only untested fields (``selected``,
    ``refreshInterval``) inherits the result of the test of the identical settings.

    Guarantee 1 still holds: Ready describes a passed test of exactly these connection
    settings and secrets (same digest); only the bookkeeping moves to the new generation.
    """
    ref, gen, now = obj.ref, obj.generation, world.clock()
    key = _key(ref)
    last_reason = str((obj.status.get("lastTest") or {}).get("reason", ""))
    entry = catalog.CATALOG.get(last_reason)
    if not memo.passed and entry is not None and entry.retryable:
        due = memo.due_at  # keep the backoff schedule of a transient failure
    else:  # the (possibly changed) refreshInterval from the last test
        due = memo.tested_at + refresh_delay(res.spec.refresh_seconds, key)
    new_memo = replace(memo, generation=gen, due_at=due)
    summary = _active_summary(res, gen, digest)

    def build(cur: StoredObject) -> tuple[dict[str, Any], TestMemo | None]:
        st = dict(cur.status)
        conds = []
        for c in st.get("conditions") or []:
            c = dict(c)
            c["observedGeneration"] = gen
            if c.get("type") == cond.READY and c.get("status") == "True":
                c["message"] = (f"generation {gen} has the connection settings of generation "
                                f"{memo.generation}, which passed its connection test")
            conds.append(c)
        st["conditions"] = conds
        st["observedGeneration"] = gen
        active = st.get("active") or {}
        if memo.passed and active.get("digest") == digest:
            st["activeGeneration"] = gen
            st["active"] = summary
        if not requested:
            st = _not_requested(st, gen, now)
        return st, new_memo

    written = await _write(world, ref, build)
    if written is None:
        return ReconcileResult(ref, {}, None, "gone")
    if requested or obj.status.get("selected"):
        await select_scope(ref.namespace, world)
        written = await world.store.get(ref) or written
    return ReconcileResult(ref, written.status, max(0.0, due - world.clock()), "updated")


def _testing_status(cur: StoredObject, gen: int, fresh: bool, now: float) -> dict[str, Any]:
    st = dict(cur.status)
    conds = list(st.get("conditions") or [])
    conds = cond.set_condition(conds, cond.RECONCILING, "True", "Testing",
                               f"testing generation {gen}", generation=gen, now=now)
    if fresh or not cond.is_true(st, cond.READY):
        lkg = _lkg_suffix(st, gen, "") if st.get("activeGeneration") != gen else ""
        conds = cond.set_condition(conds, cond.READY, "Unknown", "Testing",
                                   f"testing generation {gen}{lkg}", generation=gen, now=now)
    st["conditions"] = conds
    st["observedGeneration"] = gen
    return st


def _commit_status(cur: StoredObject, res: ExternalSmtp, v: Verdict, gen: int, digest: str,
                   now: float, summary: dict[str, Any], requested: bool) -> dict[str, Any]:
    when = cond.rfc3339(now)
    last_test: dict[str, Any] = {"passed": v.passed, "stage": v.stage, "reason": v.reason,
                                 "message": v.message,
                                 "durationSeconds": round(v.duration_seconds, 3),
                                 "generation": gen, "warnings": list(v.warnings)}
    if v.passed:
        st = dict(cur.status)
        conds = list(st.get("conditions") or [])
        warn = f" (warnings: {', '.join(v.warnings)})" if v.warnings else ""
        conds = cond.set_condition(
            conds, cond.READY, "True", "TestPassed",
            f"generation {gen} passed its connection test in {v.duration_seconds:.2f}s{warn}",
            generation=gen, now=now)
        conds = cond.remove_condition(conds, cond.STALLED)
        conds = cond.remove_condition(conds, cond.RECONCILING)
        st["conditions"] = conds
        st["observedGeneration"] = gen
        st["activeGeneration"] = gen
        st["active"] = summary
        st["lastSuccessfulTestTime"] = when
    else:
        st = _failure_status(cur, generation=gen, reason=v.reason,
                             message=f"{v.message} (stage {v.stage})", now=now,
                             retrying=v.retryable, digest=digest,
                             what=f"generation {gen}")
    st["lastTestTime"] = when
    st["lastTest"] = last_test
    if not requested:
        st = _not_requested(st, gen, now)
    return st


def _record(ref: ObjectRef, gen: int, now: float, v: Verdict, digest: str) -> TestRecord:
    return TestRecord(ref=ref, generation=gen, at=cond.rfc3339(now), passed=v.passed,
                      stage=v.stage, reason=v.reason, message=v.message,
                      duration_seconds=v.duration_seconds, digest=digest,
                      stage_seconds=dict(v.stage_seconds),
                      transcript=[t.to_json() for t in v.transcript],
                      warnings=list(v.warnings),
                      details={k: val for k, val in v.details.items()
                               if isinstance(val, str | int | float | bool)})


async def _emit_test_events(world: World, ref: ObjectRef, v: Verdict,
                            before: dict[str, Any], after: dict[str, Any], now: float) -> None:
    at = cond.rfc3339(now)
    ready = cond.find(after.get("conditions") or [], cond.READY) or {}
    if v.passed:
        if before.get("status") != "True":
            await world.events.emit(Event(ref, "Normal", "TestPassed",
                                          str(ready.get("message", "")), at))
        return
    await world.events.emit(Event(ref, "Warning", v.reason, str(ready.get("message", "")), at))
    if after.get("activeGeneration") is not None:
        await world.events.emit(Event(
            ref, "Normal", "LastKnownGoodRetained",
            f"generation {after.get('activeGeneration')} remains in use", at))


# --- OAuth2Provider ------------------------------------------------------------------------


async def _reconcile_provider(obj: StoredObject, world: World) -> ReconcileResult:
    ref = obj.ref
    gen = obj.generation
    key = _key(ref)
    try:
        provider = OAuth2Provider.model_validate(obj.manifest)
    except ValidationError as exc:
        return await _blocked(obj, world, generation=gen, reason="InvalidSpec",
                              message=render_validation_error(exc), requested=False)
    try:
        health = await world.check_provider(provider)
        ready, reason, message = health.ready, health.reason, health.message
        version = health.version or ""
        warnings = list(health.warnings)
    except CredentialError as exc:
        ready, reason, message, version, warnings = False, exc.reason, exc.message, "", []
    except Exception as exc:  # noqa: BLE001 - same reasoning as _safe_probe
        log.error("check_provider raised %s for %s", type(exc).__name__, key)
        ready, reason, message, version, warnings = (
            False, "OAuth2TokenEndpointUnavailable",
            f"internal error while checking the provider ({type(exc).__name__})", "", [])
    now = world.clock()
    spec_json = provider.spec.model_dump(by_alias=True, mode="json")
    digest = plan_digest(spec_json, {"provider": version})
    entry = catalog.CATALOG.get(reason)
    retryable = (not ready) and bool(entry and entry.retryable)
    prev = obj.memo
    failures = 0 if ready else ((prev.failures + 1) if prev and not prev.passed else 1)
    delay = backoff_delay(failures, key) if retryable else refresh_delay(PROVIDER_REFRESH, key)

    def build(cur: StoredObject) -> tuple[dict[str, Any], TestMemo | None]:
        old = cur.memo
        if (old is not None and old.digest == digest and old.passed == ready
                and cur.status.get("observedGeneration") == gen):
            memo = old  # unchanged: no write (the idempotent re-apply writes nothing)
        else:
            memo = TestMemo(digest, gen, now, now + delay, ready, failures)
        prev = cond.find(cur.status.get("conditions") or [], cond.READY) or {}
        if (memo is old and prev.get("status") == ("True" if ready else "False")
                and prev.get("reason") == (reason or "TokenObtained")):
            # Nothing changed but the message's wording (e.g. "cached for 3539s"): keep the
            # status as it is, so an unchanged re-apply writes nothing.
            return cur.status, old
        if ready:
            st = dict(cur.status)
            conds = cond.set_condition(list(st.get("conditions") or []), cond.READY, "True",
                                       reason or "TokenObtained", message or "token obtained",
                                       generation=gen, now=now)
            conds = cond.remove_condition(conds, cond.STALLED)
            conds = cond.remove_condition(conds, cond.RECONCILING)
            st["conditions"] = conds
            st["observedGeneration"] = gen
            if memo is not old or "lastTokenTime" not in st:
                st["lastTokenTime"] = cond.rfc3339(now)
        else:
            st = _failure_status(cur, generation=gen, reason=reason, message=message, now=now,
                                 retrying=retryable, digest=digest,
                                 what=f"OAuth2Provider generation {gen}")
        if warnings:
            st["warnings"] = warnings
        else:
            st.pop("warnings", None)
        return st, memo

    before = cond.find(obj.status.get("conditions") or [], cond.READY) or {}
    written = await _write(world, ref, build)
    if written is None:
        return ReconcileResult(ref, {}, None, "gone")
    after = cond.find(written.status.get("conditions") or [], cond.READY) or {}
    if before.get("status") != after.get("status") or before.get("reason") != after.get("reason"):
        await world.events.emit(Event(ref, "Normal" if ready else "Warning", reason,
                                      message, cond.rfc3339(now)))
    return ReconcileResult(ref, written.status, delay, "checked")
