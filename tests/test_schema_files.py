"""The schema files themselves: well-formed, self-contained, documented, and shipped."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler import resources
from reconciler.schema import schemas, semantic
from reconciler.schema.schemas import PACKAGE_SCHEMA_DIR, SCHEMA_FILES, SOURCE_SCHEMA_DIR

ROOT = Path(__file__).resolve().parent.parent
KINDS = sorted(SCHEMA_FILES)


def _load(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SOURCE_SCHEMA_DIR / SCHEMA_FILES[kind]).read_text())
    return data


@pytest.mark.parametrize("kind", KINDS)
def test_package_copy_is_identical_to_the_source(kind: str) -> None:
    src = (SOURCE_SCHEMA_DIR / SCHEMA_FILES[kind]).read_bytes()
    assert (PACKAGE_SCHEMA_DIR / SCHEMA_FILES[kind]).read_bytes() == src, (
        "run `python -m reconciler.schema.crdgen` to refresh reconciler/schemas/")


def test_package_copy_ships_in_wheels() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["reconciler"]
    assert "schemas/*.json" in patterns


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_valid_2020_12_with_id_and_examples(kind: str) -> None:
    schema = _load(kind)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith(SCHEMA_FILES[kind])
    for example in schema["examples"]:
        assert not list(jsonschema.Draft202012Validator(schema).iter_errors(example))


def test_shared_definitions_are_identical_in_both_schemas() -> None:
    a, b = (_load(k)["$defs"] for k in KINDS)
    for name in ("ObjectMeta", "SecretRef", "Condition"):
        assert a[name] == b[name], name


def _properties(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        for name, child in node.get("properties", {}).items():
            out.append((f"{path}.{name}", child))
            out += _properties(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            out += _properties(node.get(key), path)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_spec_field_has_a_description_for_editor_hovers(kind: str) -> None:
    schema = _load(kind)
    spec_fields = [(p, n) for d in schema["$defs"].values() for p, n in _properties(d, "")]
    assert spec_fields
    missing = [p for p, n in spec_fields if "description" not in n and "$ref" not in n]
    assert not missing


@pytest.mark.parametrize("kind", KINDS)
def test_every_cross_field_rule_has_a_message_and_a_cel_twin(kind: str) -> None:
    schema = _load(kind)
    found = 0
    for node in [schema, *schema["$defs"].values(),
                 *(c for _, c in _properties(schema["$defs"][f"{kind}Spec"], ""))]:
        for item in node.get("allOf", []):
            assert item["x-message"] and item["x-cel"]["rule"], item
            found += 1
        if "oneOf" in node:
            assert node["x-message"] and node["x-cel"], node
            found += 1
    assert found >= 3


def test_validate_constants_mirror_the_models() -> None:
    assert schemas.API_GROUP == resources.API_GROUP
    assert schemas.API_VERSION == resources.API_VERSION
    assert (schemas.KIND_SMTP, schemas.KIND_OAUTH2) == (resources.KIND_SMTP, resources.KIND_OAUTH2)
    assert semantic.IMPLICIT_TLS_CLASS == resources.IMPLICIT_TLS_CLASS


@pytest.mark.parametrize("kind", KINDS)
def test_literal_secret_fields_match_the_models(kind: str) -> None:
    from reconciler.schema.messages import LITERAL_SECRET_FIELDS

    assert LITERAL_SECRET_FIELDS == resources._LITERAL_SECRET_FIELDS
    spec = _load(kind)["$defs"][f"{kind}Spec"]
    assert spec["additionalProperties"] is False
    assert not set(LITERAL_SECRET_FIELDS) & set(spec["properties"])
