"""Fuzzing: whatever the input, validate produces diagnostics, never a traceback; and on
schema-shaped documents all validators agree.

Schema-shaped documents come from two generators:

* hypothesis-jsonschema.  Its newest release (0.23.1) calls Hypothesis' internal
  ``many.more()``, which Hypothesis removed in 6.170.10, so the two are pinned as a pair
  that works together (``constraints.txt``; ``pyproject.toml`` caps Hypothesis below
  6.170.10) and :func:`test_hypothesis_jsonschema_contract` names the break if an upgrade
  brings it back.  It is fed the schemas *without* their cross-field rules (``allOf``/``oneOf``):
  with them it generates by rejection and needs seconds per document; without them about
  half of its documents break a cross-field rule - exactly where verdicts could diverge;
  the verdicts are always computed with the full schema.
* :func:`from_schema` below, a small generator of our own driven by the same schemas
  (types, enums/consts, ranges, lengths, patterns via ``st.from_regex``, required and
  optional properties, maps and lists): an order of magnitude faster, so it carries the
  bulk of the examples.
"""

from __future__ import annotations

import json
from typing import Any

import hypothesis_jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reconciler.resources import parse_resource
from reconciler.schema.schemas import KIND_OAUTH2, KIND_SMTP, load_schema, validator
from reconciler.schema.validate import Options, validate_bytes
from tests.corpus.cases import reference

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
SLOW = settings(max_examples=3000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

JSON_SCALARS = st.none() | st.booleans() | st.integers(-10**6, 10**6) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)


def _deref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def from_schema(root: dict[str, Any], node: dict[str, Any] | None = None) -> Any:
    node = _deref(root, root if node is None else node)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "anyOf" in node and "type" not in node:
        return st.one_of([from_schema(root, {**{k: v for k, v in node.items() if k != "anyOf"},
                                              **alt}) for alt in node["anyOf"]])
    t = node.get("type", "object")
    if t == "string":
        lo, hi = node.get("minLength", 0), min(node.get("maxLength", 40), 80)
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True).filter(
                lambda s: lo <= len(s) <= node.get("maxLength", 10**6))
        return st.text(min_size=lo, max_size=max(lo, hi))
    if t == "integer":
        return st.integers(node.get("minimum", -(2**31)), node.get("maximum", 2**31))
    if t == "number":
        lo, hi = node.get("minimum", -1e6), node.get("maximum", 1e6)
        return st.integers(int(lo), int(hi)) | st.floats(lo, hi, allow_nan=False)
    if t == "boolean":
        return st.booleans()
    if t == "array":
        return st.lists(from_schema(root, node.get("items", {"type": "string"})), max_size=3)
    props = node.get("properties", {})
    required = {k: from_schema(root, v) for k, v in props.items() if k in node.get("required", [])}
    optional = {k: from_schema(root, v) for k, v in props.items() if k not in required}
    base = st.fixed_dictionaries(required, optional=optional)
    extra = node.get("additionalProperties")
    if not props and isinstance(extra, dict):
        return st.dictionaries(st.text(min_size=1, max_size=10), from_schema(root, extra),
                               max_size=3)
    return base


STRATEGIES = {k: from_schema(load_schema(k)) for k in (KIND_SMTP, KIND_OAUTH2)}
DOCS = STRATEGIES[KIND_SMTP] | STRATEGIES[KIND_OAUTH2]


def _without_cross_field_rules(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_cross_field_rules(v) for k, v in node.items()
                if k not in ("allOf", "oneOf", "examples")}
    if isinstance(node, list):
        return [_without_cross_field_rules(v) for v in node]
    return node


HJS_DOCS = st.one_of([hypothesis_jsonschema.from_schema(
    _without_cross_field_rules(load_schema(k))) for k in (KIND_SMTP, KIND_OAUTH2)])


def test_hypothesis_jsonschema_contract() -> None:
    """hypothesis-jsonschema 0.23.1 drives Hypothesis' private ``many`` helper through
    ``more()``; Hypothesis 6.170.10 replaced that with iteration.  This names the break
    (instead of every hypothesis-jsonschema test failing deep inside Hypothesis) when the
    pair is upgraded apart.  Against Hypothesis 6.170.17 it fails: ``many`` has no ``more``.
    """
    from hypothesis.internal.conjecture import utils as conjecture_utils

    assert callable(getattr(conjecture_utils.many, "more", None)), (
        "this Hypothesis is incompatible with hypothesis-jsonschema (many.more() is gone): "
        "pin a compatible pair in constraints.txt")


def _verdicts(doc: dict[str, Any]) -> tuple[bool, bool, bool]:
    kind = doc["kind"]
    try:
        parse_resource(doc)
        model = True
    except ValidationError:
        model = False
    return validator(kind).is_valid(doc), reference(kind).is_valid(doc), model


def _no_traceback(raw: bytes, name: str = "fuzz.yaml", **opts: Any) -> None:
    report = validate_bytes(name, raw, Options(**opts))
    for d in report.diagnostics:
        assert d.message and d.line >= 0 and d.column >= 0
        assert d.severity in ("error", "warning")
    assert report.valid == (not any(d.severity == "error" for d in report.diagnostics))


def _schema_shaped(doc: dict[str, Any]) -> None:
    fast, ref, model = _verdicts(doc)
    assert fast == ref == model, (fast, ref, model, doc)
    for raw, name in ((json.dumps(doc).encode(), "doc.json"),
                      (yaml.safe_dump(doc, allow_unicode=True).encode(), "doc.yaml")):
        report = validate_bytes(name, raw, Options(allow_status=True))
        schema_errors = [d for d in report.diagnostics
                         if d.severity == "error" and "contradicts implicit TLS" not in d.message]
        assert (not schema_errors) == fast, (name, schema_errors, doc)


@FAST
@given(DOCS)
def test_schema_shaped_documents_agree_everywhere(doc: dict[str, Any]) -> None:
    _schema_shaped(doc)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(HJS_DOCS)
def test_hypothesis_jsonschema_documents_agree_everywhere(doc: dict[str, Any]) -> None:
    _schema_shaped(doc)


@pytest.mark.slow
@pytest.mark.timeout(900)  # 600 rejection-heavy examples: ~2 min on a loaded 2-core machine
@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(HJS_DOCS)
def test_hypothesis_jsonschema_documents_agree_everywhere_long(doc: dict[str, Any]) -> None:
    _schema_shaped(doc)


@pytest.mark.slow
@pytest.mark.timeout(900)
@SLOW
@given(DOCS)
def test_schema_shaped_documents_agree_everywhere_long(doc: dict[str, Any]) -> None:
    _schema_shaped(doc)


@FAST
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    _no_traceback(raw)
    _no_traceback(raw, name="fuzz.json")


YAMLISH = st.lists(st.sampled_from([*"ab:- \n\t{}[],&*!|>'\"#%@`?~=0.\\<",
                                   "kind", "spec", "---", "<<", "!!", "\x00", "é", "\n  ",
                                    "apiVersion: smtp.reconciler.dev/v1alpha1\n"]),
                   max_size=120).map("".join)


@FAST
@given(YAMLISH)
def test_yaml_shaped_noise_never_crashes(text: str) -> None:
    _no_traceback(text.encode("utf-8", "surrogatepass"))


@FAST
@given(STRATEGIES[KIND_SMTP], st.lists(st.tuples(st.sampled_from(
    ["spec", "metadata", "status", "apiVersion", "kind"]), JSON_VALUES), max_size=3))
def test_documents_with_arbitrary_subtrees_never_crash(
        doc: dict[str, Any], changes: list[tuple[str, Any]]) -> None:
    for key, value in changes:
        doc[key] = value
    raw = yaml.safe_dump(doc).encode()
    _no_traceback(raw)
    _no_traceback(raw, strict=True, allow_status=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
@SLOW
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_long(raw: bytes) -> None:
    _no_traceback(raw)
