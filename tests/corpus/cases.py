"""Corpus loading, mutations and the reference validator.

Every verdict-agreement test (JSON Schema via jsonschema_rs vs the Python ``jsonschema``
reference vs pydantic vs the CRD's OpenAPI + CEL) draws its documents from here:

* ``valid.yaml`` / ``invalid.yaml`` - hand-written cases, one per document;
* the valid examples in ``manifests/examples/``;
* :func:`mutations` - every valid case with one field deleted or replaced by a value of
  a different shape, so the verdicts are compared on thousands of near-miss documents.

Explicit ``null`` values are not generated: the schema rejects them (Kubernetes prunes
them), while the pydantic models accept ``None`` as "absent" so that their own
``model_dump()`` output round-trips; that is a deliberate, documented difference.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import regress

from reconciler.schema.loader import load
from reconciler.schema.schemas import load_schema

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXAMPLES = ROOT / "manifests" / "examples"


def _docs(path: Path) -> list[dict[str, Any]]:
    loaded = load(str(path), path.read_bytes())
    docs = [d.data for d in loaded.documents if isinstance(d.data, dict)]
    assert not loaded.problems, loaded.problems
    return docs


@functools.cache
def valid_cases() -> tuple[tuple[str, dict[str, Any]], ...]:
    out = [(f"valid.yaml#{i}", d) for i, d in enumerate(_docs(HERE / "valid.yaml"))]
    for p in sorted(EXAMPLES.glob("*.yaml")):
        out += [(f"{p.name}#{i}", d) for i, d in enumerate(_docs(p))]
    return tuple(out)


@functools.cache
def invalid_cases() -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((f"invalid.yaml#{i}", d) for i, d in enumerate(_docs(HERE / "invalid.yaml")))


REPLACEMENTS: tuple[Any, ...] = (
    0, 70000, 12.5, True, "", "x", "1h", "a b", "https://t", "UsernamePassword",
    "javax.net.ssl.SSLSocketFactory", [], ["a"], {}, {"env": "X"},
)


def _paths(node: Any, prefix: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _set(doc: dict[str, Any], path: tuple[str | int, ...], value: Any, delete: bool) -> None:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def mutations(
    doc: dict[str, Any], replacements: tuple[Any, ...] = REPLACEMENTS
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Near-miss variants of ``doc`` (deletions and shape changes below spec, metadata and
    status; top-level fields are covered by the hand-written invalid cases)."""
    paths = [p for top in ("metadata", "spec", "status") if top in doc
             for p in _paths(doc[top], (top,))]
    for path in paths:
        variant = copy.deepcopy(doc)
        _set(variant, path, None, delete=True)
        yield f"del {path}", variant
        for value in replacements:
            variant = copy.deepcopy(doc)
            _set(variant, path, copy.deepcopy(value), delete=False)
            yield f"{path}={value!r}", variant


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """``pattern`` with ECMA-262 semantics (as the spec says), not Python's ``re``."""
    if validator.is_type(instance, "string") and regress.Regex(pattern).find(instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


ReferenceValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


@functools.cache
def reference(kind: str) -> Any:
    """The Python ``jsonschema`` reference implementation for ``kind``."""
    return ReferenceValidator(load_schema(kind))
