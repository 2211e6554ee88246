"""One idempotent, level-triggered reconcile pass for one resource, by key.

``await reconcile(ref, world) -> ReconcileResult(status, requeue_after, action, ...)`` is
the function every runtime calls (the local CLI's apply loop, the Kubernetes operator's
per-resource worker, tests).  It reads the object *inside* the pass (never a snapshot the
caller took earlier), so a pass always works on the current spec, status and memo.
Runtimes differ only in the :class:`World` they pass (``reconciler.engine.world``) and
in what they do with ``requeue_after`` (sleep and call again, unless woken earlier).

Steps for an ``ExternalSmtp`` (the decision is :func:`reconciler.engine.assess.assess`,
shared with ``plan``):

1. **validate** the stored manifest (``InvalidSpec`` -> ``Stalled``; no test);
2. **provider**: for OAuth2, the referenced ``OAuth2Provider`` must exist and be Ready;
   a provider that failed passes its own reason on, with that reason's retry/stalled flags;
3. **resolve** credentials (``CredentialError`` reason, retried or stalled per catalog);
4. **plan**: digest = spec + secret versions + provider version
   (``reconciler.engine.digest``).  Same digest as the last test and not yet due -> no
   test, no write, ``requeue_after`` = time until due;
5. **probe** within the world's concurrency limits.  ``Reconciling=True`` (reason
   ``Testing``; with ``Ready=Unknown`` when the digest is fresh, because Ready must only
   describe a test of the current generation with current secrets) is written *before*
   the test only when the status would otherwise claim something false meanwhile - see
   :func:`_announce_first` - and *during* a test still running after
   ``world.announce_after`` seconds; otherwise the result is the pass's one status write;
6. **commit**: conditions, last test, the active record (``reconciler.engine.record``;
   ``activeGeneration`` + ``active`` move only on a pass, ``active.health`` turns
   ``Failing`` when the configuration in use fails its re-verification), test history,
   events - then selection of the scope (``reconciler.engine.selection``).

Conditions (kstatus):

* ``Ready`` - True only after a passed test of the current generation and secrets.
* ``Stalled`` - True when the catalog says only a user change helps; absent otherwise.
* ``Reconciling`` - True while a test of a change is pending and after a *retryable*
  failure, while the engine keeps retrying with backoff (reason = the failure); absent
  otherwise.  A new generation is "in progress" by ``status.observedGeneration`` lagging
  ``metadata.generation`` (kstatus reads exactly that), so its first test needs no write
  before it; a same-generation change (a rotated Secret, a forced re-verification) is
  announced with ``Reconciling=True`` before its test, and any test still running after
  ``world.announce_after`` seconds gets it too.
* ``Selected`` - written by selection.

Permanent failures are still re-verified every ``refreshInterval`` (the world may have
changed under them); transient ones retry with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, cast

from reconciler import catalog
from reconciler.credentials.base import CredentialError
from reconciler.engine import conditions as cond
from reconciler.engine.assess import (
    Blocked,
    assess,
    render_validation_error,
)
from reconciler.engine.backoff import backoff_delay, refresh_delay
from reconciler.engine.digest import plan_digest
from reconciler.engine.policy import certificate_expiring, config_warnings, refresh_seconds
from reconciler.engine.record import failing_record, passed_record
from reconciler.engine.selection import OwnWrite, candidate, select_scope, select_scope_with
from reconciler.engine.world import World
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import KIND_OAUTH2, KIND_SMTP, ExternalSmtp, OAuth2Provider
from reconciler.status import ActiveRecord, Condition, LastTest, ProviderStatus, SmtpStatus
from reconciler.stores.base import (
    Event,
    ObjectRef,
    StatusWrite,
    StoredObject,
    TestMemo,
    TestRecord,
)

__all__ = ["ReconcileAction", "ReconcileResult", "reconcile", "render_validation_error"]

log = logging.getLogger(__name__)

PROVIDER_REFRESH = 3600.0  # an OAuth2Provider has no refreshInterval: re-check hourly
ANNOUNCE_AFTER = 5.0  # a test still running after this long shows Reconciling=True
# Set (to any new value, e.g. a timestamp) to re-verify now: `smtpctl reconcile --force` on a
# cluster writes it; status.lastHandledReconcileAt echoes the value once handled.
RECONCILE_REQUEST = "smtp.reconciler.dev/reconcile-requested-at"


class ReconcileAction(StrEnum):
    """What one pass did - the one list (docs/engine.md shows the same)."""

    TESTED = "tested"  # a connection test ran and its verdict was committed
    SKIPPED = "skipped"  # tested already with these settings and secrets; not due
    INHERITED = "inherited"  # a new generation of untested fields took the identical result
    INVALID = "invalid"  # the manifest does not validate (InvalidSpec; no requeue)
    BLOCKED = "blocked"  # provider or credentials stopped the pass before a test
    CHECKED = "checked"  # an OAuth2Provider was checked
    GONE = "gone"  # the object does not exist (deleted meanwhile)


Status = SmtpStatus | ProviderStatus


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What one pass did.

    ``status`` is the status as written (wire form); ``requeue_after`` seconds until the
    next pass is due (``None``: only a change can help, or the object is gone);
    ``action`` is a :class:`ReconcileAction`; ``regressed``: the object was Ready when the
    pass began and is not any more (a runtime reports that as a failure of the run even
    when nothing in the input changed - a password rotated away, a lost refresh token).
    """

    ref: ObjectRef
    status: dict[str, Any]
    requeue_after: float | None
    action: ReconcileAction
    tested: bool = False
    verdict: Verdict | None = None
    regressed: bool = False


async def reconcile(ref: ObjectRef, world: World, *, force: bool = False) -> ReconcileResult:
    """One pass for the object ``ref`` (an ExternalSmtp or an OAuth2Provider).

    ``force`` re-tests an ExternalSmtp even when its last test is not due
    (``smtpctl reconcile --force``); blocks (invalid spec, missing secret) still apply.
    """
    if ref.kind not in (KIND_OAUTH2, KIND_SMTP):
        raise ValueError(f"unknown kind {ref.kind!r}")
    obj = await world.store.get(ref)
    if obj is None:
        return ReconcileResult(ref, {}, None, ReconcileAction.GONE)
    if ref.kind == KIND_OAUTH2:
        result = await _reconcile_provider(obj, world)
    else:
        result = await _reconcile_smtp(obj, world, force=force)
    if cond.is_true(obj.status, cond.READY) and result.status and \
            not cond.is_true(result.status, cond.READY):
        result = replace(result, regressed=True)
    return result


# --- helpers ------------------------------------------------------------------------------


def _key(ref: ObjectRef) -> str:
    return f"{ref.kind}/{ref.namespace}/{ref.name}"


def smtp_status(obj: StoredObject) -> SmtpStatus:
    """A copy of ``obj``'s status, typed (the store holds the wire form)."""
    return cast(SmtpStatus, dict(obj.status))


def _requested(obj: StoredObject) -> bool:
    return bool((obj.manifest.get("spec") or {}).get("selected", False))


def reconcile_request(obj: StoredObject) -> str | None:
    """The value of the reconcile-request annotation when it has not been handled yet."""
    ann = (obj.manifest.get("metadata") or {}).get("annotations") or {}
    value = ann.get(RECONCILE_REQUEST)
    if not isinstance(value, str) or not value:
        return None
    return None if obj.status.get("lastHandledReconcileAt") == value else value


def _handled(st: Status, request: str | None) -> Status:
    if request is not None:
        st["lastHandledReconcileAt"] = request
    return st


def _takes_part(obj: StoredObject) -> bool:
    """Does this relay's pass recompute selection (it asks for it, or holds it)?"""
    return _requested(obj) or bool(obj.status.get("selected"))


async def _select(world: World, obj: StoredObject, written: StoredObject,
                  ) -> tuple[StoredObject, float | None]:
    """Selection of the scope after a pass, when this relay takes part in it; returns the
    object as stored afterwards and, when it waits for its fail-back delay, the seconds
    until it may take over (so the next pass comes then, not at the next re-verification)."""
    if not (_requested(written) or obj.status.get("selected") or written.status.get("selected")):
        return written, None
    await select_scope(obj.ref.namespace, world)
    fresh = await world.store.get(obj.ref) or written
    return fresh, _failback_wait(fresh, world.clock())


def _failback_wait(obj: StoredObject, now: float) -> float | None:
    if cond.attr(obj.status, cond.SELECTED, "reason") != "FailbackPending":
        return None
    c = candidate(obj)
    return max(1.0, c.ready_since + c.failback_after - now)


def _sooner(requeue: float | None, wait: float | None) -> float | None:
    if wait is None:
        return requeue
    return wait if requeue is None else min(requeue, wait)


def _mutator(build: Callable[[StoredObject], tuple[Status, TestMemo | None]],
             ) -> Callable[[StoredObject], StatusWrite | None]:
    """``build`` as a store mutator with a no-op check: None when nothing changed."""

    def mutate(cur: StoredObject) -> StatusWrite | None:
        status, memo = build(cur)
        if status == cur.status and memo == cur.memo:
            return None
        return StatusWrite(status=dict(status), memo=memo)

    return mutate


async def _write(world: World, ref: ObjectRef,
                 build: Callable[[StoredObject], tuple[Status, TestMemo | None]],
                 ) -> StoredObject | None:
    """update_status with a no-op check: nothing is written when nothing changed."""
    return await world.store.update_status(ref, _mutator(build))


def _lkg_suffix(status: SmtpStatus, generation: int, digest: str) -> str:
    """'; generation 6 remains in use' when a last-known-good differs from what failed."""
    active = status.get("active")
    agen = status.get("activeGeneration")
    if agen is None or active is None:
        return ""
    if agen != generation:
        return f"; generation {agen} remains in use"
    if active.get("digest") != digest:
        return (f"; generation {agen} stays in use with the secret values it was tested "
                f"with - the current values of its secrets were not tested and are not "
                f"handed out (get active --reveal refuses them)")
    return f"; generation {agen} is the last-known-good, and it is failing now"


# The Selected condition of a relay that does not ask to be selected.
_NOT_REQUESTED: cond.Change = ("False", "NotRequested", "spec.selected is false")


def _failure_status(st: Status, *, generation: int, block: Blocked, message: str,
                    now: float, digest: str, what: str, not_requested: bool = False) -> Status:
    """``st`` with the conditions of a failure (and, ``not_requested``, the Selected
    condition of a relay that does not ask to be selected: one list for both)."""
    stalled = block.stalled and not block.retryable
    lkg = _lkg_suffix(cast(SmtpStatus, st), generation, digest) if digest else ""
    text = f"{what} failed ({block.reason}): {message}{lkg}"
    changes: dict[str, cond.Change] = {cond.READY: ("False", block.reason, text)}
    if stalled:
        entry = catalog.CATALOG.get(block.reason)
        action = entry.action if entry else ""
        changes[cond.STALLED] = ("True", block.reason, f"only a change can help: {action}")
    else:
        changes[cond.STALLED] = None
    changes[cond.RECONCILING] = (("True", block.reason, "retrying with backoff")
                                 if block.retryable else None)
    if not_requested:
        changes[cond.SELECTED] = _NOT_REQUESTED
    st["conditions"] = cond.set_conditions(st.get("conditions") or [], changes,
                                           generation=generation, now=now)
    st["observedGeneration"] = generation
    return st


def _not_requested(st: SmtpStatus, generation: int, now: float) -> SmtpStatus:
    """A relay that does not ask to be selected gets its Selected condition here."""
    st["conditions"] = cond.set_conditions(st.get("conditions") or [],
                                           {cond.SELECTED: _NOT_REQUESTED},
                                           generation=generation, now=now)
    st["selected"] = False
    return st


# --- ExternalSmtp ------------------------------------------------------------------------


async def _blocked(obj: StoredObject, world: World, block: Blocked, *,
                   invalid: bool = False) -> ReconcileResult:
    """Commit a failure that happened before any test (spec, provider, credentials).

    ``invalid``: the object's own manifest does not validate - no requeue, only a change
    (a new generation) can help."""
    now = world.clock()
    generation = obj.generation
    requested = _requested(obj) and obj.ref.kind == KIND_SMTP
    key = _key(obj.ref)
    failures = (obj.memo.failures + 1) if obj.memo else 1
    request = reconcile_request(obj)

    def build(cur: StoredObject) -> tuple[Status, TestMemo | None]:
        not_requested = cur.ref.kind == KIND_SMTP and not _requested(cur)
        st: Status = _failure_status(cast(Status, dict(cur.status)), generation=generation,
                                     block=block, message=block.message, now=now, digest="",
                                     what=f"generation {generation}",
                                     not_requested=not_requested)
        st = _handled(st, request)
        if not_requested:
            cast(SmtpStatus, st)["selected"] = False
        old = cur.memo
        # due_at=0: whatever blocked us, the next pass after it is fixed must test again.
        memo = TestMemo(digest=old.digest if old else "", generation=generation,
                        tested_at=old.tested_at if old else 0.0, due_at=0.0,
                        passed=False, failures=failures)
        return st, memo

    written = await _write(world, obj.ref, build)
    if written is None:
        return ReconcileResult(obj.ref, {}, None, ReconcileAction.GONE)
    if cond.of(obj.status, cond.READY) != cond.of(written.status, cond.READY):
        await world.events.emit(Event(obj.ref, "Warning", block.reason, block.message,
                                      cond.rfc3339(now)))
    if obj.ref.kind == KIND_SMTP and (requested or obj.status.get("selected")):
        written, _ = await _select(world, obj, written)
    if invalid:
        requeue: float | None = None
        action = ReconcileAction.INVALID
    else:
        requeue = (backoff_delay(failures, key) if block.retryable
                   else refresh_delay(PROVIDER_REFRESH, key))
        action = ReconcileAction.BLOCKED
    return ReconcileResult(obj.ref, written.status, requeue, action)


async def _probe(world: World, res: ExternalSmtp, creds: ProbeCredentials,
                 on_slow: Callable[[], Awaitable[object]] | None = None) -> Verdict:
    """The probe within the limits; ``on_slow`` runs when the test (started: its slot
    acquired) is still running after ``world.announce_after`` seconds.

    ``on_slow`` runs in a task of its own beside the test and is awaited before the
    verdict is returned (its write comes before the verdict's); if it fails, the pass
    fails with its error once the test has ended (the test is bounded by its timeout) and
    the verdict is not written; a cancelled pass cancels both.

    A rejected OAuth token is not retried here: the probe itself fetches a fresh token
    once and retries AUTH (or reconnects) before it reports ``token_rejected`` - retrying
    again would only add failed logins that servers throttle on.
    """
    async with world.limits.slot(res.spec.host, res.metadata.namespace):
        if on_slow is None:
            return await _guarded_probe(world, res, creds)
        # The test runs in this task; a timer starts the announcement in a task of its own
        # only when the test is still running then (it used to be a task and a timed wait
        # per test: ~6 % of the engine's CPU per pass, for an announcement that is rare).
        loop = asyncio.get_running_loop()
        slow: list[asyncio.Future[object]] = []

        def start_announcing() -> None:
            slow.append(asyncio.ensure_future(on_slow()))

        timer = loop.call_later(float(getattr(world, "announce_after", ANNOUNCE_AFTER)),
                                start_announcing)
        try:
            verdict = await _guarded_probe(world, res, creds)
            if slow:  # the announcement is written before the verdict is
                await slow[0]
            return verdict
        finally:
            timer.cancel()
            for task in slow:
                if not task.done():  # this pass was cancelled during the test
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # raised above already, or the pass is cancelled


async def _guarded_probe(world: World, res: ExternalSmtp, creds: ProbeCredentials) -> Verdict:
    try:
        return await world.probe(res.spec, creds)
    except Exception as exc:  # noqa: BLE001 - a probe bug must not kill the loop or leak
        log.error("probe raised %s for %s/%s", type(exc).__name__,
                  res.metadata.namespace, res.metadata.name)
        entry = catalog.get("ProtocolError")
        return Verdict(passed=False, stage="connect", reason="ProtocolError",
                       message=f"internal error in the connection test "
                               f"({type(exc).__name__})",
                       action=entry.action, retryable=True, duration_seconds=0.0)


def _announce_first(obj: StoredObject, fresh: bool, forced: bool) -> bool:
    """Must ``Reconciling=True`` be written *before* this test?

    Not for a new generation (a new resource included): ``status.observedGeneration``
    still names an older generation (or is absent), which is what kstatus reads as "in
    progress", and Ready's ``observedGeneration`` is old too, so ``kubectl wait`` keeps
    waiting - an extra write would say nothing new.  Yes when the generation is already
    observed and the digest changed (a rotated Secret: Ready=True must not keep describing
    the old one while the new one is tested) or a re-verification was requested.  Not for
    a due re-verification of unchanged settings (nothing changed; a slow one is announced
    by :func:`_probe`)."""
    if obj.status.get("observedGeneration") != obj.generation:
        return False
    return fresh or forced


async def _reconcile_smtp(obj: StoredObject, world: World, *, force: bool) -> ReconcileResult:
    ref = obj.ref
    gen = obj.generation
    request = reconcile_request(obj)
    why_forced = ("re-verification requested" if force else
                  f"re-verification requested ({RECONCILE_REQUEST}={request})" if request
                  else None)
    a = await assess(obj, world, force=why_forced)
    if a.decision in ("invalid", "blocked"):
        assert a.blocked is not None
        return await _blocked(obj, world, a.blocked, invalid=a.decision == "invalid")
    assert a.resource is not None and a.creds is not None
    res, digest = a.resource, a.digest
    memo = obj.memo
    now = world.clock()
    if a.decision == "skip":
        assert memo is not None
        wait = _failback_wait(obj, now)
        if wait is not None and wait <= 1.0:  # its fail-back delay is over: select again
            after, wait = await _select(world, obj, obj)
            return ReconcileResult(ref, after.status, _sooner(memo.due_at - now, wait),
                                   ReconcileAction.SKIPPED)
        return ReconcileResult(ref, obj.status, _sooner(memo.due_at - now, wait),
                               ReconcileAction.SKIPPED)
    if a.decision == "inherit":
        assert memo is not None
        return await _inherit(obj, world, res, memo, digest)

    key = _key(ref)
    interval = refresh_seconds(res.spec, world.refresh_floor)

    async def announce() -> object:
        return await _write(world, ref, lambda cur: (
            _testing_status(cur, gen, a.fresh, world.clock()), cur.memo))

    on_slow = None
    if world.announce_testing:
        if _announce_first(obj, a.fresh, why_forced is not None):
            await announce()
        else:
            on_slow = announce
    verdict = await _probe(world, res, a.creds.probe, on_slow)
    done = world.clock()
    if verdict.passed:
        new_memo = TestMemo(digest, gen, done, done + refresh_delay(interval, key), True, 0)
    else:
        failures = (memo.failures + 1) if memo and not memo.passed else 1
        delay = (backoff_delay(failures, key) if verdict.retryable
                 else refresh_delay(interval, key))
        new_memo = TestMemo(digest, gen, done, done + delay, False, failures)
    record = passed_record(res, gen, digest, verdict, a.versions, done) if verdict.passed \
        else None
    warnings = config_warnings(res.spec, world.refresh_floor)

    def build(cur: StoredObject) -> tuple[Status, TestMemo | None]:
        st = _commit_status(cur, verdict, gen, digest, done, record)
        return _handled(_with_warnings(st, warnings, done), request), new_memo

    # The history first, then the status: a process killed in between leaves a recorded
    # test that status does not reflect yet (harmless: the next pass tests again), never a
    # Ready without its test in the history.
    await world.store.record_test(_record(ref, gen, done, verdict, digest))
    before = smtp_status(obj)
    failing_box: list[int | None] = []

    async def test_events(w: StoredObject) -> None:
        failing_box.append(await _emit_test_events(world, ref, verdict, before,
                                                   smtp_status(w), done))

    if _takes_part(obj):
        # The verdict and the Selected condition in one status write (selection decided
        # under the scope lock from the verdict as it will be written).
        _, maybe = await select_scope_with(ref.namespace, world,
                                           OwnWrite(ref.name, _mutator(build), test_events))
        wait = None if maybe is None else _failback_wait(maybe, world.clock())
    else:
        maybe = await _write(world, ref, build)
        if maybe is not None:
            await test_events(maybe)
            maybe, wait = await _select(world, obj, maybe)  # it joined during the pass
    if maybe is None:
        return ReconcileResult(ref, {}, None, ReconcileAction.GONE, tested=True,
                               verdict=verdict)
    written = maybe
    failing = failing_box[0] if failing_box else None
    if failing and written.status.get("selected"):
        # After selection: only when no standby took over is the relay in use failing (a
        # standby that took over says so with Failover).
        await world.events.emit(Event(
            ref, "Warning", "ActiveRelayFailing",
            f"the configuration in use (generation {failing}) failed its re-verification "
            f"({verdict.reason}) and no standby is Ready to take over", cond.rfc3339(done)))
    requeue = _sooner(max(0.0, new_memo.due_at - world.clock()), wait)
    return ReconcileResult(ref, written.status, requeue, ReconcileAction.TESTED, tested=True,
                           verdict=verdict)


def _with_warnings(st: SmtpStatus, config: list[str], now: float) -> SmtpStatus:
    """``status.warnings``: configuration warnings plus certificate expiry."""
    out = list(config)
    tls = (st.get("active") or {}).get("tls") or {}
    if certificate_expiring(tls.get("certificateNotAfter"), now):
        out.append("CertificateExpiringSoon")
    if out:
        st["warnings"] = out
    else:
        st.pop("warnings", None)
    return st


async def _inherit(obj: StoredObject, world: World, res: ExternalSmtp, memo: TestMemo,
                   digest: str) -> ReconcileResult:
    """A new generation that changed only untested fields (``selected``,
    ``refreshInterval``, ...) inherits the result of the test of the identical settings.

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
        due = memo.tested_at + refresh_delay(refresh_seconds(res.spec, world.refresh_floor), key)
    new_memo = replace(memo, generation=gen, due_at=due)
    warnings = config_warnings(res.spec, world.refresh_floor)

    def build(cur: StoredObject) -> tuple[Status, TestMemo | None]:
        st = smtp_status(cur)
        conds = []
        for c in st.get("conditions") or []:
            c = cast(Condition, dict(c))
            c["observedGeneration"] = gen
            if c.get("type") == cond.READY and c.get("status") == "True":
                c["message"] = (f"generation {gen} has the connection settings of generation "
                                f"{memo.generation}, which passed its connection test")
            conds.append(c)
        st["conditions"] = conds
        st["observedGeneration"] = gen
        active = st.get("active")
        if memo.passed and active is not None and active.get("digest") == digest:
            moved = cast(ActiveRecord, dict(active))
            moved["generation"] = gen
            st["activeGeneration"] = gen
            st["active"] = moved
        if not _requested(cur):
            st = _not_requested(st, gen, now)
        return _with_warnings(st, warnings, now), new_memo

    written = await _write(world, ref, build)
    if written is None:
        return ReconcileResult(ref, {}, None, ReconcileAction.GONE)
    written, wait = await _select(world, obj, written)
    return ReconcileResult(ref, written.status, _sooner(max(0.0, due - world.clock()), wait),
                           ReconcileAction.INHERITED)


def _testing_status(cur: StoredObject, gen: int, fresh: bool, now: float) -> SmtpStatus:
    st = smtp_status(cur)
    conds = list(st.get("conditions") or [])
    conds = cond.set_condition(conds, cond.RECONCILING, "True", "Testing",
                               f"testing generation {gen}", generation=gen, now=now)
    if fresh or not cond.is_true(st, cond.READY):
        agen = st.get("activeGeneration")
        lkg = f"; generation {agen} remains in use" if agen is not None and agen != gen else ""
        conds = cond.set_condition(conds, cond.READY, "Unknown", "Testing",
                                   f"testing generation {gen}{lkg}", generation=gen, now=now)
    st["conditions"] = conds
    st["observedGeneration"] = gen
    return st


def _commit_status(cur: StoredObject, v: Verdict, gen: int, digest: str, now: float,
                   record: ActiveRecord | None) -> SmtpStatus:
    when = cond.rfc3339(now)
    last_test: LastTest = {"passed": v.passed, "stage": v.stage, "reason": v.reason,
                           "message": v.message,
                           "durationSeconds": round(v.duration_seconds, 3),
                           "generation": gen, "warnings": list(v.warnings)}
    st = smtp_status(cur)
    not_requested = not _requested(cur)
    if v.passed:
        assert record is not None
        warn = f" (warnings: {', '.join(v.warnings)})" if v.warnings else ""
        via = ""
        if record.get("fallbackUsed"):
            via = (f" over the socketFactory fallback (port {record['port']}, "
                   f"{record['tlsMode']}); that is the connection handed out")
        changes: dict[str, cond.Change] = {
            cond.READY: ("True", "TestPassed",
                         f"generation {gen} passed its connection test in "
                         f"{v.duration_seconds:.2f}s{via}{warn}"),
            cond.STALLED: None, cond.RECONCILING: None}
        if not_requested:
            changes[cond.SELECTED] = _NOT_REQUESTED
        st["conditions"] = cond.set_conditions(st.get("conditions") or [], changes,
                                               generation=gen, now=now)
        st["observedGeneration"] = gen
        st["activeGeneration"] = gen
        st["active"] = record
        st["lastSuccessfulTestTime"] = when
    else:
        st = cast(SmtpStatus, _failure_status(
            st, generation=gen, block=Blocked(v.reason, v.message, v.retryable,
                                              _stalled(v.reason)),
            message=f"{v.message} (stage {v.stage})", now=now, digest=digest,
            what=f"generation {gen}", not_requested=not_requested))
        active = st.get("active")
        if active is not None and active.get("digest") == digest:
            st["active"] = failing_record(active, v.reason, v.message, now)
    st["lastTestTime"] = when
    st["lastTest"] = last_test
    if not_requested:  # its Selected condition is in the conditions set above
        st["selected"] = False
    return st


def _stalled(reason: str) -> bool:
    entry = catalog.CATALOG.get(reason)
    return bool(entry and entry.stalled)


# A tuple, not ``str | int | float | bool``: isinstance with a union type is ~2.5x slower.
_PLAIN = (str, int, float, bool)


def _record(ref: ObjectRef, gen: int, now: float, v: Verdict, digest: str) -> TestRecord:
    return TestRecord(ref=ref, generation=gen, at=cond.rfc3339(now), passed=v.passed,
                      stage=v.stage, reason=v.reason, message=v.message,
                      duration_seconds=v.duration_seconds, digest=digest,
                      stage_seconds=dict(v.stage_seconds),
                      # The transcript of a failure only: a passed test's is never read
                      # back, and redacting it is most of a test's CPU (reading it builds
                      # it; `smtpctl test -v` shows a passing one).
                      transcript=[] if v.passed else [t.to_json() for t in v.transcript],
                      warnings=list(v.warnings),
                      details={k: val for k, val in v.details.items()
                               if isinstance(val, _PLAIN)})


async def _emit_test_events(world: World, ref: ObjectRef, v: Verdict, before: SmtpStatus,
                            after: SmtpStatus, now: float) -> int | None:
    """The Events of a verdict; returns the generation in use when exactly it failed while
    selected (the caller emits ``ActiveRelayFailing`` once selection has been recomputed)."""
    at = cond.rfc3339(now)
    ready = cond.of(after, cond.READY)
    message = str(ready.get("message", "")) if ready else ""
    if v.passed:
        was = cond.of(before, cond.READY)
        if was is None or was.get("status") != "True":
            await world.events.emit(Event(ref, "Normal", "TestPassed", message, at))
        tls = (after.get("active") or {}).get("tls") or {}
        if "CertificateExpiringSoon" in (after.get("warnings") or []) and \
                "CertificateExpiringSoon" not in (before.get("warnings") or []):
            await world.events.emit(Event(
                ref, "Warning", "CertificateExpiringSoon",
                f"the relay's certificate expires at {tls.get('certificateNotAfter')}", at))
        return None
    await world.events.emit(Event(ref, "Warning", v.reason, message, at))
    active = after.get("active")
    if after.get("activeGeneration") is not None and active is not None:
        if active.get("health") == "Failing" and after.get("selected"):
            return int(active.get("generation") or 0)
        if active.get("health") != "Failing":
            await world.events.emit(Event(
                ref, "Normal", "LastKnownGoodRetained",
                f"generation {after.get('activeGeneration')} remains in use", at))
    return None


# --- OAuth2Provider ------------------------------------------------------------------------


async def _reconcile_provider(obj: StoredObject, world: World) -> ReconcileResult:
    from pydantic import ValidationError

    ref = obj.ref
    gen = obj.generation
    key = _key(ref)
    try:
        provider = OAuth2Provider.model_validate(obj.manifest)
    except ValidationError as exc:
        return await _blocked(obj, world, Blocked.of("InvalidSpec", render_validation_error(exc)),
                              invalid=True)
    try:
        health = await world.check_provider(provider)
        ready, reason, message = health.ready, health.reason, health.message
        version = health.version or ""
        warnings = list(health.warnings)
    except CredentialError as exc:
        ready, reason, message, version, warnings = False, exc.reason, exc.message, "", []
    except Exception as exc:  # noqa: BLE001 - same reasoning as _probe
        log.error("check_provider raised %s for %s", type(exc).__name__, key)
        ready, reason, message, version, warnings = (
            False, "OAuth2TokenEndpointUnavailable",
            f"internal error while checking the provider ({type(exc).__name__})", "", [])
    if ready and "RefreshTokenNotPersisted" in warnings:
        # Not a warning to live with: the old refresh token is spent and the new one lives
        # only in this process - the next start (locally: the next command) fails.
        ready, reason = False, "RefreshTokenNotPersisted"
        message = ("the token endpoint rotated the refresh token and it could not be "
                   f"written back; {message}")
        warnings = [w for w in warnings if w != "RefreshTokenNotPersisted"]
    now = world.clock()
    spec_json = provider.spec.model_dump(by_alias=True, mode="json")
    digest = plan_digest(spec_json, {"provider": version})
    block = None if ready else Blocked.of(reason, message)
    retryable = block is not None and block.retryable
    prev = obj.memo
    failures = 0 if ready else ((prev.failures + 1) if prev and not prev.passed else 1)
    delay = backoff_delay(failures, key) if retryable else refresh_delay(PROVIDER_REFRESH, key)
    request = reconcile_request(obj)

    def build(cur: StoredObject) -> tuple[Status, TestMemo | None]:
        old = cur.memo
        if (old is not None and old.digest == digest and old.passed == ready
                and cur.status.get("observedGeneration") == gen):
            memo = old  # unchanged: no write (the idempotent re-apply writes nothing)
        else:
            memo = TestMemo(digest, gen, now, now + delay, ready, failures)
        if (memo is old and request is None
                and cond.attr(cur.status, cond.READY, "status") == ("True" if ready else "False")
                and cond.attr(cur.status, cond.READY, "reason") == (reason or "TokenObtained")):
            # Nothing changed but the message's wording (e.g. "cached for 3539s"): keep the
            # status as it is, so an unchanged re-apply writes nothing.
            return cast(ProviderStatus, cur.status), old
        st = cast(ProviderStatus, dict(cur.status))
        if block is None:
            st["conditions"] = cond.set_conditions(
                st.get("conditions") or [],
                {cond.READY: ("True", reason or "TokenObtained", message or "token obtained"),
                 cond.STALLED: None, cond.RECONCILING: None},
                generation=gen, now=now)
            st["observedGeneration"] = gen
            if memo is not old or "lastTokenTime" not in st:
                st["lastTokenTime"] = cond.rfc3339(now)
        else:
            st = cast(ProviderStatus, _failure_status(
                st, generation=gen, block=block, message=message, now=now, digest="",
                what=f"OAuth2Provider generation {gen}"))
        if warnings:
            st["warnings"] = warnings
        else:
            st.pop("warnings", None)
        return _handled(st, request), memo

    written = await _write(world, ref, build)
    if written is None:
        return ReconcileResult(ref, {}, None, ReconcileAction.GONE)
    if any(cond.attr(obj.status, cond.READY, k) != cond.attr(written.status, cond.READY, k)
           for k in ("status", "reason")):
        await world.events.emit(Event(ref, "Normal" if ready else "Warning", reason,
                                      message, cond.rfc3339(now)))
    return ReconcileResult(ref, written.status, delay, ReconcileAction.CHECKED)

