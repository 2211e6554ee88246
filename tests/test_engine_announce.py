"""When the engine shows a test in flight (``Reconciling=True``, reason ``Testing``).

One status write per pass where the status says nothing false without it (issue 15: the
write before every test doubled the status writes of a first pass): a new generation is
"in progress" by ``status.observedGeneration`` alone; a same-generation change (rotated
Secret, forced re-verification) is announced before its test; any test still running
after ``world.announce_after`` seconds is announced then.  The probe here records the
status it sees while it runs (the store is the real SQLite store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import conditions as cond
from reconciler.engine.reconcile import reconcile
from reconciler.engine.world import BasicWorld, Limits, StoreEventSink
from reconciler.probe.verdict import ProbeCredentials, Verdict
from reconciler.resources import ExternalSmtp, ExternalSmtpSpec, OAuth2Provider
from reconciler.secret import Secret
from reconciler.stores.base import ObjectRef, StatusMutator, StoredObject, StoreError
from reconciler.stores.local import LocalStore

REF = ObjectRef("ExternalSmtp", "default", "a")


@dataclass
class Creds:
    probe: ProbeCredentials
    versions: Mapping[str, str]


@dataclass
class Env:
    store: LocalStore
    world: BasicWorld
    now: float = 1_000_000.0
    password_version: str = "h:1"
    # What the status showed while each test ran (Reconciling's reason, Ready's status).
    seen: list[tuple[str | None, str | None]] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)  # status writes
    wait_for_announcement: bool = False

    def status(self) -> dict[str, Any]:
        obj = self.store.get_sync(REF)
        assert obj is not None
        return obj.status

    async def resolve(self, res: ExternalSmtp, provider: OAuth2Provider | None) -> Creds:
        return Creds(ProbeCredentials(password=Secret("pw")),
                     {"passwordFrom": self.password_version})

    async def probe(self, spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        if self.wait_for_announcement:  # a slow test: runs until the engine announced it
            for _ in range(10_000):
                if cond.attr(self.status(), cond.RECONCILING, "reason") == "Testing":
                    break
                await asyncio.sleep(0)
        st = self.status()
        self.seen.append((cond.attr(st, cond.RECONCILING, "reason"),
                          cond.attr(st, cond.READY, "status")))
        return Verdict(True, "quit", "TestPassed", "ok", "None", False, 0.01)

    async def check(self, provider: OAuth2Provider) -> Any:
        raise AssertionError("no provider here")


def _doc(port: int = 587, *, refresh: str = "1h") -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"host": "relay.test", "port": port, "authentication": "UsernamePassword",
                     "username": "app@example.test", "startTLS": True,
                     "passwordFrom": {"env": "SMTP_PW"}, "refreshInterval": refresh}}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    store = LocalStore(tmp_path / "state")
    holder: list[Env] = []
    world = BasicWorld(store=store, resolve_fn=lambda r, p: holder[0].resolve(r, p),
                       probe_fn=lambda s, c: holder[0].probe(s, c),
                       check_provider_fn=lambda p: holder[0].check(p),
                       events=StoreEventSink(store), limits=Limits(4, 2),
                       clock_fn=lambda: holder[0].now, announce_after=3600.0)
    e = Env(store, world)
    holder.append(e)
    original = store.update_status

    async def counting(ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        def wrapped(cur: StoredObject) -> Any:
            out = mutate(cur)
            if out is not None and out.status != cur.status:
                e.writes.append(dict(out.status))
            return out
        return await original(ref, wrapped)

    store.update_status = counting  # type: ignore[method-assign]
    yield e
    store.close()


async def _apply(e: Env, doc: dict[str, Any], *, force: bool = False) -> Any:
    for u in e.store.upsert_many([doc], now=e.now):
        return await reconcile(u.obj.ref, e.world, force=force)


async def test_first_test_of_a_new_resource_is_one_status_write(env: Env) -> None:
    r = await _apply(env, _doc())
    assert r.tested
    assert env.writes and len(env.writes) == 1, env.writes  # the result, nothing before it
    assert env.seen == [(None, None)]  # no status at all while it ran: "not observed yet"
    st = env.status()
    assert cond.is_true(st, cond.READY) and cond.find(st["conditions"], cond.RECONCILING) is None


async def test_a_new_generation_is_in_progress_by_observed_generation(env: Env) -> None:
    await _apply(env, _doc(587))
    env.writes.clear()
    await _apply(env, _doc(2525))  # a tested field changed: generation 2
    assert len(env.writes) == 1
    # While generation 2 was tested the status still named generation 1: kstatus reads a
    # lagging observedGeneration as "in progress", kubectl wait as "not Ready yet".
    assert env.seen[-1] == (None, "True")
    assert env.status()["observedGeneration"] == 2


async def test_a_rotated_secret_is_announced_before_its_test(env: Env) -> None:
    await _apply(env, _doc())
    env.writes.clear()
    env.password_version = "h:2"  # same generation, new secret: a fresh digest
    r = await _apply(env, _doc())
    assert r.tested
    assert env.seen[-1] == ("Testing", "Unknown")  # Ready no longer claims the old secret
    assert len(env.writes) == 2


async def test_a_forced_reverification_is_announced(env: Env) -> None:
    await _apply(env, _doc())
    env.writes.clear()
    r = await _apply(env, _doc(), force=True)
    assert r.tested
    assert env.seen[-1] == ("Testing", "True")  # same digest: Ready stays, Reconciling shows
    assert len(env.writes) == 2


async def test_a_due_reverification_of_unchanged_settings_is_one_write(env: Env) -> None:
    await _apply(env, _doc())
    env.writes.clear()
    env.now += 2 * 3600  # refreshInterval 1h: due
    r = await _apply(env, _doc())
    assert r.tested
    assert env.seen[-1] == (None, "True")
    assert len(env.writes) == 1


async def test_a_slow_test_is_announced_while_it_runs(env: Env) -> None:
    env.world.announce_after = 0.0  # every test counts as slow
    env.wait_for_announcement = True
    r = await _apply(env, _doc())
    assert r.tested
    assert env.seen == [("Testing", "Unknown")]
    assert len(env.writes) == 2  # the announcement, then the result
    st = env.status()
    assert cond.is_true(st, cond.READY) and cond.find(st["conditions"], cond.RECONCILING) is None


async def test_announcing_can_be_turned_off(env: Env) -> None:
    env.world.announce_testing = False
    env.world.announce_after = 0.0
    await _apply(env, _doc())
    env.password_version = "h:2"
    env.writes.clear()
    await _apply(env, _doc())
    assert env.seen[-1] == (None, "True") and len(env.writes) == 1


async def test_a_pass_cancelled_during_a_slow_test_leaves_nothing_running(env: Env) -> None:
    """The slow-test announcement runs in a task of its own (started by a timer); a pass
    cancelled during its test and its announcement (the operator stopping) cancels both."""
    env.world.announce_after = 0.0
    never = asyncio.Event()
    announcing = asyncio.Event()

    async def hanging(spec: ExternalSmtpSpec, creds: ProbeCredentials) -> Verdict:
        await never.wait()
        raise AssertionError("never released")

    written = env.store.update_status

    async def slow_store(ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        announcing.set()  # the only write of this pass is the announcement: it hangs
        await never.wait()
        return await written(ref, mutate)

    env.world.probe_fn = hanging
    env.store.update_status = slow_store  # type: ignore[method-assign]
    [u] = env.store.upsert_many([_doc()], now=env.now)
    task = asyncio.ensure_future(reconcile(u.obj.ref, env.world))
    await asyncio.wait_for(announcing.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(3):
        await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    assert env.status() == {}


async def test_an_announcement_that_fails_fails_the_pass(env: Env) -> None:
    """A store error while announcing a slow test is the pass's error (the runtime retries
    the pass); the verdict of that test is not written without its announcement."""
    env.world.announce_after = 0.0
    env.wait_for_announcement = True
    counting = env.store.update_status

    async def refusing(ref: ObjectRef, mutate: StatusMutator) -> StoredObject | None:
        def check(cur: StoredObject) -> Any:
            out = mutate(cur)
            if out is not None and cond.attr(out.status, cond.RECONCILING, "reason") == "Testing":
                raise StoreError("disk full")
            return out
        return await counting(ref, check)

    env.store.update_status = refusing  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        await _apply(env, _doc())
    assert env.writes == []
    assert env.status() == {}
