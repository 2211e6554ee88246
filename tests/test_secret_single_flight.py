"""The per-pass secret cache is single-flight: concurrent passes that share a reference
read it once (counted reads, never a time)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from reconciler.credentials.base import CredentialError, Resolved
from reconciler.credentials.sources import SourceRouter
from reconciler.resources import SecretRef
from tests.support.counting_files import CountingFiles


def _router(files: CountingFiles) -> SourceRouter:
    return SourceRouter(file=files, pass_cache=True)  # no policy: the cache is the subject


def test_128_concurrent_readers_of_one_ca_file_read_it_once(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n")
    files = CountingFiles()
    router = _router(files)
    ref = SecretRef(file=str(ca))

    async def run() -> list[Resolved]:
        files.gate = asyncio.Event()
        tasks = [asyncio.create_task(router.resolve(ref, "default", public=True))
                 for _ in range(128)]
        await asyncio.sleep(0)  # let every task reach the cache (a loop tick, no timing)
        files.gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert files.reads == 1
    assert {r.version for r in results} == {results[0].version}
    router.begin_pass()  # a new pass sees a rotated file: it reads again
    asyncio.run(router.resolve(ref, "default", public=True))
    assert files.reads == 2


def test_a_failure_is_shared_by_the_waiters_but_not_kept(tmp_path: Path) -> None:
    files = CountingFiles()
    router = _router(files)
    ref = SecretRef(file=str(tmp_path / "missing.pem"))

    async def burst() -> list[BaseException | Resolved]:
        files.gate = asyncio.Event()
        tasks = [asyncio.create_task(router.resolve(ref, "default")) for _ in range(10)]
        await asyncio.sleep(0)
        files.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(burst())
    assert files.reads == 1
    assert all(isinstance(r, CredentialError) and r.reason == "SecretFileNotFound"
               for r in results)
    (tmp_path / "missing.pem").write_text("now it exists")
    (tmp_path / "missing.pem").chmod(0o600)
    files.gate = None
    # same pass: the failure was not cached, the file is read again and found
    assert asyncio.run(router.resolve(ref, "default")).value.reveal() == "now it exists"
    assert files.reads == 2


def test_a_cancelled_first_reader_does_not_cancel_the_others(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("value")
    secret.chmod(0o600)
    files = CountingFiles()
    router = _router(files)
    ref = SecretRef(file=str(secret))

    async def run() -> str:
        files.gate = asyncio.Event()
        first = asyncio.create_task(router.resolve(ref, "default"))
        await asyncio.sleep(0)
        second = asyncio.create_task(router.resolve(ref, "default"))
        await asyncio.sleep(0)
        first.cancel()
        files.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return (await second).value.reveal()

    assert asyncio.run(run()) == "value"
    assert files.reads == 1


def test_without_the_pass_cache_every_resolve_reads(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("value")
    secret.chmod(0o600)
    files = CountingFiles()
    router = SourceRouter(file=files)

    async def run() -> None:
        await asyncio.gather(*(router.resolve(SecretRef(file=str(secret)), "default")
                               for _ in range(5)))

    asyncio.run(run())
    assert files.reads == 5
