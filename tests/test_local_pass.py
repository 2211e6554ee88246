"""The local runtime's pass (``reconcile_objects``): every resource, a bounded number at a
time, by a fixed set of tasks (not a task per resource queued on a semaphore)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine.reconcile import reconcile
from reconciler.engine.world import BasicWorld, Limits
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.runtimes import local
from reconciler.runtimes.local import _each
from reconciler.secret import Secret
from reconciler.stores.base import Event, ObjectRef
from reconciler.stores.local import LocalStore


async def test_each_item_once_and_never_more_than_the_limit_at_a_time() -> None:
    items = [ObjectRef("ExternalSmtp", "default", f"r{i}") for i in range(50)]
    seen: list[ObjectRef] = []
    running = 0
    peak = 0

    async def fn(ref: ObjectRef) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)  # a yield to the loop (not a wait): let the others run
        seen.append(ref)
        running -= 1

    tasks_before = len(asyncio.all_tasks())
    await _each(items, fn, 7)
    assert sorted(seen, key=lambda r: r.name) == sorted(items, key=lambda r: r.name)
    assert len(seen) == len(set(seen)) == 50
    assert peak == 7
    assert len(asyncio.all_tasks()) == tasks_before


async def test_each_runs_up_to_the_limit_concurrently_and_raises_a_bug() -> None:
    items = [ObjectRef("ExternalSmtp", "default", f"r{i}") for i in range(10)]
    started: list[str] = []
    all_in = asyncio.Event()

    async def fn(ref: ObjectRef) -> None:
        started.append(ref.name)
        if len(started) == 4:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 10)  # the 4 tasks must be in flight together
        if ref.name == "r9":
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        await _each(items, fn, 4)
    assert len(started) == 10


# --- how many passes a pass runs at once (reconcile_objects) -----------------------------


@dataclass
class _Creds:
    probe: ProbeCredentials
    versions: Mapping[str, str]


@dataclass
class _Fleet:
    """Relays of one host on a real SQLite store, the real engine pass; a stand-in test that
    holds its slot until every slot is taken (so the counts below do not depend on
    timing)."""

    limits: Limits
    started: int = 0  # passes begun
    running: int = 0
    peak: int = 0  # passes running at once
    in_flight: int = 0
    peak_in_flight: int = 0
    started_at_first_test: int | None = None
    full: asyncio.Event = field(default_factory=asyncio.Event)

    async def resolve(self, res: ExternalSmtp, provider: OAuth2Provider | None) -> _Creds:
        await asyncio.sleep(0)  # the real sources yield here (a file read in a thread)
        return _Creds(ProbeCredentials(password=Secret("pw")), {"passwordFrom": "h:1"})

    async def probe(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        if self.started_at_first_test is None:
            self.started_at_first_test = self.started
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if self.in_flight == min(self.limits.concurrency, self.limits.per_host):
            self.full.set()
        await asyncio.wait_for(self.full.wait(), 30)
        self.in_flight -= 1
        return Verdict(True, "quit", "TestPassed", "ok", "None", False, 0.01)

    async def check(self, provider: OAuth2Provider) -> Any:
        raise AssertionError("no provider here")

    async def emit(self, event: Event) -> None:
        pass


async def _first_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: Limits,
                       n: int = 100) -> _Fleet:
    f = _Fleet(limits)
    store = LocalStore(tmp_path / "state")
    docs = [{"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
             "metadata": {"name": f"r{i:03d}", "namespace": "default"},
             "spec": {"host": "relay.test", "port": 3000 + i,
                      "authentication": "UsernamePassword", "username": "app@example.test",
                      "startTLS": True, "passwordFrom": {"env": "SMTP_PW"}}}
            for i in range(n)]
    refs = [u.obj.ref for u in store.upsert_many(docs, now=1_000_000.0)]

    async def counted(ref: ObjectRef, world: Any, **kw: Any) -> Any:
        f.started += 1
        f.running += 1
        f.peak = max(f.peak, f.running)
        try:
            return await reconcile(ref, world, **kw)
        finally:
            f.running -= 1

    monkeypatch.setattr(local, "reconcile", counted)
    world = BasicWorld(store=store, resolve_fn=f.resolve, probe_fn=f.probe,
                       check_provider_fn=f.check, events=f, limits=limits,
                       clock_fn=lambda: 1_000_000.0)
    try:
        results = await asyncio.wait_for(local.reconcile_objects(refs, world), 60)
    finally:
        store.close()
    assert sum(1 for r in results if r.tested) == n
    return f


async def test_a_pass_runs_the_global_limit_plus_four_when_no_host_limit_is_lower(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--per-host at least --concurrency (the fleet bench's 32/32): 36 passes at once, not
    128.  Every pass does its work up to the test before the first test is sent, so with
    128 the first test waited for 128 passes; the slots still all fill."""
    f = await _first_apply(tmp_path, monkeypatch, Limits(8, 8))
    assert f.started_at_first_test == 8 + 4  # was 64
    assert f.peak == 8 + 4  # was max(64, 4 x 8) = 64
    assert f.peak_in_flight == 8  # every global slot was used
    assert local.pass_tasks(Limits(32, 32)) == 36


async def test_a_lower_host_limit_keeps_more_passes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host limit below the global one (the CLI's default 4 and 16): passes waiting for a
    busy host must leave tasks for the relays of other hosts, as before."""
    f = await _first_apply(tmp_path, monkeypatch, Limits(8, 7), n=70)
    assert f.peak == 64
    assert f.peak_in_flight == 7
    assert local.pass_tasks(Limits(16, 4)) == 64
    assert local.pass_tasks(Limits(32, 8)) == 128
