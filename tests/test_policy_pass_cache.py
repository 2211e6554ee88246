"""The source policy inside one pass (issue 15): judged once per reference, manifest and
opened file, never weaker than a check per resource.

An unchanged re-apply of 10,000 relays sharing one CA file used to resolve the same real
path twice per relay (the file and its manifest's directory).  Now a ``file:`` reference is
checked before its single read opens anything, and every resource it is handed to is judged
by the file that was actually opened (``Resolved.origin``, the kernel's name for the open
descriptor).  These tests swap symbolic links at the moments an attacker would: between
two references of one pass, between the check and the open, and between two passes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from reconciler.credentials.base import CredentialError
from reconciler.credentials.policy import REFUSED, Owner, cli_policy
from reconciler.credentials.sources import FileSource, SourceRouter
from reconciler.resources import SecretRef
from tests.support import canary

OUTSIDE = canary.canary("outside-the-manifest-directory")


def ref(path: Path | str) -> SecretRef:
    return SecretRef.model_validate({"file": str(path)})


def put(path: Path, value: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def owner(manifest: Path, name: str = "relay") -> Owner:
    return Owner("ExternalSmtp", "default", name, str(manifest))


def swap_to(link: Path, target: Path) -> None:
    """Atomically point ``link`` (a symbolic link or a directory) at ``target``."""
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target, target_is_directory=True)
    if link.is_dir() and not link.is_symlink():
        link.rename(link.with_name(link.name + ".old"))
    os.replace(tmp, link)


async def refused(coro: Any) -> CredentialError:
    with pytest.raises(CredentialError) as exc:
        await coro
    assert exc.value.reason == REFUSED, (exc.value.reason, exc.value.message)
    canary.assert_no_canary(str(exc.value), where="refusal")
    return exc.value


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """repo/relays.yaml; repo/deploy/secrets -> repo/deploy/real (inside); outside/ holds
    files of the same names with a canary."""
    root = tmp_path / "repo"
    put(root / "deploy" / "real" / "ca.pem", "inside-ca", 0o644)
    put(root / "deploy" / "real" / "pw", "inside-pw")
    put(tmp_path / "outside" / "ca.pem", OUTSIDE, 0o644)
    put(tmp_path / "outside" / "pw", OUTSIDE)
    (root / "deploy" / "secrets").symlink_to(root / "deploy" / "real",
                                             target_is_directory=True)
    (root / "relays.yaml").write_text("# the manifest\n")
    return root


async def test_a_directory_swapped_between_two_references_of_one_pass_is_refused(
        repo: Path, tmp_path: Path) -> None:
    """One apply: the CA file of the first relays was read through ``secrets/``; the
    link is swapped to a directory outside: a reference through it that was not read yet
    is refused, and so is the one already read: the cache sees the changed link and
    judges where it points now, as the check per resource did (a decision is not kept
    across a change)."""
    router = SourceRouter(policy=cli_policy(environ={}), pass_cache=True)
    router.begin_pass()
    link = repo / "deploy" / "secrets"
    first = [router.scoped(owner(repo / "relays.yaml", f"r{i}")) for i in range(3)]
    for src in first:
        got = await src.resolve(ref(link / "ca.pem"), "default", public=True)
        assert got.value.reveal() == "inside-ca"
    swap_to(link, tmp_path / "outside")
    await refused(first[0].resolve(ref(link / "pw"), "default"))
    for src in first:  # read before the swap: the link changed, so it is judged again
        await refused(src.resolve(ref(link / "ca.pem"), "default", public=True))
    swap_to(link, repo / "deploy" / "real")  # back: allowed again, the value of the pass
    got = await first[0].resolve(ref(link / "ca.pem"), "default", public=True)
    assert got.value.reveal() == "inside-ca"


async def test_a_swap_between_passes_is_refused_on_the_next_pass(
        repo: Path, tmp_path: Path) -> None:
    router = SourceRouter(policy=cli_policy(environ={}), pass_cache=True)
    src = router.scoped(owner(repo / "relays.yaml"))
    link = repo / "deploy" / "secrets"
    router.begin_pass()
    assert (await src.resolve(ref(link / "pw"), "default")).value.reveal() == "inside-pw"
    swap_to(link, tmp_path / "outside")
    router.begin_pass()
    await refused(src.resolve(ref(link / "pw"), "default"))


@pytest.mark.parametrize("pass_cache", [True, False])
async def test_a_directory_swapped_between_the_check_and_the_open_is_refused(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pass_cache: bool) -> None:
    """The race the check-before-read alone lost: the policy judged ``real/pw`` (inside);
    before the open, ``real`` becomes a symbolic link to a directory outside
    (``O_NOFOLLOW`` guards only the last component).  What was opened is judged: refused,
    and the outside value reaches no one.  Failed before: the outside canary was returned.
    """
    real_dir = repo / "deploy" / "real"
    target = real_dir / "pw"
    real_open = os.open
    swapped: list[str] = []

    def attacker_wins_the_race(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if os.fspath(path) == str(target) and not swapped:
            swap_to(real_dir, tmp_path / "outside")
            swapped.append(str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", attacker_wins_the_race)  # the one sources.py calls
    router = SourceRouter(policy=cli_policy(environ={}), pass_cache=pass_cache)
    router.begin_pass()
    src = router.scoped(owner(repo / "relays.yaml"))
    await refused(src.resolve(ref(target), "default"))
    assert swapped, "the race was not run"
    # Another resource of the same pass gets no outside value from the cache either.
    await refused(router.scoped(owner(repo / "relays.yaml", "b")).resolve(ref(target),
                                                                          "default"))


async def test_the_file_source_names_what_it_opened(repo: Path) -> None:
    got = await FileSource().resolve(ref(repo / "deploy" / "secrets" / "pw"), "d")
    assert got.origin == str((repo / "deploy" / "real" / "pw").resolve())


async def test_a_shared_file_is_judged_once_per_pass_not_per_resource(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: the re-apply of 10,000 relays spent 23 % of its CPU resolving the same
    CA file's real path (and its manifest's directory) for every relay.  Failed before:
    2 realpath calls per resource."""
    calls: list[str] = []
    real_realpath = os.path.realpath

    def counting(path: Any, *args: Any, **kw: Any) -> Any:
        calls.append(os.fspath(path))
        return real_realpath(path, *args, **kw)

    monkeypatch.setattr(os.path, "realpath", counting)
    router = SourceRouter(policy=cli_policy(environ={}), pass_cache=True)
    ca = ref(repo / "deploy" / "secrets" / "ca.pem")
    owners = [router.scoped(owner(repo / "relays.yaml", f"r{i}")) for i in range(200)]
    for _ in range(2):
        router.begin_pass()
        calls.clear()
        got = await asyncio.gather(*(o.resolve(ca, "default", public=True) for o in owners))
        assert {g.value.reveal() for g in got} == {"inside-ca"}
        assert 0 < len(calls) <= 6, calls  # per pass: check, read, judge - not per resource
    # Another manifest directory is judged on its own: refused, though the value is cached.
    other = router.scoped(owner(repo.parent / "elsewhere" / "relays.yaml"))
    await refused(other.resolve(ca, "default", public=True))


async def test_a_resource_that_may_not_read_a_file_learns_nothing_of_a_failed_read(
        repo: Path, tmp_path: Path) -> None:
    """A refused resource waiting on another's read gets the refusal, not the read's
    error (which would say the file exists and how it is wrong)."""
    put(repo / "deploy" / "real" / "pw", "inside-pw", 0o666)  # group/world-writable
    router = SourceRouter(policy=cli_policy(environ={}), pass_cache=True)
    router.begin_pass()
    allowed = router.scoped(owner(repo / "relays.yaml"))
    stranger = router.scoped(owner(tmp_path / "elsewhere" / "relays.yaml"))
    pw = ref(repo / "deploy" / "real" / "pw")
    first, second = await asyncio.gather(allowed.resolve(pw, "default"),
                                         stranger.resolve(pw, "default"),
                                         return_exceptions=True)
    assert isinstance(first, CredentialError) and first.reason == "SecretFileInsecure"
    assert isinstance(second, CredentialError) and second.reason == REFUSED
