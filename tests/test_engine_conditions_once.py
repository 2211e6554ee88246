"""A verdict's conditions are one new list (``conditions.set_conditions``).

A committed verdict sets Ready, removes or sets Stalled and Reconciling, and sets Selected
for a relay that does not ask to be selected: four calls that each copied and (two of
them) sorted the list, in every first pass (issue 15).  ``set_conditions`` makes them one
list; it must give exactly what the calls one after another gave - also for a status
holding conditions of other types or the same type twice.  Counts and contents only.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.engine import conditions as cond
from reconciler.engine.reconcile import _commit_status
from reconciler.probe.verdict import Verdict
from reconciler.stores.base import ObjectRef, StoredObject

TYPES = [cond.READY, cond.STALLED, cond.RECONCILING, cond.SELECTED, "Other", "Custom"]
_status = st.sampled_from(["True", "False", "Unknown"])
_condition = st.fixed_dictionaries({
    "type": st.sampled_from(TYPES), "status": _status, "reason": st.sampled_from(["A", "B"]),
    "message": st.text(max_size=20), "lastTransitionTime": st.sampled_from(["t0", "t1"]),
    "observedGeneration": st.integers(1, 3)})
_change = st.none() | st.tuples(_status, st.sampled_from(["R1", "R2"]), st.text(max_size=20))


@given(st.lists(_condition, max_size=7),
       st.dictionaries(st.sampled_from(TYPES), _change, max_size=4),
       st.permutations(range(4)))
def test_one_list_is_the_calls_one_after_another(conditions: list[dict[str, Any]],
                                                 changes: dict[str, Any],
                                                 order: list[int]) -> None:
    items = list(changes.items())
    items = [items[i] for i in order if i < len(items)]
    expected: list[Any] = list(conditions)
    for ctype, change in items:
        expected = (cond.remove_condition(expected, ctype) if change is None else
                    cond.set_condition(expected, ctype, *change, generation=4, now=1e9))
    got = cond.set_conditions(conditions, dict(items), generation=4, now=1e9)
    assert got == expected


def _obj(status: dict[str, Any], selected: bool = False) -> StoredObject:
    return StoredObject(ObjectRef("ExternalSmtp", "default", "r"),
                        {"kind": "ExternalSmtp", "spec": {"selected": selected}}, 2,
                        "2026-01-01T00:00:00Z", status, None, "1")


@pytest.mark.parametrize("passed", [True, False])
def test_a_verdict_builds_one_condition_list(passed: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    for name in ("set_condition", "remove_condition", "set_conditions"):
        real = getattr(cond, name)

        def counting(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            built.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(cond, name, counting)
    before = {"conditions": [
        {"type": "Reconciling", "status": "True", "reason": "Testing", "message": "m",
         "lastTransitionTime": "t0", "observedGeneration": 1},
        {"type": "Ready", "status": "Unknown", "reason": "Testing", "message": "m",
         "lastTransitionTime": "t0", "observedGeneration": 1}]}
    verdict = Verdict(passed, "quit" if passed else "auth",
                      "TestPassed" if passed else "AuthenticationFailed",
                      "ok" if passed else "535 no", "", False, 0.2)
    record: Any = {"generation": 2, "host": "h", "port": 25, "tlsMode": "none",
                   "authentication": "None", "digest": "d"} if passed else None
    st_ = _commit_status(_obj(before), verdict, 2, "d", 1_700_000_000.0, record)
    assert built == ["set_conditions"]  # was 4 lists: Ready, Stalled, Reconciling, Selected
    assert [c["type"] for c in st_["conditions"]] == (
        ["Ready", "Selected"] if passed else ["Ready", "Stalled", "Selected"])  # 535: stalled
    assert st_["conditions"][0]["status"] == ("True" if passed else "False")
    assert st_["selected"] is False and list(st_)[-1] == "selected"
