"""Prometheus metrics per controller: `nvsentinel_<controller>_controller_*`, all updated.

actions_total{action}, failures_total{reason}, latency_seconds (each reconcile), queue_depth,
plus the gauges, counters and histograms a controller asks for (`gauge`, `counter`, `histogram`: one
per name, however often asked). One registry per Manager, so tests and several managers in one process
do not collide.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from nvsentinel.k8s import AsyncKube
    from nvsentinel.k8s.runtime.recorder import EventRecorder

__all__ = ["ControllerMetrics", "ManagerMetrics", "register_kube_collector", "DETECTION_BUCKETS"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds from a fault's detection to a stage's decision: a cordon in about a second, a drain behind a
#: PodDisruptionBudget or a fault that waits a day for its healthy event.
DETECTION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
                     43200.0, 86400.0)


class ControllerMetrics:
    def __init__(self, controller: str, registry: CollectorRegistry) -> None:
        self.prefix = f"nvsentinel_{controller.replace('-', '_')}_controller"
        self.registry = registry
        self.actions = Counter(f"{self.prefix}_actions_total", "Actions taken, by action", ["action"],
                               registry=registry)
        self.failures = Counter(f"{self.prefix}_failures_total", "Failed reconciles, by reason", ["reason"],
                                registry=registry)
        self.latency = Histogram(f"{self.prefix}_latency_seconds", "Time per reconcile", buckets=_LATENCY_BUCKETS,
                                 registry=registry)
        self.reconciles = Counter(f"{self.prefix}_reconciles_total", "Reconciles run", registry=registry)
        self.queue_depth = Gauge(f"{self.prefix}_queue_depth", "Keys waiting in the work queue", registry=registry)
        self._gauges: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}

    def declare_actions(self, actions: Sequence[str]) -> None:
        """Every value of actions_total{action}, at 0, so dashboards see each before it first happens."""
        for action in actions:
            self.actions.labels(action=action)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        if name not in self._gauges:
            self._gauges[name] = Gauge(f"{self.prefix}_{name}", doc, list(labels), registry=self.registry)
        return self._gauges[name]

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """`<prefix>_<name>_total` (`name` without the suffix)."""
        if name not in self._counters:
            self._counters[name] = Counter(f"{self.prefix}_{name}", doc, list(labels), registry=self.registry)
        return self._counters[name]

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = _LATENCY_BUCKETS) -> Histogram:
        if name not in self._histograms:
            self._histograms[name] = Histogram(f"{self.prefix}_{name}", doc, list(labels), buckets=tuple(buckets),
                                               registry=self.registry)
        return self._histograms[name]


class ManagerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.is_leader = Gauge("nvsentinel_controllers_leader", "1 while this process leads", registry=registry)
        self.leader_transitions = Counter("nvsentinel_controllers_leader_transitions_total",
                                          "Times this process became leader", registry=registry)


class _KubeCollector(Collector):
    """The client lanes' and the Event recorder's counters, read at scrape time (no locks on the hot path)."""

    def __init__(self, kube: AsyncKube, recorder: EventRecorder | None) -> None:
        self.kube = kube
        self.recorder = recorder

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily("nvsentinel_kube_requests", "API requests by client lane, verb and result "
                                       "(2xx, or the status code)", labels=["lane", "verb", "code"])
        throttled = CounterMetricFamily("nvsentinel_kube_throttled_seconds", "Seconds a lane waited for its "
                                        "client-side rate limit", labels=["lane"])
        retried = CounterMetricFamily("nvsentinel_kube_retries", "Requests retried after a 429 and its "
                                      "Retry-After", labels=["lane"])
        for name, lane in sorted(self.kube.lanes.items()):
            for (verb, code), n in sorted(lane.stats.requests.items()):
                requests.add_metric([name, verb, code], n)
            throttled.add_metric([name], lane.stats.throttled_seconds)
            retried.add_metric([name], lane.stats.retried_429)
        yield requests
        yield throttled
        yield retried
        yield GaugeMetricFamily("nvsentinel_kube_server_flow_control", "1 when the API server does API Priority "
                                "and Fairness and the client-side limit is only a ceiling",
                                value=1 if self.kube.sync.server_flow_control else 0)
        if self.recorder is not None:
            events = CounterMetricFamily("nvsentinel_controllers_k8s_events", "Kubernetes Events: sent, aggregated "
                                         "into a queued one, or dropped (queue full)", labels=["result"])
            events.add_metric(["sent"], self.recorder.recorded)
            events.add_metric(["aggregated"], self.recorder.aggregated)
            events.add_metric(["dropped"], self.recorder.dropped)
            yield events
            yield GaugeMetricFamily("nvsentinel_controllers_k8s_events_queued", "Kubernetes Events waiting to be "
                                    "sent", value=len(self.recorder))


class _InformerCollector(Collector):
    """Each shared informer's relists (the first list, and every one after a 410 Gone or a failed watch), read at
    scrape time from the informers themselves: a counter nobody increments cannot drift from them."""

    def __init__(self, informers: Callable[[], Iterable[Any]]) -> None:
        self.informers = informers

    def collect(self) -> Iterator[CounterMetricFamily]:
        relists = CounterMetricFamily("nvsentinel_controllers_informer_relists", "Informer relists (the first "
                                      "list, then each after 410 Gone or a lost watch)", labels=["resource"])
        totals: dict[str, int] = {}
        for inf in self.informers():
            totals[inf.resource.plural] = totals.get(inf.resource.plural, 0) + inf.relists
        for resource, n in sorted(totals.items()):
            relists.add_metric([resource], n)
        yield relists


def register_kube_collector(registry: CollectorRegistry, kube: AsyncKube,
                            recorder: EventRecorder | None = None,
                            informers: Callable[[], Iterable[Any]] | None = None) -> None:
    registry.register(_KubeCollector(kube, recorder))
    if informers is not None:
        registry.register(_InformerCollector(informers))
