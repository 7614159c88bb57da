"""A minimal asyncio HTTP/1.1 responder for probes and Prometheus scrapes.

Only GET of a fixed route table; one request per connection. Enough for kubelet probes and
Prometheus, with no web framework dependency.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import anyio
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

Route = Callable[[], tuple[int, str, bytes]]  # -> (status, content type, body)
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HttpEndpoint:
    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        self.host = host
        self.requested_port = port
        self.routes = routes
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.requested_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            route = self.routes.get(path)
            if route is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            elif method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            else:
                status, ctype, body = route()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def probe_routes(ready: Callable[[], bool]) -> dict[str, Route]:
    """`/healthz` and `/livez` (200 while the process serves) and `/readyz` (200 when `ready()`)."""

    def alive() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    def readyz() -> tuple[int, str, bytes]:
        try:
            ok = ready()
        except Exception:  # noqa: BLE001 - a probe must answer
            ok = False
        return (200, "text/plain", b"ready\n") if ok else (503, "text/plain", b"not ready\n")

    return {"/healthz": alive, "/livez": alive, "/readyz": readyz}


class ThreadedHttp:
    """HttpEndpoints served on an asyncio loop in a background thread, for the thread-based daemons
    (NVML provider, publisher). `start()` binds (port 0: any free one, see `.ports`) or raises OSError."""

    def __init__(self, endpoints: list[HttpEndpoint], name: str = "http") -> None:
        self._endpoints = endpoints
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    @property
    def ports(self) -> list[int]:
        return [e.port for e in self._endpoints]

    def _call(self, coro: Any, timeout: float = 10.0) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        if not self._endpoints:
            return
        self._thread.start()
        try:
            for ep in self._endpoints:
                self._call(ep.start())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._thread.is_alive():
            for ep in self._endpoints:
                try:
                    self._call(ep.stop())
                except (concurrent.futures.TimeoutError, OSError):
                    logger.warning("http endpoint did not close in time", extra={"kv": {"port": ep.port}})
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()


async def serve_until_signalled(name: str, run: Callable[[], Any], stop: Callable[[], None], *, bind_address: str,
                                health_port: int, metrics_port: int, ready: Callable[[], bool],
                                registry: Any, kv: dict[str, Any]) -> None:
    """A long-running async service's life: probes and /metrics up, one `<name> started` line (with the ports
    bound), `run()` until it returns or SIGTERM/SIGINT asks `stop()`, endpoints down, `<name> stopped`."""
    def _metrics() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    endpoints = []
    if health_port:
        endpoints.append(HttpEndpoint(bind_address, health_port, probe_routes(ready)))
    if metrics_port:
        endpoints.append(HttpEndpoint(bind_address, metrics_port, {"/metrics": _metrics}))
    for ep in endpoints:
        await ep.start()
    logger.info(f"{name} started", extra={"kv": {
        **kv, "health_port": endpoints[0].port if health_port else 0,
        "metrics_port": endpoints[-1].port if metrics_port else 0}})
    try:
        async with anyio.create_task_group() as tg:
            async def _signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for signum in sigs:
                        logger.info("signal received; shutting down", extra={"kv": {"signal": signum}})
                        stop()
                        return

            tg.start_soon(_signals)
            await run()
            tg.cancel_scope.cancel()
    finally:
        for ep in endpoints:
            await ep.stop()
    logger.info(f"{name} stopped")
