"""``run_probe``: the connection test as one call that always returns a Verdict.

Why it never raises for what a server or the network does: the engine must turn every
outcome into a status condition, and a traceback is not a status.  Everything the
server can do ends as a catalog reason; only cancellation (the caller's own decision)
propagates.

Retries (tenacity, exponential backoff with jitter) are for transient failures before
any credential was sent: a refused connection, a 421 or other 4xx greeting, a DNS
``EAI_AGAIN``.  Timeouts are not retried (they already spent the budget) and neither is
anything at or after AUTH (a retried wrong password is a second failed login, and
servers lock accounts on those).  All attempts share one deadline,
``spec.connectionTest.timeoutSeconds``; every network step gets what is left of it, so a
server that never greets or drips one byte a second is cut off on time.

The implicit-TLS fallback (``socketFactory.fallback: true``, JavaMail's semantics): when
the TLS connection cannot be set up for a reason other than a timeout, one plain
connection to ``spec.port`` is tried.  It may pass only if it is upgraded with STARTTLS,
or the resource carries no credentials, or ``allowPlaintextAuth`` is set; the verdict
then carries the ``InsecureFallbackUsed`` warning and ``details.fallbackUsed``.  When the
fallback fails as well, the verdict reports the implicit-TLS failure (the root cause) and
quotes the fallback's outcome in its message and ``details.fallback``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from reconciler import catalog
from reconciler.probe.egress import EgressPolicy
from reconciler.probe.failure import ProbeFailure
from reconciler.probe.redact import MAX_MESSAGE, Redactor, cap
from reconciler.probe.session import AttemptState, Mode, PipelinedAuthRefused, run_attempt
from reconciler.probe.transcript import Transcript
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtpSpec

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
_RETRY_STAGES = frozenset({"resolve", "connect", "banner", "ehlo"})
_RETRY_REASONS = frozenset({"ConnectionRefused", "ServerUnavailable", "UnknownHost"})
_FALLBACK_STAGES = frozenset({"connect", "tls"})


def _transient(exc: BaseException) -> bool:
    return (isinstance(exc, ProbeFailure) and exc.retryable and exc.retry_now
            and not exc.timeout and exc.stage in _RETRY_STAGES
            and exc.reason in _RETRY_REASONS)


async def _connection(state: AttemptState, mode: Mode, port: int) -> None:
    """One connection - and, when the server objected to the opt-in pipelined AUTH
    (``connectionTest.pipelineAuth``), one more at once without pipelining it, with the
    warning ``PipelinedAuthRefused``.  Safe: the objection came before any credential was
    checked, or after it passed."""
    try:
        await run_attempt(state, mode, port)
    except PipelinedAuthRefused as refused:
        state.pipelined_auth_refused = True
        state.warn("PipelinedAuthRefused")
        state.details["pipelinedAuthRefused"] = refused.detail
        state.transcript.note(f"{refused.detail}; testing again without pipelining AUTH")
        await run_attempt(state, mode, port)


async def _attempt(state: AttemptState) -> None:
    spec = state.spec
    try:
        await _connection(state, "implicit" if spec.implicit_tls else spec.tls_mode,
                          spec.connect_port)
        return
    except ProbeFailure as failure:
        fallback = (spec.implicit_tls and spec.socket_factory is not None
                    and spec.socket_factory.fallback and failure.stage in _FALLBACK_STAGES
                    and not failure.timeout and failure.reason != "EgressDenied")
        if not fallback:
            raise
        primary = failure
    state.transcript.note(f"implicit TLS failed ({primary.reason}); socketFactory.fallback: "
                          f"trying a plain connection to port {spec.port}")
    state.details["fallbackUsed"] = True
    try:
        await _connection(state, "fallback", spec.port)
    except ProbeFailure as second:
        state.details["fallback"] = {"stage": second.stage, "reason": second.reason,
                                     "message": second.message}
        combined = ProbeFailure(
            primary.stage, primary.reason,
            f"{primary.detail}; the fallback plain connection to port {spec.port} failed too "
            f"({second.reason}: {second.message})",
            retryable=primary.retryable, token_rejected=second.token_rejected,
        )
        raise combined from None
    state.warn("InsecureFallbackUsed")


async def _run(state: AttemptState, total: float) -> int:
    attempts = 0
    retrying = AsyncRetrying(
        stop=stop_after_attempt(MAX_ATTEMPTS) | stop_before_delay(total * 0.8),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
        retry=retry_if_exception(_transient),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            attempts += 1
            state.details["attempts"] = attempts
            if attempts > 1:
                state.transcript.note(f"attempt {attempts}")
            try:
                await _attempt(state)
            except ProbeFailure as failure:
                # The server hung up after rejecting the token: one new connection with the
                # fresh token (the refresh already happened inside the attempt).
                if (failure.token_rejected and failure.reason == "ProtocolError"
                        and state.token_refreshed and not state.reconnected):
                    state.reconnected = True
                    state.transcript.note("reconnecting with the fresh token")
                    await _attempt(state)
                else:
                    raise
    return attempts


async def run_probe(
    spec: ExternalSmtpSpec,
    creds: ProbeCredentials,
    *,
    policy: EgressPolicy | None = None,
    send_test_message_to: str | None = None,
) -> Verdict:
    """Run the connection test of ``spec``; see the module docstring and docs/probe.md."""
    started = time.monotonic()
    total = float(spec.connection_test.timeout_seconds)
    redactor = Redactor()
    if creds.password is not None:
        redactor.add(creds.password)
    state = AttemptState(
        spec=spec, creds=creds, policy=policy or EgressPolicy(),
        transcript=Transcript(redactor, started=started), deadline=started + total,
        send_test_message_to=send_test_message_to,
    )
    state.details.update({"tlsMode": spec.tls_mode, "configuredTlsMode": spec.tls_mode,
                          "fallbackUsed": False, "mechanism": None, "tlsVersion": None,
                          "peer": None})
    failure: ProbeFailure | None = None
    try:
        # A safety net above the per-step budgets (DNS in a thread, a stuck handshake).
        async with asyncio.timeout(total + 0.5):
            await _run(state, total)
    except ProbeFailure as exc:
        failure = exc
    except TimeoutError:
        failure = ProbeFailure(state.stage, "DeadlineExceeded",
                               f"{total:g}s elapsed at stage {state.stage}", timeout=True)
    except Exception as exc:  # noqa: BLE001 - never raise for what the network does
        log.warning("probe: unexpected %s at stage %s", type(exc).__name__, state.stage)
        failure = ProbeFailure(state.stage, "ProtocolError",
                               f"unexpected {type(exc).__name__} at stage {state.stage}")
    duration = time.monotonic() - started
    if spec.tls.verify is False and state.details.get("tlsVersion"):
        state.warn("TLSVerificationDisabled")
    transcript = state.transcript.view()  # redacted when first read
    details = dict(state.details)
    if failure is None:
        ok = catalog.get("TestPassed")
        message = ok.message
        if state.warnings:
            message += " (warnings: " + ", ".join(state.warnings) + ")"
        return Verdict(passed=True, stage="quit", reason=ok.name, message=message,
                       action=ok.action, retryable=False, duration_seconds=round(duration, 6),
                       warnings=tuple(state.warnings), stage_seconds=dict(state.stage_seconds),
                       transcript=transcript, details=details)
    return Verdict(
        passed=False, stage=failure.stage, reason=failure.reason,
        message=cap(state.transcript.redact(failure.message, one_line=True), MAX_MESSAGE,
                    state.transcript.redact),
        action=catalog.get(failure.reason).action, retryable=failure.retryable,
        duration_seconds=round(duration, 6), warnings=tuple(state.warnings),
        stage_seconds=dict(state.stage_seconds), transcript=transcript, details=details,
        token_rejected=failure.token_rejected,
    )
