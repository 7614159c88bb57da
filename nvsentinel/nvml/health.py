"""The `nvml-provider` daemon's probes: `/healthz` (alive) and `/readyz` (NVML initialised and every
GPU registered with the Device API), served by the device API server's HttpEndpoint on an asyncio
loop in a background thread (the provider itself is one blocking thread)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable

from nvsentinel.api.http import HttpEndpoint

__all__ = ["HealthServer"]

logger = logging.getLogger(__name__)


class HealthServer:
    """`start()` binds (port 0: any free one, then in `.port`) and serves until `stop()`."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool]) -> None:
        self._ready = ready
        self._endpoint = HttpEndpoint(host, port, {"/healthz": self._alive, "/livez": self._alive,
                                                   "/readyz": self._readyz})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nvml-provider-health", daemon=True)

    @property
    def port(self) -> int:
        return self._endpoint.port

    def _call(self, coro: object, timeout: float = 10.0) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> None:
        """Raises OSError when the port cannot be bound."""
        self._thread.start()
        try:
            self._call(self._endpoint.start())
        except BaseException:
            self._shutdown_loop()
            raise

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._endpoint.stop())
        except (concurrent.futures.TimeoutError, OSError):
            logger.warning("health endpoint did not close in time", extra={"kv": {}})
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def _alive(self) -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    def _readyz(self) -> tuple[int, str, bytes]:
        try:
            ready = self._ready()
        except Exception:  # noqa: BLE001 - a probe must answer
            ready = False
        if ready:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready\n"
