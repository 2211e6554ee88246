"""JSON path -> line/column, computed only for documents that have problems.

Valid documents never pay for positions: the hot path constructs plain Python objects
with the C loader.  When a document has a problem, the file is composed again (libyaml
in C) into nodes that carry marks, and each problem's JSON path is looked up there.
Paths are followed as far as they exist, so a missing property points at the object that
lacks it.

The loader hands over the root node it composed for construction (:meth:`remember`),
so a YAML document with a problem costs no second parse; the validate core forgets the
node once the document is done.  Only when no node is known (JSON input, or a document
already forgotten) is the text composed again, incrementally, keeping only the documents
asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from reconciler.schema.diagnostics import JsonPath, PathPart

_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"


class _NodeLoader(yaml.CSafeLoader):
    """Composes nodes only; every scalar is a plain string (types are irrelevant to
    positions), which skips PyYAML's Python-level implicit resolvers."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode:
            return _MERGE if value == "<<" and implicit[0] else _STR
        return "tag:yaml.org,2002:seq" if kind is yaml.SequenceNode else "tag:yaml.org,2002:map"


class PositionIndex:
    """Lazily composed node trees of the documents of one file."""

    def __init__(self, text: str | None) -> None:
        self._text = text
        self._wanted: dict[int, yaml.Node | None] = {}
        self._loader: _NodeLoader | None = None
        self._next = 0
        self._done = False

    def remember(self, document: int, node: yaml.Node | None) -> None:
        """Use the node the loader already composed (no second parse)."""
        if node is not None:
            self._wanted[document] = node

    def forget(self, document: int) -> None:
        self._wanted.pop(document, None)

    def _root(self, document: int) -> yaml.Node | None:
        if document in self._wanted:
            return self._wanted[document]
        if self._text is None:
            return None
        if self._loader is None or document < self._next:
            self._restart()
        loader = self._loader
        assert loader is not None
        node: yaml.Node | None = None
        try:
            while not self._done and self._next <= document:
                if not loader.check_node():
                    self._done = True
                    break
                got = loader.get_node()
                if self._next == document:
                    node = got
                self._next += 1
        except yaml.YAMLError:
            self._done = True  # positions up to the syntax error are still useful
        self._wanted[document] = node
        return node

    def _restart(self) -> None:
        if self._loader is not None:
            self._loader.dispose()
        assert self._text is not None
        self._loader = _NodeLoader(self._text)
        self._next = 0
        self._done = False

    def locate(self, document: int, path: Sequence[PathPart]) -> tuple[int, int]:
        """1-based (line, column) of the deepest node on ``path`` in ``document``.

        A scalar value points at the value (``port: 70000`` -> the 7); a mapping or list
        value points at its key, which is where people look for the field.
        """
        node = self._root(document)
        if node is None:
            return (1, 1) if document == 0 else (0, 0)
        mark = node.start_mark
        for part in path:
            found = _child(node, part)
            if found is None:
                break
            key_node, child = found
            node = child
            mark = (child.start_mark if isinstance(child, yaml.ScalarNode) or key_node is None
                    else key_node.start_mark)
        return mark.line + 1, mark.column + 1

    def path_at(self, document: int, line: int, column: int) -> JsonPath:
        """The JSON path of the mapping key that starts at (line, column), if any."""
        root = self._root(document)
        if root is None:
            return ()
        stack: list[tuple[yaml.Node, JsonPath]] = [(root, ())]
        seen: set[int] = set()
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    kp = (*path, str(k.value))
                    if (k.start_mark.line + 1, k.start_mark.column + 1) == (line, column):
                        return kp
                    stack.append((v, kp))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend((v, (*path, i)) for i, v in enumerate(node.value))
        return ()


_INDEX: dict[int, tuple[yaml.Node, dict[str, tuple[yaml.Node, yaml.Node]]]] = {}


def _child(node: yaml.Node, part: PathPart) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        hit: tuple[yaml.Node | None, yaml.Node] | None = None
        if len(node.value) > 64:  # a hostile mapping: index it once instead of scanning
            cached = _INDEX.get(id(node))
            if cached is None or cached[0] is not node:
                keys: dict[str, tuple[yaml.Node, yaml.Node]] = {
                    k.value: (k, v) for k, v in node.value
                    if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE}
                cached = (node, keys)
                _INDEX.clear()  # one hostile mapping at a time is plenty
                _INDEX[id(node)] = cached
            found: tuple[yaml.Node | None, yaml.Node] | None = cached[1].get(part)
            if found is not None:
                return found
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == part:
                hit = (k, v)  # the last duplicate wins, as in construction
            elif k.tag == _MERGE and hit is None:
                merged = v.value if isinstance(v, yaml.SequenceNode) else [v]
                for m in merged:
                    sub = _child(m, part)
                    if sub is not None:
                        hit = sub
        return hit
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        if 0 <= part < len(node.value):
            return (None, node.value[part])
    return None
