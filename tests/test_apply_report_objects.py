"""The apply report is built from what the apply wrote (``apply_manifests(keep_objects=
True)``, ``LocalStore.remember``) instead of decoding every row again: it must print
exactly what the re-read printed.

Each report is produced twice from the same outcome - from the objects in hand, and from
a re-read of the store (``objects=None``, the path before this change) - and the two
outputs (text, wide, JSON envelope, exit code) must be byte-identical, on a fleet with a
relay in use, standbys, a selection conflict, failed tests, a relay not asking for
selection, an OAuth2 provider and a second namespace; then after a failover, then on an
unchanged re-apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import io
import json
from typing import Any

import pytest

from reconciler.cli import cmd_apply
from reconciler.cli.output import dumps
from reconciler.engine.world import Limits
from reconciler.runtimes.local import apply_manifests, build_world
from reconciler.stores.local import LocalStore
from tests.support.engine_env import Env, cond, e2e_fixture  # noqa: F401


def _fleet(e2e: Env, main_env: str = "SMTP_PW") -> list[dict[str, Any]]:
    return [
        e2e.provider("idp"),
        e2e.smtp("main", selected=True, priority=1, env=main_env),
        e2e.smtp("standby", selected=True, priority=5),
        e2e.smtp("twin", selected=True, priority=5),  # same priority as standby
        e2e.smtp("broken", selected=True, priority=0, env="WRONG_PW"),
        e2e.smtp("plain"),
        e2e.oauth_smtp("oauth"),
        e2e.smtp("elsewhere", selected=True, namespace="other"),
        e2e.smtp("elsewhere-bad", selected=True, namespace="other", env="WRONG_PW"),
    ]


def _snapshot(objs: list[Any]) -> list[tuple[Any, ...]]:
    # json.dumps without sort_keys: the key order of a status is part of the output
    return [(o.ref, o.generation, o.created_at, o.uid, o.version, json.dumps(o.status),
             o.manifest, o.memo) for o in objs]


def test_the_objects_in_hand_are_the_rows_as_stored(e2e: Env,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRONG_PW", "not-the-password")
    with LocalStore(e2e.state) as store:
        world = build_world(store, limits=Limits(8, 8))
        for docs in (_fleet(e2e), _fleet(e2e, main_env="WRONG_PW"), _fleet(e2e, "WRONG_PW")):
            out = asyncio.run(apply_manifests(store, world, docs, keep_objects=True))
            assert out.objects is not None
            wanted = {u.obj.ref for u in out.upserted}
            assert _snapshot(out.objects) == _snapshot(
                [o for o in store.list_sync() if o.ref in wanted])
        by_name = {o.ref.name: o for o in out.objects or []}
        # the fleet is what it claims to be: the cases the report must print are there
        assert by_name["standby"].status.get("selected")  # took over from main
        assert cond(by_name["main"].status, "Ready")["status"] == "False"
        assert cond(by_name["twin"].status, "Selected")["reason"] == "SelectionConflict"
        assert cond(by_name["plain"].status, "Selected")["reason"] == "NotRequested"
        assert by_name["elsewhere"].status.get("selected")


def test_the_report_is_byte_identical_to_the_one_from_a_re_read(
        e2e: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRONG_PW", "not-the-password")
    original = cmd_apply.report
    compared: list[tuple[bool, bool]] = []

    def both(store: Any, refs: list[Any], outcome: Any, args: Any, result: Any,
             events: list[Any]) -> int:
        assert outcome.objects is not None
        before = copy.deepcopy(result)
        old_out = io.StringIO()
        with contextlib.redirect_stdout(old_out), contextlib.redirect_stderr(old_out):
            old_code = original(store, refs, dataclasses.replace(outcome, objects=None),
                                args, before, events)
        new_out = io.StringIO()
        with contextlib.redirect_stdout(new_out), contextlib.redirect_stderr(new_out):
            code = original(store, refs, outcome, args, result, events)
        assert new_out.getvalue() == old_out.getvalue()
        assert code == old_code
        assert dumps(result.envelope(code), "json") == dumps(before.envelope(old_code), "json")
        assert dumps(result.envelope(code), "yaml") == dumps(before.envelope(old_code), "yaml")
        tested = any(r.tested for r in outcome.results)
        compared.append((tested, bool(new_out.getvalue())))
        print(new_out.getvalue(), end="")
        return code

    monkeypatch.setattr(cmd_apply, "report", both)
    first = e2e.write("fleet.yaml", *_fleet(e2e))
    code, out = e2e.cli("apply", "-f", str(first), "-o", "json")
    assert json.loads(out)["summary"]["failedTests"] == 2
    code, out = e2e.cli("apply", "-f", str(first), "-o", "wide")
    failover = e2e.write("failover.yaml", *_fleet(e2e, main_env="WRONG_PW"))
    code, out = e2e.cli("apply", "-f", str(failover))
    assert code != 0 and "main" in out and "Failover" in out
    code, out = e2e.cli("apply", "-f", str(failover))  # unchanged: nothing tested
    assert "0 tested" in out
    # tested relays (the re-read path before) and nothing tested (the results path before)
    tested = [t for t, _ in compared]
    assert len(tested) == 4 and tested[0] and tested[2] and not tested[3]


def _relay(name: str) -> dict[str, Any]:
    return {"apiVersion": "smtp.reconciler.dev/v1alpha1", "kind": "ExternalSmtp",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"host": "127.0.0.1", "port": 25, "authentication": "None"}}


def test_a_row_changed_elsewhere_is_read_again_and_a_deleted_one_is_gone(tmp_path: Any
                                                                          ) -> None:
    import sqlite3

    from reconciler.stores.base import ObjectRef, StatusWrite, StoredObject

    def mark(value: str) -> Any:
        def mutate(cur: StoredObject) -> StatusWrite:
            return StatusWrite(status={**cur.status, "mark": value}, memo=cur.memo)
        return mutate

    with LocalStore(tmp_path / "s") as store, store.remember():
        store.upsert_many([_relay("a"), _relay("b"), _relay("c")])
        for name in "abc":
            store.update_status_sync(ObjectRef("ExternalSmtp", "default", name), mark("ours"))
        store.flush()
        other = sqlite3.connect(tmp_path / "s" / "state.db")
        try:  # another writer: a new status and version for b
            with other:
                other.execute("UPDATE resources SET status=?, version=version+1 "
                              "WHERE name='b'", (json.dumps({"mark": "theirs"}),))
        finally:
            other.close()
        store.delete_sync(ObjectRef("ExternalSmtp", "default", "c"))
        objs = store.list_current_sync("ExternalSmtp", "default", as_read=True)
        assert [(o.ref.name, o.status.get("mark")) for o in objs] == [("a", "ours"),
                                                                       ("b", "theirs")]
        assert _snapshot(objs) == _snapshot(store.list_sync("ExternalSmtp", "default"))
