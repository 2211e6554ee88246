"""docs/engine.md agrees with the code: the lists it documents are the code's lists.

Each documented list sits between HTML comment markers; the test reads the code's
constant and the marked block and compares them both ways, so adding a key, a reason or
an untested field without its documentation (or documenting one that does not exist)
fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as hs

from reconciler import catalog
from reconciler.engine import active
from reconciler.engine.digest import UNTESTED_FIELDS
from reconciler.engine.selection import (
    SELECTED_REASONS,
    SELECTED_TRUE_REASONS,
    SELECTION_EVENTS,
    Candidate,
    decide,
    desired_selected,
)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "engine.md").read_text()


def block(marker: str) -> str:
    parts = DOC.split(f"<!-- {marker} -->")
    assert len(parts) == 3, f"docs/engine.md needs exactly two <!-- {marker} --> markers"
    return parts[1]


def test_env_keys_table_is_the_codes_list() -> None:
    documented = set(re.findall(r"`(SMTP_[A-Z0-9_]+)`", block("env-keys")))
    assert documented == set(active.ENV_KEYS)


def test_selected_reasons_are_documented_and_in_the_catalog() -> None:
    [row] = [line for line in DOC.splitlines() if line.startswith("| `Selected` |")]
    documented = set(re.findall(r"`([A-Z][A-Za-z]+)`", row)) - {"Selected", "True", "False"}
    assert documented == set(SELECTED_REASONS)
    for reason in SELECTED_REASONS:
        assert reason in catalog.CATALOG, reason


def test_selection_events_are_documented_and_in_the_catalog() -> None:
    documented = set(re.findall(r"^\| `([A-Za-z]+)` \|", block("selection-events"), re.M))
    assert documented == set(SELECTION_EVENTS)
    for reason in SELECTION_EVENTS:
        assert reason in catalog.CATALOG, reason


def test_untested_fields_are_documented() -> None:
    documented = set(re.findall(r"`([a-zA-Z]+)`", block("untested-fields")))
    assert documented == set(UNTESTED_FIELDS)


_cands = hs.lists(
    hs.builds(Candidate, name=hs.sampled_from("abcdef"), created_at=hs.sampled_from("12"),
              requested=hs.booleans(), ready=hs.booleans(), testing=hs.booleans(),
              has_active=hs.booleans(), selected=hs.booleans(),
              priority=hs.sampled_from([0, 10]), ready_since=hs.sampled_from([0.0, 50.0]),
              failing=hs.booleans(), pending=hs.booleans(),
              failback_after=hs.sampled_from([0.0, 300.0])),
    min_size=1, max_size=6, unique_by=lambda c: c.name)


@given(_cands, hs.sampled_from([0.0, 100.0, 1000.0]))
def test_every_selected_reason_the_rule_gives_is_a_documented_one(
        cands: list[Candidate], now: float) -> None:
    cands = [Candidate(c.name, c.created_at, c.requested, c.ready, c.testing,
                       c.has_active or c.ready, c.selected and i == 0, c.priority,
                       c.ready_since, c.failing and not c.ready, c.pending and not c.ready,
                       c.failback_after)
             for i, c in enumerate(cands)]
    choice = decide(cands, now)
    by_name: dict[str, Any] = {c.name: c for c in cands}
    for c in cands:
        selected, reason, _message = desired_selected(c, choice, "ns", by_name)
        assert reason in SELECTED_REASONS
        assert selected == (reason in SELECTED_TRUE_REASONS)
