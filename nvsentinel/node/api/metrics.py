"""Prometheus metrics of the device API server (SPEC §4); every one is updated, none is decoration.

Cache-derived values (GPU counts by health, RV, rejections, evictions) are read from the store at
scrape time by a collector, so they can never drift from the truth; request and watch counters
are incremented by the servicer as things happen.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "device_api_server"
OPERATIONS = ("create", "update", "update_status", "delete")
#: Why a call or connection was refused for who made it or what it would cost (not for what it asked).
REFUSALS = ("watchers_per_peer", "connections_per_peer", "list_too_large", "list_busy", "not_via_socket")
METHODS = ("GetGpu", "ListGpus", "WatchGpus", "CreateGpu", "UpdateGpu", "UpdateGpuStatus", "DeleteGpu")


class _StoreCollector:
    def __init__(self, store: Any) -> None:
        self.store = store

    def describe(self) -> list:
        return []

    def collect(self):
        stats = self.store.stats()
        counts = self.store.counts()
        gpus = GaugeMetricFamily(f"{PREFIX}_cache_gpus", "GPUs in the cache by health state", labels=["state"])
        for state in ("total", "healthy", "unhealthy", "unknown"):
            gpus.add_metric([state], getattr(counts, state))
        yield gpus
        yield GaugeMetricFamily(f"{PREFIX}_cache_resource_version", "current store resource version", value=stats["resource_version"])
        rejected = CounterMetricFamily(f"{PREFIX}_cache_rejected", "writes refused by the cache, by reason", labels=["reason"])
        for reason, n in sorted(stats["rejected"].items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily(f"{PREFIX}_cache_truncated_conditions", "conditions dropped by the per-GPU cap", value=stats["truncated_conditions"])
        yield CounterMetricFamily(f"{PREFIX}_watch_subscribers_evicted", "watchers evicted for lagging", value=stats["watch"]["evicted_total"])


class ServerMetrics:
    """One registry per server instance (tests run several servers in one process)."""

    def __init__(self, store: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StoreCollector(store))
        r = self.registry
        self.cache_updates = Counter(f"{PREFIX}_cache_updates", "successful cache writes by operation", ["operation"], registry=r)
        self.watch_streams_active = Gauge(f"{PREFIX}_watch_streams_active", "open WatchGpus streams", registry=r)
        self.watch_events = Counter(f"{PREFIX}_watch_events", "watch events sent, by type", ["type"], registry=r)
        self.requests = Counter(f"{PREFIX}_grpc_requests", "gRPC requests by method and status code", ["method", "code"], registry=r)
        self.duration = Histogram(
            f"{PREFIX}_grpc_request_duration_seconds", "gRPC unary request latency",
            ["method"], registry=r,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the server is ready to serve reads", registry=r)
        self.refused = Counter(
            f"{PREFIX}_refused", "calls and connections refused by a per-client or memory bound, by reason",
            ["reason"], registry=r)
        for reason in REFUSALS:
            self.refused.labels(reason)
        for op in OPERATIONS:
            self.cache_updates.labels(op)
        for kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            self.watch_events.labels(kind)
        for method in METHODS:
            self.requests.labels(method, "OK")
            self.duration.labels(method)
