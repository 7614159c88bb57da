"""Prometheus metrics per controller: `nvsentinel_<controller>_controller_*`, all updated.

actions_total{action}, failures_total{reason}, latency_seconds (each reconcile), queue_depth,
plus gauges a controller asks for (`gauge(name, doc)`). One registry per Manager, so tests and
several managers in one process do not collide.
"""
from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ControllerMetrics", "ManagerMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        if name not in self._gauges:
            self._gauges[name] = Gauge(f"{self.prefix}_{name}", doc, list(labels), registry=self.registry)
        return self._gauges[name]


class ManagerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.is_leader = Gauge("nvsentinel_controllers_leader", "1 while this process leads", registry=registry)
        self.leader_transitions = Counter("nvsentinel_controllers_leader_transitions_total",
                                          "Times this process became leader", registry=registry)
        self.kube_requests_throttled = Counter("nvsentinel_controllers_informer_relists_total",
                                               "Informer relists (410 Gone or start)", registry=registry)
