"""The per-pass secret cache hands a finished read to later callers as it is
(``SourceRouter.resolve_for`` takes a done read without ``asyncio.shield``): the same
value, no second read, a failed read not kept, and a caller cancelled while it waits does
not cancel the read.  Counted reads and events, never a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from reconciler.credentials.base import CredentialError, Resolved
from reconciler.credentials.sources import SourceRouter
from reconciler.resources import SecretRef
from tests.support.counting_files import CountingFiles

PEM = "-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n"



def _ca_file(tmp_path: Path) -> tuple[CountingFiles, SourceRouter, SecretRef]:
    """A CA file with ``PEM``, its counting source, a router with the pass cache, its ref."""
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    files = CountingFiles()
    return files, SourceRouter(file=files, pass_cache=True), SecretRef(file=str(ca))

def test_callers_after_the_read_get_its_value_without_reading_again(tmp_path: Path) -> None:
    files, router, ref = _ca_file(tmp_path)

    async def run() -> list[Resolved]:
        first = await router.resolve(ref, "default", public=True)  # read, done
        later = [await router.resolve(ref, "default", public=True) for _ in range(5)]
        return [first, *later]

    results = asyncio.run(run())
    assert files.reads == 1
    assert all(r.value.reveal() == PEM.strip() for r in results)
    assert len({r.version for r in results}) == 1


def test_a_failed_read_is_not_handed_to_later_callers(tmp_path: Path) -> None:
    files = CountingFiles()
    router = SourceRouter(file=files, pass_cache=True)
    missing = tmp_path / "missing.pem"
    ref = SecretRef(file=str(missing))

    async def run() -> Resolved:
        with pytest.raises(CredentialError):
            await router.resolve(ref, "default", public=True)
        await asyncio.sleep(0)  # the failed read's done callback forgets it (a loop tick)
        missing.write_text(PEM)
        return await router.resolve(ref, "default", public=True)

    resolved = asyncio.run(run())
    assert files.reads == 2 and resolved.value.reveal() == PEM.strip()


def test_a_cancelled_waiter_does_not_cancel_the_read(tmp_path: Path) -> None:
    files, router, ref = _ca_file(tmp_path)

    async def run() -> tuple[Resolved, Resolved]:
        files.gate = asyncio.Event()
        first = asyncio.create_task(router.resolve(ref, "default", public=True))
        waiter = asyncio.create_task(router.resolve(ref, "default", public=True))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        files.gate.set()
        done = await first
        return done, await router.resolve(ref, "default", public=True)

    done, after = asyncio.run(run())
    assert files.reads == 1 and done.value.reveal() == after.value.reveal() == PEM.strip()
