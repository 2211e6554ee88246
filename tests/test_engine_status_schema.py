"""Every status the engine writes validates against the published JSON Schema (the CRD's
status schema, which the Kubernetes API server enforces on the status subresource) and
the pydantic status models."""

from __future__ import annotations

import json
from pathlib import Path

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
