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
