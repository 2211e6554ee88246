"""The operator's Event budget per namespace (Normal Events), on top of the per-object
limits (test_operator_finalizers.py::test_events_are_deduplicated_and_rate_limited_per_object).

Every test drives the sink with an injected clock: no sleeps, no timing assertions."""

from __future__ import annotations

import asyncio

from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.events import (
    BURST,
    NAMESPACE_BURST,
    NAMESPACE_QPS,
    EventSink,
)
from reconciler.stores.base import Event, ObjectRef


class _Store:
    """Records what the sink posts (the KubeStore's ``record_event``)."""

    def __init__(self) -> None:
        self.posted: list[Event] = []

    async def record_event(self, event: Event) -> None:
        self.posted.append(event)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sink(**kw: object) -> tuple[EventSink, _Store, _Clock, OperatorMetrics]:
    store, clock, metrics = _Store(), _Clock(), OperatorMetrics()
    sink = EventSink(store, metrics, clock=clock, **kw)  # type: ignore[arg-type]
    return sink, store, clock, metrics


def _passed(ns: str, name: str) -> Event:
    return Event(ObjectRef("ExternalSmtp", ns, name), "Normal", "TestPassed",
                 "the connection test passed", "2026-12-01T00:00:00Z")


def _failed(ns: str, name: str) -> Event:
    return Event(ObjectRef("ExternalSmtp", ns, name), "Warning", "AuthenticationFailed",
                 "535 rejected", "2026-12-01T00:00:00Z")


def _emit_all(sink: EventSink, events: list[Event]) -> None:
    async def run() -> None:
        for e in events:
            await sink.emit(e)
    asyncio.run(run())


def _suppressed(metrics: OperatorMetrics, limit: str, reason: str, type_: str) -> float:
    value = metrics.registry.get_sample_value(
        "smtpctl_events_suppressed_total", {"limit": limit, "reason": reason, "type": type_})
    return value or 0.0


def test_a_namespace_creating_a_thousand_relays_posts_a_burst_then_a_few_per_second() -> None:
    sink, store, clock, metrics = _sink()
    _emit_all(sink, [_passed("flood", f"r{i}") for i in range(1000)])
    # Without the budget every relay would post its TestPassed (1,000 Events).
    assert len(store.posted) == NAMESPACE_BURST
    assert _suppressed(metrics, "namespace", "TestPassed", "Normal") == 1000 - NAMESPACE_BURST
    clock.now += 2.0  # two seconds later: 2 x qps more
    _emit_all(sink, [_passed("flood", f"s{i}") for i in range(100)])
    assert len(store.posted) == NAMESPACE_BURST + int(2 * NAMESPACE_QPS)
    clock.now += 3600.0  # an idle hour refills the bucket to its burst, not beyond
    _emit_all(sink, [_passed("flood", f"t{i}") for i in range(1000)])
    assert len(store.posted) == 2 * NAMESPACE_BURST + int(2 * NAMESPACE_QPS)


def test_one_namespace_flood_does_not_suppress_another_namespace() -> None:
    sink, store, _clock, metrics = _sink()
    _emit_all(sink, [_passed("tenant-a", f"r{i}") for i in range(500)])
    _emit_all(sink, [_passed("tenant-b", "mail"), _passed("tenant-c", "mail")])
    assert [e.ref.namespace for e in store.posted[-2:]] == ["tenant-b", "tenant-c"]
    assert _suppressed(metrics, "namespace", "TestPassed", "Normal") == 500 - NAMESPACE_BURST


def test_warnings_are_exempt_from_the_namespace_budget() -> None:
    """Failures are always visible: the flooded namespace's Warnings are still posted
    (each object's own limit still applies)."""
    sink, store, _clock, metrics = _sink()
    _emit_all(sink, [_passed("flood", f"r{i}") for i in range(300)])
    before = len(store.posted)
    _emit_all(sink, [_failed("flood", f"r{i}") for i in range(300)])
    assert len(store.posted) == before + 300
    assert all(e.type == "Warning" for e in store.posted[before:])
    assert _suppressed(metrics, "namespace", "AuthenticationFailed", "Warning") == 0
    # The per-object limit still holds them: one object, many distinct Warnings.
    many = [Event(ObjectRef("ExternalSmtp", "flood", "flapping"), "Warning", "TestFailed",
                  f"attempt {i}", "2026-12-01T00:00:00Z") for i in range(BURST * 2)]
    _emit_all(sink, many)
    assert _suppressed(metrics, "object", "TestFailed", "Warning") == BURST


def test_an_event_held_back_by_the_namespace_keeps_its_object_token_and_is_not_a_duplicate(
) -> None:
    """An Event the namespace budget held back takes neither a token of its object nor a
    dedupe entry: once the namespace has tokens again, the same Event is posted."""
    sink, store, clock, metrics = _sink(namespace_burst=1, namespace_qps=0.5)
    first, second = _passed("ns", "a"), _passed("ns", "b")
    _emit_all(sink, [first, second])
    assert store.posted == [first]
    assert _suppressed(metrics, "namespace", "TestPassed", "Normal") == 1
    clock.now += 2.0  # one token back
    _emit_all(sink, [second])
    assert store.posted == [first, second]
    assert _suppressed(metrics, "duplicate", "TestPassed", "Normal") == 0
    # The attempts held back by the namespace did not draw the object's own bucket:
    # more of them than the object's burst, then one namespace token: posted.
    sink2, store2, clock2, metrics2 = _sink(namespace_burst=1, namespace_qps=1.0)
    _emit_all(sink2, [_passed("ns", "x")] + [
        Event(ObjectRef("ExternalSmtp", "ns", "y"), "Normal", "TestPassed", f"try {i}",
              "2026-12-01T00:00:00Z") for i in range(BURST + 5)])
    assert len(store2.posted) == 1
    clock2.now += 1.0
    _emit_all(sink2, [_passed("ns", "y")])
    assert store2.posted[-1] == _passed("ns", "y")
    assert _suppressed(metrics2, "object", "TestPassed", "Normal") == 0


def test_namespaces_are_kept_in_a_bounded_lru() -> None:
    """Like the admission plugin's cacheSize: at most ``namespace_cache`` buckets; the
    least recently used is forgotten and starts again with a full bucket."""
    sink, store, _clock, _metrics = _sink(namespace_burst=2, namespace_qps=0.0,
                                          namespace_cache=2)
    _emit_all(sink, [_passed("a", "1"), _passed("a", "2"), _passed("a", "3")])
    assert len(store.posted) == 2  # a's bucket is empty
    _emit_all(sink, [_passed("b", "1"), _passed("a", "4")])  # a used again: kept
    assert len(store.posted) == 3
    _emit_all(sink, [_passed("c", "1")])  # b is the least recently used: forgotten
    _emit_all(sink, [_passed("a", "5")])  # a remembered: still empty
    assert [e.ref for e in store.posted] == [
        ObjectRef("ExternalSmtp", "a", "1"), ObjectRef("ExternalSmtp", "a", "2"),
        ObjectRef("ExternalSmtp", "b", "1"), ObjectRef("ExternalSmtp", "c", "1")]
    _emit_all(sink, [_passed("d", "1"), _passed("b", "2")])  # a forgotten now, and c
    _emit_all(sink, [_passed("a", "6")])  # a again: a fresh, full bucket
    assert store.posted[-1].ref == ObjectRef("ExternalSmtp", "a", "6")
