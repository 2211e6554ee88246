"""JSON path -> line/column, computed only for documents that have problems.

Valid documents never pay for positions: the hot path constructs plain Python objects
with the C loader.  When a document has a problem, the file is composed once more
(``yaml.compose_all`` with the same C loader class) into nodes that carry marks, and each
problem's JSON path is looked up there.  Paths are followed as far as they exist, so a
missing property points at the object that lacks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import yaml

from reconciler.schema.diagnostics import JsonPath, PathPart
from reconciler.schema.loader import yaml_loader_class


class PositionIndex:
    """Lazily composed node trees of one file's documents."""

    def __init__(self, text: str | None) -> None:
        self._text = text

    @cached_property
    def _roots(self) -> list[yaml.Node | None]:
        if self._text is None:
            return []
        roots: list[yaml.Node | None] = []
        loader = yaml_loader_class()(self._text)
        try:
            while loader.check_node():
                roots.append(loader.get_node())
        except yaml.YAMLError:
            pass  # positions up to the syntax error are still useful
        finally:
            loader.dispose()
        return roots

    def locate(self, document: int, path: Sequence[PathPart]) -> tuple[int, int]:
        """1-based (line, column) of the deepest node on ``path`` in ``document``.

        A scalar value points at the value (``port: 70000`` -> the 7); a mapping or list
        value points at its key, which is where people look for the field.
        """
        roots = self._roots
        if document >= len(roots) or roots[document] is None:
            return (1, 1) if document == 0 else (0, 0)
        node = roots[document]
        assert node is not None
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
        roots = self._roots
        if document >= len(roots) or roots[document] is None:
            return ()
        stack: list[tuple[yaml.Node, JsonPath]] = [(roots[document], ())]  # type: ignore[list-item]
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


def _child(node: yaml.Node, part: PathPart) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        hit: tuple[yaml.Node | None, yaml.Node] | None = None
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == part:
                hit = (k, v)  # the last duplicate wins, as in construction
            elif k.tag == "tag:yaml.org,2002:merge" and hit is None:
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
