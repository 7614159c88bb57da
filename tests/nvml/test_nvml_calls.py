"""NVML calls under a deadline (nvsentinel.node.nvml.calls): real threads, a call that blocks until
released stands in for a hung driver call (the e2e tests hang the fake library itself)."""
from __future__ import annotations

import threading
import time

import pytest

from nvsentinel.node.nvml.calls import CallBusy, CallTimeout, GpuCaller

#: Generous: a call that must succeed is never near it, even on a loaded machine.
LONG = 30.0
#: The deadline of calls that block until released: they can only ever pass it.
SHORT = 0.3


def threads_named(prefix: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(prefix))


def test_a_call_returns_its_result_or_raises_its_error_and_is_measured():
    seen = []
    done = []
    caller = GpuCaller(5, LONG, observe=lambda name, s: seen.append((name, s)), on_done=done.append)
    try:
        assert caller.call("nvmlDeviceGetUUID", lambda x: x * 2, 21) == 42
        with pytest.raises(KeyError):
            caller.call("nvmlDeviceGetName", {}.__getitem__, "missing")
        assert [n for n, _ in seen] == ["nvmlDeviceGetUUID", "nvmlDeviceGetName"]
        assert all(s >= 0 for _, s in seen)
        assert [(c.name, c.gpu, c.expired) for c in done] == [("nvmlDeviceGetUUID", 5, False),
                                                               ("nvmlDeviceGetName", 5, False)]
        assert caller.outstanding is None
    finally:
        caller.close()


def test_a_hung_call_times_out_blocks_the_gpu_and_holds_one_thread():
    release = threading.Event()
    done = []
    caller = GpuCaller(2, SHORT, on_done=done.append)
    before = threads_named("nvml-gpu-2")
    try:
        with pytest.raises(CallTimeout) as info:
            caller.call("nvmlDeviceGetFieldValues", release.wait)
        assert "nvmlDeviceGetFieldValues on GPU 2 did not return within 0.3 s" in str(info.value)
        hung = caller.outstanding
        assert hung is not None and hung.expired and hung.name == "nvmlDeviceGetFieldValues"
        assert not caller.expire(hung)  # reported once: the first to see it did
        # no new call while the hung one is outstanding: refused at once, nothing queued, no thread
        for _ in range(50):
            assert caller.submit("nvmlDeviceGetUUID", lambda: None) is None
        with pytest.raises(CallBusy, match="nvmlDeviceGetFieldValues is still outstanding"):
            caller.call("nvmlDeviceGetUUID", lambda: None)
        assert threads_named("nvml-gpu-2") == before + 1
        # the driver returns: the GPU takes calls again
        release.set()
        deadline = time.monotonic() + LONG
        while caller.outstanding is not None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert [c.expired for c in done] == [True]  # the late return is reported as such
        caller.timeout = LONG
        assert caller.call("nvmlDeviceGetUUID", lambda: "GPU-x") == "GPU-x"
    finally:
        release.set()
        caller.close()


def test_overdue_is_seen_by_a_watcher_of_an_async_call():
    release = threading.Event()
    caller = GpuCaller(0, SHORT)
    try:
        call = caller.submit("nvmlDeviceGetFieldValues", release.wait)
        assert call is not None
        assert caller.overdue(call.issued) is None  # not yet
        assert caller.overdue(call.deadline) is call
        assert caller.expire(call) and caller.overdue(call.deadline + 1) is None  # reported: not again
    finally:
        release.set()
        caller.close()


def test_a_blocking_call_waits_for_a_slot_held_by_a_call_within_its_deadline():
    release = threading.Event()
    caller = GpuCaller(1, LONG)
    try:
        first = caller.submit("nvmlDeviceGetFieldValues", release.wait)
        assert first is not None
        result = []
        t = threading.Thread(target=lambda: result.append(caller.call("nvmlDeviceGetUUID", lambda: "u")))
        t.start()
        release.set()  # the first call ends: the waiting one runs
        t.join(LONG)
        assert result == ["u"]
    finally:
        release.set()
        caller.close()
