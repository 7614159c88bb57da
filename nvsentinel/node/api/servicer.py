"""GpuService over the core store: converts requests to store calls and errors to status codes.

Handlers take and return raw bytes (no protobuf (de)serializer on the method handlers): requests
are parsed here, so a malformed one becomes INVALID_ARGUMENT with a message, and responses are
framed around the store's serialized objects. Library errors map to gRPC codes in one place, the
`_unary`/`_stream` wrappers, through `nvsentinel.errors.GRPC_CODES`; the details they send are
bounded and free of control characters (a request's 100 KB name is never echoed back whole), and
an unexpected error is INTERNAL with a fixed message, never the exception's text.

Per-client limits (SPEC §10): every call is attributed to a client (`PeerRegistry`: uid and pid
for the unix socket, the address for TCP); one client may hold at most `max_watchers_per_peer`
watch streams. ListGpus is bounded in memory: a response over `max_list_bytes` is refused, and so
is one that would take the bytes being sent at once past `max_list_bytes_in_flight`. Both refusals
carry the trailing metadata `LIST_FALLBACK_KEY`: nvsentinel's client then lists through a fresh
WatchGpus, whose initial metadata says how many snapshot events come first (`SNAPSHOT_KEY`), one
GPU per message.
"""
from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2
from nvsentinel.fanout import next_event
from nvsentinel.node.api import wire
from nvsentinel.node.api.metrics import ServerMetrics
from nvsentinel.node.api.peers import PeerRegistry
from nvsentinel.node.endpoints import EPOCH_KEY, LIST_FALLBACK_KEY, SNAPSHOT_KEY
from nvsentinel.service.sanitize import printable
from nvsentinel.store import is_valid_gpu_name

logger = logging.getLogger(__name__)

SERVICE = "nvidia.device.v1alpha1.GpuService"
#: Characters of a status message at most; what a client sent is echoed in far fewer (see `printable`).
DETAILS_LIMIT = 1000
_RV = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes "²" and "١"
_INT64_MAX = 2**63 - 1


class Refused(Exception):
    """A call refused for who makes it (not for what it asks): carries its own status code."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str,
                 trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.trailing = trailing


class Gate:
    """What the servicer needs to know about readiness (see nvsentinel.node.api.server.ReadinessGate)."""

    ready: bool

    def on_write(self) -> None: ...


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The one mapping from library errors to gRPC codes."""
    if isinstance(exc, Refused):
        return exc.code
    if isinstance(exc, errors.NvsentinelError):
        return grpc.StatusCode[exc.grpc_code]
    if isinstance(exc, DecodeError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def details(exc: BaseException, code: grpc.StatusCode) -> str:
    """The status message for `exc`: bounded and printable; INTERNAL says nothing of the exception."""
    if code is grpc.StatusCode.INTERNAL:
        return "internal error (logged by the server)"
    return printable(exc, DETAILS_LIMIT)


def _log_internal(method: str, exc: BaseException) -> None:
    """An unexpected error is a bug: log where it happened, its type and a bounded message (the
    message may quote the request, so no raw traceback text)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    logger.error("rpc failed", extra={"kv": {"method": method, "where": where,
                                             "error": printable(f"{type(exc).__name__}: {exc}")}})


def _parse(message_type: Any, request: bytes) -> Any:
    try:
        return message_type.FromString(request)
    except DecodeError as exc:
        raise errors.InvalidObject(f"malformed {message_type.DESCRIPTOR.name}: {printable(exc)}") from None


def _name(name: str) -> str:
    if not is_valid_gpu_name(name):
        raise errors.InvalidObject(f"name {printable(repr(name), 80)} is not a GPU name (GPU-<uuid> or MIG-<uuid>)")
    return name


def _since(opts: Any) -> int | None:
    """ListOptions.resource_version: "" or "0" = fresh, else the RV to resume after (ASCII decimal,
    int64). An RV newer than the store is the store's to refuse (OUT_OF_RANGE: relist)."""
    raw = opts.resource_version.strip()
    if raw in ("", "0"):
        return None
    if not _RV.fullmatch(raw) or int(raw) > _INT64_MAX:
        raise errors.InvalidObject(
            f"resource_version must be a decimal int64 (ASCII digits), got {printable(repr(raw), 40)}")
    return int(raw)


class GpuServicer:
    def __init__(self, store: Any, gate: Gate, metrics: ServerMetrics, epoch: str, *,
                 peers: PeerRegistry | None = None, max_watchers_per_peer: int = 32,
                 max_list_bytes: int = 16 << 20, max_list_bytes_in_flight: int = 32 << 20) -> None:
        self.store = store
        self.gate = gate
        self.metrics = metrics
        self.epoch_metadata = ((EPOCH_KEY, epoch),)
        self.watch_counters = {t: metrics.watch_events.labels(t) for t in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")}
        self.peers = peers if peers is not None else PeerRegistry()
        self.max_watchers_per_peer = max_watchers_per_peer
        self.max_list_bytes = max_list_bytes
        self.max_list_bytes_in_flight = max_list_bytes_in_flight
        self.list_bytes_in_flight = 0
        self.watchers: dict[str, int] = {}  # peer -> open watch streams

    def _require_ready(self) -> None:
        if not self.gate.ready:
            raise errors.Unavailable("the device API is not ready yet (no GPU registered)")

    def peer(self, context: grpc.aio.ServicerContext) -> str:
        """Who makes this call; a unix connection around the relay is refused (PERMISSION_DENIED)."""
        peer = self.peers.identify(context.peer())
        if peer is None:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          "connect through the device API's unix socket, not its private listener", "not_via_socket")
        return peer

    # ---- unary RPCs: each returns the response bytes ----

    async def GetGpu(self, request: bytes) -> bytes:
        self._require_ready()
        req = _parse(gpu_pb2.GetGpuRequest, request)
        return wire.gpu_response(self.store.get(_name(req.name)).data)

    async def ListGpus(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._require_ready()
        _parse(gpu_pb2.ListGpusRequest, request)
        _, records = self.store.list()
        size = sum(len(r.data) for r in records) + 8 * len(records) + 64  # the framing, generously
        del records
        fallback = ((LIST_FALLBACK_KEY, "watch"),)
        if size > self.max_list_bytes:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"the list is about {size} bytes, over --max-list-bytes ({self.max_list_bytes}): "
                          "list through a fresh WatchGpus (one GPU per message)", "list_too_large", fallback)
        if self.list_bytes_in_flight and self.list_bytes_in_flight + size > self.max_list_bytes_in_flight:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.list_bytes_in_flight} bytes of lists are being sent (--max-list-bytes-in-flight "
                          f"{self.max_list_bytes_in_flight}): retry, or list through a fresh WatchGpus",
                          "list_busy", fallback)
        # held until the response has left (the call is done), whether it ends well or not
        self.list_bytes_in_flight += size
        context.add_done_callback(lambda _ctx: self._list_sent(size))
        await context.send_initial_metadata(self.epoch_metadata)
        return self.store.list_wire(field=1)

    def _list_sent(self, size: int) -> None:
        self.list_bytes_in_flight -= size

    async def CreateGpu(self, request: bytes) -> bytes:
        req = _parse(gpu_pb2.CreateGpuRequest, request)
        if not req.HasField("gpu"):
            raise errors.InvalidObject("CreateGpuRequest.gpu is required")
        record, created = self.store.create(req.gpu.SerializeToString())
        if created:
            self.metrics.cache_updates.labels("create").inc()
            self.gate.on_write()
        return wire.create_response(record.data, created)

    async def UpdateGpu(self, request: bytes) -> bytes:
        req = _parse(gpu_pb2.UpdateGpuRequest, request)
        if not req.HasField("gpu"):
            raise errors.InvalidObject("UpdateGpuRequest.gpu is required")
        record = self.store.update(req.gpu.SerializeToString())
        self.metrics.cache_updates.labels("update").inc()
        return wire.gpu_response(record.data)

    async def UpdateGpuStatus(self, request: bytes) -> bytes:
        req = _parse(gpu_pb2.UpdateGpuStatusRequest, request)
        record = self.store.update_status(_name(req.name), req.status.SerializeToString(), req.resource_version)
        self.metrics.cache_updates.labels("update_status").inc()
        return wire.gpu_response(record.data)

    async def DeleteGpu(self, request: bytes) -> bytes:
        req = _parse(gpu_pb2.DeleteGpuRequest, request)
        self.store.delete(_name(req.name))
        self.metrics.cache_updates.labels("delete").inc()
        return b""  # google.protobuf.Empty

    # ---- the watch stream ----

    async def WatchGpus(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        peer = self.peer(context)
        self._require_ready()
        req = _parse(gpu_pb2.WatchGpusRequest, request)
        since = _since(req.opts)
        held = self.watchers.get(peer, 0)
        if held >= self.max_watchers_per_peer:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"this client ({peer}) already holds {held} watch streams, the most one client may "
                          f"(--max-watchers-per-peer {self.max_watchers_per_peer}); close one first",
                          "watchers_per_peer")
        sub = self.store.watch(since_rv=since)
        self.watchers[peer] = held + 1
        metadata = self.epoch_metadata
        if since is None:  # how many snapshot events come first, and the RV they add up to
            metadata += ((SNAPSHOT_KEY, f"{sub.pending} {sub.resource_version}"),)
        counters = self.watch_counters
        self.metrics.watch_streams_active.inc()
        try:
            await context.send_initial_metadata(metadata)
            while True:
                event = sub.get_nowait()
                if event is None:
                    event = await next_event(sub)
                    if event is None:
                        continue
                data = event.data if event.type != "BOOKMARK" else wire.bookmark_object(event.resource_version)
                counters[event.type].inc()
                yield wire.watch_event(event.type, data)
        except errors.Closed:
            # server shutdown: end with a status the client retries (it resumes from its last RV)
            raise errors.Unavailable("the device API server is shutting down") from None
        finally:
            sub.close()
            self.metrics.watch_streams_active.dec()
            left = self.watchers.get(peer, 1) - 1
            if left > 0:
                self.watchers[peer] = left
            else:
                self.watchers.pop(peer, None)

    # ---- registration ----

    def handler(self) -> grpc.GenericRpcHandler:
        unary = {
            name: grpc.unary_unary_rpc_method_handler(self._unary(name, getattr(self, name)))
            for name in ("GetGpu", "ListGpus", "CreateGpu", "UpdateGpu", "UpdateGpuStatus", "DeleteGpu")
        }
        unary["WatchGpus"] = grpc.unary_stream_rpc_method_handler(self._stream("WatchGpus", self.WatchGpus))
        return grpc.method_handlers_generic_handler(SERVICE, unary)

    def _unary(self, name: str, fn: Callable[..., Awaitable[bytes]]):
        requests = self.metrics.requests
        duration = self.metrics.duration.labels(name)
        ok = requests.labels(name, "OK")
        wants_context = name == "ListGpus"

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            start = time.perf_counter()
            try:
                self.peer(context)
                response = await (fn(request, context) if wants_context else fn(request))
            except Exception as exc:  # mapped once, here
                duration.observe(time.perf_counter() - start)
                await self._abort(name, exc, context)
            ok.inc()
            duration.observe(time.perf_counter() - start)
            return response

        return call

    def _stream(self, name: str, fn: Callable[[bytes, Any], AsyncIterator[bytes]]):
        requests = self.metrics.requests

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            try:
                async for item in fn(request, context):
                    yield item
            except Exception as exc:
                await self._abort(name, exc, context)
            else:
                requests.labels(name, "OK").inc()

        return call

    async def _abort(self, method: str, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        """End the call with the status `exc` maps to (count it; log an unexpected one)."""
        code = status_code(exc)
        self.metrics.requests.labels(method, code.name).inc()
        if isinstance(exc, Refused):
            self.metrics.refused.labels(exc.reason).inc()
            if exc.trailing:
                context.set_trailing_metadata(exc.trailing)
        elif code is grpc.StatusCode.INTERNAL:
            _log_internal(method, exc)
        await context.abort(code, details(exc, code))
