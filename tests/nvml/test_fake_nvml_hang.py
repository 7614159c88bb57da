"""The fake's `hang` command: calls on a hung GPU block without holding up anything else."""
from __future__ import annotations

from nvml_fake_helpers import UUIDS, clean_env, last_json, run_script

from nvsentinel.devtools import fake_nvml

HANG_WHILE_OTHERS_RUN = """\
import threading
control = os.environ["CONTROL"]
fake_nvml.load(control=control)
import pynvml as N
N.nvmlInit()
outside = fake_nvml.FaultInjector(control)  # through the file, as another process would
addr = lambda h: ctypes.cast(h, ctypes.c_void_p).value
h2, h3 = N.nvmlDeviceGetHandleByIndex(2), N.nvmlDeviceGetHandleByIndex(3)
uuid2, bus2 = N.nvmlDeviceGetUUID(h2), N.nvmlDeviceGetPciInfo(h2).busId
s = N.nvmlEventSetCreate()
for h in (h2, h3):
    N.nvmlDeviceRegisterEvents(h, N.nvmlEventTypeXidCriticalError, s)
fake_nvml.FaultInjector.in_process().hang(2, 3600)

results, finished, started = {}, {}, {}
def run(name, call):
    started[name].set()
    try:
        results[name] = call()
    except N.NVMLError as exc:
        results[name] = type(exc).__name__
    finished[name] = time.monotonic()
gpu2_calls = {
    "uuid": lambda: N.nvmlDeviceGetUUID(h2),
    "by_index": lambda: addr(N.nvmlDeviceGetHandleByIndex(2)) == addr(h2),
    "by_uuid": lambda: addr(N.nvmlDeviceGetHandleByUUID(uuid2)) == addr(h2),
    "by_pci": lambda: addr(N.nvmlDeviceGetHandleByPciBusId(bus2)) == addr(h2),
    "field": lambda: N.nvmlDeviceGetFieldValues(h2, [230])[0].nvmlReturn,
    "register": lambda: N.nvmlDeviceRegisterEvents(h2, N.nvmlEventTypeSingleBitEccError, s),
}
threads = []
for name, call in gpu2_calls.items():
    started[name] = threading.Event()
    threads.append(threading.Thread(target=run, args=(name, call), daemon=True))
    threads[-1].start()
    assert started[name].wait(30)

# meanwhile: GPU 3 answers, and an event wait on another thread sees a fault injected via the file
gpu3 = [N.nvmlDeviceGetUUID(h3), N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByIndex(3)),
        N.nvmlDeviceGetFieldValues(h3, [230])[0].nvmlReturn]
def wait_one():
    e = N.nvmlEventSetWait(s, 30000)
    return [addr(e.device) == addr(h3), e.eventData]
started["wait"] = threading.Event()
waiter = threading.Thread(target=run, args=("wait", wait_one), daemon=True)
waiter.start()
assert started["wait"].wait(30)
outside.inject_xid(3, 79)
waiter.join(30)
# not a per-GPU call: a wait delivers the hung GPU's own event too
outside.inject_xid(2, 48)
e = N.nvmlEventSetWait(s, 30000)
own_event = [addr(e.device) == addr(h2), e.eventData]
still_blocked = sorted(name for name in gpu2_calls if name not in finished)

cleared = time.monotonic()
outside.hang(2, 0)
for t in threads:
    t.join(30)
print(json.dumps({"gpu3": gpu3, "wait": results.get("wait"), "own_event": own_event,
                  "still_blocked": still_blocked,
                  "gpu2": {name: results.get(name) for name in gpu2_calls},
                  "returned_after_clear": sorted(n for n in gpu2_calls if finished.get(n, 0) >= cleared)}))
"""


def test_hang_blocks_only_the_hung_gpu(tmp_path):
    """Verify calls on hung GPU 2 block until the hang ends, while GPU 3, event waits and the file go on."""
    control = tmp_path / "c.ctl"
    out = last_json(run_script(HANG_WHILE_OTHERS_RUN, env=clean_env(CONTROL=str(control))))
    names = ["by_index", "by_pci", "by_uuid", "field", "register", "uuid"]
    assert out["gpu3"] == [UUIDS[3], 3, 0]
    assert out["wait"] == [True, 79]
    assert out["own_event"] == [True, 48]
    assert out["still_blocked"] == names  # every GPU 2 call was still blocked after all of that
    assert out["returned_after_clear"] == names  # ...and returned only once `hang 2 0` was written
    assert out["gpu2"] == {"uuid": UUIDS[2], "by_index": True, "by_uuid": True, "by_pci": True, "field": 0,
                           "register": None}


HANG_WINDOW = """\
import threading
fake_nvml.load(control="")
import pynvml as N
N.nvmlInit()
inject = fake_nvml.FaultInjector.in_process()
h2 = N.nvmlDeviceGetHandleByIndex(2)
inject.hang(2, 3600)
start = time.monotonic()
inject.hang(2, 1.5)  # a new hang replaces the window
uuid = N.nvmlDeviceGetUUID(h2)
took = time.monotonic() - start
s = N.nvmlEventSetCreate()
N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(0), N.nvmlEventTypeXidCriticalError, s)
inject.hang("all", 3600)
t = time.monotonic()
try:
    N.nvmlEventSetWait(s, 0)
except N.NVMLError_Timeout:
    wait_took = time.monotonic() - t
result = {}
def call():
    try:
        N.nvmlDeviceGetName(h2)
        result["rc"] = "ok"
    except N.NVMLError as exc:
        result["rc"] = type(exc).__name__
th = threading.Thread(target=call)
th.start()
count = N.nvmlDeviceGetCount()  # not a per-GPU call
N.nvmlShutdown()  # ends the blocked call
th.join(30)
print(json.dumps([uuid, took, wait_took, count, result.get("rc"), th.is_alive()]))
"""


def test_hang_window_ends_by_itself_and_at_shutdown():
    """Verify a call returns once the (replaced) window is over, waits never block, and shutdown ends a hang."""
    uuid, took, wait_took, count, rc, alive = last_json(run_script(HANG_WINDOW))
    assert uuid == UUIDS[2]
    assert 1.5 <= took < 30  # the replacing 1.5 s window, not the hour it replaced
    assert wait_took < 10 and count == 8
    assert (rc, alive) == ("NVMLError_Uninitialized", False)


def test_hang_commands_refuse_bad_values_and_are_not_replayed(tmp_path):
    """Verify bad hang values are refused, and a hang written before nvmlInit does not block after it."""
    control = tmp_path / "c.ctl"
    fake_nvml.FaultInjector(control).hang(2, 3600)
    body = """\
    fake_nvml.load(control=os.environ["CONTROL"])
    import pynvml as N
    N.nvmlInit()
    t = time.monotonic()
    out = [N.nvmlDeviceGetUUID(N.nvmlDeviceGetHandleByIndex(2)), time.monotonic() - t < 10]
    inject = fake_nvml.FaultInjector.in_process()
    for line in ("hang 2 -1", "hang 2 3600.5", "hang 2 1e3", "hang 2 0x10", "hang 2 inf", "hang 2 .", "hang 2"):
        try:
            inject.send(line)
            out.append("accepted")
        except ValueError as exc:
            out.append(str(exc).split(": ", 1)[1])
    print(json.dumps(out))
    """
    out = last_json(run_script(body, env=clean_env(CONTROL=str(control))))
    assert out[:2] == [UUIDS[2], True]
    bad = 'bad hang "{}" (decimal seconds, 0..3600; 0 ends a hang)'
    assert out[2:] == [bad.format(v) for v in ("-1", "3600.5", "1e3", "0x10", "inf", ".")] + [
        "usage: hang GPU SECONDS"
    ]


def test_injector_hang_formats_plain_decimals(tmp_path):
    """Verify the injector writes seconds as plain decimals the library parses, and refuses bad ones."""
    control = tmp_path / "c.ctl"
    injector = fake_nvml.FaultInjector(control)
    assert [injector.hang(1, v) for v in (2, 0.25, 1e-3, 3600, 0)] == [
        "hang 1 2", "hang 1 0.25", "hang 1 0.001", "hang 1 3600", "hang 1 0"
    ]
    for bad in (-1, 3600.5, float("nan"), float("inf"), True, "2"):
        try:
            injector.hang(1, bad)
        except (ValueError, TypeError):
            continue
        raise AssertionError(f"hang({bad!r}) was accepted")
    assert len(control.read_text().splitlines()) == 5
