"""The tenant boundary in the credentials layer: the source policy judges every reference
before anything is opened, read or requested (issue 9, critical and high findings).

Every refusal here is also checked to be *silent*: an audit hook records every ``open`` of
the canary file and a recording mapping every lookup of a canary variable, so "refused"
means "never read", not "read and then withheld".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler.credentials.base import CredentialError
from reconciler.credentials.policy import (
    MANIFEST_ANNOTATION,
    REFUSED,
    Owner,
    SourcePolicy,
    cli_policy,
    owner_of,
    stamp_manifest,
)
from reconciler.credentials.sources import EnvSource, FileSource, SourceRouter
from reconciler.resources import SecretRef
from reconciler.secret import Secret
from tests.support import canary

# --- instruments: prove that a refused reference was never read --------------------------

_watched: set[str] = set()
_opened: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _watched and args and isinstance(args[0], str | bytes | os.PathLike):
        path = os.fsdecode(args[0])
        if path in _watched:
            _opened.append(path)


sys.addaudithook(_audit)  # audit hooks cannot be removed; it only watches _watched paths


@pytest.fixture
def watch_opens() -> Iterator[set[str]]:
    _opened.clear()
    _watched.clear()
    yield _watched
    _watched.clear()


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every variable looked up."""

    def __init__(self, data: dict[str, str]) -> None:
        self._data = data
        self.looked_up: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.looked_up.append(key)
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.looked_up.append(key)
        return self._data.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def ref(**kw: Any) -> SecretRef:
    return SecretRef.model_validate(kw)


def secret_file(path: Path, value: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


async def refused(coro: Any) -> CredentialError:
    with pytest.raises(CredentialError) as exc:
        await coro
    err = exc.value
    assert err.reason == REFUSED, (err.reason, err.message)
    canary.assert_no_canary(str(err), err.message, where="exception")
    return err


TENANT = Owner("ExternalSmtp", "team-a", "evil")


# --- operator -----------------------------------------------------------------------------


async def test_operator_refuses_its_own_environment_and_never_reads_it() -> None:
    """Critical: `passwordFrom: {env: SMTPCTL_VERSION_KEY}` in any namespace made the
    operator send its own secrets to the tenant's relay."""
    env = RecordingEnv({"SMTPCTL_VERSION_KEY": canary.canary("version-key")})
    router = SourceRouter(env=EnvSource(env), policy=SourcePolicy.operator())
    err = await refused(router.scoped(TENANT).resolve(ref(env="SMTPCTL_VERSION_KEY"), "team-a"))
    assert "--allow-env-secret SMTPCTL_VERSION_KEY" in err.message
    assert env.looked_up == []


async def test_operator_refuses_its_own_files_and_never_opens_them(
        tmp_path: Path, watch_opens: set[str]) -> None:
    """Critical: `file: /var/run/secrets/kubernetes.io/serviceaccount/token` handed a
    tenant the operator's ServiceAccount token (it reads every Secret of the cluster)."""
    token = secret_file(tmp_path / "serviceaccount" / "token", canary.canary("sa-token"))
    watch_opens.add(str(token))
    router = SourceRouter(policy=SourcePolicy.operator())
    err = await refused(router.scoped(TENANT).resolve(ref(file=str(token)), "team-a"))
    assert "--allow-file-secret-dir" in err.message
    # The same file through a relative path, a symlink and "..": all refused, none opened.
    link = tmp_path / "innocent"
    link.symlink_to(token)
    for spelling in (str(link), str(tmp_path / "serviceaccount" / ".." / "serviceaccount"
                                    / "token")):
        await refused(router.scoped(TENANT).resolve(ref(file=spelling), "team-a"))
    assert _opened == []


async def test_operator_allow_list_is_exact(tmp_path: Path, watch_opens: set[str]) -> None:
    """What a cluster administrator allowed is readable; nothing next to it is."""
    mounted = secret_file(tmp_path / "mounted" / "relay-password", canary.PASSWORD, mode=0o440)
    outside = secret_file(tmp_path / "private" / "key", canary.canary("outside"))
    (tmp_path / "mounted" / "escape").symlink_to(outside)
    watch_opens.add(str(outside))
    env = RecordingEnv({"RELAY_PW": canary.PASSWORD, "RELAY_PW2": canary.canary("pw2")})
    policy = SourcePolicy.operator(env=["RELAY_PW"], file_dirs=[tmp_path / "mounted"])
    router = SourceRouter(env=EnvSource(env), policy=policy)
    src = router.scoped(TENANT)
    assert (await src.resolve(ref(env="RELAY_PW"), "team-a")).value.reveal() == canary.PASSWORD
    assert (await src.resolve(ref(file=str(mounted)), "team-a")).value.reveal() == \
        canary.PASSWORD
    await refused(src.resolve(ref(env="RELAY_PW2"), "team-a"))  # exact names, not prefixes
    await refused(src.resolve(ref(file=str(tmp_path / "mounted" / "escape")), "team-a"))
    assert env.looked_up == ["RELAY_PW"] and _opened == []


async def test_operator_reads_secrets_only_in_the_resources_namespace() -> None:
    router = SourceRouter(policy=SourcePolicy.operator())
    skr = ref(secretKeyRef={"name": "smtp", "key": "password"})
    # No Kubernetes source is configured: the policy refuses before the missing client
    # would matter for a foreign namespace; the own namespace passes the policy.
    router.kube = _Boom()
    await refused(router.scoped(TENANT).resolve(skr, "kube-system"))
    with pytest.raises(AssertionError, match="kube read"):
        await router.scoped(TENANT).resolve(skr, "team-a")


class _Boom:
    async def resolve(self, ref: SecretRef, namespace: str) -> Any:
        raise AssertionError("kube read")


async def test_operator_writes_rotated_tokens_only_to_own_namespace_secrets(
        tmp_path: Path) -> None:
    """Critical: a rotated refresh token could be written to any path the operator can
    write.  Even a directory allowed for reading is not a write target."""
    target = tmp_path / "mounted" / "rt"
    secret_file(target, "old")
    router = SourceRouter(policy=SourcePolicy.operator(file_dirs=[tmp_path / "mounted"]))
    with pytest.raises(CredentialError) as exc:
        await router.scoped(TENANT).write(ref(file=str(target)), "team-a", Secret("new"))
    assert exc.value.reason == "RefreshTokenNotPersisted"
    assert "only to a Secret" in exc.value.message
    assert target.read_text() == "old\n"


# --- CLI ------------------------------------------------------------------------------------


def manifest_owner(path: Path) -> Owner:
    return Owner("ExternalSmtp", "default", "relay", str(path))


async def test_cli_reads_files_below_the_manifest_directory_only(
        tmp_path: Path, watch_opens: set[str]) -> None:
    """High: CI running `smtpctl test` on a pull request read any file the runner could."""
    repo = tmp_path / "repo"
    secret_file(repo / "deploy" / "pw", canary.PASSWORD)
    home_secret = secret_file(tmp_path / "home" / ".git-credentials", canary.canary("home"))
    git_config = secret_file(repo / ".git" / "config", canary.canary("git-token"))
    (repo / "deploy" / "link").symlink_to(home_secret)
    for p in (home_secret, git_config):
        watch_opens.add(str(p))
    owner = manifest_owner(repo / "relay.yaml")
    src = SourceRouter(policy=cli_policy(environ={})).scoped(owner)
    ok = await src.resolve(ref(file=str(repo / "deploy" / "pw")), "default")
    assert ok.value.reveal() == canary.PASSWORD
    err = await refused(src.resolve(ref(file=str(home_secret)), "default"))
    assert f"--allow-file-root {home_secret.parent}" in err.message
    assert "outside the manifest's directory" in err.message
    err = await refused(src.resolve(ref(file=str(git_config)), "default"))
    assert ".git" in err.message and "hidden" in err.message
    err = await refused(src.resolve(ref(file=str(repo / "deploy" / "link")), "default"))
    assert f"resolves to {home_secret}" in err.message
    assert _opened == []
    # An explicit root opens exactly that directory.
    wider = SourceRouter(policy=cli_policy(file_roots=[str(home_secret.parent)], environ={}))
    got = await wider.scoped(owner).resolve(ref(file=str(home_secret)), "default")
    assert got.value.reveal().startswith("CANARY-home")


async def test_cli_without_a_manifest_file_reads_only_explicit_roots(tmp_path: Path) -> None:
    pw = secret_file(tmp_path / "pw", canary.PASSWORD)
    stdin_owner = Owner("ExternalSmtp", "default", "piped", None)
    src = SourceRouter(policy=cli_policy(environ={})).scoped(stdin_owner)
    err = await refused(src.resolve(ref(file=str(pw)), "default"))
    assert "standard input" in err.message


async def test_cli_env_needs_an_opt_in_by_name_or_glob() -> None:
    env = RecordingEnv({"SMTP_PW": canary.PASSWORD, "AWS_SECRET_ACCESS_KEY": canary.canary("a")})
    owner = manifest_owner(Path("/repo/relay.yaml"))
    closed = SourceRouter(env=EnvSource(env), policy=cli_policy(environ={})).scoped(owner)
    err = await refused(closed.resolve(ref(env="SMTP_PW"), "default"))
    assert "--allow-env SMTP_PW" in err.message and "SMTPCTL_ALLOW_ENV" in err.message
    assert env.looked_up == []
    for policy in (cli_policy(env=["SMTP_*"], environ={}),
                   cli_policy(environ={"SMTPCTL_ALLOW_ENV": "OTHER, SMTP_PW"})):
        src = SourceRouter(env=EnvSource(env), policy=policy).scoped(owner)
        assert (await src.resolve(ref(env="SMTP_PW"), "default")).value.reveal() == \
            canary.PASSWORD
        await refused(src.resolve(ref(env="AWS_SECRET_ACCESS_KEY"), "default"))
    assert "AWS_SECRET_ACCESS_KEY" not in env.looked_up


async def test_cli_secret_namespaces_default_to_the_kubeconfig_context() -> None:
    """High: the namespace came from the manifest, so a PR could read any namespace the
    ambient kubeconfig reaches.  Default: only the context's namespace."""
    reads: list[str] = []

    class Kube:
        async def resolve(self, r: SecretRef, namespace: str) -> Any:
            reads.append(namespace)
            raise CredentialError("SecretNotFound", "none")

    owner = Owner("ExternalSmtp", "kube-system", "evil", "/repo/relay.yaml")
    skr = ref(secretKeyRef={"name": "admin-token", "key": "token"})
    policy = cli_policy(environ={}, default_namespace=lambda: "ci")
    router = SourceRouter(kube=Kube(), policy=policy)
    err = await refused(router.scoped(owner).resolve(skr, "kube-system"))
    assert "--allow-namespace kube-system" in err.message and "'ci'" in err.message
    with pytest.raises(CredentialError, match="SecretNotFound"):
        await router.scoped(owner).resolve(skr, "ci")
    allowed = SourceRouter(kube=Kube(), policy=cli_policy(
        environ={"SMTPCTL_ALLOW_NAMESPACE": "kube-system"}, default_namespace=lambda: "ci"))
    with pytest.raises(CredentialError, match="SecretNotFound"):
        await allowed.scoped(owner).resolve(skr, "kube-system")
    assert reads == ["ci", "kube-system"]


async def test_cli_writes_back_only_where_it_may_read(tmp_path: Path) -> None:
    """High: `smtpctl test` overwrote a dotfile in the home directory with a rotated
    refresh token the token endpoint chose."""
    dotfile = secret_file(tmp_path / "home" / ".bashrc", "echo hi")
    owner = manifest_owner(tmp_path / "repo" / "relay.yaml")
    router = SourceRouter(policy=cli_policy(environ={}))
    with pytest.raises(CredentialError) as exc:
        await router.scoped(owner).write(ref(file=str(dotfile)), "default", Secret("evil"))
    assert exc.value.reason == "RefreshTokenNotPersisted"
    assert dotfile.read_text() == "echo hi\n"


def test_the_loader_overwrites_a_claimed_manifest_location(tmp_path: Path) -> None:
    """A manifest cannot claim to live in another directory (e.g. `/`)."""
    doc: dict[str, Any] = {"kind": "ExternalSmtp", "metadata": {
        "name": "x", "annotations": {MANIFEST_ANNOTATION: "/etc/passwd", "keep": "me"}}}
    stamp_manifest(doc, str(tmp_path / "relay.yaml"))
    assert doc["metadata"]["annotations"] == {MANIFEST_ANNOTATION: str(tmp_path / "relay.yaml"),
                                              "keep": "me"}
    stamp_manifest(doc, None)  # stdin: no location at all
    assert doc["metadata"]["annotations"] == {"keep": "me"}
    from reconciler.runtimes.local import parse_texts

    text = f"kind: ExternalSmtp\nmetadata:\n  name: x\n  annotations:\n" \
           f"    {MANIFEST_ANNOTATION}: /\n"
    (d,) = parse_texts([(str(tmp_path / "r.yaml"), text)])
    assert owner_of(d.data).manifest == str(tmp_path / "r.yaml")
    (d,) = parse_texts([("<stdin>", text)])
    assert owner_of(d.data).manifest is None


async def test_pass_cache_never_bypasses_the_policy(tmp_path: Path) -> None:
    """A value cached for one resource is not handed to another that may not read it."""
    pw = secret_file(tmp_path / "a" / "pw", canary.PASSWORD)
    router = SourceRouter(policy=cli_policy(environ={}), pass_cache=True)
    allowed = manifest_owner(tmp_path / "a" / "relay.yaml")
    other = manifest_owner(tmp_path / "b" / "relay.yaml")
    assert (await router.scoped(allowed).resolve(ref(file=str(pw)), "default")).value
    await refused(router.scoped(other).resolve(ref(file=str(pw)), "default"))


async def test_secret_file_reads_are_bounded(tmp_path: Path) -> None:
    """Low: unbounded reads of FIFOs and huge files in secret references."""
    src = FileSource()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(CredentialError) as exc:
        await src.resolve(ref(file=str(fifo)), "d")
    assert exc.value.reason == "SecretFileNotFound" and "not a regular file" in exc.value.message
    with pytest.raises(CredentialError) as exc:
        await src.resolve(ref(file="/dev/zero"), "d")
    assert "not a regular file" in exc.value.message
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MiB of zeros
    big.chmod(0o600)
    with pytest.raises(CredentialError) as exc:
        await src.resolve(ref(file=str(big)), "d")
    assert exc.value.reason == "SecretValueInvalid" and "larger than" in exc.value.message


async def test_nul_in_a_secret_is_refused(tmp_path: Path) -> None:
    """Low: a password holding NUL was sent (it changes AUTH PLAIN's framing)."""
    path = tmp_path / "pw"
    path.write_bytes(b"user\x00admin\n")
    path.chmod(0o600)
    with pytest.raises(CredentialError) as exc:
        await FileSource().resolve(ref(file=str(path)), "d")
    assert exc.value.reason == "SecretValueInvalid" and "NUL" in exc.value.message
