"""The report of a large apply: work per row counted, never timed (issue 15).

``sort_key`` orders every table (apply, reconcile, get): it listed the kinds of
``reconciler.cli.names.RESOURCES`` again for every row (a list and an index per row, 10,000
times for a 10,000-relay report); the kinds' places are now looked up once.  ``summarize``
counted the items once per operation word (five passes over every item); now in one pass.
Both print exactly what they printed (tests/test_apply_report_objects.py compares whole
reports byte for byte).
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import pytest

from reconciler.cli import cmd_apply, localcmd, names
from reconciler.cli.output import Result
from reconciler.stores.base import ObjectRef, StoredObject


class _Counted(tuple):  # type: ignore[type-arg]
    """RESOURCES, counting how often it is walked."""

    walks = 0

    def __iter__(self) -> Any:
        self.walks += 1
        return super().__iter__()


def _obj(kind: str, namespace: str, name: str, ready: str = "True") -> StoredObject:
    status: dict[str, Any] = {"conditions": [
        {"type": "Ready", "status": ready, "reason": "TestPassed" if ready == "True"
         else "AuthenticationFailed", "message": "m"}]}
    manifest = {"kind": kind, "metadata": {"name": name, "namespace": namespace},
                "spec": {"host": "h", "port": 25, "authentication": "None"}}
    return StoredObject(ObjectRef(kind, namespace, name), manifest, 1, "t", status, None, "v1")


def _fleet(n: int) -> list[StoredObject]:
    rnd = random.Random(15)
    kinds = ["ExternalSmtp", "OAuth2Provider", "SomethingElse"]
    return [_obj(rnd.choice(kinds), rnd.choice(["b", "a", "default"]), f"r{rnd.randrange(10**6)}")
            for _ in range(n)]


def test_rows_are_sorted_by_kind_namespace_name_with_the_kinds_listed_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    counted = _Counted(names.RESOURCES)
    monkeypatch.setattr(names, "RESOURCES", counted)
    monkeypatch.setattr(localcmd, "_RANKS", {}, raising=False)  # a new process
    objs = _fleet(500)
    got = sorted(objs, key=localcmd.sort_key)
    assert counted.walks <= 1  # was once per row
    order = [r.kind for r in names.RESOURCES]
    expected = sorted(objs, key=lambda o: (
        order.index(o.ref.kind) if o.ref.kind in order else len(order),
        o.ref.namespace, o.ref.name))
    assert [o.ref for o in got] == [o.ref for o in expected]
    assert got[-1].ref.kind == "SomethingElse"  # an unknown kind sorts last


class _Items(list):  # type: ignore[type-arg]
    """Result.items, counting the passes over it."""

    passes = 0

    def __iter__(self) -> Any:
        self.passes += 1
        return super().__iter__()


@pytest.mark.parametrize("output", ["text", "json"])
def test_the_summary_counts_the_items_in_one_pass(output: str,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    objs = sorted((_obj("ExternalSmtp", "default", f"relay-{i:04d}",
                        ready="False" if i % 7 == 0 else "True") for i in range(300)),
                  key=localcmd.sort_key)
    ops = {o.ref: ("create", "update", "unchanged", "metadata")[i % 4]
           for i, o in enumerate(objs)}
    result = Result("apply")
    items = result.items = _Items()
    args = argparse.Namespace(output=output, require_ready=False)
    code = cmd_apply.summarize(objs, {}, ops, [ObjectRef("ExternalSmtp", "default", "gone")],
                               args, result, [], command="apply")
    assert code == 1  # created or changed, and not Ready
    assert result.summary["create"] == 75 and result.summary["update"] == 75
    assert result.summary["unchanged"] == 75 and result.summary["metadata"] == 75
    assert result.summary["prune"] == 1 and result.summary["notReady"] == 43
    # one pass to count, one for the conflicts' warnings; the text report adds the rows'
    # index and the messages under the table (was five passes to count)
    assert items.passes <= (2 if output == "json" else 4)
    if output == "text":
        assert "300 resources: 75 created, 75 updated, 75 relabelled, 75 unchanged, " \
               "1 pruned" in capfd.readouterr().out
