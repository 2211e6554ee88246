"""Bounded, strict reading of YAML and JSON manifests.

The hot path is PyYAML's C loader (``yaml.CSafeLoader``): parsing in C, construction in
Python.  On top of it this module adds what a CI validator needs and PyYAML does not do:

* **duplicate keys** are reported (PyYAML silently keeps the last one, so a second
  ``port:`` would quietly override the first);
* **Kubernetes scalar typing**: timestamps stay strings (``lastTransitionTime`` must not
  turn into a ``datetime``), and tags that have no JSON equivalent (``!!binary``,
  ``!!set``, ``!!timestamp``, custom ``!Tags``) are errors rather than Python objects;
* **bounds**: files larger than ``max_bytes`` are refused before parsing, libyaml caps
  nesting at 1000 levels, and documents that use anchors are measured before anything
  walks them, so an alias bomb ("billion laughs") or a recursive alias is reported instead
  of expanding; structures are shared, never copied, while measuring;
* **encoding**: input must be UTF-8 (a UTF-8 BOM is accepted); tabs and other scanner
  errors get a hint.

Nothing here raises for bad input: every problem becomes a :class:`LoadProblem`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import yaml

from reconciler.schema.diagnostics import JsonPath

MAX_BYTES = 8 * 1024 * 1024
"""Largest file read (8 MiB: about 20,000 manifests in one stream)."""
MAX_NODES = 100_000
"""Largest expanded size of one document that uses anchors/aliases (a manifest has ~50)."""
MAX_DEPTH = 64
"""Deepest nesting accepted in a document that uses anchors (a manifest needs ~6)."""

_TS = "tag:yaml.org,2002:timestamp"
_VALUE = "tag:yaml.org,2002:value"
_NO_JSON = ("tag:yaml.org,2002:binary", "tag:yaml.org,2002:set", "tag:yaml.org,2002:omap",
            "tag:yaml.org,2002:pairs", _TS)


class LoadProblem(NamedTuple):
    """A problem found while reading; ``document`` is None for file-level problems."""

    line: int
    column: int
    message: str
    document: int | None = None
    path: JsonPath = ()


class Document:
    """One document of a stream; ``dup_marks`` are (line, column, key) of duplicate keys."""

    __slots__ = ("data", "dup_marks", "index", "node", "problems")

    def __init__(self, index: int, data: Any, node: yaml.Node | None = None) -> None:
        self.index = index
        self.data = data
        self.node = node  # the composed root (YAML only): marks for positions
        self.problems: list[LoadProblem] = []
        self.dup_marks: list[tuple[int, int, str]] = []


class LoadedFile:
    __slots__ = ("documents", "fmt", "name", "problems", "text")

    def __init__(self, name: str, text: str | None, fmt: str) -> None:
        self.name = name
        self.text = text
        self.fmt = fmt  # "yaml" | "json"
        self.documents: Iterable[Document] = ()
        self.problems: list[LoadProblem] = []


class _Loader(yaml.CSafeLoader):
    """CSafeLoader with Kubernetes-like scalar typing and duplicate-key detection."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, int, str]] = []
        self.last_node: yaml.Node | None = None

    # libyaml composes in C but asks Python to resolve every scalar's tag (a loop over
    # regular expressions) and to track path resolvers (we register none).  Manifests
    # repeat the same keys and values thousands of times, so the answer is memoised.
    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode:
            if not implicit[0]:
                return _STR  # quoted, or the non-specific "!" tag
            tag = _RESOLVED.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
                if len(_RESOLVED) < 65536:
                    _RESOLVED[value] = tag
            return tag
        return _SEQ if kind is yaml.SequenceNode else _MAP

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None

    def construct_document(self, node: yaml.Node) -> Any:
        """Build the document with :meth:`_fast`, or PyYAML's own constructor if the
        document uses anything beyond plain JSON-like YAML (merge keys, explicit tags).

        PyYAML's generic constructor is most of validate's time on a large input (a
        generator and several method calls per node); the fast path does one call per node.
        Both give identical results (the corpus and fuzz tests compare verdicts through
        this loader).
        """
        before = len(self.duplicates)
        try:
            return self._fast(node, {})
        except (_Fallback, RecursionError):
            del self.duplicates[before:]
            return super().construct_document(node)

    def _fast(self, node: yaml.Node, memo: dict[int, Any]) -> Any:
        cls = node.__class__
        if cls is yaml.ScalarNode:
            if node.tag == _STR:
                return node.value
            fn = _SCALARS.get(node.tag)
            if fn is None:
                raise _Fallback
            try:
                return fn(self, node)
            except ValueError:  # e.g. an integer beyond Python's 4,300-digit limit
                raise yaml.constructor.ConstructorError(
                    None, None, f"the number {node.value[:20]}... ({len(node.value)} "
                    "characters) cannot be read: integers are limited to 4,300 digits",
                    node.start_mark) from None
        ident = id(node)
        if ident in memo:
            return memo[ident]
        if cls is yaml.MappingNode and node.tag == _MAP:
            out: dict[Any, Any] = {}
            memo[ident] = out
            scalar = yaml.ScalarNode
            for key_node, value_node in node.value:
                if key_node.__class__ is not scalar:
                    raise _Fallback
                tag = key_node.tag
                if tag == _STR:
                    key = key_node.value
                elif tag == _MERGE:
                    raise _Fallback
                else:
                    key = self._fast(key_node, memo)
                if key in out:  # equal keys (also `yes` and `true`) would collide
                    m = key_node.start_mark
                    self.duplicates.append((m.line + 1, m.column + 1, key_node.value))
                if value_node.__class__ is scalar and value_node.tag == _STR:
                    out[key] = value_node.value  # the common case, without a call
                else:
                    out[key] = self._fast(value_node, memo)
            return out
        if cls is yaml.SequenceNode and node.tag == _SEQ:
            items: list[Any] = []
            memo[ident] = items
            for child in node.value:
                items.append(self._fast(child, memo))
            return items
        raise _Fallback

    def get_data(self) -> Any:
        """As PyYAML's, but keeps the composed root node: its marks give positions for
        free when the document turns out to have a problem (no second parse)."""
        if self.check_node():
            node = self.get_node()
            if node is not None:
                self.last_node = node
                return self.construct_document(node)
        return None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                k = (key_node.tag, key_node.value)
                if k in seen:
                    m = key_node.start_mark
                    self.duplicates.append((m.line + 1, m.column + 1, key_node.value))
                seen.add(k)
        return super().construct_mapping(node, deep=deep)


_RESOLVED: dict[str, str] = {}
"""Plain scalar -> tag, for :meth:`_Loader.resolve` (depends on the value alone)."""


class _Fallback(Exception):
    """The fast constructor met something only PyYAML's constructor handles."""


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_SCALARS: dict[str, Any] = {
    "tag:yaml.org,2002:int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": yaml.constructor.SafeConstructor.construct_yaml_float,
    "tag:yaml.org,2002:bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:null": yaml.constructor.SafeConstructor.construct_yaml_null,
}

_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_TS, _VALUE)]
    for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()
}
_Loader.yaml_constructors = {
    tag: fn for tag, fn in yaml.CSafeLoader.yaml_constructors.items() if tag not in _NO_JSON
}


def decode(
    name: str, raw: bytes, *, max_bytes: int = MAX_BYTES
) -> tuple[str | None, LoadProblem | None]:
    """Bytes -> text, or a problem (too large, not UTF-8, a NUL byte)."""
    if len(raw) > max_bytes:
        return None, LoadProblem(0, 0, f"file is larger than the limit of {max_bytes} bytes "
                                       "(--max-bytes); split it")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None, LoadProblem(1, 1, "file is UTF-16 encoded; save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, LoadProblem(line, col, f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x} "
                                            "cannot be decoded); save it as UTF-8")
    return text, None


def _yaml_problem(exc: yaml.YAMLError, document: int, text: str) -> LoadProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
    position = getattr(exc, "position", None)  # ReaderError: a character offset, no mark
    if mark is None and isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        col = position - (text.rfind("\n", 0, position) + 1) + 1
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if "constructor for the tag" in problem:
        msg = (f"YAML tag not allowed in a manifest: {problem} (use only JSON-compatible "
               "values: mappings, lists, strings, numbers, booleans, null)")
    else:
        msg = f"YAML syntax error: {context + ': ' if context else ''}{problem}"
    if mark is not None and "\t" in _line_at(text, mark.line)[: mark.column + 1]:
        msg += " (tabs are not allowed for indentation in YAML; use spaces)"
    return LoadProblem(line, col, msg + "; checking of this file stopped here", document)


def _line_at(text: str, line: int) -> str:
    lines = text.split("\n", line + 1)
    return lines[line] if line < len(lines) else ""


def load_yaml(name: str, text: str) -> LoadedFile:
    """A file whose ``documents`` are produced lazily, one at a time.

    A 10,000-document stream is validated document by document, so its constructed
    documents never all sit in memory; ``problems`` is complete once ``documents`` has
    been exhausted.
    """
    out = LoadedFile(name, text, "yaml")
    out.documents = _iter_yaml(text, out.problems)
    return out


def _iter_yaml(text: str, problems: list[LoadProblem]) -> Iterator[Document]:
    loader = _Loader(text)
    anchors = "&" in text
    index = 0
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            before = len(loader.duplicates)
            data = loader.get_data()
            doc = Document(index, data, loader.last_node)
            loader.last_node = None
            doc.dup_marks.extend(loader.duplicates[before:])
            if anchors:
                problem = measure(doc.data)
                if problem is not None:
                    doc.problems.append(LoadProblem(1, 1, problem, doc.index))
                    doc.data = None
            index += 1
            yield doc
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, index, text))
    except RecursionError:
        problems.append(LoadProblem(0, 0, "document is nested too deeply to read", index))
    except ValueError as exc:  # a value PyYAML's own constructor cannot build
        problems.append(LoadProblem(0, 0, f"a value cannot be read ({str(exc)[:80]})", index))
    finally:
        loader.dispose()


def _dup_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(name: str, text: str) -> LoadedFile:
    """A ``.json`` file holds one document (possibly a ``kind: List``)."""
    out = LoadedFile(name, text, "json")
    try:
        data = json.loads(text, object_pairs_hook=_dup_hook, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        out.problems.append(LoadProblem(0, 0, f"duplicate key {exc.key!r}", 0))
        return out
    except json.JSONDecodeError as exc:
        out.problems.append(LoadProblem(exc.lineno, exc.colno, f"JSON syntax error: {exc.msg}", 0))
        return out
    except (ValueError, RecursionError) as exc:
        msg = ("document is nested too deeply to read" if isinstance(exc, RecursionError)
               else str(exc))
        out.problems.append(LoadProblem(1, 1, f"JSON error: {msg}", 0))
        return out
    out.documents = [Document(0, data)]
    return out


def load(name: str, raw: bytes, *, max_bytes: int = MAX_BYTES) -> LoadedFile:
    fmt = "json" if name.lower().endswith(".json") else "yaml"
    text, problem = decode(name, raw, max_bytes=max_bytes)
    if text is None:
        out = LoadedFile(name, None, fmt)
        assert problem is not None
        out.problems.append(problem)
        return out
    return load_json(name, text) if fmt == "json" else load_yaml(name, text)


def measure(data: Any, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> str | None:
    """Why ``data`` is not a sane JSON-like tree, or None.

    Sizes are memoised by object identity so a shared (aliased) subtree is measured once
    but counted every time it is used: the result is the size the document *would* have
    if expanded, computed in time proportional to the number of distinct nodes.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any, depth: int) -> int:
        if depth > max_depth:
            raise _Unsane(f"document is nested deeper than {max_depth} levels")
        if isinstance(node, dict):
            items: Any = node.values()
        elif isinstance(node, list):
            items = node
        else:
            if isinstance(node, float) and not math.isfinite(node):
                raise _Unsane("document contains a NaN or infinite number (not valid JSON)")
            return 1
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in active:
            raise _Unsane("document contains a recursive alias (an anchor that refers to itself)")
        active.add(ident)
        total = 1
        for child in items:
            total += size(child, depth + 1)
            if total > max_nodes:
                raise _Unsane(f"document expands to more than {max_nodes} nodes through YAML "
                              "aliases (an alias bomb?); write it without anchors")
        active.discard(ident)
        sizes[ident] = total
        return total

    try:
        size(data, 0)
    except _Unsane as exc:
        return str(exc)
    except RecursionError:
        return "document is nested too deeply"
    return None


class _Unsane(Exception):
    pass


def unsupported_value(data: Any, max_depth: int = 200) -> tuple[JsonPath, str] | None:
    """Find a value that has no JSON equivalent (non-string key, bytes, dates...).

    Called only when the compiled validator refuses a document, so the hot path pays nothing.
    """
    stack: list[tuple[Any, JsonPath]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > max_depth:
            return path[:max_depth], f"document is nested deeper than {max_depth} levels"
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    return path, f"mapping key {k!r} is a {type(k).__name__}; keys must be strings"
                stack.append((v, (*path, k)))
        elif isinstance(node, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(node))
        elif node is None or isinstance(node, str | bool | int):
            continue
        elif isinstance(node, float):
            if not math.isfinite(node):
                return path, "NaN and infinite numbers are not valid JSON"
        else:
            return path, f"a value of type {type(node).__name__} is not allowed in a manifest"
    return None
