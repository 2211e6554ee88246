"""The input's validated models handed to the first assessment (engine.assess.HandedOver):
taken once, only by a manifest of exactly the same content; a changed manifest, a second
pass, or a manifest that is not plain JSON is validated again."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import orjson  # noqa: F401  (test extra; without it nothing is handed over: fail, not skip)
import pytest
from pydantic import ValidationError

from reconciler.engine import assess
from reconciler.engine.assess import HANDED_OVER, HandedOver, _validated
from reconciler.resources import ExternalSmtp
from reconciler.runtimes import inputs


def _manifest(name: str = "a", port: int = 587) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"host": "smtp.example.test", "port": port,
                     "authentication": "UsernamePassword", "username": "u",
                     "passwordFrom": {"env": "PW"}}}


def test_taken_once_by_the_same_content_only() -> None:
    cache = HandedOver()
    m = _manifest()
    model = ExternalSmtp.model_validate(m)
    cache.offer(m, model)
    changed = _manifest(port=2525)
    assert cache.take(changed) is None  # another content: validated by the caller
    assert cache.take({"metadata": m["metadata"], "kind": m["kind"], "spec": m["spec"],
                       "apiVersion": m["apiVersion"]}) is model  # key order is not content
    assert cache.take(m) is None  # taken means removed: a later pass validates its own
    assert len(cache) == 0


def test_a_manifest_changed_after_the_offer_is_validated_again() -> None:
    cache = HandedOver()
    m = _manifest()
    cache.offer(m, ExternalSmtp.model_validate(m))
    m["spec"]["port"] = 2526  # the same dict, changed in place
    assert cache.take(m) is None


def test_not_plain_json_is_never_cached_and_the_bound_holds() -> None:
    cache = HandedOver(limit=2)
    odd = _manifest()
    odd["metadata"]["labels"] = {"when": datetime.date(2026, 12, 1)}
    cache.offer(odd, ExternalSmtp.model_validate(_manifest()))
    assert len(cache) == 0
    for i in range(4):
        m = _manifest(name=f"r{i}")
        cache.offer(m, ExternalSmtp.model_validate(m))
    assert len(cache) == 2


def test_an_invalid_manifest_still_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assess, "HANDED_OVER", HandedOver())
    bad = _manifest()
    bad["spec"]["port"] = "not a port"
    with pytest.raises(ValidationError):
        _validated(bad)


def test_the_input_hands_its_models_to_the_first_assessment_of_the_stored_copy(
        tmp_path: Path) -> None:
    f = tmp_path / "relays.yaml"
    f.write_text("---\n".join(
        f"apiVersion: smtp.reconciler.dev/v1alpha1\nkind: ExternalSmtp\n"
        f"metadata: {{name: r{i}}}\nspec: {{host: smtp.example.test, port: 587, "
        f"authentication: UsernamePassword, username: u, passwordFrom: {{env: PW}}}}\n"
        for i in range(3)))
    try:
        loaded = inputs.load(inputs.read([str(f)]))
        assert loaded.ok and len(HANDED_OVER) == 3
        # What the store hands the engine: a copy with the same content (upsert_many
        # keeps apiVersion, kind, metadata, spec).
        stored = copy.deepcopy(loaded.manifests[0])
        first = _validated(stored)
        assert first == ExternalSmtp.model_validate(stored)
        assert len(HANDED_OVER) == 2
        again = _validated(stored)  # the next pass: validated again, equal
        assert again == first and again is not first
        inputs.load(inputs.read([str(f)]))  # a new load replaces what was left
        assert len(HANDED_OVER) == 3
    finally:
        HANDED_OVER.clear()
