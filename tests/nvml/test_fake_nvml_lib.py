"""The fake libnvidia-ml answers the real pynvml: enumeration, topology files, errors, API edges."""
from __future__ import annotations

import json
import pathlib
import re

from nvml_fake_helpers import UUIDS, clean_env, last_json, run_script

from nvsentinel.devtools import fake_nvml

#: The built-in topology is a fixed fact: demo scripts and recorded fixtures may name these GPUs.
DEFAULT_BUSES = ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]
H100_TOTAL = 81559 * 1024 * 1024

ENUMERATE = """\
fake_nvml.load(topology=os.environ.get("TOPOLOGY"), control=os.environ.get("CONTROL", ""))
import pynvml as N
N.nvmlInit()
out = {"driver": N.nvmlSystemGetDriverVersion(), "nvml": N.nvmlSystemGetNVMLVersion(),
       "cuda": N.nvmlSystemGetCudaDriverVersion(), "count": N.nvmlDeviceGetCount(), "gpus": []}
for i in range(out["count"]):
    h = N.nvmlDeviceGetHandleByIndex(i)
    pci = N.nvmlDeviceGetPciInfo(h)
    mem = N.nvmlDeviceGetMemoryInfo(h)
    mem2 = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
    uuid = N.nvmlDeviceGetUUID(h)
    by_uuid = N.nvmlDeviceGetHandleByUUID(uuid)
    by_pci = N.nvmlDeviceGetHandleByPciBusId(pci.busId)
    addr = lambda x: ctypes.cast(x, ctypes.c_void_p).value
    out["gpus"].append({
        "index": N.nvmlDeviceGetIndex(h), "name": N.nvmlDeviceGetName(h), "uuid": uuid,
        "busId": pci.busId, "busIdLegacy": pci.busIdLegacy, "domain": pci.domain,
        "bus": pci.bus, "device": pci.device, "pciDeviceId": pci.pciDeviceId,
        "pciSubSystemId": pci.pciSubSystemId,
        "mem": [mem.total, mem.free, mem.used], "mem2": [mem2.total, mem2.reserved, mem2.free, mem2.used],
        "events": N.nvmlDeviceGetSupportedEventTypes(h),
        "same_handle": addr(by_uuid) == addr(h) == addr(by_pci),
    })
N.nvmlShutdown()
print(json.dumps(out))
"""


def test_default_topology_is_eight_h100s():
    """Verify the built-in node: 8x H100 80GB HBM3 with stable UUIDs, H100 PCI ids and 80 GB memory."""
    out = last_json(run_script(ENUMERATE))
    assert out["driver"] == "570.133.20"  # R570: has the GPU recovery-action field
    assert out["nvml"] == "12.570.133.20"
    assert out["cuda"] == 12080
    assert out["count"] == 8
    gpus = out["gpus"]
    assert [g["index"] for g in gpus] == list(range(8))
    assert {g["name"] for g in gpus} == {"NVIDIA H100 80GB HBM3"}
    assert [g["uuid"] for g in gpus] == UUIDS
    assert all(re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", u) for u in UUIDS)
    assert [g["busId"] for g in gpus] == [f"00000000:{b}:00.0" for b in DEFAULT_BUSES]
    assert [g["busIdLegacy"] for g in gpus] == [f"0000:{b}:00.0" for b in DEFAULT_BUSES]
    assert [g["bus"] for g in gpus] == [int(b, 16) for b in DEFAULT_BUSES]
    assert {(g["domain"], g["device"]) for g in gpus} == {(0, 0)}
    assert {g["pciDeviceId"] for g in gpus} == {0x233010DE}
    assert {g["pciSubSystemId"] for g in gpus} == {0x16C110DE}
    assert {tuple(g["mem"]) for g in gpus} == {(H100_TOTAL, H100_TOTAL, 0)}
    assert {tuple(g["mem2"]) for g in gpus} == {(H100_TOTAL, 0, H100_TOTAL, 0)}
    # SBE, DBE, P-state, XID, clock, MIG change: no GPU-unavailable or recovery-action events by default
    assert {g["events"] for g in gpus} == {0x11F}
    assert all(g["same_handle"] for g in gpus)


def test_topology_file(tmp_path):
    """Verify a JSON topology sets versions, defaults and per-GPU fields, and derives the NVML version."""
    topo = {
        "driver_version": "570.86.15",
        "cuda_driver_version": 12080,
        "defaults": {"name": "NVIDIA A100-SXM4-80GB", "memory_total_mib": 81920, "memory_reserved_mib": 512,
                     "supported_events": ["xid", "double_bit_ecc", "gpu_unavailable"]},
        "gpus": [
            {"uuid": "GPU-00000000-1111-2222-3333-444444444444", "pci_bus_id": "0000:07:00.0",
             "pci_device_id": "0x20B210DE"},
            {"name": "NVIDIA H200", "pci_bus_id": "00000001:0F:00.0", "supported_events": 0x8008},
        ],
    }
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(topo, indent=2))
    out = last_json(run_script(ENUMERATE, env=clean_env(TOPOLOGY=str(path))))
    assert (out["driver"], out["nvml"], out["cuda"], out["count"]) == ("570.86.15", "12.570.86.15", 12080, 2)
    a, b = out["gpus"]
    assert a["name"] == "NVIDIA A100-SXM4-80GB" and b["name"] == "NVIDIA H200"
    assert a["uuid"] == "GPU-00000000-1111-2222-3333-444444444444"
    assert b["uuid"] == UUIDS[1]  # not given: the built-in UUID for its index
    assert (a["busId"], b["busId"]) == ("00000000:07:00.0", "00000001:0F:00.0")
    assert a["pciDeviceId"] == 0x20B210DE and b["pciDeviceId"] == 0x233010DE
    total, reserved = 81920 * 2**20, 512 * 2**20
    assert a["mem"] == [total, total - reserved, reserved]
    assert a["mem2"] == [total, reserved, total - reserved, 0]
    assert a["events"] == 0x4000 | 0x8 | 0x2 and b["events"] == 0x8008


def test_topology_from_environment_and_gpu_count(tmp_path):
    """Verify NVSENTINEL_FAKE_NVML_TOPOLOGY is read at nvmlInit and gpu_count sizes the built-in node."""
    path = tmp_path / "t.json"
    path.write_text('{"gpu_count": 10}')
    body = """\
    fake_nvml.load()
    import pynvml as N
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(9)
    print(json.dumps([N.nvmlDeviceGetCount(), N.nvmlDeviceGetPciInfo(h).busId]))
    """
    out = last_json(run_script(body, env=clean_env(NVSENTINEL_FAKE_NVML_TOPOLOGY=str(path))))
    assert out == [10, "00000001:2A:00.0"]  # GPUs past eight go to the next PCI domain


BAD_TOPOLOGIES = [
    ('{"gpu_count": 8,}', "line 1, column 17: expected a key (a string)"),
    ('{\n  "gpus": [\n    {"nmae": "x"}\n  ]\n}', 'line 3, column 6: unknown key "nmae" in gpus[0]'),
    ('{"gpu_count": 65}', "gpu_count must be at most 64"),
    ('{"gpu_count": 2, "gpus": []}', "give either gpu_count or gpus, not both"),
    ('{"gpus": [{"uuid": "GPU-aa"}, {"uuid": "GPU-AA"}]}', "gpus[0] and gpus[1] have the same uuid"),
    ('{"gpus": [{"uuid": "MIG-1234"}]}', "uuid of gpus[0] must look like GPU-"),
    ('{"gpus": [{"pci_bus_id": "18:00"}]}', "pci_bus_id of gpus[0] must look like 00000000:18:00.0"),
    ('{"gpus": [{}, {"pci_bus_id": "0000:18:00.0"}]}', "gpus[0] and gpus[1] have the same pci_bus_id"),
    ('{"defaults": {"uuid": "GPU-1"}}', "it must be unique, so it belongs in a gpus[] entry"),
    ('{"gpus": [{"memory_total_mib": 1.5}]}', "memory_total_mib must be an integer"),
    ('{"gpus": [{"memory_total_mib": 10, "memory_reserved_mib": 20}]}', "memory_reserved_mib is larger"),
    ('{"defaults": {"supported_events": ["xid", "nope"]}}', 'unknown event name "nope" in defaults'),
    ('{"gpu_count": 1} trailing', "unexpected text after the topology object"),
    ('{"driver_version": "5\\u00e9"}', "only ASCII \\u escapes are supported"),
    ('{"gpu_count": 1, "gpu_count": 2}', 'duplicate key "gpu_count"'),
    ("", "the file is empty"),
    ("[1, 2]", "expected an object for the topology"),
    ('{"gpus": [{"serial": "1"}, {"serial": "1"}]}', "gpus[0] and gpus[1] have the same serial 1"),
    ('{"gpus": [{"serial": "12 34"}]}', "serial of gpus[0] must be 1 to 29 letters, digits or dashes"),
    ('{"defaults": {"serial": "1"}}', 'unknown key "serial" in defaults (it must be unique'),
    ('{"defaults": {"recovery_action_supported": 1}}', "expected recovery_action_supported (true or false)"),
    ('{"defaults": {"recovery_action_supported": truest}}', "expected recovery_action_supported (true or false)"),
]


def test_bad_topology_files_fail_init_with_one_clear_line(tmp_path):
    """Verify each bad topology makes nvmlInit fail with one stderr line naming file, place and reason."""
    paths = []
    for i, (text, _) in enumerate(BAD_TOPOLOGIES):
        p = tmp_path / f"bad{i}.json"
        p.write_text(text)
        paths.append(str(p))
    paths.append(str(tmp_path / "missing.json"))
    good = tmp_path / "good.json"
    good.write_text('{"gpu_count": 3}')
    body = f"""\
    import pynvml as N
    results = []
    for path in {paths!r}:
        fake = fake_nvml.load(topology=path, control="")
        try:
            N.nvmlInit()
        except N.NVMLError as exc:
            results.append([type(exc).__name__, fake.last_error()])
        else:
            results.append(["ok", ""])
    fake_nvml.load(topology={str(good)!r}, control="")
    N.nvmlInit()  # fixing the file is enough: no restart needed
    results.append(N.nvmlDeviceGetCount())
    print(json.dumps(results))
    """
    proc = run_script(body)
    results = last_json(proc)
    assert results[-1] == 3
    expected = [why for _, why in BAD_TOPOLOGIES] + ["cannot open: No such file or directory"]
    stderr_lines = [line for line in proc.stderr.splitlines() if not line.startswith("FAKE NVML IN USE")]
    assert len(stderr_lines) == len(paths), proc.stderr
    for path, (kind, message), why, line in zip(paths, results, expected, stderr_lines):
        assert kind == "NVMLError_Unknown", (path, kind)
        assert message.startswith(f"topology {path}: ") and why in message, (message, why)
        assert line == f"nvsentinel fake NVML: {message}"


def test_missing_functions_raise_function_not_found():
    """Verify NVML functions the fake lacks raise NVMLError_FunctionNotFound instead of crashing."""
    body = """\
    fake_nvml.load(control="")
    import pynvml as N
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    seen = []
    for call in (lambda: N.nvmlDeviceGetTemperature(h, 0), lambda: N.nvmlDeviceGetPowerUsage(h),
                 lambda: N.nvmlDeviceGetClockInfo(h, 0), lambda: N.nvmlSystemGetProcessName(1)):
        try:
            call()
        except N.NVMLError_FunctionNotFound:
            seen.append("FunctionNotFound")
    print(json.dumps(seen))
    """
    assert last_json(run_script(body)) == ["FunctionNotFound"] * 4


def test_api_edges_answer_nvml_error_codes():
    """Verify bad indexes, unknown UUIDs, unsupported event types and use after shutdown give NVML errors."""
    body = """\
    fake_nvml.load(control="")
    import pynvml as N
    def code(call):
        try:
            call()
            return "ok"
        except N.NVMLError as exc:
            return type(exc).__name__
    N.nvmlInit()
    N.nvmlInit()  # reference-counted, like NVML
    h = N.nvmlDeviceGetHandleByIndex(0)
    s = N.nvmlEventSetCreate()
    out = {
        "index": code(lambda: N.nvmlDeviceGetHandleByIndex(8)),
        "uuid": code(lambda: N.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")),
        "pci": code(lambda: N.nvmlDeviceGetHandleByPciBusId("0000:01:00.0")),
        "recovery_event": code(lambda: N.nvmlDeviceRegisterEvents(h, N.nvmlEventTypeGpuRecoveryAction, s)),
        "pci_ext": code(lambda: N.nvmlDeviceGetPciInfoExt(h, ctypes.byref(N.nvmlPciInfoExt_v1_t()))),
        "unknown_set": code(lambda: N.nvmlEventSetWait(ctypes.cast(ctypes.c_void_p(64), N.c_nvmlEventSet_t), 0)),
    }
    N.nvmlEventSetFree(s)
    out["freed_set"] = code(lambda: N.nvmlEventSetWait(s, 0))
    N.nvmlShutdown()
    out["after_one_shutdown"] = code(lambda: N.nvmlDeviceGetCount())
    N.nvmlShutdown()
    out["after_last_shutdown"] = code(lambda: N.nvmlDeviceGetCount())
    out["shutdown_again"] = code(N.nvmlShutdown)
    out["error_string"] = N.nvmlErrorString(N.NVML_ERROR_GPU_IS_LOST)
    print(json.dumps(out))
    """
    assert last_json(run_script(body)) == {
        "index": "NVMLError_InvalidArgument",
        "uuid": "NVMLError_NotFound",
        "pci": "NVMLError_NotFound",
        "recovery_event": "NVMLError_NotSupported",
        "pci_ext": "NVMLError_ArgumentVersionMismatch",  # version field left 0
        "unknown_set": "NVMLError_InvalidArgument",
        "freed_set": "NVMLError_InvalidArgument",
        "after_one_shutdown": "ok",
        "after_last_shutdown": "NVMLError_Uninitialized",
        "shutdown_again": "NVMLError_Uninitialized",
        "error_string": "GPU is lost",
    }


def test_legacy_entry_points_match_current_ones():
    """Verify the unversioned NVML symbols (v1 PCI info, count, handle, init) answer like the current ones."""
    body = """\
    fake_nvml.load(control="")
    import pynvml as N
    lib = ctypes.CDLL(fake_nvml.SONAME)
    assert lib.nvmlInit() == 0 and lib.nvmlInit_v2() == 0
    n = ctypes.c_uint()
    assert lib.nvmlDeviceGetCount(ctypes.byref(n)) == 0
    h = N.c_nvmlDevice_t()
    assert lib.nvmlDeviceGetHandleByIndex(2, ctypes.byref(h)) == 0
    v2 = N.nvmlPciInfo_v2_t()
    assert lib.nvmlDeviceGetPciInfo(h, ctypes.byref(v2)) == 0
    ext = N.nvmlPciInfoExt_v1_t(version=N.nvmlPciInfoExt_v1)
    assert lib.nvmlDeviceGetPciInfoExt(h, ctypes.byref(ext)) == 0
    print(json.dumps([n.value, v2.busId, v2.bus, ext.busId, ext.baseClass, ext.subClass]))
    """
    assert last_json(run_script(body)) == [8, "0000:3A:00.0", 0x3A, "00000000:3A:00.0", 3, 2]


def test_library_path_points_at_the_built_library():
    """Verify library_path() names the library built into the package, not a libnvidia-ml.so.1 file."""
    path = fake_nvml.library_path()
    assert path.is_file() and path.name == "libnvidia-ml-fake.so"
    assert path.parent.parent == pathlib.Path(fake_nvml.__file__).resolve().parent
