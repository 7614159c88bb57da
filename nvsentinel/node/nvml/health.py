"""The `nvml-provider` daemon's HTTP endpoints, on a background thread (the provider itself is one
blocking thread): `/healthz` (alive) and `/readyz` (NVML initialised and every GPU registered with
the Device API) on the health port, Prometheus `/metrics` on the metrics port (0: off)."""
from __future__ import annotations

from collections.abc import Callable

from nvsentinel.node.nvml.metrics import NvmlMetrics
from nvsentinel.service.http import HttpEndpoint, ThreadedHttp, probe_routes

__all__ = ["HealthServer"]


class HealthServer(ThreadedHttp):
    """`start()` binds (health port 0: any free one, then in `.port`) and serves until `stop()`."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool], metrics_port: int = 0,
                 metrics: NvmlMetrics | None = None) -> None:
        endpoints = [HttpEndpoint(host, port, probe_routes(ready))]
        if metrics_port and metrics is not None:
            endpoints.append(HttpEndpoint(host, metrics_port, {"/metrics": metrics.scrape}))
        super().__init__(endpoints, name="nvml-provider-health")

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def metrics_port(self) -> int:
        """The bound metrics port; 0 when off."""
        return self.ports[1] if len(self.ports) > 1 else 0
