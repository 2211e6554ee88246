"""Behaviour kept by the per-pass CPU cuts of issue 15 (engine side).

Each cut replaced a per-pass computation by a cheaper one; these tests pin what the old
one guaranteed: the CA bundle check (cached by the bundle's text instead of its SHA-256),
the RFC 3339 stamps (memoised by the whole second), the connection-test slots (a plain
async context manager instead of a generator) under cancellation.  The plan digest has
its own file (tests/test_engine_digest.py).  No timing is asserted here: the costs are
measured by ``./dev bench engine``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from reconciler.credentials.base import CredentialError
from reconciler.credentials.resolve import check_ca_bundle
from reconciler.engine.conditions import rfc3339
from reconciler.engine.policy import epoch
from reconciler.engine.world import Limits


def _copy(text: str) -> str:
    """The same text in another string object (as a new pass's file read hands out)."""
    out = "".join([text[:1], text[1:]])
    assert out == text and out is not text
    return out


def test_an_invalid_ca_bundle_is_refused_every_time() -> None:
    bad = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    for pem in (bad, bad, _copy(bad)):  # a cached answer must refuse too
        with pytest.raises(CredentialError) as exc:
            check_ca_bundle(pem, "file /etc/ca.pem")
        assert exc.value.reason == "CABundleInvalid"
        assert "file /etc/ca.pem" in exc.value.message
    good = trustme.CA().cert_pem.bytes().decode()
    for pem in (good, _copy(good)):
        check_ca_bundle(pem, "file /etc/ca.pem")
    # The answer follows the text, not the place: the same name with a broken text fails.
    with pytest.raises(CredentialError):
        check_ca_bundle(good[:-40], "file /etc/ca.pem")


@given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False)
       | st.integers(0, 4_000_000_000).map(lambda s: s + 1 - 1e-7))
def test_rfc3339_is_what_datetime_writes(epoch: float) -> None:
    """Memoised by the whole second, and still the text ``datetime`` makes of the float
    (which rounds to microseconds: 1.9999999 is 00:00:02, not 00:00:01)."""
    assert rfc3339(epoch) == datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strptime_epoch(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


_FIELD = st.text("0123456789", min_size=1, max_size=2)


@given(st.tuples(st.text("0123456789", min_size=4, max_size=4), _FIELD, _FIELD, _FIELD,
                 _FIELD, _FIELD).map(lambda f: "{}-{}-{}T{}:{}:{}Z".format(*f))
       | st.sampled_from(["2026-12-02T02:26:52Z", "2026-12-02T02:26:52+01:00",
                          "2026-12-02T02:26:52+0100", "2026-12-02 02:26:52Z",
                          "2026-1-2T2:3:4Z", "2026-12-02T02:26:52", "", "Z",
                          "\u0662026-12-02T02:26:52Z", "2024-02-29T23:59:59Z"])
       | st.text(max_size=24))
def test_epoch_reads_what_strptime_reads(text: str) -> None:
    """The field-by-field reading of the common form gives strptime's answer on every
    text: the same seconds, and None where strptime refuses (month 13, 30 February,
    second 60, non-ASCII digits)."""
    assert epoch.__wrapped__(text) == _strptime_epoch(text)


def test_a_first_pass_reading_rfc3339_times_does_not_import_strptime() -> None:
    """Reading the form this code writes does not load ``_strptime`` (its import and the
    compilation of its patterns were ~3 ms of every apply's and operator's first pass);
    another form still goes through it."""
    code = ("import sys\n"
            "from reconciler.engine.policy import epoch\n"
            "assert epoch('2026-12-02T02:26:52Z') == 1796178412.0\n"
            "before = '_strptime' in sys.modules\n"
            "assert epoch('2026-12-02T03:26:52+01:00') == 1796178412.0\n"
            "print(before, '_strptime' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("fair", [False, True])
async def test_a_test_cancelled_while_waiting_for_a_slot_gives_back_what_it_held(
        fair: bool) -> None:
    """Cancelled while waiting for the global slot (its host slot already taken), a test
    gives its host slot back - the next test of that host gets it - and leaves no
    bookkeeping behind.  (FIFO slots whose host limit is no lower than the global one
    take no host slot at all, tests/test_engine_slots.py: here the host limit is lower.)"""
    concurrency = 1 if fair else 2
    limits = Limits(concurrency=concurrency, per_host=1, fair=fair)
    hold = asyncio.Event()
    held = [asyncio.Event() for _ in range(concurrency)]

    async def holder(i: int) -> None:  # every global slot taken, on other hosts
        async with limits.slot(f"other{i}.example", f"ns{i}"):
            held[i].set()
            await hold.wait()

    holders = [asyncio.ensure_future(holder(i)) for i in range(concurrency)]
    for event in held:
        await asyncio.wait_for(event.wait(), 10)
    a = asyncio.ensure_future(_enter(limits, "relay.example"))
    for _ in range(50):  # A takes relay.example's one slot and queues for the global one
        await asyncio.sleep(0)
    b = asyncio.ensure_future(_enter(limits, "relay.example"))  # B waits for A's host slot
    for _ in range(50):
        await asyncio.sleep(0)
    assert not a.done() and not b.done()
    assert limits._users.get("relay.example") == 2  # both hold or wait for its host slot
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    hold.set()
    await asyncio.wait_for(asyncio.gather(*holders, b), 10)
    assert limits._hosts == {} and limits._users == {}


async def test_an_exception_inside_a_slot_releases_it() -> None:
    limits = Limits(concurrency=1, per_host=1)
    with pytest.raises(RuntimeError):
        async with limits.slot("relay.example"):
            raise RuntimeError("boom")
    await asyncio.wait_for(_enter(limits, "RELAY.example"), 10)  # not held any more
    assert limits._hosts == {} and limits._users == {}


async def _enter(limits: Limits, host: str) -> None:
    async with limits.slot(host, "ns"):
        pass


@given(st.text() | st.sampled_from([
    "generation 3 passed its connection test in 0.05s", " lead", "trail ", "two  spaces",
    "tab\there", "line\nbreak", "cr\r\nlf", "\u202eevil", "nbsp\u00a0here", "zwsp\u200bhere",
    "\x85next", "\u2028ls", "", " ", "ok"]))
def test_condition_messages_are_sanitised_as_before(text: str) -> None:
    """The fast path of condition messages gives exactly what ``sanitize(one_line=True)``
    gives, for any text (a message that needs rewriting takes sanitize's own path)."""
    from reconciler.engine.conditions import one_line
    from reconciler.probe.redact import sanitize

    assert one_line(text) == sanitize(text, one_line=True)
