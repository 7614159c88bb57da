"""The fake's GPU recovery action: field 230, its event, reset clearing it, old drivers, the CLI."""
from __future__ import annotations

import json
import time

import pytest
from nvml_fake_helpers import UUIDS, Child, clean_env, last_json, run_script

from nvsentinel import cli
from nvsentinel.devtools import fake_nvml

RECOVERY_EVENT = 0x8000
NOT_SUPPORTED = 3

# Prints "ready", then a JSON list (one entry per GPU) whenever field 230 changes on any GPU: the
# value, ["rc", N] for a per-value error, or the call's exception name.
FIELD_WATCH = """\
fake_nvml.load(topology=os.environ.get("TOPOLOGY"), control=os.environ["CONTROL"])
import pynvml as N
N.nvmlInit()
handles = [N.nvmlDeviceGetHandleByIndex(i) for i in range(N.nvmlDeviceGetCount())]
print("ready", flush=True)
last = None
while True:
    now = []
    for h in handles:
        try:
            v = N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION])[0]
            now.append(v.value.uiVal if v.nvmlReturn == N.NVML_SUCCESS else ["rc", v.nvmlReturn])
        except N.NVMLError as exc:
            now.append(type(exc).__name__)
    if now != last:
        print(json.dumps(now), flush=True)
        last = now
    time.sleep(0.01)
"""


def _until(child: Child, expected: list, timeout: float = 30) -> None:
    """Read the watcher's lines until one equals `expected` (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        doc = json.loads(child.readline(timeout=left))
        if doc == expected:
            return
        seen.append(doc)
    raise AssertionError(f"never saw {expected}; saw {seen}")


@pytest.fixture
def control(tmp_path):
    return tmp_path / "fake-nvml.ctl"


def test_recovery_action_field_follows_injections_from_another_process(control):
    """Verify field 230 reads each GPU's injected action; reset clears it to NONE and recover keeps it."""
    injector = fake_nvml.FaultInjector(control)
    with Child(FIELD_WATCH, clean_env(CONTROL=str(control))) as child:
        assert child.readline(timeout=30) == "ready"
        assert json.loads(child.readline(timeout=30)) == [0] * 8
        assert injector.recovery_action(2, "node_reboot") == "recovery-action 2 NODE_REBOOT"
        assert injector.recovery_action(UUIDS[5], 0xFFFFFFFF) == f"recovery-action {UUIDS[5]} 4294967295"
        _until(child, [0, 0, 2, 0, 0, 0xFFFFFFFF, 0, 0])
        injector.reset(2)
        _until(child, [0, 0, 0, 0, 0, 0xFFFFFFFF, 0, 0])
        injector.lose(5)
        _until(child, [0, 0, 0, 0, 0, "NVMLError_GpuIsLost", 0, 0])
        injector.recover(5)  # a recover is not a recovery: the action stays
        _until(child, [0, 0, 0, 0, 0, 0xFFFFFFFF, 0, 0])
        injector.recovery_action("all", "DRAIN_P2P")
        _until(child, [3] * 8)


def test_old_driver_answers_not_supported_per_value(control, tmp_path):
    """Verify a 550 driver topology reports field 230 NOT_SUPPORTED in the value while the call succeeds."""
    topology = tmp_path / "old.json"
    topology.write_text(json.dumps({"driver_version": "550.127.05"}))
    fake_nvml.FaultInjector(control).recovery_action(1, "GPU_RESET")  # the state exists; the field does not
    with Child(FIELD_WATCH, clean_env(CONTROL=str(control), TOPOLOGY=str(topology))) as child:
        assert child.readline(timeout=30) == "ready"
        assert json.loads(child.readline(timeout=30)) == [["rc", NOT_SUPPORTED]] * 8


FIELDS = """\
fake_nvml.load(topology=os.environ.get("TOPOLOGY"), control="")
import pynvml as N
N.nvmlInit()
inject = fake_nvml.FaultInjector.in_process()
inject.recovery_action("all", "BUS_RESET")
def code(call):
    try:
        call()
        return "ok"
    except N.NVMLError as exc:
        return type(exc).__name__
rows = []
for i in range(N.nvmlDeviceGetCount()):
    values = N.nvmlDeviceGetFieldValues(N.nvmlDeviceGetHandleByIndex(i), [1, 226, 230, 231, (230, 4)])
    rows.append([[v.fieldId, v.scopeId, v.nvmlReturn, v.valueType, v.value.ullVal] for v in values])
h0 = N.nvmlDeviceGetHandleByIndex(0)
stamp = N.nvmlDeviceGetFieldValues(h0, [230])[0].timestamp
lib = ctypes.CDLL(fake_nvml.SONAME)
raw = [lib.nvmlDeviceGetFieldValues(h0, -1, None), lib.nvmlDeviceGetFieldValues(h0, 0, None),
       lib.nvmlDeviceGetFieldValues(h0, 1, None)]
bad_handle = code(lambda: N.nvmlDeviceGetFieldValues(ctypes.cast(ctypes.c_void_p(64), N.c_nvmlDevice_t), [230]))
inject.lose(0)
print(json.dumps({"rows": rows, "stamp_now": abs(stamp / 1e6 - time.time()) < 600, "raw": raw,
                  "bad_handle": bad_handle, "lost": code(lambda: N.nvmlDeviceGetFieldValues(h0, [230]))}))
"""


def _fields(topology: dict | None, tmp_path) -> list:
    env = clean_env()
    if topology is not None:
        path = tmp_path / "t.json"
        path.write_text(json.dumps(topology))
        env = clean_env(TOPOLOGY=str(path))
    return last_json(run_script(FIELDS, env=env))


def _row(supported: bool) -> list:
    """The five values FIELDS asks each GPU for, BUS_RESET (6) injected."""
    no = NOT_SUPPORTED
    return [
        [1, 0, no, 0, 0],
        [226, 0, no, 0, 0],
        [230, 0, 0, 1, 6] if supported else [230, 0, no, 0, 0],
        [231, 0, no, 0, 0],
        [230, 4, 0, 1, 6] if supported else [230, 4, no, 0, 0],
    ]


def test_field_values_per_value_results_and_call_errors(tmp_path):
    """Verify field 230 is an unsigned int with a current timestamp, other ids are NOT_SUPPORTED, and call errors."""
    out = _fields(None, tmp_path)
    assert out["rows"] == [_row(True)] * 8
    assert out["stamp_now"] is True  # the read's time, in microseconds since the epoch
    assert out["raw"] == [2, 0, 2]  # INVALID_ARGUMENT for a negative count or NULL values; 0 values is fine
    assert out["bad_handle"] == "NVMLError_InvalidArgument"
    assert out["lost"] == "NVMLError_GpuIsLost"  # a lost GPU fails the whole call


def test_recovery_action_support_follows_driver_and_topology(tmp_path):
    """Verify support comes from the driver major (>= 565) unless recovery_action_supported says otherwise."""
    out = _fields({"driver_version": "550.127.05", "gpus": [{"recovery_action_supported": True}, {}]}, tmp_path)
    assert out["rows"] == [_row(True), _row(False)]
    out = _fields({"driver_version": "560.35.03", "gpu_count": 1}, tmp_path)
    assert out["rows"] == [_row(False)]
    out = _fields({"driver_version": "565.57.01", "gpu_count": 1}, tmp_path)
    assert out["rows"] == [_row(True)]
    out = _fields({"driver_version": "r570-custom", "gpu_count": 1}, tmp_path)
    assert out["rows"] == [_row(False)]  # no leading major number: treated as an old driver
    out = _fields({"defaults": {"recovery_action_supported": False}, "gpus": [{}, {"recovery_action_supported": True}]},
                  tmp_path)
    assert out["rows"] == [_row(False), _row(True)]


def test_recovery_action_event_reaches_registered_sets_only(tmp_path):
    """Verify the action's event (eventData = value) reaches sets registered for it on that GPU, nothing else."""
    body = """\
    fake_nvml.load(topology={"defaults": {"supported_events": ["xid", "gpu_recovery_action"]}}, control="")
    import pynvml as N
    N.nvmlInit()
    inject = fake_nvml.FaultInjector.in_process()
    h1 = N.nvmlDeviceGetHandleByIndex(1)
    watching, xid_only = N.nvmlEventSetCreate(), N.nvmlEventSetCreate()
    N.nvmlDeviceRegisterEvents(h1, N.nvmlEventTypeGpuRecoveryAction, watching)
    N.nvmlDeviceRegisterEvents(h1, N.nvmlEventTypeXidCriticalError, xid_only)
    def drain(s):
        got = []
        while True:
            try:
                e = N.nvmlEventSetWait(s, 0)
            except N.NVMLError_Timeout:
                return got
            got.append([N.nvmlDeviceGetIndex(e.device), e.eventType, e.eventData])
    inject.recovery_action(1, "DRAIN_AND_RESET")
    inject.recovery_action(0, "SYSTEM_REBOOT")  # GPU 0 is not registered anywhere
    inject.recovery_action(1, 99)  # unknown values travel too
    out = [drain(watching), drain(xid_only)]
    inject.recovery_action(1, "GPU_RESET")
    inject.reset(1)  # the reset discards the undelivered event and clears the action
    out.append(drain(watching))
    out.append(N.nvmlDeviceGetFieldValues(h1, [230])[0].value.uiVal)
    inject.lose(1)
    inject.recovery_action(1, "NODE_REBOOT")  # kept as state, its event dropped (GPU off the bus)
    inject.recover(1)
    out.append(drain(watching))
    out.append(N.nvmlDeviceGetFieldValues(h1, [230])[0].value.uiVal)
    print(json.dumps(out))
    """
    assert last_json(run_script(body)) == [
        [[1, RECOVERY_EVENT, 4], [1, RECOVERY_EVENT, 99]],
        [],
        [],
        0,
        [],
        2,
    ]


def test_recovery_action_commands_refuse_bad_values():
    """Verify the library refuses unknown names, out-of-range numbers and missing words, one clear reason each."""
    body = """\
    fake_nvml.load(control="")
    import pynvml as N
    N.nvmlInit()
    inject = fake_nvml.FaultInjector.in_process()
    out = []
    for line in ("recovery-action 0 REBOOT", "recovery-action 0 4294967296", "recovery-action 0 -1",
                 "recovery-action 0", "recovery-action 0 1 2"):
        try:
            inject.send(line)
            out.append("accepted")
        except ValueError as exc:
            out.append(str(exc).split(": ", 1)[1])
    print(json.dumps(out))
    """
    bad = ("bad recovery action \"{}\" (NONE, GPU_RESET, NODE_REBOOT, DRAIN_P2P, DRAIN_AND_RESET, "
           "RECOVER_IMEX_DOMAIN, BUS_RESET, SYSTEM_REBOOT, or 0..4294967295)")
    assert last_json(run_script(body)) == [
        bad.format("REBOOT"),
        bad.format("4294967296"),
        bad.format("-1"),
        "usage: recovery-action GPU NAME|N",
        "usage: recovery-action GPU NAME|N",
    ]


@pytest.mark.parametrize(
    "call",
    [
        lambda i: i.recovery_action(0, "REBOOT"),
        lambda i: i.recovery_action(0, -1),
        lambda i: i.recovery_action(0, 2**32),
        lambda i: i.recovery_action(0, True),
        lambda i: i.recovery_action(0, 1.0),
    ],
)
def test_injector_refuses_bad_recovery_actions(tmp_path, call):
    """Verify bad recovery actions raise in the injector and write nothing."""
    control = tmp_path / "c.ctl"
    with pytest.raises((ValueError, TypeError)):
        call(fake_nvml.FaultInjector(control))
    assert not control.exists()


def test_cli_recovery_action_hang_and_replace_write_their_commands(tmp_path, capsys):
    """Verify the new inject flags write the documented lines."""
    control = tmp_path / "c.ctl"
    runs = [
        ["--recovery-action", "node_reboot", "--gpu", "3"],
        ["--recovery-action", "7", "--gpu", "all"],
        ["--recovery-action", "4294967295", "--gpu", "0"],
        ["--hang", "2.5", "--gpu", "2"],
        ["--hang", "0", "--gpu", "2"],
        ["--replace", "--gpu", "2"],
        ["--replace", "--gpu", "2", "--new-uuid", "GPU-11111111-2222-3333-4444-555555555555"],
        ["--replace", "--gpu", "2", "--new-serial", "SN-1"],
        ["--replace", "--gpu", UUIDS[4], "--new-uuid", "GPU-aa", "--new-serial", "42"],
    ]
    for argv in runs:
        assert cli.main(["nvml", "inject", *argv, "--control", str(control)]) == 0, argv
    assert control.read_text().splitlines() == [
        "recovery-action 3 NODE_REBOOT",
        "recovery-action * 7",
        "recovery-action 0 4294967295",
        "hang 2 2.5",
        "hang 2 0",
        "replace 2",
        "replace 2 GPU-11111111-2222-3333-4444-555555555555",
        "replace 2 - SN-1",
        f"replace {UUIDS[4]} GPU-aa 42",
    ]
    assert capsys.readouterr().out.splitlines()[0] == f"recovery-action 3 NODE_REBOOT -> {control}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--recovery-action", "REBOOT"], "recovery action must be one of NONE, GPU_RESET"),
        (["--recovery-action", "4294967296"], "recovery action must be in 0..4294967295"),
        (["--hang", "3601"], "hang seconds must be in 0..3600"),
        (["--hang", "nan"], "hang seconds must be in 0..3600"),
        (["--replace", "--new-uuid", "gpu3"], "uuid must look like GPU-"),
        (["--replace", "--new-serial", "a b"], "serial must be 1 to 29 letters, digits or dashes"),
        (["--lose", "--new-uuid", "GPU-aa"], "--new-uuid and --new-serial go with --replace"),
        (["--replace", "--new-serial", "1", "--gpu", "all"], "names one GPU, not all"),
    ],
)
def test_cli_refuses_bad_new_flags_with_exit_2(tmp_path, capsys, argv, message):
    """Verify bad values for the new flags exit 2 with one clear line and write nothing."""
    control = tmp_path / "c.ctl"
    gpu = [] if "--gpu" in argv else ["--gpu", "1"]
    assert cli.main(["nvml", "inject", *argv, *gpu, "--control", str(control)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nvsentinel nvml inject: ") and message in err[0], err
    assert not control.exists()


def test_cli_argparse_refusals_exit_2(tmp_path):
    """Verify a non-number hang and two actions at once are usage errors (exit 2)."""
    for argv in (["--hang", "soon"], ["--hang", "1", "--replace"], ["--recovery-action"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["nvml", "inject", "--gpu", "0", *argv, "--control", str(tmp_path / "c")])
        assert exc.value.code == 2
