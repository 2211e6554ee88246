"""The operator's JSON log lines (reconciler/runtimes/logjson.py)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging

from reconciler.runtimes.logjson import JsonFormatter
from reconciler.secret import Secret


def _line(**extra: object) -> dict[str, object]:
    record = logging.LogRecord("smtpctl.operator", logging.INFO, __file__, 1, "reconciled %s",
                               ("x",), None)
    for k, v in extra.items():
        setattr(record, k, v)
    out = json.loads(JsonFormatter().format(record))
    assert isinstance(out, dict)
    return out


@dataclasses.dataclass
class _Ref:
    name: str

    def __str__(self) -> str:
        return f"ref/{self.name}"


def test_fields_render_as_before_and_secrets_as_their_mask() -> None:
    canary = "canary-7f3a9c"  # a planted value that must never appear
    out = _line(resource=_Ref("relay"), at=datetime.datetime(2026, 1, 2, 3, 4, 5),
                password=Secret(canary), nested={"token": Secret(canary), 7: [Secret(canary)]},
                host="relé", big=2 ** 70)
    assert out["msg"] == "reconciled x" and out["level"] == "info"
    assert out["logger"] == "smtpctl.operator"
    assert out["resource"] == "ref/relay"  # str(), not the dataclass's fields
    assert out["at"] == "2026-01-02 03:04:05"  # str(), as json.dumps(default=str) wrote it
    assert out["password"] == "******"
    assert out["nested"] == {"token": "******", "7": ["******"]}
    assert out["host"] == "relé" and out["big"] == 2 ** 70  # an int beyond 64 bits too
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    record.password = Secret(canary)
    assert canary not in JsonFormatter().format(record)
