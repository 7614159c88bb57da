"""The `nvml-provider` daemon's probes: `/healthz` (alive) and `/readyz` (NVML initialised and every
GPU registered with the Device API), on a background thread (the provider itself is one blocking
thread)."""
from __future__ import annotations

from collections.abc import Callable

from nvsentinel.service.http import HttpEndpoint, ThreadedHttp, probe_routes

__all__ = ["HealthServer"]


class HealthServer(ThreadedHttp):
    """`start()` binds (port 0: any free one, then in `.port`) and serves until `stop()`."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool]) -> None:
        super().__init__([HttpEndpoint(host, port, probe_routes(ready))], name="nvml-provider-health")

    @property
    def port(self) -> int:
        return self.ports[0]
