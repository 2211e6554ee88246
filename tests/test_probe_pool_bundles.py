"""CA bundles and probe workers (``reconciler.runtimes.probepool``): each distinct bundle
crosses a worker's pipe once, then only its digest; the worker still verifies every test
with that test's own bundle, when bundles differ, rotate, or outnumber what a worker
keeps, and a replacement worker gets each bundle again."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator

import pytest

from reconciler.devservers.smtp import RelayServer
from reconciler.probe import run_probe
from reconciler.probe.egress import EgressPolicy
from reconciler.probe.verdict import ProbeCredentials
from reconciler.runtimes.probepool import MAX_BUNDLES, ProbePool
from reconciler.secret import Secret
from tests.support import canary
from tests.support.engine_env import USER
from tests.support.probe_pool import Fallback
from tests.support.probe_pool import relay_spec as _spec


def _creds(pem: str) -> ProbeCredentials:
    return ProbeCredentials(password=Secret(canary.PASSWORD), ca_bundle_pem=pem)


@pytest.fixture(name="relays")
def relays_fixture() -> Iterator[tuple[RelayServer, RelayServer]]:
    """Two relays, each with a certificate of its own CA."""
    one = RelayServer(mode="starttls", users={USER: canary.PASSWORD})
    two = RelayServer(mode="starttls", users={USER: canary.PASSWORD})
    with one, two:
        assert one.ca_pem != two.ca_pem
        yield one, two


@pytest.fixture(name="pool")
async def pool_fixture() -> AsyncIterator[tuple[ProbePool, Fallback]]:
    fallback = Fallback()
    pool = ProbePool(1, policy=EgressPolicy(), fallback=fallback)  # one worker: all to it
    await pool.start()
    try:
        yield pool, fallback
    finally:
        await pool.aclose()


async def test_each_bundle_crosses_once_and_every_test_uses_its_own(
        relays: tuple[RelayServer, RelayServer], pool: tuple[ProbePool, Fallback]) -> None:
    (one, two), (p, fallback) = relays, pool
    ca1, ca2 = one.ca_pem, two.ca_pem
    assert (await p.probe(_spec(one.port), _creds(ca1))).passed
    for _ in range(3):  # the same bundle again: by digest only
        assert (await p.probe(_spec(one.port), _creds(ca1))).passed
    assert p.bundles_sent == 1
    assert (await p.probe(_spec(two.port), _creds(ca2))).passed
    assert p.bundles_sent == 2
    # The wrong bundle for a relay fails as it does in this process: each test is
    # verified with the bundle it named, not with one the worker saw before.
    wrong = [await p.probe(_spec(one.port), _creds(ca2)),
             await p.probe(_spec(two.port), _creds(ca1))]
    here = await run_probe(_spec(one.port), _creds(ca2))
    assert not here.passed
    for v in wrong:
        assert (v.passed, v.stage, v.reason) == (here.passed, here.stage, here.reason)
    # Interleaved, in flight together: each verdict is its own bundle's.
    cases = [(one, ca1, True), (two, ca2, True), (one, ca2, False), (two, ca1, False)] * 4
    verdicts = await asyncio.gather(*(p.probe(_spec(r.port), _creds(ca))
                                      for r, ca, _ in cases))
    assert [v.passed for v in verdicts] == [ok for _, _, ok in cases]
    # A rotation: the Secret now holds the new CA and the old one (a new bundle, sent
    # once), then only the new one (a bundle the worker holds: its digest).
    rotated = ca2 + ca1
    assert (await p.probe(_spec(one.port), _creds(rotated))).passed
    assert (await p.probe(_spec(two.port), _creds(rotated))).passed
    assert p.bundles_sent == 3
    assert (await p.probe(_spec(two.port), _creds(ca2))).passed
    assert not (await p.probe(_spec(one.port), _creds(ca2))).passed
    assert p.bundles_sent == 3
    assert fallback.calls == 0 and p.lost == 0  # every test ran in the worker


async def test_a_worker_keeps_the_most_recent_bundles_in_step_with_this_process(
        relays: tuple[RelayServer, RelayServer], pool: tuple[ProbePool, Fallback]) -> None:
    """More distinct bundles than a worker keeps: the least recently used is forgotten on
    both sides at once, so a forgotten one is sent again (and never named by a digest
    the worker no longer holds: that would have run the test in this process)."""
    (one, _two), (p, fallback) = relays, pool
    # Distinct bundles with the same CA (text outside the PEM block is ignored).
    bundles = [f"# bundle {i}\n{one.ca_pem}" for i in range(MAX_BUNDLES + 1)]
    for pem in bundles:
        assert (await p.probe(_spec(one.port), _creds(pem))).passed
    assert p.bundles_sent == MAX_BUNDLES + 1
    assert (await p.probe(_spec(one.port), _creds(bundles[-1]))).passed  # still held
    assert p.bundles_sent == MAX_BUNDLES + 1
    assert (await p.probe(_spec(one.port), _creds(bundles[0]))).passed  # forgotten: again
    assert p.bundles_sent == MAX_BUNDLES + 2
    assert fallback.calls == 0 and p.lost == 0


async def test_a_replacement_worker_gets_the_bundle_again(
        relays: tuple[RelayServer, RelayServer], pool: tuple[ProbePool, Fallback]) -> None:
    (one, _two), (p, fallback) = relays, pool
    assert (await p.probe(_spec(one.port), _creds(one.ca_pem))).passed
    assert p.bundles_sent == 1
    workers = list(p._workers)
    for pid in p.pids():
        os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(30):  # the pool has seen the pipe close
        await asyncio.gather(*(w.reader_task for w in workers if w.reader_task is not None))
    verdict = await p.probe(_spec(one.port), _creds(one.ca_pem))
    assert verdict.passed
    assert p.restarts == 1 and p.bundles_sent == 2  # the new worker got it in full
    assert fallback.calls == 0 and p.offloaded == 2


async def test_a_digest_the_worker_does_not_hold_runs_the_test_here(
        relays: tuple[RelayServer, RelayServer], pool: tuple[ProbePool, Fallback]) -> None:
    """Defence in depth: should this process ever name a bundle the worker lacks, the
    worker says so and the test runs in this process with the right bundle."""
    (one, _two), (p, fallback) = relays, pool
    assert (await p.probe(_spec(one.port), _creds(one.ca_pem))).passed
    worker = p._workers[0]
    other = f"# never sent\n{one.ca_pem}"
    worker.bundles[p._digest(other)] = None  # this process believes it was sent
    verdict = await p.probe(_spec(one.port), _creds(other))
    assert verdict.passed and fallback.calls == 1 and p.lost == 1
    assert (await p.probe(_spec(one.port), _creds(one.ca_pem))).passed  # the worker lives
    assert p.offloaded == 2 and p.pids() == [worker.proc.pid]
