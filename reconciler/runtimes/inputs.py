"""Reading manifests, the one way every command does it (docs/cli.md, "Manifests").

``validate``, ``plan``, ``apply`` (and ``--watch``), ``test``, ``delete -f``, ``oauth`` and
``import`` read their input through :func:`read` then :func:`load`:

* paths: files, directories (recursive ``*.yaml|*.yml|*.json``, hidden entries skipped),
  quoted globs, ``-`` for stdin (once) - :func:`reconciler.schema.validate.iter_inputs`;
* documents: the schema layer's classification (our kinds or API group are checked; other
  kinds are skipped and counted; ``kind: List`` is expanded), with its diagnostics
  (``file:line:col``, JSON path, messages for people) and warnings;
* a ``status`` section is an error unless ``allow_status`` (then it is dropped);
* then the typed models (which must agree) and duplicates across files;
* ``namespace`` (``-n``): the namespace of manifests that have none; a manifest with a
  different explicit namespace is an error (kubectl's rule).

The YAML is parsed once (the schema layer keeps what it validated).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from reconciler.schema.diagnostics import Diagnostic

STDIN = "<stdin>"  # the name reconciler.schema.validate.iter_inputs gives standard input


@dataclass
class Inputs:
    """The raw bytes of every input, and the paths that could not be read."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    unreadable: list[tuple[str, OSError]] = field(default_factory=list)

    def digest(self, *options: object) -> str:
        """Identifies this input set (names, bytes, options, smtpctl version)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("smtpctl")
        except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
            ver = "dev"
        h = hashlib.sha256(ver.encode() + repr(options).encode())
        for name, raw in self.files:
            # Absolute: a manifest's directory decides which files it may reference.
            where = name if name == STDIN else os.path.abspath(name)
            h.update(b"\0" + where.encode() + b"\0" + raw)
        return h.hexdigest()


@dataclass
class Loaded:
    """Valid manifests (status removed, namespace set) or the problems that stop a run."""

    manifests: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # file of each manifest
    diagnostics: list[Diagnostic] = field(default_factory=list)  # errors and warnings
    documents: int = 0
    skipped: int = 0  # documents of other kinds
    io_errors: int = 0

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.io_errors and not self.errors


def read(paths: Iterable[str], stdin: BinaryIO | None = None) -> Inputs:
    from reconciler.schema.loader import MAX_BYTES
    from reconciler.schema.validate import iter_inputs

    out = Inputs()
    for name, raw in iter_inputs(list(paths), stdin, limit=MAX_BYTES + 1):
        if isinstance(raw, OSError):
            out.unreadable.append((name, raw))
        else:
            out.files.append((name, raw))
    return out


def load(inputs: Inputs, *, allow_status: bool = False, namespace: str | None = None,
         ) -> Loaded:
    """Validate ``inputs``; ``Loaded.ok`` tells whether the manifests may be used."""
    from pydantic import ValidationError

    from reconciler.credentials.policy import stamp_manifest
    from reconciler.engine.assess import HANDED_OVER
    from reconciler.engine.reconcile import render_validation_error
    from reconciler.resources import ExternalSmtp, parse_resource
    from reconciler.schema.validate import Options, Validator, _io_message

    v = Validator(Options(allow_status=allow_status, keep=True))
    out = Loaded()
    HANDED_OVER.clear()  # what an earlier load offered and no pass took (a watch)
    for name, exc in inputs.unreadable:
        out.io_errors += 1
        out.diagnostics.append(Diagnostic(name, 0, 0, "", None, None, "error",
                                          _io_message(exc)))
    for name, raw in inputs.files:
        v.add_bytes(name, raw)
    report = v.finish()
    out.diagnostics.extend(report.diagnostics)
    out.documents, out.skipped = report.documents, report.skipped
    if not report.valid:
        return out
    seen: dict[tuple[str, str, str], str] = {}
    for kept in report.kept:
        data: dict[str, Any] = kept.data
        where = f"{kept.file}#{kept.position + 1}"
        meta = dict(data.get("metadata") or {})
        kind = str(data.get("kind"))
        ns = meta.get("namespace")
        if namespace is not None and ns not in (None, namespace):
            out.diagnostics.append(_problem(
                kept.file, kind, meta.get("name"), "metadata.namespace",
                f"the manifest's namespace {ns!r} does not match -n {namespace}"))
            continue
        meta["namespace"] = ns or namespace or "default"
        manifest = {k: val for k, val in data.items() if k != "status"}
        manifest["metadata"] = meta
        # Where it came from decides which files it may reference (the CLI's source
        # policy, docs/security.md); whatever the document claims is overwritten.
        stamp_manifest(manifest, None if kept.file == STDIN else kept.file)
        try:
            res = parse_resource(manifest)
        except ValidationError as exc:  # the schema accepted it: the models must agree
            out.diagnostics.append(_problem(kept.file, kind, meta.get("name"), "",
                                            render_validation_error(exc, limit=10)))
            continue
        key = (kind, res.metadata.namespace, res.metadata.name)
        if key in seen:
            out.diagnostics.append(_problem(
                kept.file, kind, res.metadata.name, "metadata.name",
                f"{kind} {key[1]}/{key[2]} is defined twice (also in {seen[key]})"))
            continue
        seen[key] = where
        if isinstance(res, ExternalSmtp):  # the first pass takes it instead of validating
            HANDED_OVER.offer(manifest, res)
        out.manifests.append(manifest)
        out.sources.append(kept.file)
    return out


def _problem(file: str, kind: str, name: Any, path: str, message: str) -> Diagnostic:
    return Diagnostic(file, 0, 0, path, kind, name if isinstance(name, str) else None,
                      "error", message)


def load_paths(paths: Iterable[str], *, allow_status: bool = False,
               namespace: str | None = None) -> Loaded:
    return load(read(paths), allow_status=allow_status, namespace=namespace)


def problems_text(loaded: Loaded) -> str:
    """Every error and warning, one per line (``file:line:col: severity: path: message``)."""
    lines = []
    for d in loaded.diagnostics:
        where = f"{d.file}:{d.line}:{d.column}" if d.line else d.file
        path = f"{d.path}: " if d.path else ""
        subject = f" [{d.kind}/{d.name}]" if d.kind and d.name else ""
        lines.append(f"{where}: {d.severity}: {path}{d.message}{subject}")
    return "\n".join(lines)
