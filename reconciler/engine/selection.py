"""Selection: at most one relay in use per scope (a namespace of one store), with standbys.

The relays of a namespace that ask for it (``spec.selected: true``) are ranked by
``(spec.priority, creationTimestamp, name)`` - the lowest ``priority`` is preferred, like
an MX preference.  The rule (deterministic, documented in docs/engine.md):

1. **Keep a healthy incumbent.** The relay in use keeps selection while it is requested
   and Ready - or while a re-test of it is in flight and it is not failing (a re-test never
   flaps selection) - unless rule 2 applies.
2. **Fail back with hysteresis.** A Ready relay with a strictly lower ``priority`` than the
   incumbent takes selection back once it has been Ready for its ``spec.failbackDelay``
   (default 5m; ``Selected=False, reason=FailbackPending`` until then).  Equal priorities
   never preempt each other.
3. **Fail over.** Otherwise the best-ranked requested Ready relay wins - when the relay in
   use failed its (re-)verification, a Ready standby takes over at once (``Failover``).
4. **No first-pass race.** When nothing is selected yet, a relay is not chosen while a
   better-ranked requested relay is still waiting for its *first* test verdict; the choice
   is made when that verdict is in (so it never depends on which test finishes first).
5. **Keep the last-known-good.** If no requested relay is Ready, the incumbent keeps
   selection while it is requested and has a last-known-good generation:
   ``LastKnownGoodRetained`` when a newer generation failed and the one in use was not
   shown to fail, ``ActiveRelayFailing`` when the configuration in use itself failed its
   re-verification (and no standby is Ready).
6. Otherwise nothing is selected.  A relay that never passed a test is never selected.

Writes release the old winner before marking the new one, so the store never holds two
selected relays, even if the process dies between the two writes.

One run serves every pass waiting for the scope (:func:`select_scope_with`: requests are
queued, the first caller to hold the scope lock serves them all), and while the store
shares objects a run looks only at the relays written since the previous one
(:class:`_Index`): a fleet of N requested relays costs O(N) selection work, not O(N^2).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
import operator
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.engine import conditions as cond
from reconciler.engine.policy import epoch
from reconciler.resources import format_duration, parse_duration
from reconciler.stores.base import Event, ObjectRef, StatusWrite, StoredObject, StoreError

log = logging.getLogger(__name__)

KIND = "ExternalSmtp"
DEFAULT_FAILBACK = 300.0

# The reasons of the Selected condition (docs/engine.md lists them; a test compares).
SELECTED_TRUE_REASONS = ("Active", "LastKnownGoodRetained", "ActiveRelayFailing")
SELECTED_FALSE_REASONS = ("NotRequested", "NotReady", "Standby", "FailbackPending",
                          "SelectionConflict")
SELECTED_REASONS = SELECTED_TRUE_REASONS + SELECTED_FALSE_REASONS
# The Events select_scope records when the relay in use changes (docs/engine.md).
SELECTION_EVENTS = ("Active", "Failover", "Failback", "NoRelayInUse")


@dataclass(frozen=True, slots=True)
class Candidate:
    """What selection needs to know about one relay of the scope."""

    name: str
    created_at: str
    requested: bool
    ready: bool
    testing: bool
    has_active: bool
    selected: bool
    priority: int = 0
    ready_since: float = 0.0  # epoch of Ready's lastTransitionTime (when ready)
    failing: bool = False  # the active record's own re-verification failed
    pending: bool = False  # no test verdict yet at all (first test not finished)
    failback_after: float = DEFAULT_FAILBACK

    @property
    def order(self) -> tuple[int, str, str]:
        return (self.priority, self.created_at, self.name)


@dataclass(frozen=True, slots=True)
class Choice:
    """The outcome of :func:`choose`: the winner (or None), and the relays waiting for
    their fail-back delay (name -> epoch when they may take over)."""

    winner: str | None
    failback_at: dict[str, float] = field(default_factory=dict)
    waiting_for: str | None = None  # rule 4: a better-ranked relay's first verdict


def _epoch(rfc3339: Any) -> float:
    """A lastTransitionTime in epoch seconds, 0 if it is not a time (memoised by
    :func:`reconciler.engine.policy.epoch`: every selection pass reads every candidate's)."""
    seconds = epoch(str(rfc3339))
    return 0.0 if seconds is None else seconds


def candidate(obj: StoredObject) -> Candidate:
    spec = obj.manifest.get("spec") or {}
    st = obj.status
    ready_cond = cond.of(st, cond.READY)
    ready = ready_cond is not None and ready_cond.get("status") == "True"
    try:
        failback = parse_duration(str(spec.get("failbackDelay", "5m"))).total_seconds()
    except ValueError:
        failback = DEFAULT_FAILBACK
    priority = spec.get("priority", 0)
    active = st.get("active") or {}
    return Candidate(
        name=obj.ref.name, created_at=obj.created_at,
        requested=bool(spec.get("selected", False)),
        ready=ready,
        testing=cond.attr(st, cond.RECONCILING, "reason") == "Testing",
        has_active=st.get("activeGeneration") is not None,
        selected=bool(st.get("selected", False)),
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool)
        else 0,
        ready_since=_epoch(ready_cond.get("lastTransitionTime")) if ready_cond and ready
        else 0.0,
        failing=active.get("health") == "Failing",
        pending=st.get("activeGeneration") is None and not st.get("lastTest")
        and (ready_cond is None or ready_cond.get("reason") in ("Testing", "Pending")),
        failback_after=failback,
    )


# Candidate.order as a C-level key (sorting a namespace's candidates runs on every pass).
_ORDER = operator.attrgetter("priority", "created_at", "name")


def choose(cands: list[Candidate], now: float = 0.0) -> str | None:
    """The winner's name under the rule above at ``now`` (epoch seconds; the default 0
    means no fail-back delay has passed yet)."""
    return decide(cands, now).winner


def decide(cands: list[Candidate], now: float = 0.0) -> Choice:
    """The winner under the rule above, and who waits for what (pure; the heart of
    guarantee 3)."""
    incumbents = sorted((c for c in cands if c.selected), key=_ORDER)
    inc = incumbents[0] if incumbents else None
    eligible = sorted((c for c in cands if c.requested and c.ready), key=_ORDER)
    best = eligible[0] if eligible else None
    if inc is not None and inc.requested and inc.has_active and (
            inc.ready or (inc.testing and not inc.failing)):
        better = [c for c in eligible if c.priority < inc.priority]
        if better:
            b = better[0]
            at = b.ready_since + b.failback_after
            if now >= at:
                return Choice(b.name)  # rule 2: fail back
            return Choice(inc.name, {c.name: c.ready_since + c.failback_after
                                     for c in better})
        return Choice(inc.name)  # rule 1
    if best is not None:
        if inc is None:
            waiting = [c for c in cands if c.requested and c.pending and c.order < best.order]
            if waiting:  # rule 4
                return Choice(None, waiting_for=min(waiting, key=lambda c: c.order).name)
        return Choice(best.name)  # rule 3
    if inc is not None and inc.requested and inc.has_active:
        return Choice(inc.name)  # rule 5
    return Choice(None)


def desired_selected(c: Candidate, choice: Choice, namespace: str,
                     cands: dict[str, Candidate]) -> tuple[bool, str, str]:
    """(selected, reason, message) of the Selected condition for ``c``."""
    winner = choice.winner
    w = cands.get(winner) if winner else None
    if winner == c.name:
        if c.ready:
            return True, "Active", "this relay is the one in use in namespace " + namespace
        if c.failing:
            return True, "ActiveRelayFailing", (
                "this relay is in use and its configuration failed its re-verification "
                "(see Ready); no standby is Ready to take over")
        return True, "LastKnownGoodRetained", (
            "this relay stays in use with its last-known-good generation; see Ready")
    if not c.requested:
        return False, "NotRequested", "spec.selected is false"
    if not c.ready:
        msg = "waiting for the connection test to pass"
        if winner:
            msg += f"; ExternalSmtp {winner!r} is in use"
        return False, "NotReady", msg
    if c.name in choice.failback_at:
        at = choice.failback_at[c.name]
        return False, "FailbackPending", (
            f"Ready, and preferred to {winner!r} (priority {c.priority} < "
            f"{w.priority if w else '?'}): takes selection back at {cond.rfc3339(at)} if it "
            f"stays Ready (spec.failbackDelay {format_duration(c.failback_after)})")
    if winner is None:
        return False, "Standby", (
            f"Ready; waiting for the first test of {choice.waiting_for!r}, which is "
            f"preferred, before a relay is chosen" if choice.waiting_for else "Ready")
    if w is not None and w.priority == c.priority:
        return False, "SelectionConflict", (
            f"ExternalSmtp {winner!r} is selected in namespace {namespace} with the same "
            f"priority ({c.priority}): the relay already in use keeps it, otherwise the older "
            f"one wins; give the standby a higher spec.priority (lower values are preferred)")
    return False, "Standby", (
        f"standby for ExternalSmtp {winner!r} (priority {c.priority}, in use: "
        f"{w.priority if w else '?'}): takes over if it fails its test")


def selected_mutator(selected: bool, reason: str, message: str, now: float) -> Any:
    def mutate(cur: StoredObject) -> StatusWrite | None:
        if _settled(cur, selected, reason, message):
            return None
        st = dict(cur.status)
        conds = list(st.get("conditions") or [])
        st["conditions"] = cond.set_condition(
            conds, cond.SELECTED, "True" if selected else "False", reason, message,
            generation=cur.generation, now=now)
        st["selected"] = selected
        st.setdefault("observedGeneration", cur.generation)
        return StatusWrite(status=st, memo=cur.memo)
    return mutate


def _settled(obj: StoredObject, selected: bool, reason: str, message: str) -> bool:
    """True when ``obj`` already shows this Selected condition (no write needed):
    :func:`selected_mutator`'s test, also used by selection's memo."""
    st = obj.status
    old = cond.find(st.get("conditions") or [], cond.SELECTED)
    return (old is not None and old.get("status") == ("True" if selected else "False")
            and old.get("reason") == reason and old.get("message") == message
            and bool(st.get("selected", False)) == selected
            and old.get("observedGeneration") == obj.generation)


class _Memo:
    """What selection derived from one stored object: its candidate, and the Selected
    condition it was last found to show already (``key``: the choice it was desired
    under).  Kept per object *identity* (the memo holds the object, so the identity is
    never reused), only for a store that hands an unchanged object out again as the same
    Python object (``shares_objects``, the local store inside ``remember()``).  Objects
    are read-only (the Store protocol), so the same object derives the same candidate."""

    __slots__ = ("cand", "desired", "key", "obj", "settled")

    def __init__(self, obj: StoredObject, cand: Candidate | None = None) -> None:
        """``cand``: ``candidate(obj)``, when the caller has built it already."""
        self.obj = obj
        # None for a bystander (neither asks for selection nor holds it: no rule reads it
        # and no Selected write is made for it here); built when something asks (full()).
        self.cand: Candidate | None = (
            None if _bystander(obj) else cand if cand is not None else candidate(obj))
        self.key: tuple[Any, ...] | None = None
        self.desired: tuple[bool, str, str] = (False, "", "")
        self.settled = False

    def full(self) -> Candidate:
        """The candidate, built now for a bystander (whose candidate is neither requested
        nor selected: the index lists it nowhere either way)."""
        if self.cand is None:
            self.cand = candidate(self.obj)
        return self.cand


def _bystander(obj: StoredObject) -> bool:
    """Neither asks for selection (``spec.selected``) nor holds it (``status.selected``):
    ``decide`` never picks it nor reads it, and selection writes nothing for it (its own
    pass writes its ``NotRequested`` condition).  Most relays of a fleet are bystanders;
    building their candidates was ~10 % of a first pass's engine CPU."""
    return not (obj.manifest.get("spec") or {}).get("selected", False) \
        and not obj.status.get("selected", False)


_Order = tuple[int, str, str]


class _Index:
    """Selection's view of one namespace of one store, kept from run to run while the
    store shares objects: the memo of every relay, and the relays that asked for selection
    and are Ready (``eligible``), that asked and wait for their first verdict (``pending``)
    and that are selected (``held``), each sorted by rank.  With a store that can name the
    objects written since the previous run (``changes_since``), a run looks at those only
    instead of listing the namespace: its cost follows the batch, not the namespace."""

    __slots__ = ("dirty", "eligible", "held", "key", "memos", "pending", "token", "unsettled")

    def __init__(self) -> None:
        self.memos: dict[str, _Memo] = {}
        self.eligible: list[_Order] = []
        self.pending: list[_Order] = []
        self.held: list[_Order] = []
        self.token: object | None = None  # the store's change token (None: list)
        self.key: tuple[Any, ...] | None = None  # the choice of the previous run
        self.dirty: set[str] = set()  # read again at the next run (previewed verdicts)
        self.unsettled: set[str] = set()  # a Selected write that failed: tried again

    def rebuild(self, objs: list[StoredObject]) -> None:
        old = self.memos
        self.__init__()  # type: ignore[misc]
        for o in objs:
            m = old.get(o.ref.name)
            self.put(m if m is not None and m.obj is o else _Memo(o))

    def put(self, m: _Memo) -> None:
        name = m.obj.ref.name
        self.drop(name)
        self.memos[name] = m
        c = m.cand
        if c is None:  # a bystander is in none of the lists
            return
        o = (c.priority, c.created_at, c.name)
        if c.requested and c.ready:
            bisect.insort(self.eligible, o)
        if c.requested and c.pending:
            bisect.insort(self.pending, o)
        if c.selected:
            bisect.insort(self.held, o)

    def drop(self, name: str) -> None:
        m = self.memos.pop(name, None)
        if m is None or m.cand is None:
            return
        c = m.cand
        o = (c.priority, c.created_at, c.name)
        for lst in (self.eligible, self.pending, self.held):
            i = bisect.bisect_left(lst, o)
            if i < len(lst) and lst[i] == o:
                del lst[i]

    def deciding(self) -> list[Candidate]:
        """The candidates :func:`decide` reads: it gives the same choice from these as
        from the whole namespace (the selected relays, the best Ready one and every Ready
        one ranked above the relay in use, the best one still waiting for its first
        verdict)."""
        names = [o[2] for o in self.held]
        if self.eligible:
            names.append(self.eligible[0][2])
            if self.held:
                top = self.held[0][0]  # the incumbent's priority
                names.extend(o[2] for o in itertools.takewhile(
                    lambda o: o[0] < top, self.eligible))
        if self.pending:
            names.append(self.pending[0][2])
        return [self.memos[n].full() for n in dict.fromkeys(names)]


# store -> namespace -> index (dropped with the store).
_MEMOS: weakref.WeakKeyDictionary[Any, dict[str, _Index]] = weakref.WeakKeyDictionary()


def _memos_of(store: Any, namespace: str) -> _Index | None:
    try:
        if not getattr(store, "shares_objects", False):
            _MEMOS.pop(store, None)  # e.g. between two applies of `apply --watch`
            return None
        by_ns = _MEMOS.setdefault(store, {})
    except TypeError:  # not weak-referenceable: no memo
        return None
    idx = by_ns.get(namespace)
    if idx is None:
        idx = by_ns[namespace] = _Index()
    return idx


async def select_scope(namespace: str, world: Any) -> str | None:
    """Recompute selection in ``namespace`` and write the Selected conditions.

    ``world`` is a :class:`reconciler.engine.world.World`.  Returns the winner's name.
    """
    winner, _ = await select_scope_with(namespace, world)
    return winner


@dataclass(frozen=True, slots=True)
class OwnWrite:
    """A pass's own status write (its verdict), made by :func:`select_scope_with` together
    with the relay's Selected condition: one write instead of two.  ``after`` runs right
    after that write (with the object as written), still under the scope lock."""

    name: str
    mutate: Callable[[StoredObject], StatusWrite | None]
    after: Callable[[StoredObject], Awaitable[object]] | None = None


def _combined(own: Callable[[StoredObject], StatusWrite | None],
              selected: Callable[[StoredObject], StatusWrite | None] | None,
              ) -> Callable[[StoredObject], StatusWrite | None]:
    """The verdict's write, then the Selected condition on top of it (pure: a store may
    call it again on a fresh object after a conflict)."""
    def mutate(cur: StoredObject) -> StatusWrite | None:
        first = own(cur)
        if selected is None:
            return first
        mid = cur if first is None else replace(cur, status=first.status, memo=first.memo)
        second = selected(mid)
        if second is None:
            return first
        return StatusWrite(status=second.status, memo=mid.memo)
    return mutate


async def select_scope_with(namespace: str, world: Any, own: OwnWrite | None = None,
                            ) -> tuple[str | None, StoredObject | None]:
    """:func:`select_scope`, and with ``own``: that relay's verdict is written in the same
    status write as its Selected condition, under the scope lock, with selection decided
    from the status that write produces (the verdict is part of the decision, as if it had
    been written first).  Returns the winner and ``own``'s object as written (None: no
    ``own``, or it is gone).

    **Coalesced**: the call queues a request on the scope; the first caller to hold the
    scope lock serves *every* queued request in one run (see :func:`_run`): one listing,
    each queued verdict previewed, one decision, each verdict written together with its
    Selected condition, releases before the winner, Events once per change of the relay in
    use.  A fleet whose passes all ask for selection costs one run per batch of passes
    that finished together, not one per pass.  Every write that changes who is selected
    happens under the scope lock, so the snapshot a decision is made from cannot change
    under it."""
    lock = world.scope_lock(namespace)
    scope = _scope_of(lock)
    req = _Request(own)
    scope.queue.append(req)
    try:
        if not lock.locked():
            # One turn of the event loop: the passes that are ready to ask now (their tests
            # finished while the previous run held the loop) join this run.
            await asyncio.sleep(0)
        async with lock:
            while not req.done:  # each run finishes (or fails) at least one request
                await _run(namespace, world, scope, req)
    except BaseException:
        if not req.taken and req in scope.queue:  # cancelled while queued: not served
            scope.queue.remove(req)
        raise
    if req.error is not None:
        raise req.error
    return req.winner, req.written


class _Request:
    """One caller's request to a scope's selection run (its own verdict write, if any)."""

    __slots__ = ("done", "error", "own", "taken", "winner", "written")

    def __init__(self, own: OwnWrite | None) -> None:
        self.own = own
        self.taken = False  # in a run that is in progress
        self.done = False
        self.winner: str | None = None
        self.written: StoredObject | None = None
        self.error: BaseException | None = None

    def finish(self, written: StoredObject | None = None) -> None:
        self.written, self.done = written, True

    def fail(self, error: BaseException) -> None:
        self.error, self.done = error, True


class _Scope:
    """The requests queued on one scope lock (one namespace of one world)."""

    __slots__ = ("__weakref__", "queue", "runs")

    def __init__(self) -> None:
        self.queue: list[_Request] = []
        self.runs = 0  # selection runs made (tests count them)


# scope lock -> its queue (dropped with the lock, i.e. with the world).
_SCOPES: weakref.WeakKeyDictionary[Any, _Scope] = weakref.WeakKeyDictionary()


def _scope_of(lock: Any) -> _Scope:
    scope = _SCOPES.get(lock)
    if scope is None:
        scope = _SCOPES[lock] = _Scope()
    return scope


class _Stop(Exception):
    """A write that changes who is selected failed: no further write in this run (the
    requests not served yet are decided again in the next; see :func:`_select_batch`)."""


async def _run(namespace: str, world: Any, scope: _Scope, leader: _Request) -> None:
    """Serve the queued requests in one selection run (the caller holds the scope lock).

    Takes the queue (one request per relay; a second one for the same relay waits for the
    next run), then :func:`_select_batch`.  Whatever is not finished when the run ends -
    the leader was cancelled, or a write it depends on failed - goes back to the front of
    the queue for the next run: a failing or cancelled pass never loses the others'
    verdicts."""
    batch: list[_Request] = []
    later: list[_Request] = []
    names: set[str] = set()
    for r in scope.queue:
        if r.own is not None:
            if r.own.name in names:
                later.append(r)
                continue
            names.add(r.own.name)
        batch.append(r)
    scope.queue = later
    for r in batch:
        r.taken = True
    scope.runs += 1
    try:
        await _select_batch(namespace, world, batch, leader)
    finally:
        left = [r for r in batch if not r.done]
        for r in batch:
            r.taken = False
        scope.queue[:0] = left


async def _view(namespace: str, world: Any, idx: _Index | None,
                owns: dict[str, _Request]) -> tuple[dict[str, _Memo], list[str] | None]:
    """The relays of the namespace as stored now, as memos by name, and which of them
    changed since the previous run (None: all of them are looked at).  With an index and a
    store that names its changes, only those are read again; otherwise one listing."""
    store = world.store
    changes = getattr(store, "changes_since", None) if idx is not None else None
    if idx is not None and callable(changes):
        token, names = changes(KIND, namespace, idx.token)
        if names is not None:
            idx.token = token
            look = names | idx.dirty | idx.unsettled | owns.keys()
            idx.dirty = set()
            for name, obj in (await _read(store, namespace, look, len(idx.memos))).items():
                if obj is None:
                    idx.drop(name)
                elif (m := idx.memos.get(name)) is None or m.obj is not obj:
                    idx.put(_Memo(obj))
            return idx.memos, sorted(n for n in look if n in idx.memos)  # listing order
    else:
        token = None
    objs: list[StoredObject] = await store.list(KIND, namespace)
    if idx is None:
        return {o.ref.name: _Memo(o) for o in objs}, None
    idx.rebuild(objs)
    idx.token = token  # the listing is as of this token (no write since)
    return idx.memos, None


async def _read(store: Any, namespace: str, names: set[str], known: int,
                ) -> dict[str, StoredObject | None]:
    """The relays ``names`` as stored now (None: gone): one ``get`` each, or, when they
    are many and the store can read a namespace's current objects at once
    (``current_in``, the local store: one scan instead of one query per relay - the final
    selection of a first apply reads every relay of the fleet), that."""
    many = getattr(store, "current_in", None)
    if callable(many) and len(names) > 16 and 2 * len(names) >= known:
        return many(KIND, namespace, names)  # type: ignore[no-any-return]
    return {name: await store.get(ObjectRef(KIND, namespace, name)) for name in names}


async def _select_batch(namespace: str, world: Any, batch: list[_Request],
                        leader: _Request) -> None:
    """One selection run for ``batch`` (the caller holds the scope lock)."""
    owns = {r.own.name: r for r in batch if r.own is not None}
    idx = _memos_of(world.store, namespace)
    try:
        await _decide_and_write(namespace, world, batch, leader, owns, idx)
    except BaseException as exc:
        if idx is not None:
            idx.token = None  # stopped or interrupted half-way: list at the next run
        if not isinstance(exc, _Stop):
            raise


async def _decide_and_write(namespace: str, world: Any, batch: list[_Request],
                            leader: _Request, owns: dict[str, _Request],
                            idx: _Index | None) -> None:
    # A fleet whose relays all ask for selection runs this once per batch of passes:
    # candidates are memoised per object (see _Memo), and with the index (see _Index) only
    # the relays written since the previous run are looked at.
    memos, look = await _view(namespace, world, idx, owns)
    previews: dict[str, Candidate] = {}
    for name, r in owns.items():
        m = memos.get(name)
        if m is None:
            continue
        assert r.own is not None
        try:
            preview = r.own.mutate(m.obj)
        except Exception as exc:  # noqa: BLE001 - that pass's own failure, not the run's
            r.fail(exc)  # its relay takes part as it is stored (released if need be)
            continue
        if preview is not None:  # decide on the verdict as it will be written
            obj = replace(m.obj, status=preview.status, memo=preview.memo)
            previews[name] = pc = candidate(obj)
            if idx is not None:
                idx.dirty.add(name)  # read again at the next run, written or not
                pm = _Memo(obj, pc)  # (its candidate was built once per preview, not twice)
                idx.put(pm)
                memos[name] = pm
    if look is None:
        # bystanders left out: decide never picks nor reads one
        cands = {name: c for name, m in memos.items()
                 if (c := previews.get(name) or m.cand) is not None}
        pool = list(cands.values())
    else:
        assert idx is not None
        pool = idx.deciding()
        cands = {c.name: c for c in pool}
    now = world.clock()
    choice = decide(pool, now)
    winner = choice.winner
    previous = sorted((c for c in pool if c.selected), key=_ORDER)
    # What desired_selected reads besides the candidate itself (decide picks the winner
    # from the pool: it is in cands, as previewed).
    w = cands[winner] if winner else None
    key = (winner, choice.waiting_for, tuple(sorted(choice.failback_at.items())),
           None if w is None else w.priority)
    if idx is not None:
        if look is not None:
            if key != idx.key:  # another choice: every relay's Selected condition may change
                look = sorted(memos)
            else:
                # the relay in use now and the ones it replaces (released first)
                extra = [o[2] for o in idx.held if o[2] not in look]
                look = sorted(set(look) | set(extra) | ({winner} if winner else set()))
        idx.key = key
    if look is not None:
        names = look
    elif idx is not None:  # listing order (by name; a previewed relay was put again)
        names = sorted(memos)
    else:
        names = list(memos)
    # Release first, then acquire: never two selected in the store.
    ordered = [n for n in names if n != winner]
    if winner is not None:
        ordered.append(winner)
    owns = {name: r for name, r in owns.items() if not r.done}
    for name, r in owns.items():
        if name not in memos:  # not listed: gone (or not ours)
            assert r.own is not None
            await _own_write(world, ObjectRef(KIND, namespace, name), r, r.own.mutate)
    if idx is not None:
        idx.unsettled = set()
    # (changes who is selected, the write) in the order above: releases, then the winner.
    writes: list[tuple[bool, Callable[[], Awaitable[None]]]] = []
    for name in ordered:
        req = owns.get(name)
        c = previews.get(name)
        if c is None:
            if req is None and memos[name].cand is None:
                continue  # a bystander: no write (its own pass writes NotRequested)
            c = memos[name].full()
        mutate: Callable[[StoredObject], StatusWrite | None] | None = None
        sel = False
        if (c.requested or c.selected) and (req is not None or not c.pending
                                              or c.name == winner):
            # Not for a relay that neither asks for selection nor holds it, nor for one
            # whose first verdict is not in yet: its own pass writes its Selected
            # condition with its status.  Writing it here too raced with that pass
            # (409, re-read, second write) for every relay of a new fleet whose first
            # test had not finished yet.
            if req is None and idx is not None:
                m = memos[name]
                if m.key != key:  # the same object under the same choice: as before
                    m.key, m.desired = key, desired_selected(c, choice, namespace, cands)
                    m.settled = _settled(m.obj, *m.desired)
                if m.settled:
                    continue  # already as desired in the snapshot: no write
                sel, reason, msg = m.desired
            else:
                sel, reason, msg = desired_selected(c, choice, namespace, cands)
            mutate = selected_mutator(sel, reason, msg, now)
        ref = ObjectRef(KIND, namespace, name)
        changes = sel or c.selected
        if req is not None:
            assert req.own is not None
            writes.append((changes, functools.partial(
                _own_write, world, ref, req, _combined(req.own.mutate, mutate),
                changes=changes)))
            continue
        if mutate is None or mutate(memos[name].obj) is None:
            continue  # already as desired in the snapshot: no write (fast re-apply)
        writes.append((changes, functools.partial(
            _selected_write, world, ref, mutate, changes, batch, leader, idx)))
    await _write_all(writes, _write_limit(world.store))
    for r in batch:
        if not r.done:
            r.finish()
    for r in batch:
        r.winner = winner
    await _emit_selection_events(world, namespace, cands, previous, winner, now)


async def _own_write(world: Any, ref: ObjectRef, r: _Request,
                     mutate: Callable[[StoredObject], StatusWrite | None], *,
                     changes: bool = False) -> None:
    """A queued pass's verdict (with its Selected condition); ``after`` right after it.

    A failure is that pass's (its caller raises it); when the write would have changed
    who is selected (``changes``), :class:`_Stop` ends the run: the requests not served
    yet go back to the queue and are decided again without this verdict."""
    assert r.own is not None
    try:
        written = await world.store.update_status(ref, mutate)
    except Exception as exc:
        r.fail(exc)
        if changes:
            raise _Stop from exc
        return
    if written is not None and r.own.after is not None:
        try:
            await r.own.after(written)
        except Exception as exc:  # noqa: BLE001 - written; its pass reports the failure
            r.fail(exc)
            return
    r.finish(written)


async def _selected_write(world: Any, ref: ObjectRef,
                          mutate: Callable[[StoredObject], StatusWrite | None], changes: bool,
                          batch: list[_Request], leader: _Request,
                          idx: _Index | None) -> None:
    """The Selected condition of a relay with no verdict in this run."""
    try:
        await world.store.update_status(ref, mutate)
    except StoreError as exc:
        if changes:
            # Releasing or acquiring failed: stop before a second winner.  The leader's
            # pass reports it (if its request is not served yet, else the first one not
            # served); the others are decided again in the next run.
            victim = leader if leader.taken and not leader.done else next(
                (q for q in batch if not q.done), None)
            if victim is not None:
                victim.fail(exc)
            raise _Stop from exc
        # A loser's Selected=False condition only: the selection itself holds.
        log.warning("could not write the Selected condition of %s/%s: %s",
                    ref.namespace, ref.name, exc)
        if idx is not None:
            idx.unsettled.add(ref.name)


def _write_limit(store: Any) -> int:
    """How many status writes a selection run may have in flight at once: the store's
    ``concurrent_writes`` (a store whose writes wait for a server declares it), else 1."""
    limit = getattr(store, "concurrent_writes", 1)
    return limit if isinstance(limit, int) and limit > 1 else 1


async def _write_all(writes: list[tuple[bool, Callable[[], Awaitable[None]]]],
                     limit: int) -> None:
    """Make a run's writes: ``(changes, write)`` in order, ``changes`` when the write
    changes who is selected (a release, the winner's acquire).

    With ``limit`` 1 one after another, as listed.  Otherwise the writes that change who
    is selected still go one after another in their order (every release is stored before
    the winner is written: never two selected), while the others - verdicts and Selected
    conditions of relays that neither hold nor take selection - go alongside, up to
    ``limit - 1`` at once: a batch of N standby verdicts costs about N / (limit - 1)
    round trips instead of N.  A failed release or acquire (:class:`_Stop`) starts no
    further write (those in flight finish; the requests not served go back to the queue);
    a cancelled run cancels the writes in flight, like the one it was waiting for."""
    if limit <= 1:
        for _, write in writes:
            await write()
        return
    chain = [w for changes, w in writes if changes]
    free = iter([w for changes, w in writes if not changes])
    halted: list[BaseException] = []

    async def drain() -> None:
        for write in free:
            if halted:
                return
            try:
                await write()
            except Exception as exc:  # noqa: BLE001 - re-raised by the run (as in order)
                halted.append(exc)
                return

    n = min(limit - 1, len(writes) - len(chain))
    lanes = [asyncio.create_task(drain()) for _ in range(n)]
    try:
        for write in chain:
            if halted:
                break
            await write()
    except _Stop as exc:
        halted.append(exc)  # no further write; the ones in flight finish
    except BaseException:
        halted.append(asyncio.CancelledError())
        for lane in lanes:
            lane.cancel()
        if lanes:
            await asyncio.wait(lanes)
        raise
    if lanes:
        await asyncio.gather(*lanes)  # cancelled with the run if it is
    if halted:
        raise halted[0]


async def _emit_selection_events(world: Any, namespace: str, cands: dict[str, Candidate],
                                 previous: list[Candidate], winner: str | None,
                                 now: float) -> None:
    at = cond.rfc3339(now)
    old = previous[0] if previous else None
    if winner is not None and (old is None or old.name != winner):
        ref = ObjectRef(KIND, namespace, winner)
        new = cands[winner]
        if old is not None and old.requested and old.ready and new.priority < old.priority:
            text = (f"{winner!r} (priority {new.priority}) took selection back from "
                    f"{old.name!r} (priority {old.priority}) after being Ready for "
                    f"{format_duration(new.failback_after)}")
            for name in (winner, old.name):
                await world.events.emit(Event(ObjectRef(KIND, namespace, name), "Normal",
                                              "Failback", text, at))
        elif old is not None and old.requested:
            text = (f"ExternalSmtp {old.name!r} is not Ready; {winner!r} took over as the "
                    f"relay in use")
            for name in (winner, old.name):
                await world.events.emit(Event(ObjectRef(KIND, namespace, name), "Warning",
                                              "Failover", text, at))
        else:
            await world.events.emit(Event(ref, "Normal", "Active",
                                          f"{winner!r} is now the relay in use", at))
    elif winner is None and old is not None:
        await world.events.emit(Event(
            ObjectRef(KIND, namespace, old.name), "Warning", "NoRelayInUse",
            f"no relay is in use in namespace {namespace} any more", at))
