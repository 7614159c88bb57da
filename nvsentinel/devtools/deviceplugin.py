"""A fake device plugin for a real kubelet (tests only): advertises `nvidia.com/gpu` devices whose ids are GPU
UUIDs, as NVIDIA's plugin does, so the kubelet assigns them to pods and reports them over PodResources.

The kubelet's device-plugin API (v1beta1) is protos/k8s/deviceplugin/v1beta1/api.proto, generated at build
time as `nvsentinel._proto.deviceplugin_pb2` (nothing in the product speaks it; only this fake does).

    with FakeGpuPlugin("/path/to/device-plugins", ["GPU-...", "GPU-..."]) as plugin:
        ...  # the Node's capacity shows nvidia.com/gpu: 2; plugin.allocations lists what Allocate gave
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

__all__ = ["FakeGpuPlugin", "load_api"]

logger = logging.getLogger(__name__)

API_VERSION = "v1beta1"


def load_api() -> tuple[ModuleType, ModuleType]:
    """The generated (messages, services) modules of the device-plugin API."""
    from nvsentinel._proto import deviceplugin_pb2, deviceplugin_pb2_grpc

    return deviceplugin_pb2, deviceplugin_pb2_grpc


class FakeGpuPlugin:
    """One plugin on `<plugin_dir>/<endpoint>`, registered with the kubelet at `<plugin_dir>/kubelet.sock`.

    `allocations`: the device ids of each container the kubelet asked `Allocate` for, in call order.
    """

    def __init__(self, plugin_dir: str, uuids: Sequence[str], *, resource: str = "nvidia.com/gpu",
                 endpoint: str = "nvsentinel-fake-gpu.sock") -> None:
        self.plugin_dir = plugin_dir
        self.uuids = tuple(uuids)
        self.resource = resource
        self.endpoint = endpoint
        self.allocations: list[tuple[str, ...]] = []
        self._stop = threading.Event()
        self._server: Any = None

    def _servicer(self) -> Any:
        pb, pbg = load_api()
        plugin = self

        class Servicer(pbg.DevicePluginServicer):  # type: ignore[misc, name-defined]
            def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
                return pb.DevicePluginOptions()

            def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
                yield pb.ListAndWatchResponse(devices=[pb.Device(ID=u, health="Healthy") for u in plugin.uuids])
                while context.is_active() and not plugin._stop.wait(0.5):
                    pass  # the list never changes; the kubelet wants the stream open

            def Allocate(self, request: Any, context: Any) -> Any:
                responses = []
                for c in request.container_requests:
                    ids = tuple(c.devicesIDs)
                    plugin.allocations.append(ids)
                    responses.append(pb.ContainerAllocateResponse(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(ids)}))
                logger.info("allocate", extra={"kv": {"devices": [list(a) for a in plugin.allocations]}})
                return pb.AllocateResponse(container_responses=responses)

            def PreStartContainer(self, request: Any, context: Any) -> Any:
                return pb.PreStartContainerResponse()

        return Servicer()

    def start(self, timeout: float = 60.0) -> FakeGpuPlugin:
        """Serve, then register (retrying until the kubelet's registration socket answers, up to `timeout`)."""
        import grpc

        pb, pbg = load_api()
        sock = os.path.join(self.plugin_dir, self.endpoint)
        if os.path.exists(sock):
            os.unlink(sock)
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        pbg.add_DevicePluginServicer_to_server(self._servicer(), self._server)
        self._server.add_insecure_port(f"unix://{sock}")
        self._server.start()
        kubelet = os.path.join(self.plugin_dir, "kubelet.sock")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with grpc.insecure_channel(f"unix://{kubelet}") as channel:
                    pbg.RegistrationStub(channel).Register(pb.RegisterRequest(
                        version=API_VERSION, endpoint=self.endpoint, resource_name=self.resource), timeout=5)
                break
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the kubelet at {kubelet} did not take the registration: {exc}") from None
                time.sleep(0.5)
        logger.info("registered", extra={"kv": {"resource": self.resource, "devices": list(self.uuids)}})
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(10)
            self._server = None

    def __enter__(self) -> FakeGpuPlugin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
