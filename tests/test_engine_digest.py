"""The plan digest is unchanged by writing its JSON with orjson (issue 15, engine CPU).

A stored digest (the local store's memo column, the operator's status.testMemo) decides
whether a pass tests again: if the digest of unchanged settings changed between versions,
the first apply or operator start after an upgrade would re-test every relay (guarantee 8:
an unchanged re-apply runs no test).  So ``canonical_bytes`` must write exactly the bytes
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` wrote - checked
here against that reference on generated resources and JSON, with a digest computed by
the previous implementation kept as a literal.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from reconciler.engine import digest
from reconciler.engine.digest import canonical, canonical_bytes, plan_digest
from reconciler.resources import KIND_OAUTH2, KIND_SMTP, ExternalSmtp, OAuth2Provider
from tests.test_fuzz_validate import STRATEGIES  # schema-shaped documents

MANY = settings(max_examples=400, suppress_health_check=[HealthCheck.filter_too_much,
                                                         HealthCheck.too_slow])


def reference_text(data: Any) -> bytes:
    """The canonical JSON as every earlier version wrote it."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def reference_digest(spec: Mapping[str, Any], versions: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    h.update(reference_text(spec))
    h.update(b"\0")
    h.update(reference_text(dict(sorted(versions.items()))))
    return "sha256:" + h.hexdigest()[:32]


def test_a_digest_stored_by_an_earlier_version_is_the_same() -> None:
    # Computed with the json-based implementation (smtpctl at bf819eb) and kept as a
    # literal: a change of the canonical form would show here, not as a fleet re-tested.
    res = ExternalSmtp.model_validate({
        "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
        "metadata": {"name": "a", "namespace": "default"},
        "spec": {"host": "smtp.example.com", "port": 587, "authentication": "UsernamePassword",
                 "startTLS": True, "username": "app@example.com",
                 "passwordFrom": {"env": "SMTP_PW"}, "selected": True,
                 "tls": {"caBundleFrom": {"file": "/etc/ssl/ca-ü.pem"}},
                 "connectionTest": {"timeoutSeconds": 12.5}}})
    spec = digest.tested_spec(res.spec.model_dump(by_alias=True, mode="json"))
    versions = {"passwordFrom": "env:h:abc", "tls.caBundleFrom": "file:1:2:h:def"}
    assert plan_digest(spec, versions) == "sha256:491d1de8cce93ee4fd8758285c9dd924"


def _model(doc: Any) -> ExternalSmtp | OAuth2Provider | None:
    if not isinstance(doc, dict):
        return None
    try:
        if doc.get("kind") == KIND_SMTP:
            return ExternalSmtp.model_validate(doc)
        if doc.get("kind") == KIND_OAUTH2:
            return OAuth2Provider.model_validate(doc)
    except (ValidationError, ValueError, TypeError):
        return None
    return None


VERSIONS = st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4)
TEXT = st.text(max_size=30)  # any code point: quotes, controls, astral planes, surrogates


def _ref() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda e: {"env": e}, st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}",
                                                      fullmatch=True)),
        st.builds(lambda f: {"file": f}, st.text(min_size=1, max_size=40)),
        st.builds(lambda n, k: {"secretKeyRef": {"name": n, "key": k}},
                  st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20)))


@st.composite
def smtp_docs(draw: st.DrawFn) -> dict[str, Any]:
    """ExternalSmtp documents that mostly validate (the schema-shaped generator of
    test_fuzz_validate mostly breaks a cross-field rule), every field of the spec drawn."""
    auth = draw(st.sampled_from(["UsernamePassword", "OAuth2", "None"]))
    spec: dict[str, Any] = {
        "host": draw(st.sampled_from(["smtp.example.com", "127.0.0.1", "::1", "relay-1.test",
                                      "xn--bcher-kva.example"])),
        "port": draw(st.integers(1, 65535)), "authentication": auth}
    for key, value in (("startTLS", st.booleans()), ("selected", st.booleans()),
                       ("allowPlaintextAuth", st.booleans()),
                       ("priority", st.integers(0, 65535)),
                       ("refreshInterval", st.sampled_from(["1h", "90m", "30s", "1h30m"])),
                       ("failbackDelay", st.sampled_from(["5m", "0s", "2h"])),
                       ("from", st.text(min_size=3, max_size=30))):
        if draw(st.booleans()):
            spec[key] = draw(value)
    if auth == "UsernamePassword":
        spec["username"] = draw(st.text(min_size=1, max_size=30))
        spec["passwordFrom"] = draw(_ref())
    elif auth == "OAuth2":
        spec["username"] = draw(st.text(min_size=1, max_size=30))
        spec["oauth2ProviderRef"] = {"name": draw(st.text(min_size=1, max_size=30))}
    if draw(st.booleans()):
        tls: dict[str, Any] = {"verify": draw(st.booleans()),
                               "minVersion": draw(st.sampled_from(["1.2", "1.3"]))}
        if draw(st.booleans()):
            tls["caBundleFrom"] = draw(_ref())
        if draw(st.booleans()):
            tls["serverName"] = draw(st.text(min_size=1, max_size=30))
        spec["tls"] = tls
    if draw(st.booleans()):
        spec["connectionTest"] = {
            "timeoutSeconds": draw(st.floats(1, 600) | st.integers(1, 600)),
            "checkRelay": draw(st.booleans()), "pipelineAuth": draw(st.booleans())}
        if draw(st.booleans()):
            spec["connectionTest"]["probeRecipient"] = draw(TEXT)
    if draw(st.booleans()):
        spec["socketFactory"] = {"fallback": draw(st.booleans())}
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": KIND_SMTP,
            "metadata": {"name": "a", "namespace": "default"}, "spec": spec}


@st.composite
def provider_docs(draw: st.DrawFn) -> dict[str, Any]:
    url = st.builds(lambda p: "https://idp.example.com/" + p, TEXT)
    spec: dict[str, Any] = {
        "grantType": "RefreshToken", "clientId": draw(st.text(min_size=1, max_size=30)),
        "tokenEndpoint": draw(url), "refreshTokenFrom": draw(_ref()),
        "scopes": draw(st.lists(st.text(max_size=20), max_size=4))}
    for key, value in (("clientSecretFrom", _ref()), ("revokeEndpoint", url),
                       ("testEndpoint", url), ("authorizationEndpoint", url)):
        if draw(st.booleans()):
            spec[key] = draw(value)
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": KIND_OAUTH2,
            "metadata": {"name": "idp", "namespace": "default"}, "spec": spec}


@MANY
@given(st.one_of(smtp_docs(), provider_docs(), STRATEGIES[KIND_SMTP]), VERSIONS)
def test_digests_of_generated_resources_match_the_reference(doc: Any,
                                                            versions: dict[str, str]) -> None:
    model = _model(doc)
    assume(model is not None)
    assert model is not None
    spec = digest.tested_spec(model.spec.model_dump(by_alias=True, mode="json"))
    assert canonical_bytes(spec) == reference_text(spec)
    assert plan_digest(spec, versions) == reference_digest(spec, versions)


def _floats() -> st.SearchStrategy[float]:
    # Every float a validated spec can hold (see test_every_float_of_a_spec_is_bounded) and
    # far beyond: exponents of both signs down to 1e-4, where json and orjson still agree.
    return st.floats(min_value=1e-4, allow_nan=False, allow_infinity=False) | \
        st.floats(max_value=-1e-4, allow_nan=False, allow_infinity=False) | st.just(0.0)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text() | st.integers(-5, 5), inner, max_size=4),
    max_leaves=25)


@MANY
@given(JSON)
def test_canonical_bytes_are_the_reference_bytes(data: Any) -> None:
    """Any text (control characters, quotes, astral planes, lone surrogates), integers of
    any size, non-string keys: the same bytes, or the same error, as before."""
    try:
        want: bytes | type[BaseException] = reference_text(data)
    except (UnicodeEncodeError, TypeError) as exc:
        want = type(exc)
    try:
        got: bytes | type[BaseException] = canonical_bytes(data)
    except (UnicodeEncodeError, TypeError) as exc:
        got = type(exc)
    assert got == want
    if isinstance(want, bytes):
        assert canonical(data).encode() == want


def _float_fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[tuple[str, Any]]:
    """(name, FieldInfo) of every float field reachable from ``model``."""
    out = []
    seen.add(model)
    for name, info in model.model_fields.items():
        stack: list[Any] = [info.annotation]
        while stack:
            t = stack.pop()
            if t is float:
                out.append((f"{model.__name__}.{name}", info))
            elif isinstance(t, type) and issubclass(t, BaseModel):
                if t not in seen:
                    out.extend(_float_fields(t, seen))
            else:
                stack.extend(typing.get_args(t))
    return out


def test_every_float_of_a_spec_is_bounded() -> None:
    """canonical_bytes relies on it: orjson and json write a float differently only under
    1e-4 in magnitude (``1e-05`` vs ``0.00001``) and when it is not finite.  A new float
    field without such a bound must come with a look at digest.py."""
    fields = []
    for kind in (ExternalSmtp, OAuth2Provider):
        spec = kind.model_fields["spec"].annotation
        assert isinstance(spec, type) and issubclass(spec, BaseModel)
        fields += _float_fields(spec, set())
    assert fields, "the spec models have no float field any more: update this test"
    for name, info in fields:
        lower = [getattr(m, "ge", None) if getattr(m, "ge", None) is not None
                 else getattr(m, "gt", None) for m in info.metadata]
        assert any(b is not None and b >= 1e-4 for b in lower), name
        assert any(getattr(m, "le", None) is not None or getattr(m, "lt", None) is not None
                   for m in info.metadata), name
