"""The fake's board serials and the `replace` command (a board swapped in the same slot)."""
from __future__ import annotations

import json
import textwrap

import pytest
from nvml_fake_helpers import SERIALS, UUIDS, clean_env, last_json, run_script

from nvsentinel.devtools import fake_nvml

IDENTITY = """\
fake_nvml.load(topology=os.environ.get("TOPOLOGY"), control=os.environ.get("CONTROL", ""))
import pynvml as N
N.nvmlInit()
def ident(i):
    h = N.nvmlDeviceGetHandleByIndex(i)
    return [N.nvmlDeviceGetIndex(h), N.nvmlDeviceGetUUID(h), N.nvmlDeviceGetSerial(h),
            N.nvmlDeviceGetPciInfo(h).busId, N.nvmlDeviceGetName(h)]
"""


def test_default_serials_are_fixed_and_short_buffers_are_refused():
    """Verify the built-in serial table (13 digits per GPU) and INSUFFICIENT_SIZE for a short buffer."""
    body = IDENTITY + textwrap.dedent("""\
    lib = ctypes.CDLL(fake_nvml.SONAME)
    h = N.nvmlDeviceGetHandleByIndex(0)
    buf = ctypes.create_string_buffer(30)
    short = lib.nvmlDeviceGetSerial(h, buf, 13)  # 13 digits need 14 bytes
    exact = lib.nvmlDeviceGetSerial(h, buf, 14)
    print(json.dumps([[ident(i)[2] for i in range(8)], short, exact, buf.value.decode(),
                      lib.nvmlDeviceGetSerial(h, None, 30)]))
    """)
    serials, short, exact, value, null = last_json(run_script(body))
    assert serials == SERIALS
    assert all(len(s) == 13 and s.isdigit() for s in SERIALS) and len(set(SERIALS)) == 8
    assert (short, exact, value, null) == (7, 0, SERIALS[0], 2)  # INSUFFICIENT_SIZE, SUCCESS, INVALID_ARGUMENT


def test_topology_serial_key(tmp_path):
    """Verify a gpus[] entry sets a serial; the others keep the built-in one for their index."""
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"gpus": [{}, {"serial": "PB-0042"}]}))
    body = IDENTITY + "print(json.dumps([ident(0)[2], ident(1)[2]]))\n"
    assert last_json(run_script(body, env=clean_env(TOPOLOGY=str(path)))) == [SERIALS[0], "PB-0042"]


def test_replacement_identity_is_predictable():
    """Verify replacement_uuid/serial are fixed functions of the old identity (case-insensitive UUIDs)."""
    assert fake_nvml.replacement_uuid(UUIDS[2]) == "GPU-585a581c-eeb8-2d86-9846-ebee2a5c1e55"
    assert fake_nvml.replacement_uuid(UUIDS[2].upper()) == fake_nvml.replacement_uuid(UUIDS[2])
    assert fake_nvml.replacement_serial(SERIALS[2]) == "4189411340070"
    assert fake_nvml.replacement_uuid(UUIDS[2]) not in UUIDS
    assert fake_nvml.replacement_serial(SERIALS[2]) not in SERIALS


REPLACE = IDENTITY + """\
control = os.environ["CONTROL"]
outside = fake_nvml.FaultInjector(control)  # through the file, as `nvsentinel nvml inject` does
def code(call):
    try:
        call()
        return "ok"
    except N.NVMLError as exc:
        return type(exc).__name__
out = {"before": ident(2)}
h2 = N.nvmlDeviceGetHandleByIndex(2)
s = N.nvmlEventSetCreate()
N.nvmlDeviceRegisterEvents(h2, N.nvmlEventTypeXidCriticalError, s)
outside.inject_xid(2, 79)
outside.recovery_action(2, "NODE_REBOOT")
outside.lose(2)
outside.replace(2)
out["after"] = ident(2)
out["old_uuid"] = code(lambda: N.nvmlDeviceGetHandleByUUID(out["before"][1]))
out["new_uuid_index"] = N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByUUID(out["after"][1]))
out["same_handle"] = ctypes.cast(N.nvmlDeviceGetHandleByIndex(2), ctypes.c_void_p).value == \\
    ctypes.cast(h2, ctypes.c_void_p).value
out["action"] = N.nvmlDeviceGetFieldValues(h2, [230])[0].value.uiVal
out["queued_event"] = code(lambda: N.nvmlEventSetWait(s, 0))
outside.hang(2, 3600)
outside.replace(2, uuid="GPU-11111111-2222-3333-4444-555555555555", serial="PB-NEW-1")
out["given"] = ident(2)  # not hung: the new board is healthy
outside.replace(5, serial="0000000000042")
out["serial_only"] = ident(5)
inject = fake_nvml.FaultInjector.in_process()
out["refused"] = []
for line in ("replace 3 UUID_OF_GPU_4", "replace 3 - PB-NEW-1", "replace * GPU-12", "replace 3 xyz",
             "replace 3 - a/b", "replace 3 - 123456789012345678901234567890", "replace 3 GPU-12 4 5"):
    try:
        inject.send(line)
        out["refused"].append("accepted")
    except ValueError as exc:
        out["refused"].append(str(exc).split(": ", 1)[1])
print(json.dumps(out))
""".replace("UUID_OF_GPU_4", UUIDS[4])


def test_replace_swaps_the_board_in_the_same_slot(tmp_path):
    """Verify replace gives a new UUID and serial at the same index, bus id and name, with clean state."""
    control = tmp_path / "c.ctl"
    out = last_json(run_script(REPLACE, env=clean_env(CONTROL=str(control))))
    bus, name = "00000000:3A:00.0", "NVIDIA H100 80GB HBM3"
    assert out["before"] == [2, UUIDS[2], SERIALS[2], bus, name]
    assert out["after"] == [2, fake_nvml.replacement_uuid(UUIDS[2]), fake_nvml.replacement_serial(SERIALS[2]),
                            bus, name]
    assert out["old_uuid"] == "NVMLError_NotFound"
    assert out["new_uuid_index"] == 2 and out["same_handle"] is True
    assert out["action"] == 0  # NONE
    assert out["queued_event"] == "NVMLError_Timeout"  # the old board's undelivered XID is gone
    assert out["given"] == [2, "GPU-11111111-2222-3333-4444-555555555555", "PB-NEW-1", bus, name]
    assert out["serial_only"] == [5, fake_nvml.replacement_uuid(UUIDS[5]), "0000000000042", "00000000:AB:00.0",
                                  name]
    assert out["refused"] == [
        f"uuid {UUIDS[4]} is already GPU 4's",
        "serial PB-NEW-1 is already GPU 2's",
        'replace with a new uuid or serial names one GPU, not "*"',
        'bad uuid "xyz" (GPU- followed by hex digits and dashes)',
        'bad serial "a/b" (1 to 29 letters, digits or dashes)',
        'bad serial "123456789012345678901234567890" (1 to 29 letters, digits or dashes)',
        "usage: replace GPU [UUID|- [SERIAL]]",
    ]

    # the swap is state: a consumer started afterwards sees the new boards (and GPU 2 not lost, not hung)
    body = IDENTITY + "print(json.dumps([ident(2), ident(5)[2]]))\n"
    again = last_json(run_script(body, env=clean_env(CONTROL=str(control))))
    assert again == [out["given"], "0000000000042"]


def test_replace_all_derives_each_gpu(tmp_path):
    """Verify `replace all` gives every GPU its derived identity."""
    control = tmp_path / "c.ctl"
    assert fake_nvml.FaultInjector(control).replace("all") == "replace *"
    body = IDENTITY + "print(json.dumps([ident(i)[1:3] for i in range(8)]))\n"
    out = last_json(run_script(body, env=clean_env(CONTROL=str(control))))
    assert out == [[fake_nvml.replacement_uuid(u), fake_nvml.replacement_serial(s)] for u, s in zip(UUIDS, SERIALS)]


@pytest.mark.parametrize(
    "call",
    [
        lambda i: i.replace(0, uuid="gpu-3"),
        lambda i: i.replace(0, serial="a b"),
        lambda i: i.replace(0, serial="x" * 30),
        lambda i: i.replace("all", uuid="GPU-12"),
        lambda i: i.replace("all", serial="12"),
    ],
)
def test_injector_refuses_bad_replacements(tmp_path, call):
    """Verify bad replacement identities raise in the injector and write nothing."""
    control = tmp_path / "c.ctl"
    with pytest.raises(ValueError):
        call(fake_nvml.FaultInjector(control))
    assert not control.exists()
