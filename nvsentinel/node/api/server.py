"""The device API server's lifecycle: listeners, readiness gate, health, bookmarks, shutdown.

grpc.aio rather than the thread-pool server, by measurement (bench/RESULTS.md, "Device API"):
the thread-pool server answers a lone client's unary call somewhat faster, but every open watch
stream would hold one pool thread and every publish would wake one OS thread per watcher; on
grpc.aio all streams share one event loop and a publish costs one wake-up per loop.

A companion (the daemon passes the embedded NVML provider with `--enable-nvml-provider`,
nvsentinel.node.nvml.embedded) starts once the listeners are up, as a client of this server like any
other writer; the server knows only the `Companion` protocol.

Listeners: the unix socket (`--unix-socket`, the default) is served by `PeerRelay`
(nvsentinel.node.api.peers), which knows each client's uid and pid and relays to gRPC's private
abstract-namespace listener; TCP (`--grpc-address`) only when asked, loopback unless
`--allow-remote-grpc`. A port or socket that cannot be bound is a `BindError` naming its flag.

Shutdown (SIGTERM): the companion stops → not ready (readyz 503, gRPC health
NOT_SERVING) → `shutdown_delay` → watch streams end with UNAVAILABLE (clients resume from their last RV) → in-flight RPCs drain within
`shutdown_timeout` → the unix socket is removed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nvsentinel import store as store_mod
from nvsentinel.node.api.config import DeviceApiSettings
from nvsentinel.node.api.metrics import ServerMetrics
from nvsentinel.node.api.peers import PeerRegistry, PeerRelay, private_address
from nvsentinel.node.api.servicer import SERVICE, GpuServicer
from nvsentinel.service.http import HttpEndpoint

logger = logging.getLogger(__name__)


class BindError(OSError):
    """A listener could not be set up where its flag says (a busy port, a live server on the socket)."""

    def __init__(self, flag: str, where: str, reason: object) -> None:
        super().__init__(f"{flag}: cannot listen on {where}: {reason}")
        self.flag = flag


def _probe_tcp(address: str) -> None:
    """Bind `host:port` once and let go, so a busy port is refused with its flag before gRPC's own
    bind fails (which logs a multi-line error of its own)."""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise BindError("--grpc-address", address, exc) from None
    for family, kind, proto, _, sockaddr in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise BindError("--grpc-address", address, exc.strerror or exc) from None


class ReadinessGate:
    """Ready once a GPU is registered or `timeout` seconds after start (nodes without GPUs);
    never ready again once shutdown begins. Before ready: reads UNAVAILABLE, writes pass."""

    def __init__(self, store: Any, timeout: float, on_change: Callable[[bool], None]) -> None:
        self._store = store
        self._timeout = timeout
        self._on_change = on_change
        self._started = time.monotonic()
        self._ready = False
        self._shutting_down = False

    @property
    def ready(self) -> bool:
        if not self._ready and not self._shutting_down:
            if len(self._store) > 0 or time.monotonic() - self._started >= self._timeout:
                self._ready = True
                logger.info("ready", extra={"kv": {"gpus": len(self._store)}})
                self._on_change(True)
        return self._ready and not self._shutting_down

    def on_write(self) -> None:
        self.ready  # noqa: B018 - evaluating the property latches readiness

    def shutdown(self) -> None:
        if not self._shutting_down:
            self._shutting_down = True
            self._on_change(False)


class Companion(Protocol):
    """An in-process client started once the listeners are up and stopped first at shutdown."""

    async def astart(self) -> None:
        """Start; raise (one line) when it cannot, which stops the server."""

    async def astop(self) -> None:
        """Stop; the server is still serving while this runs."""


def server_address(unix_socket: str, grpc_address: str, tcp_port: int | None) -> str:
    """Where an in-process client reaches this server: the unix socket, else TCP on loopback."""
    if unix_socket:
        return f"unix://{unix_socket}"
    host = grpc_address.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{tcp_port}"


class DeviceApiServer:
    """One device API server: construct, `await start()`, then `await stop()` (or `run()`).

    `companion(address)` builds the companion once the server knows its own address.
    """

    def __init__(self, settings: DeviceApiSettings, *, extra_handlers: Iterable[grpc.GenericRpcHandler] = (),
                 companion: Callable[[str], Companion] | None = None) -> None:
        self.settings = settings
        self.store = store_mod.GpuStore(
            max_gpus=settings.max_gpus,
            max_object_bytes=settings.max_object_bytes,
            max_conditions=settings.max_conditions,
            max_lag=settings.watch_buffer,
            max_subscribers=settings.max_watchers,
            subscribe_rate=settings.watch_rate,
            subscribe_burst=settings.watch_burst,
        )
        self.metrics = ServerMetrics(self.store)
        self.health = health.aio.HealthServicer()
        self.gate = ReadinessGate(self.store, settings.ready_timeout, self._readiness_changed)
        self.epoch = uuid.uuid4().hex
        self.peers = PeerRegistry()
        self.servicer = GpuServicer(
            self.store, self.gate, self.metrics, self.epoch, peers=self.peers,
            max_watchers_per_peer=settings.max_watchers_per_peer, max_list_bytes=settings.max_list_bytes,
            max_list_bytes_in_flight=settings.max_list_bytes_in_flight,
        )
        self.relay: PeerRelay | None = None
        self._socket_bound = False
        self._extra_handlers = list(extra_handlers)
        self._server: grpc.aio.Server | None = None
        self._http: list[HttpEndpoint] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping: asyncio.Event | None = None
        self._stopped = False
        self.tcp_port: int | None = None
        self.health_port = 0
        self.metrics_port = 0
        self._companion_factory = companion
        self.companion: Companion | None = None

    # ---- readiness ----

    def _readiness_changed(self, ready: bool) -> None:
        self.metrics.ready.set(1 if ready else 0)
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE):
            task = asyncio.get_running_loop().create_task(self.health.set(service, status))
            self._tasks.append(task)

    async def _ready_timer(self) -> None:
        await asyncio.sleep(self.settings.ready_timeout)
        self.gate.on_write()

    async def _bookmarks(self) -> None:
        while True:
            await asyncio.sleep(self.settings.bookmark_interval)
            self.store.bookmark()

    # ---- start ----

    async def start(self) -> None:
        """Bind every listener (HTTP first: nothing to undo if its port is busy), then serve; on any
        failure, undo what was started and raise (`BindError` names the flag at fault)."""
        s = self.settings
        self._stopping = asyncio.Event()
        try:
            await self._start_http()
            await self._start_grpc()
        except BaseException:
            await self._undo_start()
            raise
        self._tasks.append(asyncio.create_task(self._ready_timer()))
        self._tasks.append(asyncio.create_task(self._bookmarks()))
        if s.remote_grpc:
            logger.warning("gRPC listens beyond this host (--allow-remote-grpc): anyone who reaches it can "
                           "read and write GPU state; the Device API has no authentication",
                           extra={"kv": {"grpc_address": s.grpc_address}})
        logger.info("listening", extra={"kv": {
            "node": s.node_name, "store": store_mod.IMPLEMENTATION, "grpc_port": self.tcp_port or "-",
            "unix": s.unix_socket or "-", "health_port": self.health_port, "metrics_port": self.metrics_port}})
        if self._companion_factory is not None:
            await self._start_companion(self._companion_factory(
                server_address(s.unix_socket, s.grpc_address, self.tcp_port)))

    async def _start_http(self) -> None:
        s = self.settings
        health_ep = HttpEndpoint(s.http_bind_address, s.health_port, {
            "/healthz": self._alive, "/livez": self._alive, "/readyz": self._readyz,
        })
        metrics_ep = HttpEndpoint(s.http_bind_address, s.metrics_port, {"/metrics": self._scrape})
        for flag, ep in (("--health-port", health_ep), ("--metrics-port", metrics_ep)):
            try:
                await ep.start()
            except OSError as exc:
                raise BindError(flag, f"{ep.host}:{ep.requested_port}", exc.strerror or exc) from None
            self._http.append(ep)
        self.health_port, self.metrics_port = health_ep.port, metrics_ep.port

    async def _start_grpc(self) -> None:
        s = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_recv_bytes),
                ("grpc.max_send_message_length", s.max_send_bytes),
                ("grpc.max_concurrent_streams", s.max_concurrent_streams),
                ("grpc.keepalive_time_ms", int(s.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.so_reuseport", 0),  # two servers must never share a port silently
            ]
        )
        server.add_generic_rpc_handlers([self.servicer.handler(), *self._extra_handlers])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for service in ("", SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.metrics.ready.set(0)
        if s.grpc_address:
            _probe_tcp(s.grpc_address)
            try:
                self.tcp_port = server.add_insecure_port(s.grpc_address)
            except RuntimeError as exc:
                raise BindError("--grpc-address", s.grpc_address, exc) from None
            if not self.tcp_port:
                raise BindError("--grpc-address", s.grpc_address, "no port bound")
        if s.unix_socket:
            try:
                self._prepare_socket(s.unix_socket)
            except OSError as exc:
                raise BindError("--unix-socket", s.unix_socket, exc) from None
            private, target = private_address()
            if not server.add_insecure_port(private):
                raise OSError(f"cannot listen on {private}")
            self.relay = PeerRelay(s.unix_socket, s.socket_mode, target, self.peers,
                                   max_connections_per_peer=s.max_connections_per_peer,
                                   on_refused=lambda reason: self.metrics.refused.labels(reason).inc())
        await server.start()
        self._server = server
        if self.relay is not None:
            try:
                await self.relay.start()
            except OSError as exc:
                raise BindError("--unix-socket", s.unix_socket, exc.strerror or exc) from None
            self._socket_bound = True

    async def _start_companion(self, companion: Companion) -> None:
        """A failure stops the server and raises."""
        try:
            await companion.astart()
        except BaseException:
            await self.stop(delay=0, timeout=0)
            raise
        self.companion = companion

    async def _undo_start(self) -> None:
        """Close what a failed start opened, quietly: the caller reports the one reason."""
        self._stopped = True
        self.store.close()
        if self.relay is not None:
            await self.relay.close()
        if self._server is not None:
            await self._server.stop(grace=0)
        for ep in self._http:
            await ep.stop()
        if self._socket_bound:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.unix_socket)

    @staticmethod
    def _prepare_socket(path: str) -> None:
        """Create the socket's directory; remove a stale socket, refuse a live one."""
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise OSError("it exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: left behind by a killed server
            logger.info("removed stale socket", extra={"kv": {"path": path}})
            return
        finally:
            probe.close()
        raise OSError("another server is listening on it")

    # ---- HTTP routes ----

    def _alive(self) -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    def _readyz(self) -> tuple[int, str, bytes]:
        if self.gate.ready:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready\n"

    def _scrape(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)

    # ---- stop ----

    async def stop(self, delay: float | None = None, timeout: float | None = None) -> None:
        """The graceful shutdown sequence; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        s = self.settings
        delay = s.shutdown_delay if delay is None else delay
        timeout = s.shutdown_timeout if timeout is None else timeout
        if self.companion is not None:  # first, so it never writes into a closing server
            await self.companion.astop()
        logger.info("shutting down: not ready", extra={"kv": {"delay_s": delay}})
        self.gate.shutdown()
        await asyncio.sleep(delay)
        self.store.close()  # open watch streams end with UNAVAILABLE after their pending events
        if self.relay is not None:
            self.relay.stop_accepting()  # connections already made keep relaying while calls drain
        if self._server is not None:
            await self._server.stop(grace=timeout)
        if self.relay is not None:
            await self.relay.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for ep in self._http:
            await ep.stop()
        if self._socket_bound:  # ours; never a live server's we refused to replace
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s.unix_socket)
        if self._stopping is not None:
            self._stopping.set()
        logger.info("stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then shut down gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        try:
            await stop_requested.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
