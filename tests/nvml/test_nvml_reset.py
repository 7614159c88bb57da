"""The NVML provider's side of the gpu-reset handshake (docs/conditions.md, "GPU reset handshake").

A real Device API server; the test plays the remediation agent (it writes `ResetRequested` by the
condition contract). The provider runs as the real daemon (or a child running `NvmlProvider`, for
settings the daemon does not take yet) with the real pynvml on the fake libnvidia-ml, and once in
process against a scripted NVML, to pin down the order of writes exactly.
"""
from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from apiserver import SubprocessServer, ThreadServer, make_settings  # noqa: E402
from nvml_fake_helpers import UUIDS, Child, clean_env  # noqa: E402

from nvsentinel import errors  # noqa: E402
from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.policy import conditions as logic  # noqa: E402
from nvsentinel.node.nvml.provider import GpuInfo, NvmlProvider  # noqa: E402

GPU3 = UUIDS[3]


# ---- the agent's side, and reading the GPU ----

def request_reset(client: DeviceApiClient, uuid: str, request: str, *, at: int | None = None) -> None:
    """Write `ResetRequested` True as the remediation agent does: merge by type, with the RV."""
    for _ in range(16):
        gpu = client.get_gpu(uuid)
        status = gpu_pb2.GpuStatus()
        status.CopyFrom(gpu.status)
        mine = next((c for c in status.conditions if c.type == "ResetRequested"), None)
        if mine is None:
            mine = status.conditions.add()
        mine.type, mine.status, mine.reason, mine.message = "ResetRequested", "True", "RemediationRequested", request
        mine.last_transition_time.seconds = at if at is not None else int(time.time())
        try:
            client.update_gpu_status(uuid, status, gpu.resource_version)
            return
        except errors.Conflict:
            continue
    raise AssertionError("16 conflicts in a row")


def cond(gpu: gpu_pb2.Gpu, type_: str) -> gpu_pb2.Condition | None:
    return next((c for c in gpu.status.conditions if c.type == type_), None)


def nvml(client: DeviceApiClient, uuid: str) -> tuple[str, str, str]:
    gpu = client.get_gpu(uuid)
    c = cond(gpu, "NvmlHealthy")
    return (c.status, c.reason, gpu.status.recommended_action) if c else ("", "", "")


def answer(client: DeviceApiClient, uuid: str) -> tuple[str, str, str]:
    c = cond(client.get_gpu(uuid), "GpuReset")
    return (c.status, c.reason, c.message) if c else ("", "", "")


def all_nvml(client: DeviceApiClient, status: str, reason: str | None = None, skip: tuple[str, ...] = ()) -> bool:
    gpus = client.list_gpus()[1]
    if sorted(g.metadata.name for g in gpus) != sorted(UUIDS):
        return False
    for g in gpus:
        c = cond(g, "NvmlHealthy")
        if g.metadata.name not in skip and (c is None or c.status != status or (reason and c.reason != reason)):
            return False
    return True


# ---- the provider under test ----

class Daemon:
    """`python -m nvsentinel.daemons.nvml_provider` with its stderr in a temp file."""

    def __init__(self, *flags: str) -> None:
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nvsentinel.daemons.nvml_provider", "--health-port", "0", *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            env=clean_env(PYTHONUNBUFFERED="1"),
        )

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def alive(self) -> None:
        assert self.proc.poll() is None, f"provider exited rc={self.proc.returncode}:\n{self.log()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


#: `NvmlProvider` with a reset command the daemon has no flag wiring for yet, in a fresh interpreter
#: (the fake must be the first NVML library of a process).
CHILD = """\
import signal
from nvsentinel.service.logs import configure_logging
configure_logging("plain", "INFO")
fake_nvml.load(control=os.environ["CONTROL"])
from nvsentinel.node.client import DeviceApiClient
from nvsentinel.node.nvml.provider import NvmlProvider
client = DeviceApiClient(os.environ["ADDRESS"], timeout=5)
provider = NvmlProvider(client, reset_command=os.environ["RESET_COMMAND"])
provider.init_nvml()
signal.signal(signal.SIGTERM, lambda *_: provider.stop())
print("ready", flush=True)
try:
    provider.run()
finally:
    provider.shutdown_nvml()
    client.close()
"""


class ChildProvider:
    def __init__(self, control: Path, address: str, reset_command: str) -> None:
        self.child = Child(CHILD, clean_env(CONTROL=str(control), ADDRESS=address, RESET_COMMAND=reset_command))
        assert self.child.readline(60) == "ready"

    def log(self) -> str:
        return self.child.stderr()

    def alive(self) -> None:
        assert self.child.proc.poll() is None, f"provider exited:\n{self.log()}"

    def close(self) -> None:
        self.child.close()


def wait_for(what: str, check: Callable[[], object], provider, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except errors.NvsentinelError as exc:
            last = exc
        if last is True:
            return
        provider.alive()
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}); provider log:\n{provider.log()}")


@pytest.fixture
def server():
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    srv = ThreadServer(make_settings(d)).start()
    client = DeviceApiClient(srv.tcp, timeout=5)
    try:
        yield srv, client
    finally:
        client.close()
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def _xid48_on_gpu3(client: DeviceApiClient, control: Path, provider) -> None:
    wait_for("8 healthy GPUs", lambda: all_nvml(client, "True", "NvmlOk"), provider, 30)
    wait_for("the reset watch", lambda: "gpu reset requests watched" in provider.log(), provider)
    FaultInjector(control).inject_xid(3, 48)
    wait_for("GPU 3 Xid48", lambda: nvml(client, GPU3) == ("False", "Xid48", "COMPONENT_RESET"), provider)


# ---- the daemon, the real pynvml, the fake library ----

def test_reset_request_is_answered_once_and_heals_the_gpu(server, tmp_path):
    """Verify XID 48 → a request → one reset → NvmlHealthy True GpuReset + GpuReset ResetVerified in well under 1 s
    (the daemon's NVML wait is 5 s), other GPUs untouched, a repeated request not answered again, a new one answered,
    and a restarted provider that finds the answer already there resetting nothing."""
    srv, client = server
    control = tmp_path / "ctl"
    flags = ("--fake-nvml", "--fake-nvml-control", str(control), "--address", srv.tcp)
    provider = Daemon(*flags)
    try:
        _xid48_on_gpu3(client, control, provider)
        others = {u: client.get_gpu(u).resource_version for u in UUIDS if u != GPU3}

        t0 = time.monotonic()
        request_reset(client, GPU3, "he-1")
        wait_for("the answer to he-1", lambda: answer(client, GPU3)[2].startswith("he-1:"), provider, 5)
        latency = time.monotonic() - t0
        print(f"ResetRequested -> GpuReset answer latency: {latency * 1000:.1f} ms")
        assert latency < 1.0, f"the answer took {latency:.3f} s"

        gpu = client.get_gpu(GPU3)
        assert (cond(gpu, "NvmlHealthy").status, cond(gpu, "NvmlHealthy").reason) == ("True", "GpuReset")
        assert cond(gpu, "NvmlHealthy").message == "GPU reset and re-verified (requested by HealthEvent he-1)"
        assert gpu.status.recommended_action == "NONE"
        assert answer(client, GPU3) == ("True", "ResetVerified", "he-1: GPU reset and re-verified")
        ack = cond(gpu, "GpuReset")
        assert abs(ack.last_transition_time.seconds - time.time()) < 10
        req = cond(gpu, "ResetRequested")  # the agent's condition: never touched by the provider
        assert (req.status, req.reason, req.message) == ("True", "RemediationRequested", "he-1")
        assert {u: client.get_gpu(u).resource_version for u in UUIDS if u != GPU3} == others
        log = provider.log()
        assert log.count('msg="gpu reset requested"') == 1 and log.count('msg="gpu reset verified"') == 1
        assert f"uuid={GPU3}" in log and "request=he-1" in log

        # the same request again (the agent re-writes it, the GPU's RV moves): not answered twice;
        # the next request, answered after it, is the proof the repeat was seen and passed over
        rv = client.get_gpu(GPU3).resource_version
        request_reset(client, GPU3, "he-1", at=int(time.time()) + 60)
        assert client.get_gpu(GPU3).resource_version > rv
        request_reset(client, GPU3, "he-2")
        wait_for("the answer to he-2", lambda: answer(client, GPU3)[2].startswith("he-2:"), provider, 5)
        log = provider.log()
        assert log.count('msg="gpu reset requested"') == 2 and log.count('msg="gpu reset verified"') == 2
        assert "request=he-2" in log
        assert nvml(client, GPU3) == ("True", "GpuReset", "NONE")
        assert {u: client.get_gpu(u).resource_version for u in UUIDS if u != GPU3} == others

        # a restart that finds he-2 answered resets nothing; he-3, asked after its start, is answered
        provider.proc.send_signal(signal.SIGTERM)
        assert provider.proc.wait(15) == 0, provider.log()
        provider.close()
        provider = Daemon(*flags)
        wait_for("the reset watch", lambda: "gpu reset requests watched" in provider.log(), provider, 30)
        request_reset(client, GPU3, "he-3")
        wait_for("the answer to he-3", lambda: answer(client, GPU3)[2].startswith("he-3:"), provider, 5)
        log = provider.log()
        assert log.count('msg="gpu reset requested"') == 1 and "request=he-2" not in log, log
    finally:
        provider.close()


def test_reset_brings_back_a_lost_gpu(server, tmp_path):
    """Verify the reset reaches the fake library: a lost GPU (every wait failing, every GPU GpuLost) answers
    again only because of it; it is written healthy by the reset, then the others by the provider's recovery."""
    srv, client = server
    control = tmp_path / "ctl"
    provider = Daemon("--fake-nvml", "--fake-nvml-control", str(control), "--address", srv.tcp)
    try:
        wait_for("8 healthy GPUs", lambda: all_nvml(client, "True", "NvmlOk"), provider, 30)
        wait_for("the reset watch", lambda: "gpu reset requests watched" in provider.log(), provider)
        FaultInjector(control).lose(3)
        wait_for("every GPU lost", lambda: all_nvml(client, "False", "GpuLost"), provider)
        time.sleep(0.5)
        assert all_nvml(client, "False", "GpuLost")  # lost stays lost: nothing but a reset recovers it
        request_reset(client, GPU3, "he-lost")
        wait_for("the answer", lambda: answer(client, GPU3)[:2] == ("True", "ResetVerified"), provider, 5)
        assert nvml(client, GPU3)[:2] == ("True", "GpuReset")
        wait_for("the others recovered", lambda: all_nvml(client, "True", "Recovered", skip=(GPU3,)), provider)
        assert nvml(client, GPU3) == ("True", "GpuReset", "NONE")  # the recovery did not overwrite it
    finally:
        provider.close()


def test_failing_and_disabled_resets_answer_reset_failed(server, tmp_path):
    """Verify a failing reset command → GpuReset False ResetFailed with the error, NvmlHealthy untouched; resets
    disabled ("") → ResetFailed "resets disabled on this node"; a restart does not re-answer the failed request."""
    srv, client = server
    control = tmp_path / "ctl"
    provider = ChildProvider(control, srv.tcp, "false")
    try:
        _xid48_on_gpu3(client, control, provider)
        before = cond(client.get_gpu(GPU3), "NvmlHealthy")
        request_reset(client, GPU3, "he-f")
        wait_for("the failure", lambda: answer(client, GPU3)[0] == "False", provider, 5)
        assert answer(client, GPU3) == ("False", "ResetFailed", "he-f: `false` exited 1: no output")
        assert cond(client.get_gpu(GPU3), "NvmlHealthy") == before
        assert nvml(client, GPU3) == ("False", "Xid48", "COMPONENT_RESET")
        assert 'msg="gpu reset failed"' in provider.log()
    finally:
        provider.close()
    provider = ChildProvider(control, srv.tcp, "")
    try:
        wait_for("the reset watch", lambda: "gpu reset requests watched" in provider.log(), provider, 30)
        assert "resetter=disabled" in provider.log()
        request_reset(client, GPU3, "he-d")
        wait_for("the refusal", lambda: answer(client, GPU3)[2].startswith("he-d:"), provider, 5)
        assert answer(client, GPU3) == ("False", "ResetFailed", "he-d: resets disabled on this node")
        assert provider.log().count('msg="gpu reset requested"') == 1  # he-f was not answered again
    finally:
        provider.close()


def test_embedded_provider_answers_resets(tmp_path):
    """Verify the provider inside the device API server (--enable-nvml-provider --fake-nvml) answers too."""
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    control = tmp_path / "ctl"
    srv = SubprocessServer.start(d, "--enable-nvml-provider", "--fake-nvml", "--fake-nvml-control", str(control))
    client = DeviceApiClient(srv.unix, timeout=5)
    provider = SimpleNamespace(alive=lambda: None, log=lambda: "".join(srv.log))
    try:
        wait_for("8 healthy GPUs", lambda: all_nvml(client, "True", "NvmlOk"), provider, 30)
        wait_for("the reset watch", lambda: "gpu reset requests watched" in provider.log(), provider)
        FaultInjector(control).inject_xid(1, 48)
        wait_for("GPU 1 Xid48", lambda: nvml(client, UUIDS[1]) == ("False", "Xid48", "COMPONENT_RESET"), provider)
        request_reset(client, UUIDS[1], "he-e")
        wait_for("the answer", lambda: answer(client, UUIDS[1])[2].startswith("he-e:"), provider, 5)
        assert answer(client, UUIDS[1])[:2] == ("True", "ResetVerified")
        assert nvml(client, UUIDS[1]) == ("True", "GpuReset", "NONE")
        assert srv.terminate() == 0  # the reset watch stops with the provider, cleanly
        srv.close()
        assert "Traceback" not in provider.log()
    finally:
        client.close()
        srv.close()
        shutil.rmtree(d, ignore_errors=True)


# ---- in process: the order of writes ----

class ScriptedNvml:
    """The pynvml calls `step` and the re-verification make, for one GPU; waits answer from a script."""

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

    def xid(self, xid: int) -> SimpleNamespace:
        return SimpleNamespace(device=self.handle, eventType=self.nvmlEventTypeXidCriticalError, eventData=xid)

    def nvmlEventSetWait(self, event_set: object, timeout_ms: int) -> object:
        outcome = self.script.popleft() if self.script else self.NVMLError_Timeout()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def nvmlDeviceGetHandleByIndex(self, index: int) -> ctypes.c_void_p:
        return self.handle

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return GPU3

    def nvmlDeviceGetName(self, handle: object) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> SimpleNamespace:
        return SimpleNamespace(total=80 << 30)


class Recording:
    """A real client remembering, per status write, NvmlHealthy's (status, reason) and GpuReset's message."""

    def __init__(self, real: DeviceApiClient) -> None:
        self.real = real
        self.written: list[tuple[str, str, str]] = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def update_gpu_status(self, name, status, resource_version=0):
        out = self.real.update_gpu_status(name, status, resource_version)
        by_type = {c.type: c for c in status.conditions}
        n, a = by_type.get("NvmlHealthy"), by_type.get("GpuReset")
        self.written.append((n.status if n else "", n.reason if n else "", a.message if a else ""))
        return out


class BlockingResetter:
    description = "test: blocks until released"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []

    def reset(self, index: int, uuid: str) -> None:
        self.calls.append(index)
        self.entered.set()
        assert self.release.wait(10)


@pytest.fixture
def scripted(server):
    srv, agent = server
    client = Recording(DeviceApiClient(srv.tcp, timeout=5))
    resetter = BlockingResetter()
    p = NvmlProvider(client, wait_timeout_ms=5000, resetter=resetter)
    nvml_ = ScriptedNvml()
    p._nvml = nvml_
    info = GpuInfo(3, GPU3, "NVIDIA H100 80GB HBM3", "00000000:18:00.0", 80 << 30)
    p.gpus.append(info)
    p._by_handle[nvml_.handle.value] = info
    p.views[GPU3] = logic.decide(logic.GpuView(), logic.Xid(48)).view
    p._dirty.add(GPU3)
    p.sync()
    assert client.written == [("False", "Xid48", "")]
    try:
        yield p, nvml_, client, agent, resetter
    finally:
        resetter.release.set()
        p.stop_reset_watch()
        client.real.close()


def test_an_event_during_the_reset_is_written_after_the_answer(scripted):
    """Verify an event of the GPU seen while it is being reset is held, and written after the one answer write
    (the server keeps states, not a history: written together, the recovery would never be seen)."""
    p, nvml_, client, agent, resetter = scripted
    p.start_reset_watch()
    request_reset(agent, GPU3, "he-9")
    assert resetter.entered.wait(5), "the request never reached the resetter"
    nvml_.script.append(nvml_.xid(79))  # the main loop meanwhile gets the GPU's next fault
    p.step()
    p.sync()
    assert client.written == [("False", "Xid48", "")]  # held: nothing written, the view unchanged
    assert p.views[GPU3].condition()[1] == "Xid48"
    resetter.release.set()
    deadline = time.monotonic() + 5
    while len(client.written) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert client.written == [
        ("False", "Xid48", ""),
        ("True", "GpuReset", "he-9: GPU reset and re-verified"),  # ONE write: both conditions
        ("False", "Xid79", "he-9: GPU reset and re-verified"),
    ]
    gpu = agent.get_gpu(GPU3)
    assert (cond(gpu, "NvmlHealthy").reason, gpu.status.recommended_action) == ("Xid79", "RESTART_BM")
    assert resetter.calls == [3] and p.reset_counts == {"verified": 1}


def test_a_verified_reset_lowers_the_action_over_an_earlier_failed_answer(scripted):
    """Verify answering he-2 after a failed he-1 writes recommended_action NONE (the stale False is replaced
    first), and that the answer survives a Device API restart (re-sent with the view)."""
    p, nvml_, client, agent, resetter = scripted
    resetter.release.set()
    p.resetter = None
    info = p.gpus[0]
    assert p.answer(info, "he-1").reason == "ResetFailed"
    assert answer(agent, GPU3) == ("False", "ResetFailed", "he-1: resets disabled on this node")
    assert nvml(agent, GPU3) == ("False", "Xid48", "COMPONENT_RESET")
    p.resetter = resetter
    assert p.answer(info, "he-2").reason == "ResetVerified"
    assert nvml(agent, GPU3) == ("True", "GpuReset", "NONE")
    assert p.reset_counts == {"failed": 1, "verified": 1}
    # the server forgets everything (in memory by design): the provider re-sends the answer with the view
    agent.delete_gpu(GPU3)
    p._next_resync = 0.0
    p.sync()
    assert answer(agent, GPU3) == ("True", "ResetVerified", "he-2: GPU reset and re-verified")
    assert nvml(agent, GPU3) == ("True", "GpuReset", "NONE")
