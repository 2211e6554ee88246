"""A cancellation must never be lost.

Python 3.11's ``asyncio.wait_for`` returns the inner result instead of raising when the
task running it is cancelled in the same event-loop step in which the inner awaitable
completes (it checks ``fut.done()`` in its ``except CancelledError`` and returns).  The
cancellation is then silently dropped and the task carries on.  ``asyncio.timeout`` has
no such window.  Each test here drives exactly that interleaving - the awaited thing
completes, and the task is cancelled before it resumes - at every small offset in
event-loop steps, and asserts the task ends cancelled.  Each failed with ``wait_for`` in
place (see the commit that switched the module to ``asyncio.timeout``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from reconciler.credentials import login as login_module
from reconciler.credentials.base import CredentialError
from reconciler.credentials.oauth import TokenManager
from reconciler.credentials.sources import EnvSource, SourceRouter
from reconciler.devservers.oauth import OAuthServer
from reconciler.runtimes import local
from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.workers import WorkerPool
from reconciler.stores.base import ObjectRef
from tests.support import canary
from tests.support.oauth_server import GMAIL_SCOPE, provider
from tests.support.oauth_server import oauth_server as oauth_server

STEPS = range(6)  # offsets, in event-loop steps, between the wake-up and the cancel


async def _steps(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)  # one event-loop step: the interleaving under test, no timing


async def _cancel_and_settle(task: asyncio.Task[Any], what: str) -> bool:
    """Cancel ``task`` and wait (bounded) for it to finish: it must end cancelled.  False
    when it had already finished on its own (this offset came too late for the race)."""
    if not task.cancel():
        return False
    done, _ = await asyncio.wait({task}, timeout=10)
    if not done:
        task.cancel()
        raise AssertionError(f"{what}: still running 10 s after it was cancelled "
                             "(the cancel was lost)")
    if not task.cancelled():
        raise AssertionError(f"{what}: finished without being cancelled (the cancel was "
                             f"lost): {task.exception()!r}")
    return True


async def test_a_worker_stopped_as_it_is_woken_stops() -> None:
    """WorkerPool.stop(ref) while a wake for the same worker is in flight (a Secret event
    and the resource's deletion in one watch batch).  With wait_for the cancel was
    swallowed: the orphaned worker ran another pass and lived on, outside the pool (so
    stop_all could not stop it either).  (Since a sleeping resource holds a timer, not a
    task, the woken pass is a task of its own: stopped, it ends cancelled or has ended,
    and no timer is left to start another pass.)"""
    for k in STEPS:
        passes = 0
        slept = asyncio.Event()

        async def pass_fn(ref: ObjectRef) -> float | None:
            nonlocal passes
            passes += 1
            slept.set()
            return 3600.0

        pool = WorkerPool(pass_fn, OperatorMetrics(), slots=2)
        ref = ObjectRef("ExternalSmtp", "default", f"w{k}")
        try:
            pool.ensure(ref, 1)
            await asyncio.wait_for(slept.wait(), 10)
            await _steps(3)  # the pass is over: the resource now waits on its timer
            worker = pool.workers[ref]
            assert worker.task is None and worker.timer is not None
            pool.wake([ref])
            task = worker.task
            assert task is not None  # the woken pass
            await _steps(k)
            before = passes  # the woken worker may have run its pass already: allowed
            pool.stop(ref)
            if not task.done():
                assert await _cancel_and_settle(task, f"worker stopped {k} step(s) after "
                                                      "its wake")
            await _steps(3)
            assert passes == before, f"offset {k}: the stopped worker ran another pass"
            assert ref not in pool.workers
            assert worker.timer is None or worker.timer.cancelled(), \
                f"offset {k}: a timer would start another pass"
        finally:
            await pool.stop_all()


async def test_watch_cancelled_as_stop_is_set_ends_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """reconciler.runtimes.local.watch between passes: a cancel arriving in the step the
    stop event is set must still end the task as cancelled (with wait_for it returned
    normally, and whoever cancelled it - asyncio.run on Ctrl-C, a task group - was told it
    had finished on its own)."""
    passed = asyncio.Event()

    async def one_pass(*args: Any, **kwargs: Any) -> None:
        passed.set()

    monkeypatch.setattr(local, "_watch_pass", one_pass)

    class World:
        def clock(self) -> float:
            return 0.0

    raced = 0
    for k in STEPS:
        stop = asyncio.Event()
        passed.clear()
        task = asyncio.create_task(local.watch(
            None, World(), [], stop=stop, poll=3600, max_sleep=3600))  # type: ignore[arg-type]
        await asyncio.wait_for(passed.wait(), 10)
        await _steps(3)  # asleep until stop or the next poll
        stop.set()
        await _steps(k)
        raced += await _cancel_and_settle(task, f"watch cancelled {k} step(s) after stop")
    assert raced, "no offset cancelled the watch before it ended: the race was not exercised"


async def test_oauth_login_cancelled_as_the_redirect_arrives_ends_cancelled(
    oauth_server: OAuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``smtpctl oauth login`` interrupted (Ctrl-C cancels the main task) in the step the
    browser's redirect arrives must stop; with wait_for it went on with the redirect (here
    an ``error`` redirect, so it raised OAuth2LoginFailed instead of being cancelled; with
    a code it would have exchanged it and written the refresh token)."""
    listeners: list[Any] = []

    class Listener(login_module._Listener):
        def __init__(self, result: asyncio.Future[dict[str, str]]) -> None:
            super().__init__(result)
            listeners.append(self)

    monkeypatch.setattr(login_module, "_Listener", Listener)
    p = provider(oauth_server, grant="AuthorizationCode", client_id="cli-app",
                 refresh_token_from={"file": str(tmp_path / "rt")},
                 scopes=[GMAIL_SCOPE, "offline_access"])
    sources = SourceRouter(env=EnvSource({"SMTPCTL_TEST_CS": canary.CLIENT_SECRET}))
    raced = 0
    for k in STEPS:
        listeners.clear()
        announced = asyncio.Event()
        task = asyncio.create_task(login_module.login(
            p, sources, TokenManager(sources), announce=lambda _uri: announced.set(),
            timeout_seconds=60))
        await asyncio.wait_for(announced.wait(), 10)
        await _steps(3)  # waiting for the redirect
        (listener,) = listeners
        listener._result.set_result({"error": "access_denied"})  # what _callback does
        await _steps(k)
        if await _cancel_and_settle(task, f"login cancelled {k} step(s) after the redirect"):
            raced += 1
        else:  # it finished first, as it should: with the redirect's error
            with pytest.raises(CredentialError, match="access_denied"):
                task.result()
    assert raced, "no offset cancelled the login before it ended: the race was not exercised"
