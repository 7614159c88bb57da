"""Faults reach the real pynvml through the fake: XID, ECC, GPU lost/recovered/reset, from any process."""
from __future__ import annotations

import json
import os
import time

import pytest
from nvml_fake_helpers import EVENT_LOOP, Child, clean_env, last_json, run_script

from nvsentinel import cli
from nvsentinel.devtools import fake_nvml

XID, DBE, SBE, UNAVAILABLE = 0x8, 0x2, 0x1, 0x4000


@pytest.fixture
def control(tmp_path):
    return tmp_path / "fake-nvml.ctl"


@pytest.fixture
def watcher(control):
    """A child process waiting on events for all GPUs, ready to be injected into."""
    with Child(EVENT_LOOP, clean_env(CONTROL=str(control))) as child:
        assert child.readline(timeout=30) == "ready"
        yield child


def test_xid_from_another_process_arrives_within_a_second(watcher, control):
    """Verify XID 79 injected by another process arrives as an XID event on GPU 3 within 1 s."""
    injector = fake_nvml.FaultInjector(control)
    start = time.monotonic()
    assert injector.inject_xid(3, 79) == "xid 3 79"
    event = watcher.read_json(timeout=5)
    elapsed = time.monotonic() - start
    assert event == {"gpu": 3, "type": XID, "data": 79, "gi": 0xFFFFFFFF}
    assert elapsed < 1.0, f"event took {elapsed:.3f} s"


def test_cli_injects_into_a_running_consumer(watcher, control, capsys):
    """Verify `nvsentinel nvml inject` delivers XID, DBE and SBE events, by index and by UUID."""
    assert cli.main(["nvml", "inject", "--xid", "48", "--gpu", "0", "--control", str(control)]) == 0
    assert capsys.readouterr().out.strip() == f"xid 0 48 -> {control}"
    assert watcher.read_json(timeout=5) == {"gpu": 0, "type": XID, "data": 48, "gi": 0xFFFFFFFF}
    uuid = "GPU-e1e1a66f-fac2-ceba-e5c7-a20a37641d4f"  # GPU 4 of the built-in node
    assert cli.main(["nvml", "inject", "--ecc", "dbe", "--gpu", uuid, "--control", str(control)]) == 0
    assert watcher.read_json(timeout=5) == {"gpu": 4, "type": DBE, "data": 0, "gi": 0xFFFFFFFF}
    assert cli.main(["nvml", "inject", "--ecc", "sbe", "--gpu", "7", "--control", str(control)]) == 0
    assert watcher.read_json(timeout=5) == {"gpu": 7, "type": SBE, "data": 0, "gi": 0xFFFFFFFF}


def test_lost_gpu_from_another_process(watcher, control):
    """Verify a queued XID is delivered, then waits fail with GPU_IS_LOST until recovery releases the rest."""
    injector = fake_nvml.FaultInjector(control)
    injector.inject_xid(2, 79)
    injector.lose(2)
    injector.inject_xid(2, 31)  # a lost GPU raises nothing: dropped
    injector.inject_xid(5, 13)  # another GPU's event waits behind the loss
    assert watcher.read_json(timeout=5) == {"gpu": 2, "type": XID, "data": 79, "gi": 0xFFFFFFFF}
    assert watcher.read_json(timeout=5) == {"error": "NVMLError_GpuIsLost"}
    assert watcher.read_json(timeout=5) == {"error": "NVMLError_GpuIsLost"}  # it keeps failing
    injector.recover(2)
    while (doc := watcher.read_json(timeout=5)) == {"error": "NVMLError_GpuIsLost"}:
        pass
    assert doc == {"gpu": 5, "type": XID, "data": 13, "gi": 0xFFFFFFFF}


def test_commands_split_across_writes_and_bad_lines(watcher, control):
    """Verify a half-written line waits for its newline, and bad lines are reported and skipped."""
    with open(control, "ab", buffering=0) as fh:
        fh.write(b"xid 1 7")
        time.sleep(0.1)
        fh.write(b"9\nfrobnicate 1\nxid 99 79\nxid 1 zero\nlose GPU-00000000-0000-0000-0000-000000000000\n")
        fh.write(b"# a comment\n\nsbe all\n")
    assert watcher.read_json(timeout=5) == {"gpu": 1, "type": XID, "data": 79, "gi": 0xFFFFFFFF}
    assert [watcher.read_json(timeout=5)["gpu"] for _ in range(8)] == list(range(8))
    stderr = watcher.close()
    assert 'unknown command "frobnicate"' in stderr
    assert "GPU 99 is not in the topology (8 GPUs)" in stderr
    assert 'bad XID "zero"' in stderr
    assert "no GPU has uuid GPU-00000000-0000-0000-0000-000000000000" in stderr


LOST_IN_PROCESS = """\
fake = fake_nvml.load(control="")
import pynvml as N
N.nvmlInit()
inject = fake_nvml.FaultInjector.in_process()
def code(call):
    try:
        call()
        return "ok"
    except N.NVMLError as exc:
        return type(exc).__name__
h2 = N.nvmlDeviceGetHandleByIndex(2)
h0 = N.nvmlDeviceGetHandleByIndex(0)
uuid2 = N.nvmlDeviceGetUUID(h2)
s = N.nvmlEventSetCreate()
N.nvmlDeviceRegisterEvents(h2, N.nvmlEventTypeXidCriticalError, s)
inject.lose(2)
out = {name: code(call) for name, call in {
    "uuid": lambda: N.nvmlDeviceGetUUID(h2), "name": lambda: N.nvmlDeviceGetName(h2),
    "pci": lambda: N.nvmlDeviceGetPciInfo(h2), "memory": lambda: N.nvmlDeviceGetMemoryInfo(h2),
    "index": lambda: N.nvmlDeviceGetIndex(h2), "events": lambda: N.nvmlDeviceGetSupportedEventTypes(h2),
    "by_index": lambda: N.nvmlDeviceGetHandleByIndex(2), "by_uuid": lambda: N.nvmlDeviceGetHandleByUUID(uuid2),
    "register": lambda: N.nvmlDeviceRegisterEvents(h2, N.nvmlEventTypeXidCriticalError, s),
    "wait": lambda: N.nvmlEventSetWait(s, 0), "other_gpu": lambda: N.nvmlDeviceGetUUID(h0),
    "count": lambda: N.nvmlDeviceGetCount(),
}.items()}
inject.recover(2)
out["after_recover"] = code(lambda: N.nvmlDeviceGetUUID(h2))
out["wait_after_recover"] = code(lambda: N.nvmlEventSetWait(s, 0))
print(json.dumps(out))
"""


def test_lost_gpu_answers_gpu_is_lost_until_recovered():
    """Verify every call on a lost GPU raises GpuIsLost, other GPUs answer, and recovery restores it."""
    out = last_json(run_script(LOST_IN_PROCESS))
    lost = {k: v for k, v in out.items() if v == "NVMLError_GpuIsLost"}
    assert set(lost) == {"uuid", "name", "pci", "memory", "index", "events", "by_index", "by_uuid", "register", "wait"}
    assert out["other_gpu"] == "ok" and out["count"] == "ok"
    assert out["after_recover"] == "ok"
    assert out["wait_after_recover"] == "NVMLError_Timeout"


def test_gpu_unavailable_event_when_the_topology_supports_it(tmp_path, control):
    """Verify a GPU registered for GPU-unavailable events gets that event before GPU_IS_LOST."""
    topology = tmp_path / "t.json"
    topology.write_text(json.dumps({"defaults": {"supported_events": ["xid", "gpu_unavailable"]}}))
    env = clean_env(CONTROL=str(control), TOPOLOGY=str(topology))
    with Child(EVENT_LOOP, env) as child:
        assert child.readline(timeout=30) == "ready"
        fake_nvml.FaultInjector(control).lose(6)
        assert child.read_json(timeout=5) == {"gpu": 6, "type": UNAVAILABLE, "data": 0, "gi": 0xFFFFFFFF}
        assert child.read_json(timeout=5) == {"error": "NVMLError_GpuIsLost"}


def test_reset_restores_the_gpu_and_drops_its_undelivered_events():
    """Verify a reset (command or fakeNvmlResetGpu) makes a lost GPU answer and discards its queued events."""
    body = """\
    fake = fake_nvml.load(control="")
    import pynvml as N
    N.nvmlInit()
    inject = fake_nvml.FaultInjector.in_process()
    s = N.nvmlEventSetCreate()
    for i in (1, 2):
        N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(i), N.nvmlEventTypeXidCriticalError, s)
    inject.inject_xid(1, 94)
    inject.inject_xid(2, 95)
    inject.lose(1)
    inject.reset(1)
    name = N.nvmlDeviceGetName(N.nvmlDeviceGetHandleByIndex(1))
    first = N.nvmlEventSetWait(s, 0).eventData
    try:
        N.nvmlEventSetWait(s, 0)
        second = "event"
    except N.NVMLError_Timeout:
        second = "timeout"
    inject.lose(2)
    fake.cdll.fakeNvmlResetGpu.argtypes = [ctypes.c_uint]
    rc = fake.cdll.fakeNvmlResetGpu(2)
    print(json.dumps([name, first, second, rc, N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByIndex(2))]))
    """
    assert last_json(run_script(body)) == ["NVIDIA H100 80GB HBM3", 95, "timeout", 0, 2]


def test_lost_state_survives_a_consumer_restart_but_old_events_do_not(control):
    """Verify commands written before nvmlInit replay GPU state (lost) but deliver no stale events."""
    injector = fake_nvml.FaultInjector(control)
    injector.inject_xid(0, 79)
    injector.lose(5)
    injector.lose(6)
    injector.recover(6)
    body = """\
    fake_nvml.load(control=os.environ["CONTROL"])
    import pynvml as N
    N.nvmlInit()
    s = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(0), N.nvmlEventTypeXidCriticalError, s)
    out = []
    for i in (5, 6):
        try:
            N.nvmlDeviceGetHandleByIndex(i)
            out.append("ok")
        except N.NVMLError_GpuIsLost:
            out.append("lost")
    try:
        N.nvmlEventSetWait(s, 50)
        out.append("stale event")
    except N.NVMLError_Timeout:
        out.append("no event")
    print(json.dumps(out))
    """
    assert last_json(run_script(body, env=clean_env(CONTROL=str(control)))) == ["lost", "ok", "no event"]


def test_wait_times_out_and_shutdown_wakes_a_waiter():
    """Verify a wait with nothing to report times out on time, and nvmlShutdown ends a blocked wait."""
    body = """\
    import threading
    fake_nvml.load(control="")
    import pynvml as N
    N.nvmlInit()
    s = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(0), N.nvmlEventTypeXidCriticalError, s)
    t0 = time.monotonic()
    try:
        N.nvmlEventSetWait(s, 200)
    except N.NVMLError_Timeout:
        waited = time.monotonic() - t0
    result = {}
    def wait():
        t = time.monotonic()
        try:
            N.nvmlEventSetWait(s, 10000)
        except N.NVMLError as exc:
            result["error"] = type(exc).__name__
        result["took"] = time.monotonic() - t
    th = threading.Thread(target=wait)
    th.start()
    time.sleep(0.2)
    N.nvmlShutdown()
    th.join(5)
    print(json.dumps([waited, result]))
    """
    waited, result = last_json(run_script(body))
    assert 0.19 <= waited < 1.5
    assert result["error"] == "NVMLError_Uninitialized" and result["took"] < 2


def test_event_queue_overflow_drops_new_events_with_one_line():
    """Verify a set more than 1024 events behind keeps the oldest 1024 and says so once on stderr."""
    body = """\
    fake_nvml.load(control="")
    import pynvml as N
    N.nvmlInit()
    inject = fake_nvml.FaultInjector.in_process()
    s = N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(0), N.nvmlEventTypeXidCriticalError, s)
    for xid in range(1, 1101):
        inject.inject_xid(0, xid)
    got = []
    while True:
        try:
            got.append(N.nvmlEventSetWait(s, 0).eventData)
        except N.NVMLError_Timeout:
            break
    print(json.dumps([len(got), got[0], got[-1]]))
    """
    proc = run_script(body)
    assert last_json(proc) == [1024, 1, 1024]
    assert proc.stderr.count("dropping new ones") == 1


def test_in_process_injection_errors_are_raised():
    """Verify the in-process injector raises ValueError for a GPU the topology lacks, and before nvmlInit."""
    body = """\
    fake_nvml.load(control="")
    inject = fake_nvml.FaultInjector.in_process()
    out = []
    try:
        inject.inject_xid(0, 79)
    except ValueError as exc:
        out.append(str(exc))
    import pynvml as N
    N.nvmlInit()
    try:
        inject.lose(8)
    except ValueError as exc:
        out.append(str(exc))
    print(json.dumps(out))
    """
    assert last_json(run_script(body)) == [
        "fake NVML refused 'xid 0 79': NVML is not initialized (call nvmlInit first)",
        "fake NVML refused 'lose 8': GPU 8 is not in the topology (8 GPUs)",
    ]


def test_control_file_replaced_or_truncated_starts_a_new_stream(watcher, control):
    """Verify the library follows a control file that is deleted and written again from scratch."""
    injector = fake_nvml.FaultInjector(control)
    injector.inject_xid(0, 62)
    injector.inject_xid(0, 63)
    assert [watcher.read_json(timeout=5)["data"] for _ in range(2)] == [62, 63]
    os.unlink(control)
    time.sleep(0.05)
    injector.inject_xid(1, 64)  # a fresh file, shorter than the old cursor
    assert watcher.read_json(timeout=5) == {"gpu": 1, "type": XID, "data": 64, "gi": 0xFFFFFFFF}
