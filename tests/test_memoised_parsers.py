"""The parsers and formatters a pass calls for every resource are memoised; a memo must
not change a single answer (errors are raised again every time, never cached)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.durations import parse_duration
from reconciler.engine import conditions, policy, selection


def test_parse_duration_raises_every_time_and_answers_alike() -> None:
    for _ in range(3):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration("5 minutes")
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("1h30m") is parse_duration("1h30m")  # the memo answers


@pytest.mark.parametrize("epoch", [0.0, 1.9999999, 1.0000001, 1764590400.4999, -1.5,
                                   1764590400, 1764590400.0])
def test_rfc3339_is_datetimes_answer_for_the_exact_value(epoch: float) -> None:
    want = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert conditions.rfc3339(epoch) == want
    assert conditions.rfc3339(epoch) == want


def test_epoch_parsers_answer_alike_and_refuse_alike() -> None:
    for _ in range(2):
        assert policy.epoch("2026-12-01T13:00:00Z") == 1796130000.0
        assert policy.epoch("not a time") is None
        assert selection._epoch("2026-12-01T13:00:00Z") == 1796130000.0
        assert selection._epoch(None) == 0.0
