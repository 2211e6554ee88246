"""Secret sources: environment variables, files and Kubernetes Secrets behind one protocol.

A manifest holds references (``secretKeyRef`` | ``env`` | ``file``); :class:`SourceRouter`
sends each to the source for its shape.  Every resolution yields a
:class:`~reconciler.secret.Secret` plus a *version* that changes when the value changes and
is safe to store, so the engine can notice a rotated secret without keeping the secret:

* ``env``  -> ``env:`` + keyed hash of the value;
* ``file`` -> ``file:`` + inode + ``mtime_ns`` + keyed hash (a rewrite with the same value
  still counts as a change: that is what a rotation tool does, and a retest is cheap);
* ``secretKeyRef`` -> ``k8s:`` + keyed hash of the key's value (a Secret's
  ``resourceVersion`` is opaque and changes with *any* key, so it is not used: editing one
  key of a Secret does not re-test relays that use another).

The hash key (``version_key=``) is passed to each source explicitly by the runtime that
owns it (the operator's shared Secret, the local state directory's key file); ``None``
falls back to :func:`reconciler.secret.keyed_version`'s process key.

Decisions where the issue is silent:

* An empty value (empty file, empty variable, empty Secret key) is rejected with
  ``SecretValueInvalid``: it cannot authenticate anything and failing at resolution gives a
  clearer message than an opaque AUTH failure later.  So is a value that is not UTF-8.
* File values: exactly one trailing line terminator is removed, ``"\\n"`` or ``"\\r\\n"``
  (a file saved by a Windows editor); nothing else (spaces, a second newline) is touched.
* A file that is group- or world-writable is refused (``SecretFileInsecure``), and so is a
  group/world-writable directory *without* the sticky bit (anyone could swap the file).
  Kubernetes mounts Secret volumes on a sticky tmpfs, which therefore passes.  A secret
  value (not a public CA bundle) in a *world-readable* file is refused too, as ssh refuses
  an unprotected private key; a value holding a NUL character is refused (it would
  change the framing of AUTH PLAIN).
* Only regular files are read, at most :data:`MAX_FILE_BYTES`, opened without blocking
  (a FIFO or ``/dev/zero`` cannot hang or exhaust the reconciler).
* Relative file paths are relative to the process' working directory (or ``base_dir``).
* Every reference first passes the router's :class:`~reconciler.credentials.policy.SourcePolicy`
  (the tenant boundary, ``docs/security.md``); a refused one is never opened.

The Kubernetes source uses the synchronous ``kubernetes`` client in a worker thread
(``kubernetes_asyncio`` is not a dependency); it is imported only when the first
``secretKeyRef`` is resolved, so ``env``/``file`` users never pay for it.  Responses are
read raw (``_preload_content=False``) and parsed here: no model objects holding decoded
secrets linger, and nothing in the client logs a body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reconciler.credentials.base import CredentialError, Resolved, SecretSource
from reconciler.credentials.policy import REFUSED, Owner, SourcePolicy
from reconciler.resources import SecretKeySelector, SecretRef
from reconciler.secret import Secret, keyed_version

__all__ = [
    "EnvSource",
    "FileSource",
    "KubeSecretSource",
    "SourceRouter",
    "default_sources",
    "kube_client_factory",
    "resolve_from_secret",
    "trim_newline",
]


_Key = tuple[tuple[str, ...], str, bool]  # a reference's shape and fields, namespace, public

MAX_FILE_BYTES = 1 << 20  # a secret or CA bundle file larger than 1 MiB is refused


def trim_newline(text: str) -> str:
    """Remove exactly one trailing line terminator (``\\r\\n`` or ``\\n``)."""
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _check_value(value: str, what: str) -> None:
    if not value:
        raise CredentialError("SecretValueInvalid", f"{what} is empty")
    if "\0" in value:
        raise CredentialError("SecretValueInvalid",
                              f"{what} contains a NUL character, which no SMTP AUTH can carry")


# --- env ------------------------------------------------------------------------------


class EnvSource:
    """``env: NAME``: a variable of the reconciler's own environment (read-only)."""

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 version_key: bytes | None = None) -> None:
        # None: read os.environ at resolution time (so a changed variable is seen).
        self._environ = environ
        self._key = version_key

    async def resolve(self, ref: SecretRef, namespace: str) -> Resolved:
        name = _require(ref.env, ref, "env")
        env = os.environ if self._environ is None else self._environ
        raw = env.get(name)
        if raw is None:
            raise CredentialError("EnvVarNotSet", f"environment variable {name} is not set")
        _check_value(raw, f"environment variable {name}")
        value = Secret(raw)
        return Resolved(value=value, version="env:" + keyed_version(value, key=self._key))

    async def write(self, ref: SecretRef, namespace: str, value: Secret) -> str:
        raise CredentialError(
            "RefreshTokenNotPersisted",
            f"environment variable {ref.env} is read-only; the new value is kept in memory",
        )


# --- file -----------------------------------------------------------------------------


class FileSource:
    """``file: PATH``: a local file, e.g. a mounted Kubernetes Secret volume key."""

    def __init__(self, base_dir: str | os.PathLike[str] | None = None, *,
                 version_key: bytes | None = None) -> None:
        self._base = Path(base_dir) if base_dir is not None else None
        self._key = version_key

    def path_of(self, ref: SecretRef) -> Path:
        """The file a reference names (relative to the working directory or ``base_dir``)."""
        path = Path(_require(ref.file, ref, "file")).expanduser()
        if not path.is_absolute():
            path = (self._base if self._base is not None else Path.cwd()) / path
        return path

    async def resolve(self, ref: SecretRef, namespace: str, *, public: bool = False
                      ) -> Resolved:
        """``public``: the value is not a secret (a CA bundle): world-readable is fine."""
        return await asyncio.to_thread(self._resolve_sync, self.path_of(ref), public)

    def _resolve_sync(self, path: Path, public: bool = False) -> Resolved:
        # The real path is what the policy judged and what is opened (no symlink swap
        # between the check and the read reaches another file through the last link).
        real = Path(os.path.realpath(path))
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            raise CredentialError("SecretFileNotFound", f"file {path} does not exist") from None
        except PermissionError:
            raise CredentialError(
                "SecretAccessDenied", f"file {path} cannot be read (permission denied)"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError("SecretFileNotFound", f"{path} is not a regular file")
        _check_mode(path, real, st, public=public)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except PermissionError:
            raise CredentialError(
                "SecretAccessDenied", f"file {path} cannot be read (permission denied)"
            ) from None
        except (FileNotFoundError, NotADirectoryError):
            raise CredentialError("SecretFileNotFound", f"file {path} does not exist") from None
        except OSError as exc:  # ELOOP: the file became a symbolic link meanwhile
            raise CredentialError(
                "SecretFileNotFound",
                f"file {path} cannot be opened ({exc.strerror or type(exc).__name__})") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())  # the version describes the bytes actually read
            if not stat.S_ISREG(st.st_mode):
                raise CredentialError("SecretFileNotFound", f"{path} is not a regular file")
            origin = _opened_path(fh.fileno(), path, real, st)
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise CredentialError(
                "SecretValueInvalid",
                f"file {path} is larger than {MAX_FILE_BYTES // 1024} KiB; a secret or CA "
                "bundle is never that large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CredentialError("SecretValueInvalid", f"file {path} is not UTF-8 text") from None
        text = trim_newline(text)
        _check_value(text, f"file {path}")
        value = Secret(text)
        return Resolved(value=value, version=_file_version(st, value, self._key),
                        origin=origin)

    async def write(self, ref: SecretRef, namespace: str, value: Secret) -> str:
        return await asyncio.to_thread(self._write_sync, self.path_of(ref), value)

    def _write_sync(self, path: Path, value: Secret) -> str:
        """Atomically replace the file: temp file (0600) in the same directory, fsync, rename.

        A reader never sees a half-written token, and the file keeps (or gets) mode 0600.
        """
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise CredentialError(
                "RefreshTokenNotPersisted",
                f"file {path} cannot be written ({exc.strerror or type(exc).__name__})",
            ) from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(value.reveal().encode("utf-8") + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CredentialError(
                "RefreshTokenNotPersisted",
                f"file {path} cannot be written ({exc.strerror or type(exc).__name__})",
            ) from None
        return _file_version(os.stat(path), value, self._key)


def _opened_path(fd: int, path: Path, real: Path, st: os.stat_result) -> str:
    """The real path of the file open on ``fd``: what the source policy must judge.

    ``real`` was resolved before the open; a directory on the way can be swapped for a
    symbolic link between the two (``O_NOFOLLOW`` guards the last component only).  The
    kernel's name for the descriptor says what was opened; where ``/proc`` does not (not
    Linux, a file deleted meanwhile), ``real`` resolved again must still name the very file
    (device and inode) that was opened, else the read fails.
    """
    try:
        named = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        named = ""
    if named.startswith("/") and not named.endswith(" (deleted)"):
        return named
    again = os.path.realpath(real)
    try:
        now = os.stat(again)
    except OSError:
        now = None
    if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise CredentialError("SecretFileNotFound",
                              f"file {path} changed while it was being opened")
    return again


def _prefixes(path: str) -> tuple[str, ...]:
    """Every prefix of an absolute path, as written (``/a``, ``/a/b``, ...)."""
    parts = path.split("/")
    return tuple(dict.fromkeys(q for i in range(2, len(parts) + 1)
                               if (q := "/".join(parts[:i]))))


def _stamps(paths: tuple[str, ...]) -> tuple[Any, ...]:
    """What changes when an entry is replaced (``lstat``, links not followed): device,
    inode and type; and the change time of what is not a directory (a directory's changes
    with every file created in it; a replaced directory has another inode)."""
    out: list[Any] = []
    for p in paths:
        try:
            st = os.lstat(p)
        except OSError:
            out.append(None)
            continue
        kind = stat.S_IFMT(st.st_mode)
        out.append((st.st_dev, st.st_ino, kind) if kind == stat.S_IFDIR
                   else (st.st_dev, st.st_ino, kind, st.st_ctime_ns))
    return tuple(out)


def _file_version(st: os.stat_result, value: Secret, key: bytes | None = None) -> str:
    return f"file:{st.st_ino}:{st.st_mtime_ns}:{keyed_version(value, key=key)}"


def _check_mode(path: Path, real: Path, st: os.stat_result, *, public: bool) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CredentialError(
            "SecretFileInsecure",
            f"file {path} is group- or world-writable (mode {mode:04o}); "
            f"run chmod go-w {path}",
        )
    if not public and st.st_mode & stat.S_IROTH:
        raise CredentialError(
            "SecretFileInsecure",
            f"file {path} is readable by every user (mode {mode:04o}); run chmod o-rwx {path} "
            "(a mounted Kubernetes Secret volume: set defaultMode: 0400 or 0440)",
        )
    parent = real.parent
    try:
        pst = os.stat(parent)
    except OSError:
        return
    if pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not pst.st_mode & stat.S_ISVTX:
        raise CredentialError(
            "SecretFileInsecure",
            f"directory {parent} of file {path} is group- or world-writable without the "
            f"sticky bit (mode {stat.S_IMODE(pst.st_mode):04o}); run chmod go-w {parent}",
        )


# --- Kubernetes -----------------------------------------------------------------------

ApiClientFactory = Callable[[], Any]  # returns a kubernetes.client.ApiClient


class KubeSecretSource:
    """``secretKeyRef``: a key of a Secret in the resource's namespace, via the API server.

    ``api_client_factory`` builds a ``kubernetes.client.ApiClient`` (once, lazily, in the
    worker thread); :func:`default_sources` passes one for in-cluster or kubeconfig use.
    """

    def __init__(
        self, api_client_factory: ApiClientFactory, *, timeout_seconds: float = 10,
        version_key: bytes | None = None,
    ) -> None:
        self._factory = api_client_factory
        self._key = version_key
        self._timeout = timeout_seconds
        self._api: Any = None
        self._lock = threading.Lock()

    def _core(self) -> Any:
        with self._lock:
            if self._api is None:
                from kubernetes import client

                try:
                    self._api = client.CoreV1Api(self._factory())
                except CredentialError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any config error (bad kubeconfig, no token)
                    raise CredentialError(
                        "KubernetesUnavailable",
                        f"cannot configure the Kubernetes client: {type(exc).__name__}",
                    ) from None
            return self._api

    async def resolve(self, ref: SecretRef, namespace: str) -> Resolved:
        sel = _require(ref.secret_key_ref, ref, "secretKeyRef")
        return await asyncio.to_thread(self._resolve_sync, sel, namespace)

    def _read(self, sel: SecretKeySelector, namespace: str) -> dict[str, Any]:
        api = self._core()
        try:
            resp = api.read_namespaced_secret(
                sel.name, namespace, _preload_content=False, _request_timeout=self._timeout
            )
            body = resp.data
        except _kube_exceptions() as exc:
            raise _kube_error(exc, sel.name, namespace, "read") from None
        try:
            doc = json.loads(body)
        except ValueError:
            raise CredentialError(
                "SecretSourceUnavailable",
                f"the Kubernetes API answered garbage for Secret {sel.name!r} in namespace "
                f"{namespace!r}",
            ) from None
        if not isinstance(doc, dict):
            raise CredentialError(
                "SecretSourceUnavailable",
                f"the Kubernetes API answered garbage for Secret {sel.name!r}",
            )
        return doc

    def _resolve_sync(self, sel: SecretKeySelector, namespace: str) -> Resolved:
        return resolve_from_secret(self._read(sel, namespace), sel, namespace,
                                   version_key=self._key)

    async def write(self, ref: SecretRef, namespace: str, value: Secret) -> str:
        sel = _require(ref.secret_key_ref, ref, "secretKeyRef")
        return await asyncio.to_thread(self._write_sync, sel, namespace, value)

    def _write_sync(self, sel: SecretKeySelector, namespace: str, value: Secret) -> str:
        """Merge-patch one key of the Secret (creating the Secret when it does not exist)."""
        api = self._core()
        encoded = base64.b64encode(value.reveal().encode("utf-8")).decode("ascii")
        try:
            resp = api.patch_namespaced_secret(
                sel.name, namespace, {"data": {sel.key: encoded}},
                _preload_content=False, _request_timeout=self._timeout,
            )
        except _kube_exceptions() as exc:
            err = _kube_error(exc, sel.name, namespace, "patch")
            if err.reason != "SecretNotFound":
                raise CredentialError("RefreshTokenNotPersisted", err.message) from None
            try:
                resp = api.create_namespaced_secret(
                    namespace,
                    {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                     "metadata": {"name": sel.name, "namespace": namespace},
                     "data": {sel.key: encoded}},
                    _preload_content=False, _request_timeout=self._timeout,
                )
            except _kube_exceptions() as exc2:
                err = _kube_error(exc2, sel.name, namespace, "create")
                raise CredentialError("RefreshTokenNotPersisted", err.message) from None
        _ = resp.data  # read the body so the connection goes back to the pool
        return _kube_version(value, self._key)


def _kube_version(value: Secret, key: bytes | None = None) -> str:
    """The version of one key: a keyed hash of its value.

    Not the Secret's ``resourceVersion``: that is opaque (no order may be read into it) and
    changes with *any* key, so a write to one key (a rotated refresh token) or an edit of
    an unrelated key would look like a rotation of every key of the Secret.
    """
    return "k8s:" + keyed_version(value, key=key)


def resolve_from_secret(
    doc: Mapping[str, Any], sel: SecretKeySelector, namespace: str, *,
    version_key: bytes | None = None,
) -> Resolved:
    """The value and version of ``sel``'s key in a Secret body read from the API.

    Public so that a runtime holding Secret bodies (the operator's watch cache) decodes
    them exactly as this source does."""
    what = f"Secret {sel.name!r} key {sel.key!r} in namespace {namespace!r}"
    data = doc.get("data") or {}
    raw = data.get(sel.key) if isinstance(data, dict) else None
    if raw is None:
        raise CredentialError(
            "SecretKeyNotFound",
            f"Secret {sel.name!r} in namespace {namespace!r} has no key {sel.key!r}",
        )
    try:
        text = base64.b64decode(str(raw), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise CredentialError("SecretValueInvalid", f"{what} is not UTF-8 text") from None
    _check_value(text, what)
    value = Secret(text)
    return Resolved(value=value, version=_kube_version(value, version_key))


def _kube_exceptions() -> tuple[type[Exception], ...]:
    """What the client raises for API errors and transport failures."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    return (ApiException, urllib3.exceptions.HTTPError, OSError)


def _kube_error(exc: Exception, name: str, namespace: str, verb: str) -> CredentialError:
    """Map a client exception to a catalog reason.  Never renders the exception body."""
    from kubernetes.client.exceptions import ApiException

    where = f"Secret {name!r} in namespace {namespace!r}"
    if isinstance(exc, ApiException) and exc.status:
        status = int(exc.status)
        if status == 404:
            return CredentialError("SecretNotFound", f"{where} does not exist")
        if status in (401, 403):
            return CredentialError(
                "SecretAccessDenied",
                f"the reconciler may not {verb} {where} (HTTP {status} from the Kubernetes API)",
            )
        return CredentialError(
            "SecretSourceUnavailable",
            f"the Kubernetes API answered HTTP {status} reading {where}",
        )
    return CredentialError(
        "SecretSourceUnavailable",
        f"the Kubernetes API could not be reached to {verb} {where} ({type(exc).__name__})",
    )


# --- router ---------------------------------------------------------------------------


class SourceRouter:
    """Sends each reference to the source for its shape, after the policy allowed it.

    ``policy`` is the tenant boundary (:mod:`reconciler.credentials.policy`); every
    runtime passes one, ``None`` means no checks (unit tests, library use).  A reference
    is resolved *for* a resource: :meth:`scoped` binds the router to it (its namespace,
    its local manifest), and :func:`~reconciler.credentials.policy.sources_for` is the
    way callers do that.

    ``pass_cache``: resolve each reference at most once per pass (10,000 relays usually
    share a handful of references) until :meth:`begin_pass`; it holds values in memory
    only, a write invalidates its entry, and failures are not cached.  A cached value
    reaches a resource only after the policy allowed it *for that resource*: ``env`` and
    ``secretKeyRef`` references are checked before the cache is consulted; a ``file``
    reference is checked before the (single) read opens anything, then judged for every
    resource it is handed to by the file that was actually opened
    (:attr:`Resolved.origin`), a decision kept for the pass by (reference, manifest,
    opened file): the same value judged for the same manifest directory needs no new
    ``realpath``.
    """

    accepts_public = True  # resolve(..., public=True): a CA bundle, not a secret

    def __init__(
        self,
        *,
        env: SecretSource | None = None,
        file: SecretSource | None = None,
        kube: SecretSource | None = None,
        kube_unavailable_hint: str = "",
        policy: SourcePolicy | None = None,
        pass_cache: bool = False,
        version_key: bytes | None = None,
    ) -> None:
        # version_key: for the env/file sources made here (given sources carry their own).
        self.env = env if env is not None else EnvSource(version_key=version_key)
        self.file = file if file is not None else FileSource(version_key=version_key)
        self.kube = kube
        self.policy = policy if policy is not None else SourcePolicy.open()
        self._hint = kube_unavailable_hint
        self._cache: dict[_Key, asyncio.Future[Resolved]] | None = (
            {} if pass_cache else None)
        # Per pass: the policy's decisions on opened files, and manifest directories.
        self._judged: dict[tuple[_Key, str | None, str], str | None] = {}
        self._homes: dict[str, Path] = {}
        self._watch: dict[_Key, tuple[tuple[str, ...], tuple[Any, ...]]] = {}

    def begin_pass(self) -> None:
        """Forget the values of the last pass (rotation is seen on the next one)."""
        if self._cache is not None:
            self._cache.clear()
        self._judged.clear()
        self._homes.clear()
        self._watch.clear()

    def scoped(self, owner: Owner) -> _Scoped:
        """This router acting for ``owner`` (the resource whose spec holds the references)."""
        return _Scoped(self, owner)

    def _pick(self, ref: SecretRef) -> SecretSource:
        kind = ref.source
        if kind == "env":
            return self.env
        if kind == "file":
            return self.file
        if self.kube is None:
            raise CredentialError(
                "KubernetesUnavailable",
                f"{ref.describe()} is a secretKeyRef, which needs a Kubernetes API, and none "
                f"is configured{self._hint}: pass --kubeconfig (or set KUBECONFIG), run in a "
                f"cluster, or use an env or file reference",
            )
        return self.kube

    def _file_path(self, ref: SecretRef) -> Path | None:
        if ref.file is None:
            return None
        path_of = getattr(self.file, "path_of", None)
        return Path(path_of(ref)) if callable(path_of) else Path(ref.file)

    @staticmethod
    def _key(ref: SecretRef, namespace: str, public: bool) -> _Key:
        # What names the value: the shape and its fields (cheaper than the model's JSON,
        # asked once per reference per resource).
        sel = ref.secret_key_ref
        what = (("secretKeyRef", sel.name, sel.key) if sel is not None else
                ("env", ref.env) if ref.env is not None else ("file", str(ref.file)))
        return (what, namespace, public)

    async def resolve_for(self, ref: SecretRef, namespace: str, owner: Owner | None, *,
                          public: bool = False) -> Resolved:
        source = self._pick(ref)  # no cluster at all: say that, it is the useful news
        if self._cache is None:
            path = self._file_path(ref)
            self.policy.check_read(ref, namespace, owner, path)
            resolved = await self._read(source, ref, namespace, public)
            if path is not None and resolved.origin is not None:
                self.policy.check_opened(ref, owner, path, Path(resolved.origin))
            return resolved
        # Single flight: the first reader of a reference reads it, everyone who asks
        # meanwhile waits for that read (128 relays sharing a CA file read it once, not
        # 128 times); a failure is shared with them but not kept for later callers.
        key = self._key(ref, namespace, public)
        pending = self._cache.get(key)
        if pending is None or ref.file is None:
            # Before anything is read: a refused reference is never opened.
            path = self._file_path(ref)
            watched = _prefixes(str(path)) if path is not None else ()
            before = _stamps(watched) if watched else ()
            self.policy.check_read(ref, namespace, owner, path)
        if pending is None:
            pending = asyncio.ensure_future(
                self._read_watched(source, ref, namespace, public, key, watched, before))
            self._cache[key] = pending
            pending.add_done_callback(functools.partial(self._forget_failure, key))
            checked_now = True
        else:
            checked_now = ref.file is None
        try:
            # shield: a caller that is cancelled does not cancel the read others wait for
            # (a read already done is taken as it is: the same result or error, without
            # shield's futures; nearly every relay of a pass finds it done)
            resolved = pending.result() if pending.done() else await asyncio.shield(pending)
        except CredentialError:
            if not checked_now:  # a resource that may not read the file learns nothing
                self.policy.check_read(ref, namespace, owner, self._file_path(ref))
            raise  # of it (not even why the read failed)
        if ref.file is not None:
            self._judge_file(key, ref, namespace, owner, resolved, checked_now=checked_now)
        return resolved

    async def _read_watched(self, source: SecretSource, ref: SecretRef, namespace: str,
                            public: bool, key: _Key,
                            watched: tuple[str, ...], before: tuple[Any, ...]) -> Resolved:
        """The read of a pass, remembering what the path's resolution went through."""
        resolved = await self._read(source, ref, namespace, public)
        if resolved.origin is not None:
            more = tuple(p for p in _prefixes(resolved.origin) if p not in watched)
            self._watch[key] = (watched + more, before + _stamps(more))
        return resolved

    def _judge_file(self, key: _Key, ref: SecretRef, namespace: str,
                    owner: Owner | None, resolved: Resolved, *, checked_now: bool) -> None:
        """May ``owner`` have the value read from the file that was opened?

        Two checks.  Where the path points: made before the read for its first reader;
        for the others, made again only when an entry on the way changed since the read
        (a symbolic link swapped, a directory or the file replaced: device, inode, type,
        and for non-directories the change time, of every prefix of the path and of the
        opened file's real path).  What was opened (``Resolved.origin``): judged for each
        manifest directory once per pass; a directory (``homes``) is resolved once.
        """
        if resolved.origin is None:  # a source that cannot say: judge where it points now
            if not checked_now:
                self.policy.check_read(ref, namespace, owner, self._file_path(ref))
            return
        if not checked_now:
            watch = self._watch.get(key)
            if watch is None or _stamps(watch[0]) != watch[1]:
                self.policy.check_read(ref, namespace, owner, self._file_path(ref))
        memo = (key, owner.manifest if owner is not None else None, resolved.origin)
        if memo not in self._judged:
            path = self._file_path(ref)
            assert path is not None
            try:
                self.policy.check_opened(ref, owner, path, Path(resolved.origin),
                                         homes=self._homes)
            except CredentialError as exc:
                self._judged[memo] = exc.message
            else:
                self._judged[memo] = None
        refusal = self._judged[memo]
        if refusal is not None:
            raise CredentialError(REFUSED, refusal)

    def _forget_failure(self, key: _Key, done: asyncio.Future[Resolved]
                        ) -> None:
        if self._cache is not None and self._cache.get(key) is done and (
                done.cancelled() or done.exception() is not None):
            del self._cache[key]

    @staticmethod
    async def _read(source: SecretSource, ref: SecretRef, namespace: str, public: bool
                    ) -> Resolved:
        if public and ref.file is not None and isinstance(source, FileSource):
            return await source.resolve(ref, namespace, public=True)
        return await source.resolve(ref, namespace)

    async def write_for(self, ref: SecretRef, namespace: str, value: Secret,
                        owner: Owner | None) -> str:
        try:
            self.policy.check_write(ref, namespace, owner, self._file_path(ref))
        except CredentialError as exc:
            raise CredentialError("RefreshTokenNotPersisted", exc.message) from None
        if self._cache is not None:
            for public in (False, True):
                self._cache.pop(self._key(ref, namespace, public), None)
                self._watch.pop(self._key(ref, namespace, public), None)
        source = self._pick(ref)
        writer = getattr(source, "write", None)
        if writer is None:
            raise CredentialError(
                "RefreshTokenNotPersisted", f"{ref.describe()} is read-only"
            )
        version: str = await writer(ref, namespace, value)
        return version

    async def resolve(self, ref: SecretRef, namespace: str, *, public: bool = False
                      ) -> Resolved:
        return await self.resolve_for(ref, namespace, None, public=public)

    async def write(self, ref: SecretRef, namespace: str, value: Secret) -> str:
        return await self.write_for(ref, namespace, value, None)


class _Scoped:
    """A :class:`SourceRouter` acting for one resource (see :meth:`SourceRouter.scoped`)."""

    accepts_public = True

    def __init__(self, router: SourceRouter, owner: Owner) -> None:
        self.router = router
        self.owner = owner

    def scoped(self, owner: Owner) -> _Scoped:
        return _Scoped(self.router, owner)

    async def resolve(self, ref: SecretRef, namespace: str, *, public: bool = False
                      ) -> Resolved:
        return await self.router.resolve_for(ref, namespace, self.owner, public=public)

    async def write(self, ref: SecretRef, namespace: str, value: Secret) -> str:
        return await self.router.write_for(ref, namespace, value, self.owner)


def default_sources(
    *,
    policy: SourcePolicy,
    kubeconfig: str | None = None,
    in_cluster: bool | None = None,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    pass_cache: bool = False,
    version_key: bytes | None = None,
) -> SourceRouter:
    """The usual sources: env, file, and a Kubernetes Secret source when a cluster is known.

    ``policy`` is required: every runtime states which references a manifest may use
    (:mod:`reconciler.credentials.policy`).  A CLI policy without its own
    ``default_namespace`` gets the namespace of the kubeconfig context chosen here.

    The Kubernetes configuration is chosen like client-go does, in this order: an explicit
    ``kubeconfig``; ``in_cluster=True``; ``in_cluster=None`` and ``KUBERNETES_SERVICE_HOST``
    set (running in a pod); ``$KUBECONFIG``; ``~/.kube/config`` when it exists.  Nothing is
    imported or contacted here: the client is built on the first ``secretKeyRef``.
    """
    env = os.environ if environ is None else environ
    factory: ApiClientFactory | None = None
    namespace_of: Callable[[], str | None] = lambda: None  # noqa: E731
    if kubeconfig is not None:
        factory = _kubeconfig_factory(kubeconfig, context)
        namespace_of = _kubeconfig_namespace(kubeconfig, context)
    elif in_cluster or (in_cluster is None and env.get("KUBERNETES_SERVICE_HOST")):
        factory = _in_cluster_factory
        namespace_of = _in_cluster_namespace
    elif in_cluster is None or in_cluster is False:
        home = env.get("HOME")
        default = Path(home) / ".kube" / "config" if home else Path("~/.kube/config").expanduser()
        path = env.get("KUBECONFIG") or str(default)
        first = path.split(os.pathsep)[0] if path else ""
        if first and Path(first).exists():
            factory = _kubeconfig_factory(first, context)
            namespace_of = _kubeconfig_namespace(first, context)
    kube = KubeSecretSource(factory, version_key=version_key) if factory is not None else None
    if policy.mode == "cli" and policy.default_namespace is None:
        policy = dataclasses.replace(policy, default_namespace=_once(namespace_of))
    return SourceRouter(
        env=EnvSource(environ, version_key=version_key),
        file=FileSource(base_dir, version_key=version_key), kube=kube, policy=policy,
        kube_unavailable_hint=" (no kubeconfig found and not running in a cluster)",
        pass_cache=pass_cache,
    )


def _once(fn: Callable[[], str | None]) -> Callable[[], str | None]:
    memo: list[str | None] = []

    def call() -> str | None:
        if not memo:
            memo.append(fn())
        return memo[0]

    return call


def _kubeconfig_namespace(path: str, context: str | None) -> Callable[[], str | None]:
    """The namespace of the kubeconfig context (kubectl's default namespace), lazily."""

    def read() -> str | None:
        import yaml

        try:
            with open(path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh.read(MAX_FILE_BYTES))
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
            return None
        if not isinstance(doc, dict):
            return None
        name = context or doc.get("current-context")
        for entry in doc.get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                ctx = entry.get("context") or {}
                ns = ctx.get("namespace") if isinstance(ctx, dict) else None
                return str(ns) if ns else "default"
        return None

    return read


def _in_cluster_namespace() -> str | None:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                  encoding="utf-8") as fh:
            return fh.read(256).strip() or None
    except OSError:
        return None


def kube_client_factory(kubeconfig: str | None, context: str | None = None) -> ApiClientFactory:
    """A ``kubernetes.client.ApiClient`` factory: this kubeconfig, or in-cluster when None."""
    return _kubeconfig_factory(kubeconfig, context) if kubeconfig else _in_cluster_factory


def _kubeconfig_factory(path: str, context: str | None) -> ApiClientFactory:
    def build() -> Any:
        from kubernetes import config

        if not Path(path).exists():
            raise CredentialError("KubernetesUnavailable", f"kubeconfig {path} does not exist")
        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context, persist_config=False
        )

    return build


def _in_cluster_factory() -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


def _require(value: Any, ref: SecretRef, shape: str) -> Any:
    if value is None:  # pragma: no cover - the router never sends the wrong shape
        raise CredentialError("InvalidSpec", f"{ref.describe()} is not a {shape} reference")
    return value
