"""A typed, synchronous Device API client that speaks in library errors, not grpc.RpcError.

`list_gpus` asks ListGpus first; when the server refuses a list for its size or for the bytes of
lists it is already sending (RESOURCE_EXHAUSTED with `LIST_FALLBACK_KEY`), it lists through a
fresh watch instead: the server says in the watch's initial metadata how many snapshot events
come first (`SNAPSHOT_KEY`), and those events, one GPU per message, are the list.

Error details come from the server: they are made printable and bounded before they reach an
exception, so a log line or a terminal never shows what a server (or a request it echoes) chose.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import grpc

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2, gpu_pb2_grpc
from nvsentinel.node.endpoints import (
    ADDRESS_ENV,
    DEFAULT_GRPC_ADDRESS,
    DEFAULT_UNIX_SOCKET,
    EPOCH_KEY,
    LIST_FALLBACK_KEY,
    SNAPSHOT_KEY,
)
from nvsentinel.service.sanitize import printable

__all__ = ["DeviceApiClient", "GpuEvent", "WatchStream", "parse_address", "default_address", "error_from_rpc"]

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def parse_address(address: str) -> str:
    """`unix:///path`, `unix:/path`, `/path` (a unix socket) or `host:port` → a gRPC target."""
    address = address.strip()
    if not address:
        raise ValueError("empty Device API address")
    if address.startswith("unix:"):
        path = address[len("unix:"):].lstrip("/")
        return f"unix:///{path}"
    if address.startswith("/"):
        return f"unix://{address}"
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"Device API address must be unix:///path or host:port, got {address!r}")
    return address


def default_address() -> str:
    """$NVSENTINEL_DEVICE_API, else the default unix socket if it exists, else loopback TCP."""
    env = os.environ.get(ADDRESS_ENV)
    if env:
        return env
    if os.path.exists(DEFAULT_UNIX_SOCKET):
        return f"unix://{DEFAULT_UNIX_SOCKET}"
    return DEFAULT_GRPC_ADDRESS


def error_from_rpc(exc: grpc.RpcError, *, streaming: bool = False) -> errors.NvsentinelError:
    """The library error for a gRPC failure (inverse of the server's mapping)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    detail = printable(exc.details() if hasattr(exc, "details") else exc, 1000)
    message = f"{code.name}: {detail}"
    if code in _RETRYABLE:
        return errors.Unavailable(message)
    if streaming and code is grpc.StatusCode.RESOURCE_EXHAUSTED and "behind" in (detail or ""):
        return errors.Evicted(message)
    cls = errors.GRPC_CODES.get(code.name, errors.NvsentinelError)
    return cls(message)


@dataclasses.dataclass(frozen=True)
class GpuEvent:
    """One watch event: type, the object (for BOOKMARK only its resource version) and its RV."""

    type: str
    gpu: gpu_pb2.Gpu
    resource_version: int


def _metadata(call: Any, key: str) -> str:
    for k, value in call.initial_metadata() or ():
        if k == key:
            return value
    return ""


def _epoch(call: Any) -> str:
    return _metadata(call, EPOCH_KEY)


def _wants_fallback(exc: grpc.RpcError) -> bool:
    """ListGpus refused for its size or the lists in flight: list through a watch instead."""
    if not hasattr(exc, "trailing_metadata") or exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    return any(k == LIST_FALLBACK_KEY for k, _ in exc.trailing_metadata() or ())


class WatchStream:
    """An open WatchGpus stream: iterate for events; `cancel()` from any thread ends it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    @property
    def epoch(self) -> str:
        """The server store's incarnation (blocks until the stream is open; raises like iteration)."""
        try:
            return _epoch(self._call)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, streaming=True) from exc

    def __iter__(self) -> Iterator[GpuEvent]:
        try:
            for resp in self._call:
                yield GpuEvent(resp.type, resp.object, resp.object.resource_version)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.CANCELLED and self._call.cancelled():
                return  # cancelled by us
            raise error_from_rpc(exc, streaming=True) from exc

    def cancel(self) -> None:
        self._call.cancel()


class DeviceApiClient:
    """Sync client for GpuService. Every method raises library errors (`NotFound`, `Conflict`,
    `InvalidObject`, `LimitExceeded`, `Expired`, `Unavailable`, ...), never grpc.RpcError."""

    def __init__(self, address: str | None = None, *, timeout: float = 10.0, max_receive_bytes: int = 128 * 1024 * 1024) -> None:
        self.address = parse_address(address or default_address())
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", max_receive_bytes),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
            ],
        )
        self._stub = gpu_pb2_grpc.GpuServiceStub(self._channel)
        self.server_epoch = ""

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DeviceApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects; raises Unavailable after `timeout`."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise errors.Unavailable(f"no Device API server at {self.address} after {timeout:g}s") from None

    def get_gpu(self, name: str, *, timeout: float | None = None) -> gpu_pb2.Gpu:
        return self._call(self._stub.GetGpu, gpu_pb2.GetGpuRequest(name=name), timeout).gpu

    def list_gpus(self, *, timeout: float | None = None) -> tuple[int, list[gpu_pb2.Gpu]]:
        """(list resource version, GPUs): watch from that RV to miss nothing.

        `self.server_epoch` is set to the store incarnation the list came from. A list the server
        will not send in one message is read from a fresh watch (see the module docstring).
        """
        try:
            resp, call = self._stub.ListGpus.with_call(gpu_pb2.ListGpusRequest(),
                                                       timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            if _wants_fallback(exc):
                return self._list_by_watch(self.timeout if timeout is None else timeout)
            raise error_from_rpc(exc) from exc
        self.server_epoch = _epoch(call)
        return int(resp.gpu_list.metadata.resource_version or 0), list(resp.gpu_list.items)

    def _list_by_watch(self, timeout: float) -> tuple[int, list[gpu_pb2.Gpu]]:
        """The snapshot of a fresh watch, as a list: its RV and the GPUs, oldest change first."""
        call = self._stub.WatchGpus(gpu_pb2.WatchGpusRequest(opts=gpu_pb2.ListOptions()), timeout=timeout)
        try:
            count, _, rv = _metadata(call, SNAPSHOT_KEY).partition(" ")
            if not count.isascii() or not count.isdigit() or not rv.isascii() or not rv.isdigit():
                if call.done() and call.code() is not grpc.StatusCode.OK:
                    raise error_from_rpc(call)  # the watch itself was refused (its own limit): say why
                raise errors.Unavailable("the server sent no watch snapshot size; cannot list through a watch")
            gpus: dict[str, gpu_pb2.Gpu] = {}
            last = int(rv)
            left = int(count)
            for resp in call if left else ():
                if resp.type == "BOOKMARK":
                    continue
                if resp.type == "DELETED":
                    gpus.pop(resp.object.metadata.name, None)
                else:
                    gpus[resp.object.metadata.name] = resp.object
                last = max(last, resp.object.resource_version)
                left -= 1
                if not left:
                    break
            if left:
                raise errors.Unavailable(f"the watch ended {left} events before its snapshot did")
            self.server_epoch = _epoch(call)
            return last, list(gpus.values())
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    def create_gpu(self, gpu: gpu_pb2.Gpu, *, timeout: float | None = None) -> tuple[gpu_pb2.Gpu, bool]:
        resp = self._call(self._stub.CreateGpu, gpu_pb2.CreateGpuRequest(gpu=gpu), timeout)
        return resp.gpu, resp.created

    def update_gpu(self, gpu: gpu_pb2.Gpu, *, timeout: float | None = None) -> gpu_pb2.Gpu:
        """Replace spec and status; gpu.resource_version is the expected RV (0: unconditional)."""
        return self._call(self._stub.UpdateGpu, gpu_pb2.UpdateGpuRequest(gpu=gpu), timeout).gpu

    def update_gpu_status(self, name: str, status: gpu_pb2.GpuStatus, resource_version: int = 0, *, timeout: float | None = None) -> gpu_pb2.Gpu:
        req = gpu_pb2.UpdateGpuStatusRequest(name=name, status=status, resource_version=resource_version)
        return self._call(self._stub.UpdateGpuStatus, req, timeout).gpu

    def delete_gpu(self, name: str, *, timeout: float | None = None) -> None:
        self._call(self._stub.DeleteGpu, gpu_pb2.DeleteGpuRequest(name=name), timeout)

    def watch_gpus(self, since_rv: int | None = None) -> WatchStream:
        """Open a watch: fresh (ADDED for every GPU, then changes) or resuming after `since_rv`.

        Iterating raises Expired (relist), Evicted (resume from the last RV), Unavailable.
        """
        opts = gpu_pb2.ListOptions(resource_version="" if since_rv is None else str(since_rv))
        call = self._stub.WatchGpus(gpu_pb2.WatchGpusRequest(opts=opts))
        return WatchStream(call)
