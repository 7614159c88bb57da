"""`nvsentinel_nvml_*` metrics of the NVML provider (docs/conditions.md, "The nvml-provider daemon").

What the provider believes per GPU (health, NVML's recovery action, whether the driver reports it),
what it saw (NVML events by type), what it wrote (condition writes), and how NVML answered (call
latency, calls past their deadline). Served on `--metrics-port` (0: off) by `HealthServer`.
"""
from __future__ import annotations

from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["NvmlMetrics", "EVENT_TYPES", "HEALTH_VALUES"]

EVENT_TYPES: Final = ("xid", "ecc_double_bit", "ecc_single_bit", "gpu_unavailable", "recovery_action")
#: NvmlHealthy status → the gauge's value.
HEALTH_VALUES: Final = {"True": 1, "False": 0, "Unknown": -1}
#: Seconds: from a fast NVML query (tens of microseconds) to a call near the default 10 s deadline.
CALL_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class NvmlMetrics:
    """One registry per provider (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.gpu_health = Gauge(
            "nvsentinel_nvml_gpu_health", "NvmlHealthy per GPU: 1 True, 0 False (unhealthy), -1 Unknown (unresponsive)",
            ["gpu", "uuid"], registry=r)
        self.recovery_action = Gauge(
            "nvsentinel_nvml_recovery_action",
            "NVML's GPU recovery action as last read (0 NONE, 1 GPU_RESET, 2 NODE_REBOOT, ...)", ["gpu", "uuid"],
            registry=r)
        self.recovery_action_supported = Gauge(
            "nvsentinel_nvml_recovery_action_supported",
            "1: the driver reports the GPU's recovery action (read every poll); 0: it does not (events only)",
            ["gpu"], registry=r)
        self.events = Counter("nvsentinel_nvml_events", "NVML events decoded, by type", ["type"], registry=r)
        self.condition_writes = Counter(
            "nvsentinel_nvml_condition_writes", "NvmlHealthy status writes accepted by the Device API, by status",
            ["status"], registry=r)
        self.call_seconds = Histogram("nvsentinel_nvml_call_seconds", "NVML call latency per GPU call, by call",
                                      ["call"], buckets=CALL_BUCKETS, registry=r)
        self.call_timeouts = Counter(
            "nvsentinel_nvml_call_timeouts", "NVML calls past --nvml-call-timeout, by call and GPU index",
            ["call", "gpu"], registry=r)
        for kind in EVENT_TYPES:
            self.events.labels(kind)
        for status in HEALTH_VALUES:
            self.condition_writes.labels(status)

    def value(self, name: str, **labels: str) -> float | None:
        """A sample's current value by its exported name (`_total` included for counters), for tests."""
        return self.registry.get_sample_value(name, labels or None)

    def scrape(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
