"""Selection: at most one active relay per scope (a namespace of one store).

The rule (deterministic, documented in docs/engine.md):

1. The relay already selected keeps it while it is requested (``spec.selected: true``)
   and Ready - or while its test is in flight, so a re-test never flaps selection.
2. Otherwise the oldest requested Ready relay wins (``creationTimestamp``, then name).
3. If no requested relay is Ready, the one already selected keeps it as long as it is
   requested and has a last-known-good generation (``status.activeGeneration``): senders
   keep using the configuration that worked; ``Ready=False`` tells the user.
4. Otherwise nothing is selected.  A relay that was never Ready is never selected.

Losers that are requested and Ready get ``Selected=False, reason=SelectionConflict``
naming the winner; requested but not Ready ones ``NotReady``; the others ``NotRequested``.
A change of winner away from a still-requested relay is a ``Failover`` event.

Writes release the old winner before marking the new one, so the store never holds two
selected relays, even if the process dies between the two writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from reconciler.engine import conditions as cond
from reconciler.stores.base import Event, ObjectRef, StatusWrite, StoredObject, StoreError

log = logging.getLogger(__name__)

KIND = "ExternalSmtp"


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    created_at: str
    requested: bool
    ready: bool
    testing: bool
    has_active: bool
    selected: bool

    @property
    def order(self) -> tuple[str, str]:
        return (self.created_at, self.name)


def candidate(obj: StoredObject) -> Candidate:
    spec = obj.manifest.get("spec") or {}
    st = obj.status
    return Candidate(
        name=obj.ref.name, created_at=obj.created_at,
        requested=bool(spec.get("selected", False)),
        ready=cond.is_true(st, cond.READY),
        testing=cond.is_true(st, cond.RECONCILING)
        and cond.attr(st, cond.RECONCILING, "reason") == "Testing",
        has_active=st.get("activeGeneration") is not None,
        selected=bool(st.get("selected", False)),
    )


def choose(cands: list[Candidate]) -> str | None:
    """The winner's name under the rule above (pure; the heart of guarantee 3)."""
    incumbents = sorted((c for c in cands if c.selected), key=lambda c: c.order)
    inc = incumbents[0] if incumbents else None
    if inc and inc.requested and inc.has_active and (inc.ready or inc.testing):
        return inc.name
    ready = sorted((c for c in cands if c.requested and c.ready), key=lambda c: c.order)
    if ready:
        return ready[0].name
    if inc and inc.requested and inc.has_active:
        return inc.name
    return None


def desired_selected(c: Candidate, winner: str | None, namespace: str) -> tuple[bool, str, str]:
    """(selected, reason, message) of the Selected condition for ``c``."""
    if winner == c.name:
        if c.ready:
            return True, "Active", "this relay is the one in use in namespace " + namespace
        return True, "LastKnownGoodRetained", (
            "this relay stays in use with its last-known-good generation; see Ready")
    if not c.requested:
        return False, "NotRequested", "spec.selected is false"
    if not c.ready:
        msg = "waiting for the connection test to pass"
        if winner:
            msg += f"; ExternalSmtp {winner!r} is in use"
        return False, "NotReady", msg
    return False, "SelectionConflict", (
        f"ExternalSmtp {winner!r} is selected in namespace {namespace} (the relay already "
        f"in use keeps it; otherwise the oldest requested Ready relay wins); set "
        f"spec.selected: false on the others")


def selected_mutator(selected: bool, reason: str, message: str, now: float) -> Any:
    def mutate(cur: StoredObject) -> StatusWrite | None:
        st = dict(cur.status)
        conds = list(st.get("conditions") or [])
        old = cond.find(conds, cond.SELECTED)
        if (old is not None and old.get("status") == ("True" if selected else "False")
                and old.get("reason") == reason and old.get("message") == message
                and bool(st.get("selected", False)) == selected
                and old.get("observedGeneration") == cur.generation):
            return None
        st["conditions"] = cond.set_condition(
            conds, cond.SELECTED, "True" if selected else "False", reason, message,
            generation=cur.generation, now=now)
        st["selected"] = selected
        st.setdefault("observedGeneration", cur.generation)
        return StatusWrite(status=st, memo=cur.memo)
    return mutate


async def select_scope(namespace: str, world: Any) -> str | None:
    """Recompute selection in ``namespace`` and write the Selected conditions.

    ``world`` is a :class:`reconciler.engine.world.World`.  Returns the winner's name.
    """
    async with world.scope_lock(namespace):
        objs: list[StoredObject] = await world.store.list(KIND, namespace)
        cands = {o.ref.name: candidate(o) for o in objs}
        winner = choose(list(cands.values()))
        now = world.clock()
        previous = sorted((c for c in cands.values() if c.selected), key=lambda c: c.order)
        # Release first, then acquire: never two selected in the store.
        ordered = sorted(cands.values(), key=lambda c: c.name == winner)
        by_name = {o.ref.name: o for o in objs}
        for c in ordered:
            sel, reason, msg = desired_selected(c, winner, namespace)
            mutate = selected_mutator(sel, reason, msg, now)
            if mutate(by_name[c.name]) is None:
                continue  # already as desired in the snapshot: no write (fast re-apply)
            try:
                await world.store.update_status(ObjectRef(KIND, namespace, c.name), mutate)
            except StoreError as exc:
                if sel or c.selected:
                    raise  # releasing or acquiring failed: stop before a second winner
                # A loser's Selected=False condition only: the selection itself holds.
                log.warning("could not write the Selected condition of %s/%s: %s",
                            namespace, c.name, exc)
        if winner is not None and (not previous or previous[0].name != winner):
            ref = ObjectRef(KIND, namespace, winner)
            old = previous[0] if previous else None
            if old is not None and old.requested:
                text = (f"ExternalSmtp {old.name!r} is not Ready; {winner!r} took over as the "
                        f"relay in use")
                await world.events.emit(Event(ref, "Warning", "Failover", text,
                                              cond.rfc3339(now)))
                await world.events.emit(Event(ObjectRef(KIND, namespace, old.name), "Warning",
                                              "Failover", text, cond.rfc3339(now)))
            else:
                await world.events.emit(Event(ref, "Normal", "Active",
                                              f"{winner!r} is now the relay in use",
                                              cond.rfc3339(now)))
        elif winner is None and previous:
            await world.events.emit(Event(
                ObjectRef(KIND, namespace, previous[0].name), "Normal", "NotRequested",
                f"no relay is in use in namespace {namespace} any more", cond.rfc3339(now)))
        return winner
