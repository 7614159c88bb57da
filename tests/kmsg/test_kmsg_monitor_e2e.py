"""The kernel-log monitor end to end: the real daemon in a subprocess following a temp file, a real
Device API server on real sockets (SPEC §5, issue 5 "Prove it", docs/conditions.md)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings  # noqa: E402
from kmsghelpers import Monitor, append, wait_for  # noqa: E402

from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402

UUIDS = [
    "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb",
    "GPU-976baef6-3b1f-dc48-2908-168925b1cdbf",
    "GPU-0d1b0f43-1453-595a-d607-8ca6a707ec5e",
]
PCIS = ["0000:b3:00.0", "0000:3b:00.0", "0000:c1:00.0"]


def mapping(i: int, t: float = 10.0) -> str:
    return f"[{t:12.6f}] NVRM: GPU at PCI:{PCIS[i]}: {UUIDS[i]}\n"


def xid(i: int, n: int, t: float = 100.0, tail: str = "pid=1234, name=python, Ch 00000001") -> str:
    return f"[{t:12.6f}] NVRM: Xid (PCI:{PCIS[i]}): {n}, {tail}\n"


def cond(gpu: gpu_pb2.Gpu, type_: str = "KmsgHealthy") -> gpu_pb2.Condition | None:
    for c in gpu.status.conditions:
        if c.type == type_:
            return c
    return None


def kmsg_state(client: DeviceApiClient, uuid: str) -> tuple[str, str, str]:
    gpu = client.get_gpu(uuid)
    c = cond(gpu)
    return (c.status, c.reason, gpu.status.recommended_action) if c else ("", "", gpu.status.recommended_action)


def caught_up(state: Path, log: Path) -> bool:
    """The monitor's cursor is at the end of the (current) log file."""
    data = json.loads(state.read_text())
    st = log.stat()
    return data["kind"] == "file" and data["inode"] == st.st_ino and data["offset"] == st.st_size


@pytest.fixture
def env():
    sock_dir = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    work = Path(tempfile.mkdtemp(prefix="kmsg-"))
    server = ThreadServer(make_settings(sock_dir)).start()
    client = DeviceApiClient(server.tcp, timeout=5)
    for uuid in UUIDS:
        client.create_gpu(gpu_pb2.Gpu(metadata=gpu_pb2.ObjectMeta(name=uuid), spec=gpu_pb2.GpuSpec(uuid=uuid)))
    monitors: list[Monitor] = []

    def start(*extra: str) -> Monitor:
        mon = Monitor("--address", server.tcp, "--source", str(work / "kern.log"),
                      "--state-file", str(work / "state" / "kmsg.json"), "--poll-interval", "0.02", *extra)
        monitors.append(mon)
        return mon

    (work / "kern.log").write_bytes(b"")
    try:
        yield server, client, work, start
    finally:
        for mon in monitors:
            mon.close()
        client.close()
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def test_kmsg_monitor_follows_restarts_rotates_recovers(env):
    """Verify XID 79 → KmsgHealthy False/Xid79/RESTART_BM; benign 13 and garbage change nothing;
    a restart writes nothing again; a rotated file is still followed; a GPU reset line heals."""
    _server, client, work, start = env
    log, state = work / "kern.log", work / "state" / "kmsg.json"
    mon = start()
    append(log, "[    1.000000] Linux version 6.8.0 (buildd@lcy02) #1 SMP\n" + mapping(0) + mapping(1))
    append(log, xid(0, 79, tail="GPU has fallen off the bus."))
    wait_for("GPU 0 Xid79", lambda: kmsg_state(client, UUIDS[0]) == ("False", "Xid79", "RESTART_BM"), mon)
    assert cond(client.get_gpu(UUIDS[0])).message == "XID 79: GPU has fallen off the bus"

    rvs = {u: client.get_gpu(u).resource_version for u in UUIDS}
    # benign XID 13 on both GPUs, an unmapped PCI id, garbage and binary noise: nothing changes
    append(log, xid(0, 13, tail="Graphics SM Warp Exception on (GPC 0, TPC 1, SM 2)") + xid(1, 13))
    append(log, xid(2, 79))  # PCI 0000:c1:00 has no mapping line: logged once, skipped
    append(log, "GPU reset executed: GPU-" + "a" * 300 + "\n")  # not a registered GPU: skipped
    append(log, f"GPU reset executed: {UUIDS[0]} failed\n")  # a failed reset is no recovery
    append(log, b"NVRM: Xid (PCI:zzzz): abc\n\x00\xff\xfe garbage \x1b[31m\n" + b"x" * 70000 + b"\nNVRM: Xid (\n")
    wait_for("cursor at the end", lambda: caught_up(state, log), mon)
    assert {u: client.get_gpu(u).resource_version for u in UUIDS} == rvs
    assert "no GPU UUID known for this PCI id" in mon.log()
    assert "GPU not registered with the Device API" in mon.log() or "device api refused" in mon.log()
    assert mon.proc.poll() is None

    # restart: the cursor resumes after what was processed; no second write
    assert mon.stop() == 0
    mon = start()
    append(log, xid(1, 13))
    wait_for("cursor at the end after restart", lambda: caught_up(state, log), mon)
    time.sleep(0.2)
    assert {u: client.get_gpu(u).resource_version for u in UUIDS} == rvs
    assert "resumed=True" in mon.log()
    assert "no GPU UUID known" not in mon.log()  # the old unmapped XID line was not read again

    # rotation: rename + a new file; the mapping for GPU 1 was persisted in the state file
    os.rename(log, work / "kern.log.1")
    log.write_bytes(b"")
    append(log, xid(1, 48, tail="An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer"))
    wait_for("GPU 1 Xid48", lambda: kmsg_state(client, UUIDS[1]) == ("False", "Xid48", "COMPONENT_RESET"), mon)
    assert "file rotated" in mon.log()

    # truncation in place, then the recovery signal for GPU 0
    with open(log, "r+b") as fh:
        fh.truncate(0)
    time.sleep(0.2)
    append(log, f"GPU reset executed: {UUIDS[0]}\n")
    wait_for("GPU 0 healthy", lambda: kmsg_state(client, UUIDS[0]) == ("True", "GpuReset", "NONE"), mon)
    assert kmsg_state(client, UUIDS[1]) == ("False", "Xid48", "COMPONENT_RESET")
    assert mon.stop() == 0


def test_kmsg_monitor_dedups_against_nvml(env):
    """Verify the same XID already reported by NvmlHealthy within the window is not written twice,
    while another XID on that GPU still is."""
    _server, client, work, start = env
    log, state = work / "kern.log", work / "state" / "kmsg.json"
    # the NVML provider's write, simulated through the client
    gpu = client.get_gpu(UUIDS[0])
    st = gpu_pb2.GpuStatus(recommended_action="RESTART_BM")
    c = st.conditions.add(type="NvmlHealthy", status="False", reason="Xid79", message="XID 79: GPU has fallen off the bus")
    c.last_transition_time.seconds = int(time.time())
    client.update_gpu_status(UUIDS[0], st, gpu.resource_version)
    rv = client.get_gpu(UUIDS[0]).resource_version

    mon = start("--dedup-window", "30")
    append(log, mapping(0) + xid(0, 79))
    wait_for("cursor at the end", lambda: caught_up(state, log), mon)
    time.sleep(0.2)
    gpu = client.get_gpu(UUIDS[0])
    assert gpu.resource_version == rv and cond(gpu) is None
    assert "already reported by the NVML provider" in mon.log()

    append(log, xid(0, 48))  # not what NVML reported: written; the shared action stays the worse one
    wait_for("GPU 0 Xid48", lambda: kmsg_state(client, UUIDS[0]) == ("False", "Xid48", "RESTART_BM"), mon)
    assert cond(client.get_gpu(UUIDS[0]), "NvmlHealthy").reason == "Xid79"
    assert mon.stop() == 0


def test_kmsg_monitor_ignored_xids_and_env(env):
    """Verify --ignored-xids (given through KMSG_MONITOR_IGNORED_XIDS) changes nothing."""
    _server, client, work, start = env
    log, state = work / "kern.log", work / "state" / "kmsg.json"
    os.environ["KMSG_MONITOR_IGNORED_XIDS"] = "79"
    try:
        mon = start()
    finally:
        del os.environ["KMSG_MONITOR_IGNORED_XIDS"]
    rv = client.get_gpu(UUIDS[0]).resource_version
    append(log, mapping(0) + xid(0, 79))
    wait_for("cursor at the end", lambda: caught_up(state, log), mon)
    time.sleep(0.2)
    assert client.get_gpu(UUIDS[0]).resource_version == rv
    assert mon.stop() == 0


@pytest.mark.parametrize(
    ("flags", "rc", "text"),
    [
        (("--source", "/nonexistent/kern.log"), 1, "cannot open --source '/nonexistent/kern.log': No such file or directory"),
        (("--source", "/"), 1, "is not a regular file, a FIFO or a character device"),
        (("--source", "/tmp/x", "--dedup-window", "-1"), 2, "--dedup-window must be 0..3600"),
        (("--source", "/tmp/x", "--ignored-xids", "7,x"), 2, "--ignored-xids"),
    ],
)
def test_kmsg_monitor_bad_input(tmp_path, flags, rc, text):
    """Verify a missing or unusable source and bad flags give a clear message and a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "nvsentinel.daemons.kmsg_monitor", "--address", "127.0.0.1:1",
         "--state-file", str(tmp_path / "s.json"), *flags],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == rc, proc.stderr
    assert text in proc.stderr


def test_kmsg_monitor_cli_registered():
    """Verify `nvsentinel kmsg-monitor --help` lists the daemon's flags."""
    out = subprocess.run([sys.executable, "-m", "nvsentinel", "kmsg-monitor", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for flag in ("--address", "--source", "--state-file", "--dedup-window", "--ignored-xids",
                 "--poll-interval", "--syslog-interval", "--max-line-bytes", "--metrics-port", "--http-bind-address",
                 "--log-format", "--log-level", "--node-name", "KMSG_MONITOR_SOURCE", "KMSG_MONITOR_MAX_LINE_BYTES",
                 "--xid-overrides", "NVSENTINEL_XID_OVERRIDES"):
        assert flag in out


def test_kmsg_monitor_waits_for_the_server(tmp_path):
    """Verify a fault logged while the Device API is down is applied once the server is up, and the
    cursor does not move past it before that."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock_dir = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    log, state = tmp_path / "kern.log", tmp_path / "kmsg.json"
    log.write_text(mapping(0) + xid(0, 79))
    mon = Monitor("--address", f"127.0.0.1:{port}", "--source", str(log), "--state-file", str(state),
                  "--poll-interval", "0.02")
    server = client = None
    try:
        wait_for("the monitor to notice the server is down", lambda: "device api unreachable" in mon.log(), mon)
        assert not state.exists() or not caught_up(state, log)
        server = ThreadServer(make_settings(sock_dir, grpc_address=f"127.0.0.1:{port}")).start()
        client = DeviceApiClient(server.tcp, timeout=5)
        client.create_gpu(gpu_pb2.Gpu(metadata=gpu_pb2.ObjectMeta(name=UUIDS[0]), spec=gpu_pb2.GpuSpec(uuid=UUIDS[0])))
        wait_for("GPU 0 Xid79", lambda: kmsg_state(client, UUIDS[0]) == ("False", "Xid79", "RESTART_BM"), mon, 30)
        wait_for("cursor at the end", lambda: caught_up(state, log), mon)
        assert mon.stop() == 0
    finally:
        mon.close()
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_kmsg_monitor_kmsg_records_in_process(env, tmp_path):
    """Verify /dev/kmsg-style records (one per read, sequence numbers, dictionary lines) drive the
    same condition in-process, and the saved cursor is the boot id + last sequence."""
    import socket

    from nvsentinel.node.kmsg import cursor as cursor_mod
    from nvsentinel.node.kmsg.monitor import KmsgMonitor, _KmsgSource

    _server, client, work, _start = env
    boot = tmp_path / "boot_id"
    boot.write_text("0c6b6f3e-6d0e-4b5c-9d3c-2f7a9b1e4d10\n")
    writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reader.setblocking(False)
    state = tmp_path / "kmsg.json"
    mon = KmsgMonitor(client, str(work / "kern.log"), str(state))
    mon.source.close()
    mon.source = _KmsgSource("/dev/kmsg", mon.cursor, str(boot), fd=reader.detach())
    try:
        records = [
            f"6,100,10000000,-;NVRM: GPU at PCI:{PCIS[2]}: {UUIDS[2]}\n SUBSYSTEM=pci\n",
            f"4,101,20000000,-;NVRM: Xid (PCI:{PCIS[2]}): 94, pid=1, name=python, Contained: CE User Channel (0x9)\n",
            "4,102,20000001,-;nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, Fatal, Link 28 sourcetrack timeout error (First)\n",
            f"4,103,30000000,-;NVRM: Xid (PCI:{PCIS[2]}): 79, pid=1, name=python, Ch 00000001\n",
        ]
        for rec in records:
            writer.send(rec.encode())
        assert mon.step()
        assert kmsg_state(client, UUIDS[2]) == ("False", "Xid79", "RESTART_BM")
        saved, problem = cursor_mod.load(str(state))
        assert problem == ""
        assert (saved.kind, saved.boot_id, saved.seq) == ("kmsg", "0c6b6f3e-6d0e-4b5c-9d3c-2f7a9b1e4d10", 103)
        assert saved.pci_to_uuid == {"0000:c1:00": UUIDS[2]}
        assert not mon.step()
    finally:
        writer.close()
        mon.close()
