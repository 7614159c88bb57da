"""GpuService over the core store: converts requests to store calls and errors to status codes.

Handlers take and return raw bytes (no protobuf (de)serializer on the method handlers): requests
are parsed here, so a malformed one becomes INVALID_ARGUMENT with a message, and responses are
framed around the store's serialized objects. Library errors map to gRPC codes in one place,
`abort_for`, through `nvsentinel.errors.GRPC_CODES`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2
from nvsentinel.fanout import next_event
from nvsentinel.node.api import wire
from nvsentinel.node.api.metrics import ServerMetrics
from nvsentinel.node.endpoints import EPOCH_KEY
from nvsentinel.store import is_valid_gpu_name

logger = logging.getLogger(__name__)

SERVICE = "nvidia.device.v1alpha1.GpuService"


class Gate:
    """What the servicer needs to know about readiness (see nvsentinel.node.api.server.ReadinessGate)."""

    ready: bool

    def on_write(self) -> None: ...


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The one mapping from library errors to gRPC codes."""
    if isinstance(exc, errors.NvsentinelError):
        return grpc.StatusCode[exc.grpc_code]
    if isinstance(exc, DecodeError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def _parse(message_type: Any, request: bytes) -> Any:
    try:
        return message_type.FromString(request)
    except DecodeError as exc:
        raise errors.InvalidObject(f"malformed {message_type.DESCRIPTOR.name}: {exc}") from None


def _name(name: str) -> str:
    if not is_valid_gpu_name(name):
        raise errors.InvalidObject(f"name {name!r} is not a GPU name (GPU-<uuid> or MIG-<uuid>)")
    return name


def _since(opts: Any) -> int | None:
    """ListOptions.resource_version: "" or "0" = fresh, else the RV to resume after."""
    raw = opts.resource_version.strip()
    if raw in ("", "0"):
        return None
    if not raw.isdigit():
        raise errors.InvalidObject(f"resource_version must be a decimal integer, got {raw!r}")
    return int(raw)


class GpuServicer:
    def __init__(self, store: Any, gate: Gate, metrics: ServerMetrics, epoch: str) -> None:
        self.store = store
        self.gate = gate
        self.metrics = metrics
        self.epoch_metadata = ((EPOCH_KEY, epoch),)
        self.watch_counters = {t: metrics.watch_events.labels(t) for t in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")}

    def _require_ready(self) -> None:
        if not self.gate.ready:
            raise errors.Unavailable("the device API is not ready yet (no GPU registered)")

    # ---- unary RPCs: each returns the response bytes ----

    async def GetGpu(self, request: bytes) -> bytes:
        self._require_ready()
        req = _parse(gpu_pb2.GetGpuRequest, request)
        return wire.gpu_response(self.store.get(_name(req.name)).data)

    async def ListGpus(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._require_ready()
        _parse(gpu_pb2.ListGpusRequest, request)
        await context.send_initial_metadata(self.epoch_metadata)
        return self.store.list_wire(field=1)

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
        self._require_ready()
        req = _parse(gpu_pb2.WatchGpusRequest, request)
        sub = self.store.watch(since_rv=_since(req.opts))
        await context.send_initial_metadata(self.epoch_metadata)
        counters = self.watch_counters
        self.metrics.watch_streams_active.inc()
        try:
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
                response = await (fn(request, context) if wants_context else fn(request))
            except Exception as exc:  # mapped once, here
                code = status_code(exc)
                requests.labels(name, code.name).inc()
                duration.observe(time.perf_counter() - start)
                if code is grpc.StatusCode.INTERNAL:
                    logger.exception("rpc failed", extra={"kv": {"method": name}})
                await context.abort(code, str(exc))
            ok.inc()
            duration.observe(time.perf_counter() - start)
            return response

        return call

    def _stream(self, name: str, fn: Callable[[bytes, Any], AsyncIterator[bytes]]):
        requests = self.metrics.requests

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            code = grpc.StatusCode.OK
            try:
                async for item in fn(request, context):
                    yield item
            except Exception as exc:
                code = status_code(exc)
                if code is grpc.StatusCode.INTERNAL:
                    logger.exception("watch failed", extra={"kv": {"method": name}})
                requests.labels(name, code.name).inc()
                await context.abort(code, str(exc))
            else:
                requests.labels(name, code.name).inc()

        return call
