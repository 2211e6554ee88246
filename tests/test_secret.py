"""The redacting Secret type and keyed versions (guarantee 4: secrets never leave memory)."""

from __future__ import annotations

import copy
import json
import logging
import pickle
from typing import Any

import pydantic
import pytest
import yaml

from reconciler.credentials.base import CredentialError, Resolved
from reconciler.secret import MASK, Secret, keyed_version
from tests.support import canary


def test_every_text_form_is_masked() -> None:
    s = Secret(canary.PASSWORD)
    forms = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>40}", "%s" % (s,), "{}".format(s),  # noqa: UP031, UP032
             repr([s]), repr({"k": s}), repr(Resolved(s, "v1"))]
    for text in forms:
        assert canary.PASSWORD not in text
        assert MASK in text
    canary.assert_no_canary(*forms)


def test_reveal_is_the_only_way_out() -> None:
    s = Secret(canary.PASSWORD)
    assert s.reveal() == canary.PASSWORD
    assert len(s) == len(canary.PASSWORD) and bool(s)
    assert not Secret("")


def test_equality_and_hash_by_value() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert len({Secret("a"), Secret("a")}) == 1
    assert Secret("a") != "a"  # never equal to a plain string


def test_immutable_and_not_picklable() -> None:
    s = Secret(canary.PASSWORD)
    with pytest.raises(AttributeError):
        s._value = "x"
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        copy.copy(s)


def test_json_and_yaml_never_hold_the_value() -> None:
    s = Secret(canary.PASSWORD)
    assert json.dumps({"p": s}, default=str) == json.dumps({"p": MASK})
    with pytest.raises(TypeError):
        json.dumps({"p": s})  # without a default it is an error, not the value
    dumps = [yaml.safe_dump({"p": s}), yaml.dump({"p": s}), yaml.dump([s], Dumper=yaml.CSafeDumper)]
    for dumped in dumps:
        assert MASK in dumped
    canary.assert_no_canary(*dumps)


class _Model(pydantic.BaseModel):
    password: Secret


def test_pydantic_serialises_the_mask() -> None:
    m = _Model(password=canary.PASSWORD)
    assert m.password.reveal() == canary.PASSWORD
    canary.assert_no_canary(m.model_dump_json(), json.dumps(m.model_dump(mode="json")),
                            repr(m), str(m))
    assert MASK in m.model_dump_json()


def test_pydantic_rejects_non_strings() -> None:
    with pytest.raises(pydantic.ValidationError):
        _Model(password=123)


def test_exception_messages_and_logging(caplog: pytest.LogCaptureFixture) -> None:
    s = Secret(canary.PASSWORD)
    logging.getLogger("t").warning("value %s / %r", s, s)
    err = CredentialError("SecretNotFound", f"bad {s}")
    texts: list[Any] = [caplog.text, str(err), repr(err)]
    canary.assert_no_canary(*texts)


def test_keyed_version_is_stable_keyed_and_not_the_value() -> None:
    v1 = keyed_version(canary.PASSWORD, key=b"k1")
    assert v1 == keyed_version(Secret(canary.PASSWORD), key=b"k1")
    assert v1 != keyed_version(canary.PASSWORD, key=b"k2")
    assert v1 != keyed_version(canary.PASSWORD + "x", key=b"k1")
    assert v1.startswith("h:") and len(v1) == 26
    canary.assert_no_canary(v1)


def test_keyed_version_uses_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTPCTL_VERSION_KEY", "env-key")
    a = keyed_version("v")
    assert a == keyed_version("v", key=b"env-key")
