"""Slow-test announcements: one timer per event loop, not one per test.

A test still running ``announce_after`` seconds after it got its slot is announced
(``Reconciling=True``).  The engine started a ``call_later`` timer per test and cancelled
it when the test ended (nearly always first): a ``TimerHandle`` per test plus the loop's
upkeep of the cancelled ones, in every first pass (issue 15).  ``engine/slowwatch.py``
keeps the deadlines in a heap behind one timer.  What must not change: every test whose
deadline passes while it runs is announced (once), a test that ends first never is, and
nothing is left behind.  ``tests/test_engine_announce.py`` covers the announcements
themselves.  Counts and events, never a time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from reconciler.engine.slowwatch import SlowWatch, watch_of
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.runtimes.local import reconcile_objects
from reconciler.stores.local import LocalStore
from tests.support.store_rows import manifest as _manifest

_VERDICT = Verdict(True, "quit", "TestPassed", "ok", "", False, 0.01,
                   details={"tlsMode": "none"})


async def _resolve(res: ExternalSmtp, provider: OAuth2Provider | None) -> Any:
    from reconciler.credentials.resolve import SmtpCredentials

    return SmtpCredentials(probe=ProbeCredentials(password=None), versions={})


async def _probe(spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
    await asyncio.sleep(0)
    return _VERDICT


async def _no_provider(provider: OAuth2Provider) -> Any:
    raise AssertionError("no provider here")


def test_a_first_pass_starts_no_timer_per_test(tmp_path: Path) -> None:
    """200 tests, none slow: the timers the loop is asked for are the group commit's and
    the watch's, one each time tests start after none was in flight (it was one per test
    besides: 202 timers)."""
    n = 200
    timers = [0]

    async def run(store: LocalStore, refs: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        real = loop.call_at

        def counting(when: float, callback: Any, *args: Any, **kw: Any) -> Any:
            timers[0] += 1
            return real(when, callback, *args, **kw)

        loop.call_at = counting  # type: ignore[method-assign,assignment]
        world = BasicWorld(store=store, resolve_fn=_resolve, probe_fn=_probe,
                           check_provider_fn=_no_provider, events=StoreEventSink(store),
                           limits=Limits(8, 8))
        out = await reconcile_objects(refs, world)
        assert watch_of(loop).pending == 0
        return out

    with LocalStore(tmp_path / "s") as store:
        refs = [u.obj.ref for u in store.upsert_many([_manifest(f"r{i:03d}")
                                                       for i in range(n)])]
        results = asyncio.run(run(store, refs))
    assert sum(r.tested for r in results) == n
    assert timers[0] < n // 4, timers[0]


async def test_due_entries_fire_once_and_ended_ones_never() -> None:
    loop = asyncio.get_running_loop()
    watch = SlowWatch(loop)
    fired: list[str] = []
    done = asyncio.Event()

    def fire(name: str) -> Any:
        def cb() -> None:
            fired.append(name)
            if {"a", "c"} <= set(fired):
                done.set()
        return cb

    a = watch.add(0.0, fire("a"))
    b = watch.add(3600.0, fire("b"))  # ends long before its deadline
    c = watch.add(0.0, fire("c"))
    d = watch.add(0.0, fire("d"))
    watch.discard(d)  # ended before the loop turned: never announced
    assert watch.pending == 3
    await asyncio.wait_for(done.wait(), 10)
    assert sorted(fired) == ["a", "c"]
    assert watch.pending == 1  # b
    for entry in (a, b, c, d):
        watch.discard(entry)  # after firing too: harmless
    assert watch.pending == 0 and watch._timer is None and watch._heap == []
    e = watch.add(0.0, fire("e"))  # the watch is used again afterwards
    for _ in range(3):
        await asyncio.sleep(0)
    assert fired[-1] == "e" and watch.pending == 0
    watch.discard(e)


async def test_an_earlier_deadline_moves_the_timer() -> None:
    loop = asyncio.get_running_loop()
    watch = SlowWatch(loop)
    seen = asyncio.Event()
    late = watch.add(3600.0, lambda: None)
    assert watch._timer is not None and watch._timer.when() > loop.time() + 3000
    watch.add(0.0, seen.set)
    await asyncio.wait_for(seen.wait(), 10)
    assert watch.pending == 1  # the late one still waits, with its own timer
    assert watch._timer is not None and watch._timer.when() > loop.time() + 3000
    watch.discard(late)
    assert watch._timer is None
