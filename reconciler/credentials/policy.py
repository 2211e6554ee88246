"""The tenant boundary: which secret references a resource may make the reconciler read.

Anyone who can write a manifest may be hostile: a tenant of a shared cluster, a pull
request that CI runs ``smtpctl test`` on.  A reference is an instruction to *read* (and,
for a rotated refresh token, to *write*) with the reconciler's own privileges, and the
value read is then sent to a host the manifest names.  So every reference is checked
against a :class:`SourcePolicy` *before* anything is opened, listed or requested; a
refused reference fails with the catalog reason ``SecretReferenceNotAllowed`` and a
message that names the reference and the option that would allow it.

The two runtimes have different defaults (``docs/security.md``):

* **operator** - only ``secretKeyRef`` to a Secret of the resource's *own* namespace.
  ``env:`` and ``file:`` name the operator's own environment and files (its
  ServiceAccount token, its version key), which no tenant may read; a cluster
  administrator can allow exact variable names (``--allow-env-secret``) and directories
  (``--allow-file-secret-dir``).  Write-back (refresh-token rotation) only to a Secret
  of the resource's namespace.
* **cli** - ``file:`` only below the directory of the manifest that holds the reference
  (never through a hidden path component such as ``.git/``, and never through a symbolic
  link that leaves it), plus explicit ``--allow-file-root`` directories; ``env:`` only
  for names allowed with ``--allow-env NAME|GLOB``; ``secretKeyRef`` only in the
  kubeconfig context's namespace and those allowed with ``--allow-namespace``.  The same
  opt-ins can come from ``SMTPCTL_ALLOW_ENV``, ``SMTPCTL_ALLOW_FILE_ROOT`` and
  ``SMTPCTL_ALLOW_NAMESPACE`` (set by the person or the CI job, never read from a file
  a manifest author controls).  Write-back only to the very reference that was read.
* **open** - no checks: library use and unit tests of the sources themselves.

Where a local manifest came from is recorded by the loader in the annotation
:data:`MANIFEST_ANNOTATION` (the absolute path of its file; removed for standard input,
overwritten whatever the file said).  Only the CLI policy reads it; the operator never
does (a tenant can write any annotation).

This module is plain data and path arithmetic: no network, no secret values.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reconciler.credentials.base import CredentialError
from reconciler.resources import SecretRef

__all__ = [
    "MANIFEST_ANNOTATION",
    "REFUSED",
    "Owner",
    "SourcePolicy",
    "cli_policy",
    "owner_of",
    "sources_for",
    "stamp_manifest",
]

MANIFEST_ANNOTATION = "smtp.reconciler.dev/manifest"
REFUSED = "SecretReferenceNotAllowed"

ENV_ALLOW_ENV = "SMTPCTL_ALLOW_ENV"
ENV_ALLOW_FILE_ROOT = "SMTPCTL_ALLOW_FILE_ROOT"
ENV_ALLOW_NAMESPACE = "SMTPCTL_ALLOW_NAMESPACE"

Mode = Literal["operator", "cli", "open"]


@dataclass(frozen=True, slots=True)
class Owner:
    """The resource whose spec holds a reference (for checks and messages)."""

    kind: str
    namespace: str
    name: str
    manifest: str | None = None  # absolute path of the local manifest file (CLI only)

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def owner_of(resource: Any) -> Owner:
    """The :class:`Owner` of a resource model (ExternalSmtp / OAuth2Provider) or body."""
    if isinstance(resource, Mapping):
        kind = str(resource.get("kind") or "")
        meta = resource.get("metadata") or {}
        ns = str(meta.get("namespace") or "default")
        name = str(meta.get("name") or "")
        annotations = meta.get("annotations") or {}
    else:
        kind = str(getattr(resource, "kind", "") or "")
        meta = resource.metadata
        ns, name = meta.namespace, meta.name
        annotations = meta.annotations or {}
    manifest = annotations.get(MANIFEST_ANNOTATION) if isinstance(annotations, Mapping) else None
    return Owner(kind, ns, name, str(manifest) if isinstance(manifest, str) else None)


def stamp_manifest(doc: dict[str, Any], source: str | None) -> None:
    """Record where a local manifest came from (``source``: its file; None: stdin).

    Whatever the document itself says in :data:`MANIFEST_ANNOTATION` is replaced: a
    manifest must not be able to claim another directory.
    """
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return
    annotations = meta.get("annotations")
    if annotations is None:
        if source is None:
            return
        annotations = meta["annotations"] = {}
    if not isinstance(annotations, dict):
        return  # invalid; validation reports it
    if source is None:
        annotations.pop(MANIFEST_ANNOTATION, None)
        if not annotations:
            del meta["annotations"]
        return
    annotations[MANIFEST_ANNOTATION] = os.path.abspath(source)


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


@functools.lru_cache(maxsize=1024)
def _env_allowed(patterns: tuple[str, ...], name: str) -> bool:
    """Does a name or glob of the CLI's allow-list match ``name``?  (Pure: memoised, as
    10,000 relays ask the same question.)"""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _manifest_home(manifest: str, homes: dict[str, Path] | None) -> Path:
    """The real directory of a manifest file (``homes``: a memo by the directory named).

    The memo saves a ``realpath`` per resource when thousands of resources share a
    directory; a manifest that is itself a symbolic link is resolved every time.
    """
    if homes is None:
        return _resolved(manifest).parent
    named = os.path.expanduser(manifest)
    if os.path.islink(named):
        return _resolved(named).parent
    where = os.path.dirname(os.path.abspath(named))
    home = homes.get(where)
    if home is None:
        home = homes[where] = _resolved(where)
    return home


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


@dataclass(frozen=True)
class SourcePolicy:
    """Which references may be read and written (see the module docstring)."""

    mode: Mode
    env: tuple[str, ...] = ()  # operator: exact names; cli: names or fnmatch globs
    file_roots: tuple[Path, ...] = ()  # realpath'd directories
    manifest_dir: bool = False  # cli: files below the manifest's own directory
    namespaces: frozenset[str] = frozenset()  # cli: secretKeyRef namespaces ("*": any)
    # cli: the kubeconfig context's namespace, computed on first use (None: no cluster).
    default_namespace: Callable[[], str | None] | None = field(default=None, compare=False)

    # --- constructors ----------------------------------------------------------------

    @classmethod
    def open(cls) -> SourcePolicy:
        """No checks (unit tests of the sources, library use)."""
        return cls("open")

    @classmethod
    def operator(cls, *, env: Iterable[str] = (),
                 file_dirs: Iterable[str | os.PathLike[str]] = ()) -> SourcePolicy:
        """The operator's policy: own-namespace Secrets plus the administrator's allow-list."""
        return cls("operator", env=tuple(env), file_roots=tuple(_resolved(d) for d in file_dirs))

    @classmethod
    def cli(cls, *, env: Iterable[str] = (), file_roots: Iterable[str | os.PathLike[str]] = (),
            namespaces: Iterable[str] = (), manifest_dir: bool = True,
            default_namespace: Callable[[], str | None] | None = None) -> SourcePolicy:
        return cls("cli", env=tuple(env), file_roots=tuple(_resolved(d) for d in file_roots),
                   manifest_dir=manifest_dir, namespaces=frozenset(namespaces),
                   default_namespace=default_namespace)

    # --- checks ----------------------------------------------------------------------

    def check_read(self, ref: SecretRef, namespace: str, owner: Owner | None,
                   path: Path | None = None) -> None:
        """Raise ``SecretReferenceNotAllowed`` unless ``ref`` may be read for ``owner``.

        ``path`` is the file a ``file:`` reference would open (as the file source
        computes it); its real path (symbolic links resolved) is what is judged.
        """
        if self.mode == "open":
            return
        if ref.env is not None:
            self._check_env(ref.env, owner)
        elif ref.file is not None:
            self._check_file(ref, path if path is not None else Path(ref.file), owner)
        else:
            self._check_namespace(ref, namespace, owner)

    def check_write(self, ref: SecretRef, namespace: str, owner: Owner | None,
                    path: Path | None = None) -> None:
        """Write-back (a rotated refresh token, ``oauth login``): where may it go?"""
        if self.mode == "operator" and ref.secret_key_ref is None:
            raise CredentialError(
                REFUSED,
                f"{_who(owner)}the operator writes a rotated refresh token only to a Secret of "
                f"the resource's own namespace, not to {ref.describe()}")
        # cli: only where reading is allowed (the very reference that was read).
        self.check_read(ref, namespace, owner, path)

    def _check_env(self, name: str, owner: Owner | None) -> None:
        if self.mode == "operator":
            if name in self.env:
                return
            raise CredentialError(
                REFUSED,
                f"{_who(owner)}environment variable {name} may not be read: the operator "
                f"resolves only secretKeyRef references to Secrets of the resource's own "
                f"namespace (a cluster administrator can allow this variable with "
                f"--allow-env-secret {name})")
        if _env_allowed(self.env, name):
            return
        raise CredentialError(
            REFUSED,
            f"{_who(owner)}environment variable {name} may not be read: a manifest may read "
            f"only the variables you allow; pass --allow-env {name} (or set "
            f"{ENV_ALLOW_ENV}={name})")

    def check_opened(self, ref: SecretRef, owner: Owner | None, path: Path, real: Path, *,
                     homes: dict[str, Path] | None = None) -> None:
        """Judge a ``file:`` reference by the file that was actually opened (``real``: its
        real path as the kernel reports it for the open descriptor), not by where ``path``
        points now: that is the value ``owner`` would receive.  ``homes``: a memo of the
        manifest directories' real paths, owned by the caller and kept for one pass.
        """
        if self.mode == "open":
            return
        self._check_file(ref, path, owner, real=real, homes=homes)

    def _check_file(self, ref: SecretRef, path: Path, owner: Owner | None, *,
                    real: Path | None = None, homes: dict[str, Path] | None = None) -> None:
        if real is None:
            real = _resolved(path)
        if any(_within(real, root) for root in self.file_roots):
            return
        shown = ref.file
        if self.mode == "operator":
            raise CredentialError(
                REFUSED,
                f"{_who(owner)}file {shown} may not be read: the operator resolves only "
                f"secretKeyRef references to Secrets of the resource's own namespace, never "
                f"its own files (a cluster administrator can allow a directory with "
                f"--allow-file-secret-dir DIR)")
        home: Path | None = None
        if self.manifest_dir and owner is not None and owner.manifest:
            home = _manifest_home(owner.manifest, homes)
            if _within(real, home):
                hidden = [p for p in real.relative_to(home).parts if p.startswith(".")]
                if not hidden:
                    return
                raise CredentialError(
                    REFUSED,
                    f"{_who(owner)}file {shown} may not be read: {hidden[0]} is a hidden "
                    f"entry below the manifest's directory {home} (.git/ and dotfiles can hold "
                    f"credentials a manifest author must not reach); pass "
                    f"--allow-file-root {real.parent} (or set {ENV_ALLOW_FILE_ROOT}) to "
                    f"allow it")
        where = (f"outside the manifest's directory {home}" if home is not None else
                 "not below a manifest's directory (the manifest came from standard input or "
                 "is not a local file)" if self.manifest_dir else "not allowed")
        moved = f" (it resolves to {real})" if str(real) != os.path.abspath(
            os.path.expanduser(str(path))) else ""
        raise CredentialError(
            REFUSED,
            f"{_who(owner)}file {shown} may not be read: it is {where}{moved}; pass "
            f"--allow-file-root {real.parent} (or set {ENV_ALLOW_FILE_ROOT}) to allow that "
            f"directory")

    def _check_namespace(self, ref: SecretRef, namespace: str, owner: Owner | None) -> None:
        sel = ref.secret_key_ref
        assert sel is not None
        if self.mode == "operator":
            if owner is None or owner.namespace == namespace:
                return
            raise CredentialError(
                REFUSED,
                f"{_who(owner)}Secret {sel.name!r} of namespace {namespace!r} may not be read: "
                f"the operator reads only Secrets of the resource's own namespace "
                f"{owner.namespace!r}")
        if "*" in self.namespaces or namespace in self.namespaces:
            return
        default = self.default_namespace() if self.default_namespace is not None else None
        if default is not None and namespace == default:
            return
        context = (f"the kubeconfig context's namespace is {default!r}" if default
                   else "no kubeconfig context namespace applies")
        raise CredentialError(
            REFUSED,
            f"{_who(owner)}Secret {sel.name!r} in namespace {namespace!r} may not be read: "
            f"{context}; pass --allow-namespace {namespace} (or set "
            f"{ENV_ALLOW_NAMESPACE}={namespace})")


def _who(owner: Owner | None) -> str:
    # The resource is named by whoever reports the error (its status, the CLI's line).
    return ""


def _split(value: str | None, seps: str) -> list[str]:
    if not value:
        return []
    for sep in seps[1:]:
        value = value.replace(sep, seps[0])
    return [v.strip() for v in value.split(seps[0]) if v.strip()]


def cli_policy(*, env: Iterable[str] = (), file_roots: Iterable[str] = (),
               namespaces: Iterable[str] = (), environ: Mapping[str, str] | None = None,
               default_namespace: Callable[[], str | None] | None = None) -> SourcePolicy:
    """The CLI policy: explicit opt-ins plus those of ``SMTPCTL_ALLOW_*`` in ``environ``."""
    envmap = os.environ if environ is None else environ
    return SourcePolicy.cli(
        env=[*env, *_split(envmap.get(ENV_ALLOW_ENV), ", ")],
        file_roots=[*file_roots, *_split(envmap.get(ENV_ALLOW_FILE_ROOT), os.pathsep)],
        namespaces=[*namespaces, *_split(envmap.get(ENV_ALLOW_NAMESPACE), ", ")],
        default_namespace=default_namespace,
    )


def sources_for(sources: Any, resource: Any) -> Any:
    """``sources`` bound to the resource that holds the references (its :class:`Owner`).

    Sources without a ``scoped`` method (a test's own source) are returned as they are.
    """
    scoped = getattr(sources, "scoped", None)
    return scoped(owner_of(resource)) if callable(scoped) else sources
