"""Prometheus metrics of the operator (prometheus-client, one private registry).

A private :class:`CollectorRegistry` rather than the global one, so tests can run several
operators in one process and read exact values.  Label values are catalog reasons, stage
names and condition types - never resource spec values, never secrets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric


class RelayHealth(Protocol):
    """One relay's health (``reconciler.engine.active.HealthSample`` has these fields)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def selected(self) -> bool: ...
    @property
    def ready(self) -> bool: ...
    @property
    def last_success(self) -> float | None: ...
    @property
    def certificate_not_after(self) -> float | None: ...


class _RelayHealthCollector:
    """The ``smtpctl_active_relay_*`` and certificate-expiry gauges, computed from the
    operator's cache when scraped: no labelled child kept per relay between scrapes (one
    per relay with a certificate was ~1 KB each, 10 MB at 10,000 relays)."""

    def __init__(self, source: Callable[[], Iterable[RelayHealth]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        labels = ["namespace", "name"]
        ready = GaugeMetricFamily(
            "smtpctl_active_relay_ready",
            "1 when the configuration the selected relay hands out passed its latest test, "
            "0 when it is failing", labels=labels)
        last = GaugeMetricFamily(
            "smtpctl_active_relay_last_success_timestamp_seconds",
            "When the configuration the selected relay hands out last passed its test",
            labels=labels)
        expiry = GaugeMetricFamily(
            "smtpctl_relay_certificate_expiry_timestamp_seconds",
            "When the relay certificate of a relay's active configuration expires",
            labels=labels)
        for s in self._source():
            values = [s.namespace, s.name]
            if s.selected:
                ready.add_metric(values, 1.0 if s.ready else 0.0)
                if s.last_success is not None:
                    last.add_metric(values, s.last_success)
            if s.certificate_not_after is not None:
                expiry.add_metric(values, s.certificate_not_after)
        yield from (ready, last, expiry)


class _ResourceConditionsCollector:
    """``smtpctl_resources{kind,condition,status}``: the cached resources counted by
    condition status when scraped.  (It was refreshed every 5 s whether anyone scraped or
    not: 41 ms a time at 10,000 resources, ~0.8 % of the operator's core.)"""

    def __init__(self, source: Callable[[], Mapping[tuple[str, str, str], int]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("smtpctl_resources", "Resources by condition status",
                                   labels=["kind", "condition", "status"])
        for (kind, condition, status), n in sorted(self._source().items()):
            family.add_metric([kind, condition, status], float(n))
        yield family


M = TypeVar("M", Counter, Histogram)


class Children(Generic[M]):
    """The labelled children of a metric that is never cleared, each looked up once:
    ``children(*values)`` is ``metric.labels(*values)`` without the label validation and
    the lock prometheus-client takes on every ``labels()`` call (~3 % of the operator's
    CPU per resource, at a dozen calls per pass).  Values are keyed as ``labels()`` keys
    them (``str``), so the child is the one ``labels()`` returns.  Thread-safe: a race
    only looks the same child up twice."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._kids: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: object) -> Any:
        key = tuple(str(v) for v in values)
        kid = self._kids.get(key)
        if kid is None:
            kid = self._kids[key] = self.metric.labels(*key)
        return kid


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tests = Counter("smtpctl_connection_tests_total",
                             "Connection tests run, by result and reason",
                             ["result", "reason"], registry=r)
        self.test_duration = Histogram(
            "smtpctl_connection_test_stage_seconds", "Duration of connection test stages",
            ["stage"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.probe_workers = Gauge(
            "smtpctl_probe_workers", "Probe worker processes running (--probe-workers)",
            registry=r)
        self.probe_worker_tests = Counter(
            "smtpctl_probe_worker_tests_total",
            "Connection tests run in probe worker processes", registry=r)
        self.probe_worker_restarts = Counter(
            "smtpctl_probe_worker_restarts_total",
            "Probe worker processes started to replace one that ended", registry=r)
        self.probe_worker_unavailable = Counter(
            "smtpctl_probe_worker_unavailable_total",
            "Connection tests run on the operator's loop because no probe worker was running "
            "and the restart budget was spent", registry=r)
        self.reconciles = Counter("smtpctl_reconciles_total", "Reconcile passes, by action",
                                  ["kind", "action"], registry=r)
        self.queue_depth = Gauge("smtpctl_queue_depth",
                                 "Resources whose reconcile is due or running", registry=r)
        self.workers = Gauge("smtpctl_workers", "Per-resource workers", registry=r)
        self.token_fetches = Counter("smtpctl_oauth2_token_fetches_total",
                                     "OAuth 2.0 access tokens fetched", ["result"], registry=r)
        self.events = Counter("smtpctl_events_total", "Events emitted, by reason",
                              ["type", "reason"], registry=r)
        self.events_suppressed = Counter(
            "smtpctl_events_suppressed_total",
            "Events not posted, by the limit that held them back: duplicate (the same "
            "Event within 10 minutes), object (the object's rate limit) or namespace (the "
            "namespace's budget of Normal Events)",
            ["type", "reason", "limit"], registry=r)
        self.published = Counter("smtpctl_published_secret_writes_total",
                                 "Writes of the published active-relay Secret", ["op"],
                                 registry=r)
        self.leader = Gauge("smtpctl_leader", "1 while this replica holds the Lease",
                            registry=r)
        self.kube_requests = Counter(
            "smtpctl_kube_requests_total",
            "Requests to the Kubernetes API, by verb and resource",
            ["verb", "resource"], registry=r)
        # Children of the per-pass and per-request metrics (see Children): never cleared.
        self.tests_of = Children(self.tests)
        self.test_duration_of = Children(self.test_duration)
        self.reconciles_of = Children(self.reconciles)
        self.events_of = Children(self.events)
        self.events_suppressed_of = Children(self.events_suppressed)
        self.kube_requests_of = Children(self.kube_requests)
        # Health of the relays (issue 12), from the active records when scraped: the
        # runtime sets ``relay_health`` (default: none).
        self.relay_health: Callable[[], Iterable[RelayHealth]] = lambda: ()
        r.register(_RelayHealthCollector(lambda: self.relay_health()))
        # Resources by condition status, counted when scraped: the runtime sets
        # ``resource_conditions`` ((kind, condition type, status) -> count; default none).
        self.resource_conditions: Callable[[], Mapping[tuple[str, str, str], int]] = dict
        r.register(_ResourceConditionsCollector(lambda: self.resource_conditions()))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
