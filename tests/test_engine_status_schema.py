"""Every status the engine writes validates against the published JSON Schema (the CRD's
status schema, which the Kubernetes API server enforces on the status subresource) and
the pydantic status models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.resources import ExternalSmtpStatus, OAuth2ProviderStatus
from reconciler.stores.local import LocalStore
from tests.support import canary
from tests.support.engine_env import Env, e2e_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "schemas" / name).read_text())
    return jsonschema.Draft202012Validator(
        {"$defs": schema["$defs"], "$ref": schema["properties"]["status"]["$ref"]})


def test_statuses_match_the_schema(e2e: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    e2e.relay.users["other@example.test"] = canary.PASSWORD
    docs = [
        e2e.smtp("ok", selected=True),
        e2e.smtp("conflict", selected=True, user="other@example.test"),
        e2e.smtp("bad", selected=True, user="nobody@example.test"),
        e2e.smtp("noenv", env="NOT_SET_ANYWHERE"),
        e2e.provider(), e2e.oauth_smtp("oauth"),
        e2e.provider("broken", secret_env="NOT_SET_EITHER"), e2e.oauth_smtp("waits", "broken"),
    ]
    e2e.cli("apply", "-f", str(e2e.write("all.yaml", *docs)))
    # a failing update of the active relay: last-known-good in status
    docs[0] = e2e.smtp("ok", selected=True, user="nobody@example.test")
    e2e.cli("apply", "-f", str(e2e.write("all.yaml", *docs)))
    smtp = _validator("externalsmtp.v1alpha1.json")
    provider = _validator("oauth2provider.v1alpha1.json")
    seen = 0
    with LocalStore(e2e.state, create=False) as store:
        for obj in store.list_sync():
            v, model = ((smtp, ExternalSmtpStatus) if obj.ref.kind == "ExternalSmtp"
                        else (provider, OAuth2ProviderStatus))
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(obj.status)]
            assert not errors, (obj.ref, errors)
            model.model_validate(obj.status)
            seen += 1
    assert seen == len(docs)


def _props(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return node


def test_typed_status_keys_agree_with_the_schema() -> None:
    """reconciler/status.py's TypedDicts name exactly the properties of the published
    status schemas (both directions), so the engine's typed status cannot drift."""
    from reconciler import status as types

    smtp = json.loads((ROOT / "schemas" / "externalsmtp.v1alpha1.json").read_text())
    prov = json.loads((ROOT / "schemas" / "oauth2provider.v1alpha1.json").read_text())
    s_status = smtp["$defs"]["ExternalSmtpStatus"]
    active = s_status["properties"]["active"]
    pairs: list[tuple[Any, dict[str, Any]]] = [
        (types.SmtpStatus, s_status),
        (types.ProviderStatus, prov["$defs"]["OAuth2ProviderStatus"]),
        (types.Condition, smtp["$defs"]["Condition"]),
        (types.ActiveRecord, active),
        (types.ActiveTls, active["properties"]["tls"]),
        (types.ActiveFailure, active["properties"]["failure"]),
        (types.LastTest, s_status["properties"]["lastTest"]),
        (types.SecretRefDict, smtp["$defs"]["SecretRef"]),
    ]
    for td, node in pairs:
        node = _props(smtp, node)
        assert set(td.__annotations__) == set(node["properties"]), td.__name__
        required = set(node.get("required", []))
        if td is types.ActiveRecord:  # total=False for building; the schema's required ones
            assert required == {"generation", "host", "port", "authentication", "tlsMode"}
        elif td is types.Condition:
            assert required <= set(td.__required_keys__)
        else:
            assert required <= set(td.__required_keys__), td.__name__
