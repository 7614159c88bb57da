"""The provider's Device API side in process (no NVML): merge by type under a real Conflict, and
re-registration after the GPU disappears from the server."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings  # noqa: E402

from nvsentinel import errors  # noqa: E402
from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.policy import conditions as logic  # noqa: E402
from nvsentinel.node.nvml.provider import GpuInfo, NvmlProvider  # noqa: E402

UUID = "GPU-e7b01a4c-23be-ec6e-51b4-457253d5dcb5"


class RacingClient:
    """A real client; before the provider's first status write, another provider writes first."""

    def __init__(self, real: DeviceApiClient) -> None:
        self.real = real
        self.address = real.address
        self.raced = 0
        self.conflicts = 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    @property
    def server_epoch(self) -> str:
        return self.real.server_epoch

    def update_gpu_status(self, name, status, resource_version=0):
        if self.raced == 0:
            self.raced += 1
            cur = self.real.get_gpu(name)
            other = gpu_pb2.GpuStatus()
            other.CopyFrom(cur.status)
            other.conditions.add(type="KmsgHealthy", status="False", reason="Xid31", message="from kmsg")
            self.real.update_gpu_status(name, other, cur.resource_version)
        try:
            return self.real.update_gpu_status(name, status, resource_version)
        except errors.Conflict:
            self.conflicts += 1
            raise


@pytest.fixture
def server():
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    srv = ThreadServer(make_settings(d)).start()
    yield srv
    srv.stop()
    shutil.rmtree(d, ignore_errors=True)


def _provider(client) -> NvmlProvider:
    p = NvmlProvider(client, wait_timeout_ms=100)
    info = GpuInfo(0, UUID, "NVIDIA H100 80GB HBM3", "00000000:5D:00.0", 80 << 30)
    p.gpus.append(info)
    p.views[UUID] = logic.decide(logic.GpuView(), logic.Xid(79)).view
    p._dirty.add(UUID)
    return p


def test_nvml_provider_sync_merges_over_a_conflicting_write(server):
    real = DeviceApiClient(server.tcp, timeout=5)
    client = RacingClient(real)
    try:
        p = _provider(client)
        p.sync()
        assert client.conflicts == 1 and not p._dirty
        gpu = real.get_gpu(UUID)
        by_type = {c.type: (c.status, c.reason) for c in gpu.status.conditions}
        assert by_type == {"KmsgHealthy": ("False", "Xid31"), "NvmlHealthy": ("False", "Xid79")}
        assert gpu.status.recommended_action == "RESTART_BM"

        # the GPU vanishes from the server (as after a restart): re-registered and re-sent
        real.delete_gpu(UUID)
        p._next_resync = 0.0
        p.sync()
        gpu = real.get_gpu(UUID)
        assert [(c.type, c.reason) for c in gpu.status.conditions] == [("NvmlHealthy", "Xid79")]
    finally:
        real.close()


def test_nvml_provider_sync_backs_off_when_the_server_is_down(server):
    port = server.server.tcp_port
    server.stop()
    real = DeviceApiClient(f"127.0.0.1:{port}", timeout=1)
    try:
        p = _provider(real)
        p.sync()
        assert p._server_ok is False and UUID in p._dirty
        first = p._next_server_try
        p.sync()  # inside the backoff window: no attempt
        assert p._next_server_try == first
    finally:
        real.close()
