"""Embedded NVML provider mode (SPEC §4): the device API server daemon in a subprocess runs the NVML
provider in-process against the fake libnvidia-ml, talking to itself through its own gRPC client."""
from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from apiserver import SubprocessServer  # noqa: E402
from nvml_fake_helpers import UUIDS, clean_env  # noqa: E402

from nvsentinel import errors  # noqa: E402
from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.node.api.server import server_address  # noqa: E402



@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _nvml(gpu: gpu_pb2.Gpu) -> tuple[str, str, str]:
    for c in gpu.status.conditions:
        if c.type == "NvmlHealthy":
            return c.status, c.reason, gpu.status.recommended_action
    return "", "", ""


def _wait(what: str, check: Callable[[], object], server: SubprocessServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except errors.NvsentinelError as exc:
            last = exc
        if last is True:
            return
        assert server.proc.poll() is None, f"server exited rc={server.proc.returncode}:\n{''.join(server.log)}"
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}):\n{''.join(server.log)}")


def test_nvml_embedded_server_registers_flips_and_stops(sock_dir, tmp_path):
    control = tmp_path / "fake-nvml.ctl"
    server = SubprocessServer.start(sock_dir, "--enable-nvml-provider", "--fake-nvml", "--fake-nvml-control",
                                    str(control), "--nvml-ignored-xids", "94")
    client = DeviceApiClient(server.unix, timeout=5)
    fault = FaultInjector(control)
    try:
        def all_healthy() -> bool:
            gpus = client.list_gpus()[1]
            return (sorted(g.metadata.name for g in gpus) == sorted(UUIDS)
                    and all(_nvml(g)[:2] == ("True", "NvmlOk") for g in gpus))

        _wait("8 GPUs registered, NvmlHealthy=True", all_healthy, server)
        log = "".join(server.log)
        assert "FAKE NVML IN USE" in log
        assert 'msg="embedded nvml provider started"' in log
        assert f"address=unix://{server.unix_socket}" in log  # its own client, over the unix socket

        # XID 79 on GPU 2 → False/Xid79/RESTART_BM; an ignored XID 94 on GPU 4 changes nothing
        rv4 = client.get_gpu(UUIDS[4]).resource_version
        fault.inject_xid(4, 94)
        fault.inject_xid(2, 79)
        _wait("GPU 2 Xid79", lambda: _nvml(client.get_gpu(UUIDS[2])) == ("False", "Xid79", "RESTART_BM"), server)
        assert client.get_gpu(UUIDS[4]).resource_version == rv4
        assert all(_nvml(client.get_gpu(u))[0] == "True" for i, u in enumerate(UUIDS) if i != 2)

        client.close()
        assert server.terminate() == 0
        server.close()
        log = "".join(server.log)
        assert "Traceback" not in log
        # the provider stops first, then the server's graceful shutdown
        assert log.index('msg="embedded nvml provider stopped"') < log.index('msg="shutting down: not ready"')
        assert not os.path.exists(server.unix_socket)
    finally:
        client.close()
        server.close()


def _run_server(sock_dir: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvsentinel.daemons.device_api_server", "--grpc-address", "127.0.0.1:0",
         "--unix-socket", os.path.join(sock_dir, "device.sock"), "--health-port", "0", "--metrics-port", "0",
         "--shutdown-delay", "0", *flags],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )


def test_nvml_embedded_server_bad_library_exits_1(sock_dir, tmp_path):
    lib_dir = tmp_path / "usr" / "lib64"
    lib_dir.mkdir(parents=True)
    (lib_dir / "libnvidia-ml.so.1").write_text("not an ELF file\n")
    proc = _run_server(sock_dir, "--enable-nvml-provider", "--nvml-driver-root", str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert 'msg="cannot start"' in proc.stderr and "--enable-nvml-provider" in proc.stderr
    assert str(lib_dir / "libnvidia-ml.so.1") in proc.stderr
    assert not os.path.exists(os.path.join(sock_dir, "device.sock"))


def test_nvml_embedded_server_no_library_exits_1(sock_dir, tmp_path):
    proc = _run_server(sock_dir, "--enable-nvml-provider", "--nvml-driver-root", str(tmp_path))
    assert "falling back to the system default" in proc.stderr
    assert "FAKE NVML" not in proc.stderr  # never picked implicitly
    if ctypes.util.find_library("nvidia-ml") is None:  # no driver on this machine (CI)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert 'msg="cannot start"' in proc.stderr
        assert "LibraryNotFound" in proc.stderr and "--fake-nvml" in proc.stderr
        assert not os.path.exists(os.path.join(sock_dir, "device.sock"))


def test_nvml_embedded_server_fake_flags_are_validated(sock_dir, tmp_path):
    proc = _run_server(sock_dir, "--fake-nvml")
    assert proc.returncode == 2 and "--enable-nvml-provider" in proc.stderr
    proc = _run_server(sock_dir, "--enable-nvml-provider", "--fake-nvml-control", str(tmp_path / "c"))
    assert proc.returncode == 2 and "--fake-nvml" in proc.stderr
    env = clean_env(DEVICE_API_FAKE_NVML_TOPOLOGY=str(tmp_path / "t.json"))
    proc = subprocess.run([sys.executable, "-m", "nvsentinel.daemons.device_api_server", "--enable-nvml-provider"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "--fake-nvml" in proc.stderr


def test_nvml_embedded_server_address():
    assert server_address("/run/d.sock", "127.0.0.1:50051", 50051) == "unix:///run/d.sock"
    assert server_address("", "127.0.0.1:0", 4321) == "127.0.0.1:4321"
    assert server_address("", "0.0.0.0:50051", 50051) == "127.0.0.1:50051"
    assert server_address("", "[::1]:50051", 50051) == "[::1]:50051"
