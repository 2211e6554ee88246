"""The core of ``smtpctl validate``: files and streams in, diagnostics out.

Work per document on the hot path: one C-loader construction, one compiled
``jsonschema_rs`` ``is_valid`` call, a handful of dict lookups for the semantic checks.
Only a document with a problem pays for more: a full error iteration, messages, and a
walk of the node tree the loader composed anyway (for line and column).  Documents are
processed one at a time and dropped; cross-document checks keep a small summary each.

Document classification: a mapping whose ``kind`` is ours, or whose ``apiVersion`` is in
our API group, is validated; any other mapping (a Deployment next to the relays) is
skipped and counted; an empty document (a trailing ``---``) is ignored; anything that
is not a mapping is an error.  A ``kind: List`` (``kubectl get -o yaml`` output) or an
``ExternalSmtpList``/``OAuth2ProviderList`` (the API's list) is expanded into its items.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from itertools import islice
from typing import Any, BinaryIO, NamedTuple

from reconciler.schema.diagnostics import Diagnostic, JsonPath, Severity, format_path
from reconciler.schema.loader import MAX_BYTES, Document, LoadedFile, load, unsupported_value
from reconciler.schema.positions import PositionIndex
from reconciler.schema.schemas import API_GROUP, KINDS, validator
from reconciler.schema.semantic import Resource, check_document, check_set

SUFFIXES = (".yaml", ".yml", ".json")
MAX_PER_DOCUMENT = 50
"""Diagnostics reported per document; a hostile document with 100,000 unknown keys gets
50 and a count of the rest (each one costs a position lookup)."""
MAX_PER_FILE = 100_000
"""Diagnostics per file before checking that file stops (an 8 MiB file of ``[]`` documents
would otherwise produce 1.4 million of them)."""


class Options(NamedTuple):
    strict: bool = False
    allow_status: bool = False
    max_bytes: int = MAX_BYTES
    keep: bool = False
    """Keep every validated document of our kinds in :attr:`Report.kept` (``apply`` and
    the other commands that go on to use the manifests: one parse, one classification)."""


class Kept(NamedTuple):
    file: str
    position: int  # 0-based index of the document in its file
    data: Any


class DocumentResult:
    """One validated document (for per-document outputs such as junit)."""

    __slots__ = ("diagnostics", "file", "index", "kind", "name", "namespace")

    def __init__(self, file: str, index: int, kind: str | None, name: str | None,
                 namespace: str | None = None) -> None:
        self.file = file
        self.index = index
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.diagnostics: list[Diagnostic] = []


class Report:
    """The outcome of one run: counts, every diagnostic, and per-document results."""

    __slots__ = ("diagnostics", "documents", "files", "io_errors", "kept", "results", "skipped",
                 "skipped_documents")

    def __init__(self) -> None:
        self.kept: list[Kept] = []
        self.skipped_documents: list[DocumentResult] = []  # other kinds (junit: <skipped/>)
        self.documents = 0
        self.skipped = 0
        self.files = 0
        self.io_errors = 0
        self.diagnostics: list[Diagnostic] = []
        self.results: list[DocumentResult] = []

    @property
    def valid(self) -> bool:
        return self.io_errors == 0 and not any(d.severity == "error" for d in self.diagnostics)

    def counts(self) -> tuple[int, int]:
        errors = sum(1 for d in self.diagnostics if d.severity == "error")
        return errors, len(self.diagnostics) - errors


class _Context(NamedTuple):
    file: str
    positions: PositionIndex
    doc_index: int
    base: JsonPath
    result: DocumentResult
    spots: dict[JsonPath, tuple[int, int]]  # positions kept for the cross-document checks


_SET_PATHS: tuple[JsonPath, ...] = (("spec", "oauth2ProviderRef", "name"), ("spec", "selected"))


class Validator:
    """Accumulates one run over many inputs; call :meth:`finish` for the report."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self.report = Report()
        self._resources: list[Resource] = []
        self._contexts: list[_Context] = []

    # --- inputs -----------------------------------------------------------------------
    def add_paths(self, paths: list[str], stdin: BinaryIO | None = None) -> None:
        for name, raw in iter_inputs(paths, stdin, limit=self.options.max_bytes + 1):
            if isinstance(raw, OSError):
                self.report.io_errors += 1
                self._diag(name, 0, 0, "", None, None, "error", _io_message(raw))
            else:
                self.add_bytes(name, raw)

    def add_bytes(self, name: str, raw: bytes) -> None:
        self.report.files += 1
        loaded = load(name, raw, max_bytes=self.options.max_bytes)
        positions = PositionIndex(loaded.text)
        self._document_loop(name, loaded, positions)
        for problem in loaded.problems:  # complete only now: documents are produced lazily
            path = format_path(problem.path)
            self._diag(name, problem.line, problem.column, path, None, None, "error",
                       problem.message)

    def _document_loop(self, name: str, loaded: LoadedFile, positions: PositionIndex) -> None:
        start = len(self.report.diagnostics)
        for doc in loaded.documents:
            if len(self.report.diagnostics) - start >= MAX_PER_FILE:
                self._diag(name, 0, 0, "", None, None, "error",
                           f"more than {MAX_PER_FILE} problems: checking of this file stopped")
                break
            positions.remember(doc.index, doc.node)
            try:
                self._one(name, doc, positions)
            finally:
                positions.forget(doc.index)

    def _one(self, name: str, doc: Document, positions: PositionIndex) -> None:
        if doc.problems:
            self.report.documents += 1
            result = DocumentResult(name, doc.index, None, None)
            self.report.results.append(result)
            for p in doc.problems:
                self._diag(name, p.line, p.column, "", None, None, "error", p.message, result)
            return
        dups = doc.dup_marks
        if doc.data is None and not dups:
            return
        data = doc.data
        if isinstance(data, dict) and _is_list(data):
            for i, item in enumerate(data["items"]):
                self._document(name, positions, doc.index, ("items", i), item, [])
            self._document(name, positions, doc.index, (), None, dups)
        else:
            self._document(name, positions, doc.index, (), data, dups)

    # --- one document -----------------------------------------------------------------
    def _document(self, file: str, positions: PositionIndex, index: int, base: JsonPath,
                  data: Any, dups: list[tuple[int, int, str]]) -> None:
        kind = name = None
        if isinstance(data, dict):
            k = data.get("kind")
            api = data.get("apiVersion")
            ours = k in KINDS or (isinstance(api, str) and api.split("/")[0] == API_GROUP)
            kind = k if isinstance(k, str) else None
            meta = data.get("metadata")
            if isinstance(meta, dict) and isinstance(meta.get("name"), str):
                name = meta["name"]
            if not ours:
                self.report.skipped += 1
                self.report.skipped_documents.append(DocumentResult(file, index, kind, name))
                for line, col, key in dups[:MAX_PER_DOCUMENT]:  # broken YAML, whatever the kind
                    self._diag(file, line, col, format_path(positions.path_at(index, line, col)),
                               kind, name, "error", _dup_message(key))
                return
        elif data is None and not dups:
            return
        self.report.documents += 1
        ns = None
        if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
            raw_ns = data["metadata"].get("namespace")
            ns = raw_ns if isinstance(raw_ns, str) else None
        result = DocumentResult(file, index, kind, name, ns)  # None: no metadata.namespace
        self.report.results.append(result)
        ctx = _Context(file, positions, index, base, result, {})

        for line, col, key in dups[:MAX_PER_DOCUMENT]:
            path = positions.path_at(index, line, col)
            self._diag(file, line, col, format_path(path), kind, name, "error",
                       _dup_message(key), result)
        if data is None:
            return
        if not isinstance(data, dict):
            what = "a list" if isinstance(data, list) else f"a {type(data).__name__} scalar"
            self._at(ctx, (), "error", f"document is {what}, not a mapping: a manifest is a "
                     "mapping with apiVersion, kind, metadata and spec")
            return
        if kind not in KINDS:
            shown = repr(data.get("kind")) if isinstance(data.get("kind"), str) else "missing"
            self._at(ctx, ("kind",), "error",
                     f"kind is {shown}: the {API_GROUP} API group has kinds "
                     f"{' and '.join(KINDS)}")
            return
        assert kind is not None
        v = validator(kind)
        try:
            ok = v.is_valid(data)
            errors = [] if ok else list(islice(v.iter_errors(data), MAX_PER_DOCUMENT * 4))
        except ValueError:
            bad = unsupported_value(data)
            path, msg = bad if bad is not None else ((), "document cannot be validated")
            self._at(ctx, path, "error", msg)
            return
        if errors:
            # imported here: a run over valid manifests (the usual CI case) never needs it
            from reconciler.schema.messages import drop_shadowed, translate

            messages = [m for e in errors for m in translate(kind, e)]
            seen: set[tuple[JsonPath, str]] = set()
            unique = []
            for m in drop_shadowed(messages):
                if (m.path, m.text) not in seen:
                    seen.add((m.path, m.text))
                    unique.append(m)
            for m in unique[:MAX_PER_DOCUMENT]:
                self._at(ctx, m.path, "error", m.text)
            hidden = len(unique) - MAX_PER_DOCUMENT + max(0, len(dups) - MAX_PER_DOCUMENT)
            if hidden > 0 or len(errors) == MAX_PER_DOCUMENT * 4:
                self._at(ctx, (), "error", f"more problems in this document are not shown "
                         f"(the first {MAX_PER_DOCUMENT} are)")
        for f in check_document(data, kind, allow_status=self.options.allow_status):
            self._at(ctx, f.path, f.severity, f.message)
        meta = data.get("metadata")
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        spec = data.get("spec")
        if isinstance(spec, dict) and ("oauth2ProviderRef" in spec or spec.get("selected")):
            for path in _SET_PATHS:  # the node is at hand now; it is forgotten after this doc
                full = (*base, *path)
                ctx.spots[full] = positions.locate(index, full)
        if self.options.keep:
            self.report.kept.append(Kept(file, index, data))
        self._resources.append(Resource.of(len(self._contexts), kind,
                                           ns if isinstance(ns, str) else "default", name, data))
        self._contexts.append(ctx)

    # --- output -----------------------------------------------------------------------
    def _at(self, ctx: _Context, path: JsonPath, severity: Severity, message: str) -> None:
        full = (*ctx.base, *path)
        spot = ctx.spots.get(full)
        line, col = spot if spot is not None else ctx.positions.locate(ctx.doc_index, full)
        r = ctx.result
        self._diag(ctx.file, line, col, format_path(full), r.kind, r.name, severity, message, r)

    def _diag(self, file: str, line: int, col: int, path: str, kind: str | None,
              name: str | None, severity: Severity, message: str,
              result: DocumentResult | None = None) -> None:
        if severity == "warning" and self.options.strict:
            severity = "error"
        d = Diagnostic(file, line, col, path, kind, name, severity, message)
        self.report.diagnostics.append(d)
        if result is not None:
            result.diagnostics.append(d)

    def finish(self) -> Report:
        for key, finding in check_set(self._resources):
            self._at(self._contexts[key], finding.path, finding.severity, finding.message)
        order: dict[str, int] = {}
        for d in self.report.diagnostics:
            order.setdefault(d.file, len(order))
        self.report.diagnostics.sort(key=lambda d: (order[d.file], d.line, d.column))
        for r in self.report.results:
            r.diagnostics.sort(key=lambda d: (d.line, d.column))
        return self.report


def validate_paths(paths: list[str], options: Options | None = None,
                   stdin: BinaryIO | None = None) -> Report:
    v = Validator(options)
    v.add_paths(paths, stdin)
    return v.finish()


def validate_bytes(name: str, raw: bytes, options: Options | None = None) -> Report:
    v = Validator(options)
    v.add_bytes(name, raw)
    return v.finish()


def iter_inputs(paths: list[str], stdin: BinaryIO | None = None, *, limit: int = MAX_BYTES + 1
                ) -> Iterator[tuple[str, bytes | OSError]]:
    """(name, content or the OSError) for files, directories (recursive) and ``-``.

    At most ``limit`` bytes are read from any input, so an oversized file (or an endless
    stdin) is refused by :func:`~reconciler.schema.loader.decode` without being read whole.
    """
    stdin_used = False
    for p in expand_globs(paths):
        if isinstance(p, OSError):
            yield str(p.filename), p
            continue
        if p == "-":
            if stdin_used:
                yield "<stdin>", OSError("- (stdin) given twice: it can be read only once")
                continue
            stdin_used = True
            stream = stdin if stdin is not None else sys.stdin.buffer
            yield "<stdin>", stream.read(limit)
            continue
        if os.path.isdir(p):
            found = False
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if f.lower().endswith(SUFFIXES) and not f.startswith("."):
                        found = True
                        yield from _read(os.path.join(root, f), limit)
            if not found:
                yield p, FileNotFoundError(f"no *.yaml, *.yml or *.json files under {p}")
        else:
            yield from _read(p, limit)


_GLOB_MAGIC = frozenset("*?[")


def expand_globs(paths: list[str]) -> Iterator[str | OSError]:
    """Each path, or the sorted matches of a quoted glob (``**`` is recursive).

    A path that exists is taken literally even if it contains glob characters; a glob
    that matches nothing is an OSError (the caller reports it as an I/O error)."""
    for p in paths:
        if p == "-" or not _GLOB_MAGIC.intersection(p) or os.path.exists(p):
            yield p
            continue
        import glob

        matches = sorted(glob.glob(p, recursive=True))  # hidden entries are not matched
        if not matches:
            err = FileNotFoundError(2, f"no files match {p}")
            err.filename = p
            yield err
        yield from matches


def describe_paths(paths: list[str]) -> list[str]:
    """The files and directories ``paths`` names once globs are expanded (for polling)."""
    return [p for p in expand_globs(paths) if isinstance(p, str)]


def _read(p: str, limit: int) -> Iterator[tuple[str, bytes | OSError]]:
    """At most ``limit`` bytes of ``p``, never blocking on open: a FIFO without a writer
    is empty, ``/dev/zero`` is cut at ``limit`` (and then refused as too large)."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        yield p, exc
        return
    try:
        with os.fdopen(fd, "rb", buffering=0) as fh:
            os.set_blocking(fd, True)
            st = os.fstat(fd)
            # read(limit) would allocate `limit` bytes for every small file (10,000
            # allocations of 8 MiB cost more than parsing); regular files tell their size.
            want = min(limit, st.st_size + 1) if stat.S_ISREG(st.st_mode) else limit
            chunks: list[bytes] = []
            got = _fill(fh, chunks, 0, want)
            if got == want and want < limit:  # a regular file that grew: read on, bounded
                got = _fill(fh, chunks, got, limit)
            yield p, b"".join(chunks)
    except OSError as exc:
        yield p, exc


def _fill(fh: BinaryIO, chunks: list[bytes], got: int, upto: int) -> int:
    """Read into ``chunks`` until ``upto`` bytes in all or end of file; the new total."""
    while got < upto:
        chunk = fh.read(upto - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return got


_LIST_KINDS = frozenset(f"{k}List" for k in KINDS)


def _is_list(doc: dict[str, Any]) -> bool:
    """``kind: List`` (kubectl) or ``ExternalSmtpList``/``OAuth2ProviderList`` (the API)."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if not isinstance(doc.get("items"), list):
        return False
    return (kind == "List" and api == "v1") or (
        kind in _LIST_KINDS and isinstance(api, str)
        and api.split("/")[0] == API_GROUP)


def _dup_message(key: str) -> str:
    return (f"duplicate key {key!r}: YAML forbids it, and the later value would silently "
            "replace the earlier one")


def _io_message(exc: OSError) -> str:
    return f"cannot read: {exc.strerror or exc}"
