"""What importing ``reconciler.resources`` costs every process, counted (issue 15).

Every ``smtpctl`` command that reads manifests, and the operator, import the models at
start-up.  Two costs are avoided without changing a model:

* default factories are Python functions, not the built-ins ``list``/``dict``: pydantic
  asks for a factory's signature, and ``inspect.signature(list)`` parses its text
  signature with ``tokenize``, whose first use compiles its patterns (~4 ms);
* the OAuth2Provider models are built at their first use (``defer_build``): a run over
  ExternalSmtp resources only never builds them.

Counted, never timed (the time is measured by ``./dev bench fleet`` and recorded in
docs/benchmarks/engine.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler import resources
from reconciler.resources import (
    ExternalSmtpStatus,
    OAuth2Provider,
    OAuth2ProviderSpec,
    OAuth2ProviderStatus,
    ObjectMeta,
    parse_resource,
)

_PROBE = """
import json, sys, tokenize
import reconciler.resources as r
# tokenize compiles its patterns once, through an lru_cache (CPython 3.11); a Python whose
# tokenize has no such cache reports None (nothing to count there).
info = getattr(getattr(tokenize, "_compile", None), "cache_info", None)
out = {"tokenize_patterns": info().currsize if info else None}
smtp = r.parse_resource({
    "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
    "metadata": {"name": "a"},
    "spec": {"host": "mail.example.com", "port": 587, "authentication": "None"}})
smtp.spec.model_dump(by_alias=True, mode="json")
out["built_after_smtp"] = sorted(
    name for name in ("OAuth2Provider", "OAuth2ProviderSpec", "OAuth2ProviderStatus")
    if getattr(r, name).__pydantic_complete__)
print(json.dumps(out))
"""


def test_importing_the_models_compiles_no_tokenizer_and_builds_no_oauth_model() -> None:
    """Fails with ``default_factory=list`` (tokenize's patterns compiled at import) or with
    the OAuth2Provider models built at import."""
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          check=True, timeout=120)
    out = json.loads(done.stdout)
    assert out["tokenize_patterns"] in (0, None) and out["built_after_smtp"] == []
    if sys.version_info[:2] == (3, 11):  # the version CI runs: the count must be there
        assert out["tokenize_patterns"] == 0


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the count is CPython 3.11's")
def test_the_tokenize_count_sees_what_it_counts() -> None:
    """The counter above is not blind: ``inspect.signature(list)`` (what pydantic did for
    ``default_factory=list``) fills tokenize's pattern cache."""
    code = ("import inspect, tokenize\n"
            "before = tokenize._compile.cache_info().currsize\n"
            "inspect.signature(list)\n"
            "print(before, tokenize._compile.cache_info().currsize)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    before, after = map(int, done.stdout.split())
    assert before == 0 and after >= 1


def test_default_factories_give_a_new_empty_value_each_time() -> None:
    a, b = ExternalSmtpStatus(), ExternalSmtpStatus()
    assert a.conditions == [] and a.warnings == [] and a.conditions is not b.conditions
    m1, m2 = ObjectMeta(name="a"), ObjectMeta(name="b")
    assert m1.labels == {} and m1.annotations == {} and m1.labels is not m2.labels
    assert resources.TestSummary().warnings == [] and OAuth2ProviderStatus().conditions == []
    dumped = ExternalSmtpStatus().model_dump(by_alias=True)
    assert dumped["conditions"] == [] and dumped["warnings"] == []


def test_a_deferred_oauth_model_validates_as_a_built_one() -> None:
    """Built at first use, the OAuth2Provider models validate, refuse and dump as before
    (the corpus in tests/test_schema_agreement.py runs every case through them)."""
    spec: dict[str, Any] = {"grantType": "ClientCredentials", "clientId": "id",
                            "clientSecretFrom": {"env": "S"},
                            "tokenEndpoint": "https://login.example.com/token",
                            "scopes": "a b,c"}
    doc = {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "OAuth2Provider",
           "metadata": {"name": "p"}, "spec": spec}
    res = parse_resource(doc)
    assert isinstance(res, OAuth2Provider) and res.spec.scopes == ["a", "b", "c"]
    assert res.spec.model_dump(by_alias=True, mode="json")["tokenEndpointAuthMethod"] \
        == "client_secret_basic"
    with pytest.raises(ValidationError, match="literal secrets are not allowed"):
        OAuth2ProviderSpec.model_validate({**spec, "clientSecret": "x"})
    schema = OAuth2Provider.model_json_schema(by_alias=True)
    assert schema["properties"]["kind"] == {"const": "OAuth2Provider", "title": "Kind",
                                            "type": "string"}
