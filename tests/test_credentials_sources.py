"""Secret sources: env, file and Kubernetes Secrets (against the kmock-based API emulator)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest

from reconciler import catalog
from reconciler.credentials.base import CredentialError, WritableSecretSource
from reconciler.credentials.policy import SourcePolicy
from reconciler.credentials.sources import (
    EnvSource,
    FileSource,
    KubeSecretSource,
    SourceRouter,
    default_sources,
    trim_newline,
)
from reconciler.resources import SecretRef
from reconciler.secret import Secret
from tests.support import canary, privilege
from tests.support.kube_emulator import KubeEmulator, kubeconfig_text, running_emulator


def sources(**kw: Any) -> SourceRouter:
    """default_sources without a policy (these tests are about the sources themselves)."""
    return default_sources(policy=SourcePolicy.open(), **kw)


def ref(**kw: Any) -> SecretRef:
    return SecretRef.model_validate(kw)


def secret_file(tmp_path: Path, content: bytes, mode: int = 0o600, name: str = "pw") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


async def fail(coro: Any) -> CredentialError:
    with pytest.raises(CredentialError) as exc:
        await coro
    err = exc.value
    assert err.reason in catalog.CATALOG
    canary.assert_no_canary(str(err), repr(err), err.message, where="exception")
    return err


# --- env ------------------------------------------------------------------------------


async def test_env_resolves_with_keyed_version() -> None:
    env = {"PW": canary.PASSWORD}
    src = EnvSource(env)
    got = await src.resolve(ref(env="PW"), "default")
    assert got.value.reveal() == canary.PASSWORD
    assert got.version.startswith("env:h:")
    canary.assert_no_canary(repr(got), str(got.value), got.version)
    again = await src.resolve(ref(env="PW"), "default")
    assert again.version == got.version
    env["PW"] = canary.PASSWORD + "2"
    assert (await src.resolve(ref(env="PW"), "default")).version != got.version


async def test_env_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPCTL_TEST_ENV_PW", canary.PASSWORD)
    got = await EnvSource().resolve(ref(env="SMTPCTL_TEST_ENV_PW"), "x")
    assert got.value.reveal() == canary.PASSWORD


async def test_env_missing_and_empty() -> None:
    err = await fail(EnvSource({}).resolve(ref(env="NOPE"), "default"))
    assert err.reason == "EnvVarNotSet" and "NOPE" in err.message
    err = await fail(EnvSource({"E": ""}).resolve(ref(env="E"), "default"))
    assert err.reason == "SecretValueInvalid" and "empty" in err.message


async def test_env_is_read_only() -> None:
    err = await fail(EnvSource({}).write(ref(env="X"), "default", Secret(canary.PASSWORD)))
    assert err.reason == "RefreshTokenNotPersisted"


# --- file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"v\n", "v"),
        (b"v\r\n", "v"),
        (b"v", "v"),
        (b"v\n\n", "v\n"),  # only one newline is trimmed
        (b" v \n", " v "),  # spaces are part of the value
        (b"v\r", "v\r"),  # a lone CR is not a line terminator
    ],
)
async def test_file_trims_exactly_one_newline(tmp_path: Path, content: bytes,
                                               expected: str) -> None:
    path = secret_file(tmp_path, content)
    got = await FileSource().resolve(ref(file=str(path)), "default")
    assert got.value.reveal() == expected


def test_trim_newline() -> None:
    assert trim_newline("a\n") == "a" and trim_newline("a\r\n") == "a"
    assert trim_newline("") == "" and trim_newline("\n") == ""


async def test_file_version_changes_with_content(tmp_path: Path) -> None:
    path = secret_file(tmp_path, canary.PASSWORD.encode() + b"\n")
    src = FileSource()
    v1 = (await src.resolve(ref(file=str(path)), "d")).version
    assert v1.startswith("file:")
    assert str(os.stat(path).st_ino) in v1
    canary.assert_no_canary(v1)
    assert (await src.resolve(ref(file=str(path)), "d")).version == v1
    new = secret_file(tmp_path, b"other\n", name="pw.new")
    os.replace(new, path)  # how rotation tools (and kubelet) swap a file
    assert (await src.resolve(ref(file=str(path)), "d")).version != v1


async def test_file_relative_to_base_dir(tmp_path: Path) -> None:
    secret_file(tmp_path, canary.PASSWORD.encode())
    got = await FileSource(tmp_path).resolve(ref(file="pw"), "d")
    assert got.value.reveal() == canary.PASSWORD


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
async def test_file_group_or_world_writable_refused(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, canary.PASSWORD.encode(), mode=mode)
    err = await fail(FileSource().resolve(ref(file=str(path)), "d"))
    assert err.reason == "SecretFileInsecure"
    assert str(path) in err.message and "chmod go-w" in err.message
    assert catalog.get("SecretFileInsecure").stalled


async def test_file_readable_by_group_is_fine(tmp_path: Path) -> None:
    path = secret_file(tmp_path, canary.PASSWORD.encode(), mode=0o640)
    assert (await FileSource().resolve(ref(file=str(path)), "d")).value.reveal()


async def test_world_readable_secret_file_refused_but_public_ca_bundle_fine(
        tmp_path: Path) -> None:
    """Issue 9 (Low): a world-readable password file was accepted.  Like ssh with an
    unprotected private key, a secret value in a file every user can read is refused
    (nothing is read); a CA bundle is public and may be world-readable."""
    path = secret_file(tmp_path, canary.PASSWORD.encode(), mode=0o644)
    err = await fail(FileSource().resolve(ref(file=str(path)), "d"))
    assert err.reason == "SecretFileInsecure" and "readable by every user" in err.message
    assert "chmod o-rwx" in err.message
    got = await FileSource().resolve(ref(file=str(path)), "d", public=True)
    assert got.value.reveal() == canary.PASSWORD
    routed = await SourceRouter().resolve(ref(file=str(path)), "d", public=True)
    assert routed.value == got.value


async def test_file_in_world_writable_directory(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    path = secret_file(d, canary.PASSWORD.encode())
    d.chmod(0o777)
    err = await fail(FileSource().resolve(ref(file=str(path)), "d"))
    assert err.reason == "SecretFileInsecure" and "directory" in err.message
    d.chmod(0o1777)  # sticky, like a Kubernetes Secret volume: allowed
    assert (await FileSource().resolve(ref(file=str(path)), "d")).value.reveal()


async def test_file_symlink_layout_of_kubernetes_volume(tmp_path: Path) -> None:
    """kubelet: KEY -> ..data/KEY, ..data -> ..2026_timestamp/ (atomic swap of the link)."""
    vol = tmp_path / "vol"
    stamp = vol / "..2026_01"
    stamp.mkdir(parents=True)
    secret_file(stamp, b"first\n", mode=0o440, name="token")  # defaultMode: 0440
    (vol / "..data").symlink_to("..2026_01")
    (vol / "token").symlink_to("..data/token")
    src = FileSource()
    first = await src.resolve(ref(file=str(vol / "token")), "d")
    assert first.value.reveal() == "first"
    stamp2 = vol / "..2026_02"
    stamp2.mkdir()
    secret_file(stamp2, b"second\n", mode=0o440, name="token")
    (vol / "..data_tmp").symlink_to("..2026_02")
    os.replace(vol / "..data_tmp", vol / "..data")
    second = await src.resolve(ref(file=str(vol / "token")), "d")
    assert second.value.reveal() == "second" and second.version != first.version


async def test_file_missing_empty_and_not_utf8(tmp_path: Path) -> None:
    err = await fail(FileSource().resolve(ref(file=str(tmp_path / "nope")), "d"))
    assert err.reason == "SecretFileNotFound" and "nope" in err.message
    err = await fail(FileSource().resolve(ref(file=str(tmp_path)), "d"))
    assert err.reason == "SecretFileNotFound"
    path = secret_file(tmp_path, b"\n")
    err = await fail(FileSource().resolve(ref(file=str(path)), "d"))
    assert err.reason == "SecretValueInvalid"
    path = secret_file(tmp_path, b"\xff\xfe", name="bin")
    err = await fail(FileSource().resolve(ref(file=str(path)), "d"))
    assert err.reason == "SecretValueInvalid" and "UTF-8" in err.message


async def test_file_unreadable(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if privilege.rerun_unprivileged(request):
        return  # root (CI): it ran, and passed, in a subprocess without capabilities
    path = secret_file(tmp_path, b"x", mode=0o000)
    err = await fail(FileSource().resolve(ref(file=str(path)), "d"))
    assert err.reason == "SecretAccessDenied"


async def test_file_write_is_atomic_and_0600(tmp_path: Path) -> None:
    path = secret_file(tmp_path, b"old\n", mode=0o640)
    src = FileSource()
    assert isinstance(src, WritableSecretSource)
    old = await src.resolve(ref(file=str(path)), "d")
    version = await src.write(ref(file=str(path)), "d", Secret(canary.REFRESH_TOKEN))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == canary.REFRESH_TOKEN + "\n"
    got = await src.resolve(ref(file=str(path)), "d")
    assert got.value.reveal() == canary.REFRESH_TOKEN
    assert got.version == version != old.version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pw"]  # no temp files left


async def test_file_write_creates_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rt"
    await FileSource().write(ref(file=str(path)), "d", Secret(canary.REFRESH_TOKEN))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_file_write_to_read_only_directory(tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    if privilege.rerun_unprivileged(request):
        return  # root (CI): it ran, and passed, in a subprocess without capabilities
    d = tmp_path / "ro"
    d.mkdir()
    path = secret_file(d, b"x")
    d.chmod(0o500)
    try:
        err = await fail(FileSource().write(ref(file=str(path)), "d", Secret("y")))
        assert err.reason == "RefreshTokenNotPersisted"
    finally:
        d.chmod(0o700)


async def test_file_write_to_a_directory_path_fails(tmp_path: Path) -> None:
    """A path that cannot be replaced (it is a non-empty directory) is not persisted."""
    target = tmp_path / "dir"
    target.mkdir()
    (target / "x").write_text("x")
    err = await fail(FileSource().write(ref(file=str(target)), "d", Secret(canary.REFRESH_TOKEN)))
    assert err.reason == "RefreshTokenNotPersisted"
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]  # temp file cleaned up


# --- Kubernetes ----------------------------------------------------------------------


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, str, Path]]:
    async with running_emulator(namespaces=("mail", "other")) as (emu, url):
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(emu.kubeconfig(url))
        HTTP[url] = emu.http_kwargs()  # the strict emulator's CA and an admin token
        yield emu, url, cfg


HTTP: dict[str, dict[str, Any]] = {}


async def put_secret(url: str, ns: str, name: str, data: dict[str, str]) -> str:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    async with httpx.AsyncClient(**HTTP[url]) as c:
        r = await c.post(f"{url}/api/v1/namespaces/{ns}/secrets", json=body)
        assert r.status_code == 201, r.status_code
        return str(r.json()["metadata"]["resourceVersion"])


def skref(name: str = "smtp", key: str = "password") -> SecretRef:
    return ref(secretKeyRef={"name": name, "key": key})


async def test_kube_secret_version_is_a_keyed_hash_per_key(kube: Any) -> None:
    """Issue 14: the version of a secretKeyRef was the Secret's resourceVersion, so an edit
    of *another* key (or our own refresh-token write-back) looked like a rotation of every
    key.  It is now a keyed hash of the key's own value; the resourceVersion, opaque, is
    not used at all."""
    _emu, url, cfg = kube
    rv = await put_secret(url, "mail", "smtp", {"password": canary.PASSWORD, "other": "a"})
    src = sources(kubeconfig=str(cfg))
    got = await src.resolve(skref(), "mail")
    assert got.value.reveal() == canary.PASSWORD
    assert got.version.startswith("k8s:h:") and rv not in got.version
    canary.assert_no_canary(repr(got), got.version)
    # Another key changes (a new resourceVersion): this key's version does not.
    async with httpx.AsyncClient(**HTTP[url]) as c:
        r = await c.patch(f"{url}/api/v1/namespaces/mail/secrets/smtp",
                          json={"data": {"other": base64.b64encode(b"b").decode()}},
                          headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200 and r.json()["metadata"]["resourceVersion"] != rv
    assert (await src.resolve(skref(), "mail")).version == got.version
    # This key's value changes: its version does.
    async with httpx.AsyncClient(**HTTP[url]) as c:
        r = await c.patch(f"{url}/api/v1/namespaces/mail/secrets/smtp",
                          json={"data": {"password": base64.b64encode(b"new-pw").decode()}},
                          headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200
    assert (await src.resolve(skref(), "mail")).version != got.version


async def test_kube_secret_is_read_in_the_resources_namespace(kube: Any) -> None:
    _emu, url, cfg = kube
    await put_secret(url, "other", "smtp", {"password": canary.PASSWORD})
    err = await fail(sources(kubeconfig=str(cfg)).resolve(skref(), "mail"))
    assert err.reason == "SecretNotFound"
    assert "'smtp'" in err.message and "'mail'" in err.message


async def test_kube_missing_key_and_empty_value(kube: Any) -> None:
    _emu, url, cfg = kube
    await put_secret(url, "mail", "smtp", {"user": "u", "empty": ""})
    src = sources(kubeconfig=str(cfg))
    err = await fail(src.resolve(skref(), "mail"))
    assert err.reason == "SecretKeyNotFound"
    assert "'password'" in err.message and "'smtp'" in err.message
    err = await fail(src.resolve(skref(key="empty"), "mail"))
    assert err.reason == "SecretValueInvalid"


async def test_kube_forbidden(kube: Any) -> None:
    emu, _url, cfg = kube
    emu["get", kmock.name("locked")] << 403
    err = await fail(sources(kubeconfig=str(cfg)).resolve(skref("locked"), "mail"))
    assert err.reason == "SecretAccessDenied"
    assert "'locked'" in err.message and "403" in err.message


async def test_kube_server_error_is_unavailable(kube: Any) -> None:
    emu, _url, cfg = kube
    emu["get", kmock.name("flaky")] << 503
    err = await fail(sources(kubeconfig=str(cfg)).resolve(skref("flaky"), "mail"))
    assert err.reason == "SecretSourceUnavailable"
    assert catalog.get(err.reason).retryable


async def test_kube_unreachable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now: connection refused.
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(kubeconfig_text(f"http://127.0.0.1:{port}"))
    src = SourceRouter(kube=KubeSecretSource(_factory(cfg), timeout_seconds=2))
    err = await fail(src.resolve(skref(), "mail"))
    assert err.reason == "SecretSourceUnavailable"
    assert "could not be reached" in err.message


def _factory(cfg: Path) -> Any:
    from kubernetes import client, config

    def build() -> Any:
        c = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(cfg), client_configuration=c)
        c.retries = 0  # fail fast: urllib3 would otherwise retry the refused connection
        return client.ApiClient(c)

    return build


async def test_kube_write_patches_existing_secret(kube: Any) -> None:
    _emu, url, cfg = kube
    rv = await put_secret(url, "mail", "oauth", {"refresh": "old", "other": "keep"})
    src = sources(kubeconfig=str(cfg))
    r = skref("oauth", "refresh")
    version = await src.write(r, "mail", Secret(canary.REFRESH_TOKEN))
    got = await src.resolve(r, "mail")
    assert got.value.reveal() == canary.REFRESH_TOKEN
    assert got.version == version != f"k8s:{rv}:refresh"
    other = await src.resolve(skref("oauth", "other"), "mail")
    assert other.value.reveal() == "keep"


async def test_kube_write_creates_missing_secret(kube: Any) -> None:
    _emu, _url, cfg = kube
    src = sources(kubeconfig=str(cfg))
    r = skref("fresh", "refresh")
    await src.write(r, "mail", Secret(canary.REFRESH_TOKEN))
    assert (await src.resolve(r, "mail")).value.reveal() == canary.REFRESH_TOKEN


async def test_kube_write_forbidden_is_not_persisted(kube: Any) -> None:
    emu, _url, cfg = kube
    emu["patch", kmock.name("ro")] << 403
    err = await fail(sources(kubeconfig=str(cfg)).write(
        skref("ro", "k"), "mail", Secret(canary.REFRESH_TOKEN)))
    assert err.reason == "RefreshTokenNotPersisted" and "403" in err.message


async def test_concurrent_kube_reads(kube: Any) -> None:
    _emu, url, cfg = kube
    await put_secret(url, "mail", "smtp", {"password": canary.PASSWORD})
    src = sources(kubeconfig=str(cfg))
    got = await asyncio.gather(*(src.resolve(skref(), "mail") for _ in range(8)))
    assert {g.value.reveal() for g in got} == {canary.PASSWORD}


# --- router and default configuration ---------------------------------------------------


async def test_secret_key_ref_without_kubernetes(tmp_path: Path) -> None:
    # No kubeconfig anywhere: HOME (as the sources see it) has none, KUBECONFIG is unset.
    src = sources(environ={"HOME": str(tmp_path)}, in_cluster=False)
    assert src.kube is None
    err = await fail(src.resolve(skref(), "mail"))
    assert err.reason == "KubernetesUnavailable"
    assert "kubeconfig" in err.message and "'smtp'" in err.message


async def test_kubeconfig_from_home(kube: Any, tmp_path: Path) -> None:
    _emu, url, cfg = kube
    await put_secret(url, "mail", "smtp", {"password": canary.PASSWORD})
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(cfg.read_text())
    src = sources(environ={"HOME": str(home)})
    assert (await src.resolve(skref(), "mail")).value.reveal() == canary.PASSWORD


async def test_kubeconfig_from_environment_variable(kube: Any) -> None:
    _emu, url, cfg = kube
    await put_secret(url, "mail", "smtp", {"password": canary.PASSWORD})
    src = sources(environ={"KUBECONFIG": str(cfg)})
    assert (await src.resolve(skref(), "mail")).value.reveal() == canary.PASSWORD


async def test_explicit_missing_kubeconfig(tmp_path: Path) -> None:
    src = sources(kubeconfig=str(tmp_path / "nope"))
    err = await fail(src.resolve(skref(), "mail"))
    assert err.reason == "KubernetesUnavailable"


async def test_in_cluster_without_service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    src = sources(environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1"})
    assert src.kube is not None
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    err = await fail(src.resolve(skref(), "mail"))
    assert err.reason == "KubernetesUnavailable"


async def test_router_dispatch(tmp_path: Path) -> None:
    path = secret_file(tmp_path, b"from-file\n")
    src = SourceRouter(env=EnvSource({"E": "from-env"}))
    assert (await src.resolve(ref(env="E"), "d")).value.reveal() == "from-env"
    assert (await src.resolve(ref(file=str(path)), "d")).value.reveal() == "from-file"
    err = await fail(src.write(ref(env="E"), "d", Secret("x")))
    assert err.reason == "RefreshTokenNotPersisted"


async def test_kube_garbage_answer_and_bad_base64(kube: Any) -> None:
    emu, _url, cfg = kube
    emu["get", kmock.name("garbage")] << b"<html>proxy error</html>"
    src = sources(kubeconfig=str(cfg))
    err = await fail(src.resolve(skref("garbage"), "mail"))
    assert err.reason == "SecretSourceUnavailable" and "garbage" in err.message
    # A real API server refuses to store such a Secret, so the answer comes from a
    # misbehaving server (or proxy) on the way, not from a stored object: served directly.
    emu["get", kmock.name("b64")] << {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "b64", "namespace": "mail", "resourceVersion": "7"},
        "data": {"password": "%%%not-base64%%%"}}
    err = await fail(src.resolve(skref("b64"), "mail"))
    assert err.reason == "SecretValueInvalid"
