"""A stand-in for the kubelet's PodResources API (v1), for tests and the demo: no kubelet runs there.

A real gRPC server on a unix socket speaking the kubelet's wire format (`v1.PodResourcesLister`: `List`,
`GetAllocatableResources`, `Get`), answering from a pod table the caller changes at run time. It can be told
to fail every call (UNAVAILABLE, as a restarting kubelet) or to hang (never answer until healed or stopped:
the client's deadline is what ends the call), so the reader's failure paths run over a real socket.

    server = PodResourcesServer("/tmp/x/kubelet.sock").start()
    server.set_pod("ml", "train-0", {"main": {"nvidia.com/gpu": ["GPU-..."]}})
    ...
    server.stop()
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence

import grpc

from nvsentinel._proto import podresources_pb2 as pb
from nvsentinel._proto import podresources_pb2_grpc as pb_grpc

__all__ = ["PodResourcesServer", "Containers"]

logger = logging.getLogger(__name__)

#: container name → resource name → device ids (the kubelet's ContainerDevices)
Containers = Mapping[str, Mapping[str, Sequence[str]]]


@dataclasses.dataclass(frozen=True)
class _Pod:
    namespace: str
    name: str
    containers: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...]

    def message(self) -> pb.PodResources:
        return pb.PodResources(name=self.name, namespace=self.namespace, containers=[
            pb.ContainerResources(name=c, devices=[pb.ContainerDevices(resource_name=r, device_ids=list(ids))
                                                   for r, ids in resources])
            for c, resources in self.containers
        ])


def _freeze(namespace: str, name: str, containers: Containers) -> _Pod:
    return _Pod(namespace, name, tuple(
        (c, tuple((r, tuple(ids)) for r, ids in resources.items())) for c, resources in containers.items()))


class PodResourcesServer(pb_grpc.PodResourcesListerServicer):
    """The stand-in server; thread-safe. `start()` listens on `socket_path`, `stop()` removes it."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._allocatable: dict[str, tuple[str, ...]] = {}
        self._fail: grpc.StatusCode | None = None
        self._hang = False
        self._held: set[threading.Event] = set()
        self._calls: dict[str, int] = {"List": 0, "GetAllocatableResources": 0, "Get": 0}
        self._server: grpc.Server | None = None

    # ---- the table ----

    def set_pod(self, namespace: str, name: str, containers: Containers) -> None:
        """Add or replace a pod: its containers' devices by resource name."""
        with self._lock:
            self._pods[(namespace, name)] = _freeze(namespace, name, containers)

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def set_pods(self, pods: Iterable[tuple[str, str, Containers]]) -> None:
        """Replace the whole table."""
        with self._lock:
            self._pods = {(ns, n): _freeze(ns, n, c) for ns, n, c in pods}

    def set_allocatable(self, resources: Mapping[str, Sequence[str]]) -> None:
        """What GetAllocatableResources answers: device ids by resource name."""
        with self._lock:
            self._allocatable = {r: tuple(ids) for r, ids in resources.items()}

    # ---- failure modes ----

    def fail(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """Answer every call with `code` until `heal()`."""
        with self._lock:
            self._fail, self._hang = code, False
        self._release()

    def hang(self) -> None:
        """Never answer (until `heal()` or `stop()`): the caller's deadline ends each call."""
        with self._lock:
            self._hang, self._fail = True, None

    def heal(self) -> None:
        """Answer normally again; calls hanging now are answered."""
        with self._lock:
            self._hang, self._fail = False, None
        self._release()

    def calls(self, method: str = "List") -> int:
        """How many calls of `method` arrived (answered or not)."""
        with self._lock:
            return self._calls[method]

    def _release(self) -> None:
        with self._lock:
            held, self._held = self._held, set()
        for ev in held:
            ev.set()

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        """Count the call, then fail it, hold it, or let it through, as the server is told (re-read after a hold)."""
        with self._lock:
            self._calls[method] += 1
        while True:
            with self._lock:
                code, hang = self._fail, self._hang and self._server is not None
                if hang:
                    held = threading.Event()
                    self._held.add(held)
            if code is not None:
                context.abort(code, "stand-in kubelet told to fail")
            if not hang:
                return
            context.add_callback(held.set)  # the caller gave up (deadline, cancel): let the thread go
            held.wait()
            with self._lock:
                self._held.discard(held)
            if not context.is_active():
                context.abort(grpc.StatusCode.CANCELLED, "the caller went away")

    # ---- v1.PodResourcesLister ----

    def List(self, request: pb.ListPodResourcesRequest, context: grpc.ServicerContext) -> pb.ListPodResourcesResponse:
        self._enter("List", context)
        with self._lock:
            pods = list(self._pods.values())
        return pb.ListPodResourcesResponse(pod_resources=[p.message() for p in pods])

    def GetAllocatableResources(self, request: pb.AllocatableResourcesRequest,
                                context: grpc.ServicerContext) -> pb.AllocatableResourcesResponse:
        self._enter("GetAllocatableResources", context)
        with self._lock:
            devices = [pb.ContainerDevices(resource_name=r, device_ids=list(ids)) for r, ids in self._allocatable.items()]
        return pb.AllocatableResourcesResponse(devices=devices)

    def Get(self, request: pb.GetPodResourcesRequest, context: grpc.ServicerContext) -> pb.GetPodResourcesResponse:
        self._enter("Get", context)
        with self._lock:
            pod = self._pods.get((request.pod_namespace, request.pod_name))
        if pod is None:
            # the kubelet answers an unknown pod with an error, not an empty message
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"pod {request.pod_namespace}/{request.pod_name} not found")
        return pb.GetPodResourcesResponse(pod_resources=pod.message())

    # ---- lifecycle ----

    def start(self) -> PodResourcesServer:
        """Listen on the unix socket (a stale file there is replaced, as the kubelet does)."""
        if self._server is not None:
            raise RuntimeError("already started")
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="podresources"))
        pb_grpc.add_PodResourcesListerServicer_to_server(self, server)
        if not server.add_insecure_port(f"unix://{self.socket_path}"):
            raise OSError(f"cannot listen on {self.socket_path}")
        server.start()
        self._server = server
        logger.info("stand-in PodResources server listening", extra={"kv": {"socket": self.socket_path}})
        return self

    def stop(self) -> None:
        """Stop answering, release held calls and remove the socket (the reader then sees it missing)."""
        server, self._server = self._server, None
        self._release()
        if server is not None:
            server.stop(grace=None).wait()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> PodResourcesServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
