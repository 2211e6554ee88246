"""The active record of a passed test is built without pydantic's serializer.

``status.active`` names where the password and the CA bundle come from
(``passwordFrom``, ``tls.caBundleFrom``: references, never values).  They were written with
``SecretRef.model_dump`` - two serializations per passed test, in every first pass
(issue 15).  ``SecretRef.wire`` builds the same dict; these tests check that it is the
dump, for every shape a reference can have, and count the dumps of a record.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.engine.record import passed_record
from reconciler.probe.verdict import Verdict
from reconciler.resources import ExternalSmtp, SecretRef

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=40)


@given(st.one_of(
    st.builds(lambda n, k: {"secretKeyRef": {"name": n, "key": k}}, _names, _names),
    st.builds(lambda e: {"env": e}, st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}",
                                                  fullmatch=True)),
    st.builds(lambda f: {"file": f}, st.text(min_size=1, max_size=80)),
))
def test_wire_is_the_dump(doc: dict[str, Any]) -> None:
    ref = SecretRef.model_validate(doc)
    assert ref.wire() == ref.model_dump(by_alias=True, exclude_none=True) == doc
    assert ref.wire() == ref.model_dump(by_alias=True, exclude_none=True, mode="json")


def _relay() -> ExternalSmtp:
    return ExternalSmtp.model_validate({
        "apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"host": "relay.example", "port": 587, "authentication": "UsernamePassword",
                 "startTLS": True, "username": "u@example.test",
                 "passwordFrom": {"secretKeyRef": {"name": "s", "key": "password"}},
                 "tls": {"caBundleFrom": {"file": "/etc/ca.pem"}}}})


def test_a_passed_record_dumps_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    dumps = []
    original = SecretRef.model_dump

    def counting(self: SecretRef, *args: Any, **kwargs: Any) -> dict[str, Any]:
        dumps.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SecretRef, "model_dump", counting)
    verdict = Verdict(True, "quit", "TestPassed", "ok", "", False, 0.1,
                      details={"tlsMode": "starttls", "tlsVersion": "TLSv1.3"})
    rec = passed_record(_relay(), 3, "sha256:d", verdict,
                        {"passwordFrom": "k:v1", "tls.caBundleFrom": "file:v2"}, 1_700_000_000)
    assert dumps == []
    assert rec["passwordFrom"] == {"secretKeyRef": {"name": "s", "key": "password"}}
    assert rec["tls"]["caBundleFrom"] == {"file": "/etc/ca.pem"}
    assert rec["credentialVersion"] == "k:v1" and rec["tls"]["caBundleVersion"] == "file:v2"
