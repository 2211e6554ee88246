"""One source of truth: jsonschema_rs, the Python jsonschema reference and the pydantic
models give the same verdict on every corpus document and on thousands of mutations."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.resources import parse_resource
from reconciler.schema.schemas import validator
from tests.corpus.cases import invalid_cases, mutations, reference, valid_cases


def verdicts(doc: dict[str, Any]) -> tuple[bool, bool, bool]:
    kind = doc["kind"]
    fast = validator(kind).is_valid(doc)
    ref = reference(kind).is_valid(doc)
    try:
        parse_resource(doc)
        model = True
    except ValidationError:
        model = False
    return fast, ref, model


@pytest.mark.parametrize(("case", "doc"), valid_cases(), ids=[c for c, _ in valid_cases()])
def test_valid_corpus_is_accepted_by_all(case: str, doc: dict[str, Any]) -> None:
    assert verdicts(doc) == (True, True, True)


@pytest.mark.parametrize(("case", "doc"), invalid_cases(), ids=[c for c, _ in invalid_cases()])
def test_invalid_corpus_is_rejected_by_all(case: str, doc: dict[str, Any]) -> None:
    assert verdicts(doc) == (False, False, False)


@pytest.mark.parametrize(("case", "doc"), valid_cases(), ids=[c for c, _ in valid_cases()])
def test_mutations_get_the_same_verdict_everywhere(case: str, doc: dict[str, Any]) -> None:
    checked = rejected = 0
    for label, variant in mutations(doc):
        fast, ref, model = verdicts(variant)
        assert fast == ref == model, f"{case} {label}: rs={fast} ref={ref} pydantic={model}"
        checked += 1
        rejected += not fast
    assert checked > 10 and 0 < rejected < checked  # the mutations really vary the verdict


def test_models_reject_python_field_names_in_manifests() -> None:
    doc = {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
           "metadata": {"name": "a"},
           "spec": {"host": "h", "port": 25, "authentication": "None", "start_tls": True}}
    assert verdicts(doc) == (False, False, False)
