"""The local store reads its rows with orjson where it can and with ``json`` where orjson
does not (NaN/Infinity that ``json`` writes, lone surrogates): the values are the same
either way (integers up to 64 bits; the rows hold no larger one, see ``_loads``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reconciler.stores.base import ObjectRef, StatusWrite
from reconciler.stores.local import LocalStore, _dumps, _loads

TEXTS = [
    '{"a":1,"b":[1,2.5,"x"],"c":{"d":null,"e":true}}',
    '{"unicode":"relais \\u00e9t\\u00e9 \u2603","ctrl":"a\\nb\\t"}',
    '{"max":' + str(2**63 - 1) + ',"min":' + str(-(2**63)) + '}',
    '{"lone":"\\ud800"}',
    '[1e16,0.1,-0.0,123456789.123456789]',
    '{"dup":1,"dup":2}',
]


@pytest.mark.parametrize("text", TEXTS)
def test_loads_agrees_with_json(text: str) -> None:
    assert _loads(text) == json.loads(text)
    assert _dumps(_loads(text)) == _dumps(json.loads(text))


def test_non_finite_numbers_written_by_json_are_read() -> None:
    got = _loads(_dumps({"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")}))
    assert math.isnan(got["nan"]) and got["inf"] == math.inf and got["ninf"] == -math.inf


def test_a_status_round_trips_through_the_store(tmp_path: Path) -> None:
    status = {"big": 2**63 - 1, "nan": float("inf"), "text": "\u00e9\u2603", "n": [1.5, None]}
    ref = ObjectRef("ExternalSmtp", "default", "r")
    with LocalStore(tmp_path / "s") as store:
        store.upsert_many([{"apiVersion": "smtp.reconciler.dev/v1alpha1",
                            "kind": "ExternalSmtp", "metadata": {"name": "r"},
                            "spec": {"host": "h", "port": 25}}])
        store.update_status_sync(ref, lambda cur: StatusWrite(status=dict(status),
                                                              memo=None))
        got = store.get_sync(ref)
    assert got is not None and got.status == status


# --- writing: orjson where it can, json for what orjson refuses or cannot spell -------------

_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)

WRITTEN = [
    {"b": 1, "a": {"z": None, "y": [True, False, "x"]}, "\u00e9": "\u2603"},
    {"ctrl": "".join(chr(i) for i in range(0, 0x20)) + "\x7f\u2028\"\\/", "n": -(2**63)},
    {"conditions": [{"type": "Ready", "status": "True", "observedGeneration": 3}]},
    [], {}, "text", 0, None,
]


@pytest.mark.parametrize("data", WRITTEN)
def test_dumps_writes_what_json_writes(data: object) -> None:
    """Strings, integers, booleans, null, sorted keys: the same text, byte for byte."""
    assert _dumps(data) == _JSON.encode(data)


def test_dumps_floats_read_back_as_json_wrote_them() -> None:
    data = {"d": [1e-06, 8.6e-05, 0.1, 1e16, 123456789.123456789, -0.0, 1e300, 5e-324]}
    assert json.loads(_dumps(data)) == json.loads(_JSON.encode(data)) == data


@pytest.mark.parametrize("data", [
    {1: "a", 2: "b"},  # json turns the keys into "1", "2"; orjson refuses them
    {"big": 2**64 + 1},  # beyond 64 bits
    {"lone": "\ud800"},  # a lone surrogate
])
def test_dumps_hands_what_orjson_refuses_to_json(data: object) -> None:
    assert _dumps(data) == _JSON.encode(data)


@pytest.mark.parametrize("data", [
    {"a": None, "b": [1.0, float("nan")]},
    {"a": [None, {"c": float("inf")}]},
    ({"x": float("-inf")}, None),
])
def test_non_finite_numbers_are_written_by_json_not_as_null(data: object) -> None:
    """orjson spells NaN/Infinity ``null``: those texts are written by json instead."""
    text = _dumps(data)
    assert text == _JSON.encode(data)
    assert "NaN" in text or "Infinity" in text


def test_dumps_refuses_what_json_refuses() -> None:
    import dataclasses
    import datetime

    @dataclasses.dataclass
    class D:
        x: int = 1

    for value in (D(), datetime.datetime(2026, 1, 1), object(), b"bytes"):
        with pytest.raises(TypeError):
            _JSON.encode({"v": value})
        with pytest.raises(TypeError):
            _dumps({"v": value})
