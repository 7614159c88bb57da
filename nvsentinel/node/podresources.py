"""Which pods hold which GPUs, read from the kubelet's PodResources API (v1 `List`) on this node.

The kubelet serves `v1.PodResourcesLister` on a unix socket (/var/lib/kubelet/pod-resources/kubelet.sock):
for every pod, the device-plugin devices each container was given. The NVIDIA device plugin's device ids
for `nvidia.com/gpu` are the GPUs' UUIDs (a time-sliced replica is `<uuid>::<n>`, which names the same GPU),
so a fatal event's GPU UUIDs pick out the pods that must leave (docs/publisher.md).

A mapping that cannot be trusted is an error, never a short list: the drain stage then takes the whole
node. So MIG devices (their ids name no GPU here), a device id of the resource that is not a GPU UUID,
a pod name outside Kubernetes' bounds, or more pods than a HealthEvent may name all raise
`PodResourcesError`, as do a missing socket, a deadline and any RPC failure. Each error's text is
short and printable: it is written into the event (`spec.podMapping.error`).

A fresh channel per read: reads are rare (one per fatal event), and a channel kept across a kubelet
restart would sit in its reconnect backoff and fail the next read for no reason.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from nvsentinel.policy.drainscope import DEFAULT_GPU_RESOURCE
from nvsentinel.policy.healthevent import MAX_MAPPED_PODS, PodRef
from nvsentinel.service.sanitize import printable

if TYPE_CHECKING:  # grpc and the generated modules load on the first read: the settings import this module
    from nvsentinel._proto import podresources_pb2

__all__ = [
    "DEFAULT_SOCKET", "DEFAULT_RESOURCE", "DEFAULT_TIMEOUT", "MAX_MESSAGE_BYTES", "PodResourcesError",
    "SocketMissing", "DeadlineExceeded", "RpcFailed", "UntrustedMapping", "PodResourcesReader", "pods_holding",
    "gpu_of_device",
]

logger = logging.getLogger(__name__)

DEFAULT_SOCKET: Final = "/var/lib/kubelet/pod-resources/kubelet.sock"
DEFAULT_RESOURCE: Final = DEFAULT_GPU_RESOURCE
#: Seconds a read may take: the kubelet answers from memory in milliseconds; a stuck one must not hold
#: up the publisher's events for long.
DEFAULT_TIMEOUT: Final = 2.0
#: The kubelet's own PodResources clients accept 16 MiB answers (thousands of pods with CPU and memory lists).
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
#: The CRD's bounds on spec.podMapping.pods[] (a node's credential writes them).
MAX_NAMESPACE: Final = 63
MAX_POD_NAME: Final = 253
MAX_DEVICE_ID: Final = 256
MAX_DEVICES_PER_POD: Final = 64
#: Characters of an error's text kept (the CRD allows 1024; a reason is a line, not a dump).
MAX_ERROR: Final = 200

#: NVML's GPU UUID form, loosely (GPU- then hex digits and dashes, as the fake NVML accepts too); a MIG
#: device is "MIG-...", which is not a GPU.
_GPU_UUID = re.compile(r"GPU-[0-9A-Fa-f][0-9A-Fa-f-]{0,250}")
_REPLICA = re.compile(r"::[0-9]{1,6}")
_MIG_RESOURCE = "nvidia.com/mig-"


class PodResourcesError(Exception):
    """The mapping could not be read or trusted; `str(err)` is the short, printable reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(printable(reason, MAX_ERROR))

    @property
    def reason(self) -> str:
        return str(self)


class SocketMissing(PodResourcesError):
    """No unix socket at the path: no kubelet here, or its pod-resources directory is not mounted."""


class DeadlineExceeded(PodResourcesError):
    """The kubelet did not answer within the timeout."""


class RpcFailed(PodResourcesError):
    """The kubelet answered with an error (UNAVAILABLE, UNIMPLEMENTED, ...) or the connection failed."""


class UntrustedMapping(PodResourcesError):
    """The answer cannot be mapped to GPUs safely (MIG devices, ids that are not GPU UUIDs, odd pods, too many)."""


def gpu_of_device(device_id: str) -> str:
    """The GPU UUID a device-plugin device id names ("" when it names none): the id itself, or the GPU of a
    time-sliced replica `<uuid>::<n>`."""
    base = device_id
    replica = _REPLICA.search(device_id)
    if replica is not None and replica.end() == len(device_id):
        base = device_id[:replica.start()]
    return base if _GPU_UUID.fullmatch(base) else ""


def pods_holding(
    response: podresources_pb2.ListPodResourcesResponse,
    gpus: Iterable[str],
    resource_name: str = DEFAULT_RESOURCE,
) -> tuple[PodRef, ...]:
    """The pods of a List answer whose containers hold any of `gpus` (UUIDs) as `resource_name` devices,
    each with the GPUs of `gpus` it holds (its containers merged), in the kubelet's order.

    Raises `UntrustedMapping` when the answer cannot be trusted to name every such pod (module docstring).
    """
    wanted = {g for g in gpus if g and len(g) <= MAX_DEVICE_ID}
    found: list[PodRef] = []
    for pod in response.pod_resources:
        held: dict[str, None] = {}
        for container in pod.containers:
            for devices in container.devices:
                if devices.resource_name.startswith(_MIG_RESOURCE) and devices.device_ids:
                    raise UntrustedMapping(f"MIG devices in use ({devices.resource_name}): they map to no GPU here")
                if devices.resource_name != resource_name:
                    continue
                for device in devices.device_ids:
                    gpu = gpu_of_device(device)
                    if not gpu:
                        raise UntrustedMapping(f"{resource_name} device id {printable(device, 80)!r} is not a GPU UUID")
                    if gpu in wanted:
                        held[gpu] = None
        if not held:
            continue
        if not 0 < len(pod.namespace) <= MAX_NAMESPACE or not 0 < len(pod.name) <= MAX_POD_NAME:
            raise UntrustedMapping(f"the kubelet named a pod outside Kubernetes' bounds: "
                                   f"{printable(pod.namespace, 63)}/{printable(pod.name, 80)}")
        if len(found) == MAX_MAPPED_PODS:
            raise UntrustedMapping(f"more than {MAX_MAPPED_PODS} pods hold the GPUs")
        found.append(PodRef(pod.namespace, pod.name, tuple(held)[:MAX_DEVICES_PER_POD]))
    return tuple(found)


def _check_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SocketMissing(f"no PodResources socket at {path}") from None
    except OSError as exc:
        raise SocketMissing(f"cannot reach the PodResources socket {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(mode):
        raise SocketMissing(f"{path} is not a unix socket")


class PodResourcesReader:
    """Reads the kubelet's PodResources API over its unix socket; each read is one `List` with a deadline."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout: float = DEFAULT_TIMEOUT,
                 resource_name: str = DEFAULT_RESOURCE) -> None:
        if not socket_path.startswith("/"):
            raise ValueError(f"the PodResources socket must be an absolute path, got {socket_path!r}")
        if not 0 < timeout <= 60:
            raise ValueError(f"the PodResources timeout must be in (0, 60] seconds, got {timeout}")
        self.socket_path = socket_path
        self.timeout = timeout
        self.resource_name = resource_name

    def list(self) -> podresources_pb2.ListPodResourcesResponse:
        """One `v1.PodResourcesLister/List` call; raises a `PodResourcesError`."""
        import grpc

        from nvsentinel._proto import podresources_pb2, podresources_pb2_grpc

        _check_socket(self.socket_path)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.enable_http_proxy", 0)]
        with grpc.insecure_channel(f"unix://{self.socket_path}", options=options) as channel:
            stub = podresources_pb2_grpc.PodResourcesListerStub(channel)
            try:
                return stub.List(podresources_pb2.ListPodResourcesRequest(), timeout=self.timeout)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise DeadlineExceeded(f"the kubelet did not answer List within {self.timeout:g}s") from None
                detail = exc.details() if hasattr(exc, "details") else ""
                raise RpcFailed(f"List failed: {code.name}: {printable(detail or '', 120)}") from None

    def pods_for(self, gpus: Iterable[str], resource_name: str | None = None) -> tuple[PodRef, ...]:
        """The pods holding any of `gpus` (UUIDs) as `resource_name` devices (default: the reader's)."""
        return pods_holding(self.list(), gpus, resource_name or self.resource_name)
