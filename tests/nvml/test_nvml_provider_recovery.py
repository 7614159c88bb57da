"""A lost GPU's recovery reaches the Device API as its own write, promptly.

The provider loop (`sync`, then `step`) is driven by hand against a scripted NVML and a real Device
API server, so the order of what the server stored is exact: the Device API keeps the merged state,
not a history, so a recovery written together with the next event is never seen by anyone.
"""
from __future__ import annotations

import ctypes
import shutil
import sys
import tempfile
from collections import deque
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings  # noqa: E402

from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.policy import conditions as logic  # noqa: E402
from nvsentinel.node.nvml.provider import LOST_BACKOFF, GpuInfo, NvmlProvider  # noqa: E402

UUID = "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb"
WAIT_MS = 5000


class ScriptedNvml:
    """The pynvml calls `step` makes: waits answer from a script, the GPU always answers again."""

    class NVMLError(Exception):
        pass

    class NVMLError_Timeout(NVMLError):
        pass

    class NVMLError_GpuIsLost(NVMLError):
        pass

    NVML_ERROR_UNKNOWN = 999
    nvmlEventTypeXidCriticalError = 0x8
    nvmlEventTypeDoubleBitEccError = 0x2
    nvmlEventTypeSingleBitEccError = 0x1
    nvmlEventTypeGpuUnavailableError = 0x400

    def __init__(self) -> None:
        self.handle = ctypes.c_void_p(0x1000)
        self.script: deque[object] = deque()
        self.timeouts: list[int] = []

    def xid(self, xid: int) -> SimpleNamespace:
        return SimpleNamespace(device=self.handle, eventType=self.nvmlEventTypeXidCriticalError, eventData=xid)

    def nvmlEventSetWait(self, event_set: object, timeout_ms: int) -> object:
        self.timeouts.append(timeout_ms)
        outcome = self.script.popleft() if self.script else self.NVMLError_Timeout()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def nvmlDeviceGetHandleByIndex(self, index: int) -> ctypes.c_void_p:
        return self.handle

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return UUID


class Recording:
    """A real client that remembers the NvmlHealthy (status, reason) of every status it wrote."""

    def __init__(self, real: DeviceApiClient) -> None:
        self.real = real
        self.written: list[tuple[str, str]] = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def update_gpu_status(self, name, status, resource_version=0):
        out = self.real.update_gpu_status(name, status, resource_version)
        self.written += [(c.status, c.reason) for c in status.conditions if c.type == logic.CONDITION_TYPE]
        return out


@pytest.fixture
def provider():
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    srv = ThreadServer(make_settings(d)).start()
    real = DeviceApiClient(srv.tcp, timeout=5)
    client = Recording(real)
    p = NvmlProvider(client, wait_timeout_ms=WAIT_MS)
    nvml = ScriptedNvml()
    p._nvml = nvml
    info = GpuInfo(0, UUID, "NVIDIA H100 80GB HBM3", "00000000:18:00.0", 80 << 30)
    p.gpus.append(info)
    p._by_handle[nvml.handle.value] = info
    p.views[UUID] = logic.decide(logic.GpuView(), logic.Xid(79)).view  # a fault still open, as in the field
    p._dirty.add(UUID)
    p.sync()
    assert client.written == [("False", "Xid79")]
    try:
        yield p, nvml, client
    finally:
        real.close()
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def loop(p: NvmlProvider) -> None:
    """One turn of `NvmlProvider.run`."""
    p.sync()
    p.step()


def test_recovery_is_written_before_the_event_that_ended_the_wait(provider):
    """Verify a wait that returns the next XID right after a loss writes Recovered, then that XID."""
    p, nvml, client = provider
    nvml.script.append(nvml.NVMLError_GpuIsLost())
    loop(p)
    assert p._lost
    nvml.script.append(nvml.xid(79))  # the GPU is back, and its next fault ends the wait
    loop(p)
    p.sync()
    assert client.written == [("False", "Xid79"), ("False", "GpuLost"), ("True", "Recovered"), ("False", "Xid79")]
    gpu = client.real.get_gpu(UUID)
    assert [(c.status, c.reason) for c in gpu.status.conditions] == [("False", "Xid79")]
    assert gpu.status.recommended_action == "RESTART_BM"


def test_a_quiet_gpu_is_reverified_within_the_lost_backoff(provider):
    """Verify that once lost, a wait is bounded by the lost backoff (not the 5 s wait timeout), so a
    GPU that comes back with no event is declared recovered at once; then full waits again."""
    p, nvml, client = provider
    nvml.script.append(nvml.NVMLError_GpuIsLost())
    loop(p)
    assert p._lost
    loop(p)  # pushes GpuLost, then a wait that times out: the GPU answers, recovered
    p.sync()
    lost_waits = nvml.timeouts[1:]
    assert lost_waits and max(lost_waits) <= LOST_BACKOFF[1] * 1000 < WAIT_MS
    assert not p._lost
    assert client.written == [("False", "Xid79"), ("False", "GpuLost"), ("True", "Recovered")]
    nvml.timeouts.clear()
    loop(p)
    assert nvml.timeouts == [WAIT_MS]
