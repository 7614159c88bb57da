"""The NVML provider end to end: the real daemon in a subprocess, the real pynvml against the fake
libnvidia-ml, a real Device API server on real sockets (SPEC §3 condition contract, §5)."""
from __future__ import annotations

import ctypes.util
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings  # noqa: E402
from nvml_fake_helpers import UUIDS, clean_env  # noqa: E402

from nvsentinel import errors  # noqa: E402
from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.node.nvml.config import ENV_PREFIX, NvmlProviderSettings  # noqa: E402
from nvsentinel.service.settings import resolve  # noqa: E402



class Provider:
    """`python -m nvsentinel.daemons.nvml_provider` with its stderr in a temp file."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None) -> None:
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            # any free health port: never collide with a real provider or a parallel test
            [sys.executable, "-m", "nvsentinel.daemons.nvml_provider", "--health-port", "0", *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            env=env if env is not None else clean_env(PYTHONUNBUFFERED="1"),
        )

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def wait_for(what: str, check: Callable[[], object], provider: Provider, timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except errors.NvsentinelError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        assert provider.proc.poll() is None, f"provider exited rc={provider.proc.returncode}:\n{provider.log()}"
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}); provider log:\n{provider.log()}")


def cond(gpu: gpu_pb2.Gpu, type_: str = "NvmlHealthy") -> gpu_pb2.Condition | None:
    for c in gpu.status.conditions:
        if c.type == type_:
            return c
    return None


def nvml_status(client: DeviceApiClient, uuid: str) -> tuple[str, str, str]:
    gpu = client.get_gpu(uuid)
    c = cond(gpu)
    return (c.status, c.reason, gpu.status.recommended_action) if c else ("", "", "")


def all_have(client: DeviceApiClient, status: str, reason: str | None = None) -> bool:
    _, gpus = client.list_gpus()
    if sorted(g.metadata.name for g in gpus) != sorted(UUIDS):
        return False
    for g in gpus:
        c = cond(g)
        if c is None or c.status != status or (reason is not None and c.reason != reason):
            return False
    return True


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_nvml_provider_e2e(sock_dir, tmp_path, record_property):
    control = tmp_path / "fake-nvml.ctl"
    server = ThreadServer(make_settings(sock_dir)).start()
    port = server.server.tcp_port
    client = DeviceApiClient(server.tcp, timeout=5)
    provider = Provider("--fake-nvml", "--fake-nvml-control", str(control), "--address", server.tcp,
                        "--wait-timeout-ms", "100", "--nvml-ignored-xids", "94")
    fault = FaultInjector(control)
    try:
        # 8 GPUs registered, each with our condition True
        wait_for("8 healthy GPUs", lambda: all_have(client, "True", "NvmlOk"), provider, 30)
        assert "FAKE NVML IN USE" in provider.log()

        # another provider's condition on GPU 3 (merged by type, with the RV)
        gpu3 = client.get_gpu(UUIDS[3])
        status = gpu_pb2.GpuStatus()
        status.CopyFrom(gpu3.status)
        status.conditions.add(type="KmsgHealthy", status="True", reason="NoXidInLog", message="kmsg ok")
        client.update_gpu_status(UUIDS[3], status, gpu3.resource_version)

        # XID 79 on GPU 3 → False, Xid79, RESTART_BM: within 1 s
        t0 = time.monotonic()
        fault.inject_xid(3, 79)
        wait_for("GPU 3 Xid79", lambda: nvml_status(client, UUIDS[3]) == ("False", "Xid79", "RESTART_BM"), provider)
        latency = time.monotonic() - t0
        record_property("xid_to_condition_seconds", round(latency, 4))
        print(f"XID 79 -> NvmlHealthy=False latency: {latency * 1000:.1f} ms")
        assert latency < 1.0, f"XID 79 took {latency:.3f} s to reach the Device API"
        gpu3 = client.get_gpu(UUIDS[3])
        assert cond(gpu3, "KmsgHealthy").reason == "NoXidInLog"  # the other provider's survives
        assert cond(gpu3).message == "XID 79: GPU has fallen off the bus"

        # a benign XID 13 (on the unhealthy GPU 3 and the healthy GPU 2) and an ignored XID 94
        # change nothing; XID 48 on GPU 5, injected after them, tells us they were processed
        rv2 = client.get_gpu(UUIDS[2]).resource_version
        rv3 = gpu3.resource_version
        fault.inject_xid(3, 13)
        fault.inject_xid(2, 13)
        fault.inject_xid(2, 94)
        fault.inject_ecc(2, double_bit=False)
        fault.inject_xid(5, 48)
        wait_for("GPU 5 Xid48", lambda: nvml_status(client, UUIDS[5]) == ("False", "Xid48", "COMPONENT_RESET"),
                 provider)
        assert client.get_gpu(UUIDS[2]).resource_version == rv2
        assert client.get_gpu(UUIDS[3]).resource_version == rv3
        assert nvml_status(client, UUIDS[3]) == ("False", "Xid79", "RESTART_BM")

        # double-bit ECC on GPU 6 → EccDoubleBit, classified like XID 48
        fault.inject_ecc(6)
        wait_for("GPU 6 DBE", lambda: nvml_status(client, UUIDS[6]) == ("False", "EccDoubleBit", "COMPONENT_RESET"),
                 provider)

        # restart the server on the same address: the provider re-registers and re-sends its view
        client.close()
        server.stop()
        server = ThreadServer(make_settings(sock_dir, grpc_address=f"127.0.0.1:{port}")).start()
        client = DeviceApiClient(server.tcp, timeout=5)

        def resent() -> bool:
            if sorted(g.metadata.name for g in client.list_gpus()[1]) != sorted(UUIDS):
                return False
            return (nvml_status(client, UUIDS[3]) == ("False", "Xid79", "RESTART_BM")
                    and nvml_status(client, UUIDS[5]) == ("False", "Xid48", "COMPONENT_RESET")
                    and nvml_status(client, UUIDS[6])[0] == "False"
                    and all(nvml_status(client, UUIDS[i])[0] == "True" for i in (0, 1, 2, 4, 7)))

        wait_for("the view re-sent to the new server", resent, provider, 30)
        assert "re-registering" in provider.log()

        # GPU lost → every GPU unhealthy (GpuLost, RESTART_BM); recovery → healthy again
        fault.lose(0)
        wait_for("all GpuLost", lambda: all_have(client, "False", "GpuLost"), provider)
        assert {nvml_status(client, u)[2] for u in UUIDS} == {"RESTART_BM"}
        fault.recover(0)
        wait_for("all recovered", lambda: all_have(client, "True", "Recovered"), provider)
        assert {nvml_status(client, u)[2] for u in UUIDS} == {"NONE"}

        # one structured line per state change
        assert provider.log().count('msg="gpu condition changed"') >= 1 + 1 + 1 + 8 + 8

        provider.proc.send_signal(signal.SIGTERM)
        assert provider.proc.wait(10) == 0
    finally:
        provider.close()
        client.close()
        server.stop()


def test_nvml_provider_e2e_reconnects_when_the_server_starts_late(sock_dir, tmp_path):
    # the server is not there yet: the provider keeps retrying, then registers when it appears
    first = ThreadServer(make_settings(sock_dir)).start()
    port = first.server.tcp_port
    first.stop()
    provider = Provider("--fake-nvml", "--fake-nvml-control", str(tmp_path / "ctl"),
                        "--address", f"127.0.0.1:{port}", "--wait-timeout-ms", "100")
    server = None
    client = None
    try:
        deadline = time.monotonic() + 20
        while "device api unreachable" not in provider.log():
            assert time.monotonic() < deadline, provider.log()
            assert provider.proc.poll() is None, provider.log()
            time.sleep(0.05)
        time.sleep(0.5)
        server = ThreadServer(make_settings(sock_dir, grpc_address=f"127.0.0.1:{port}")).start()
        client = DeviceApiClient(server.tcp, timeout=5)
        wait_for("8 healthy GPUs", lambda: all_have(client, "True"), provider, 30)
        assert provider.log().count("device api unreachable") == 1  # logged once per state change
    finally:
        provider.close()
        if client is not None:
            client.close()
        if server is not None:
            server.stop()


def _run_bad(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvsentinel.daemons.nvml_provider", "--health-port", "0", "--address", "127.0.0.1:1", *flags],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )


def test_nvml_provider_e2e_bad_library_exits_cleanly(tmp_path):
    # a file that is not a library where libnvidia-ml.so.1 should be: one clear line, exit 1
    lib_dir = tmp_path / "usr" / "lib64"
    lib_dir.mkdir(parents=True)
    (lib_dir / "libnvidia-ml.so.1").write_text("not an ELF file\n")
    proc = _run_bad("--nvml-driver-root", str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert 'msg="cannot start"' in proc.stderr and str(lib_dir / "libnvidia-ml.so.1") in proc.stderr


def test_nvml_provider_e2e_no_library_exits_cleanly(tmp_path):
    proc = _run_bad("--nvml-driver-root", str(tmp_path))
    assert "falling back to the system default" in proc.stderr
    if ctypes.util.find_library("nvidia-ml") is None:  # no driver on this machine
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "LibraryNotFound" in proc.stderr and "--fake-nvml" in proc.stderr


def test_nvml_provider_e2e_bad_settings_exit_2(tmp_path):
    proc = _run_bad("--wait-timeout-ms", "0")
    assert proc.returncode == 2 and "--wait-timeout-ms" in proc.stderr
    proc = _run_bad("--fake-nvml-control", str(tmp_path / "c"))
    assert proc.returncode == 2 and "--fake-nvml" in proc.stderr


def test_nvml_provider_settings_precedence():
    env = {f"{ENV_PREFIX}WAIT_TIMEOUT_MS": "250", f"{ENV_PREFIX}NVML_IGNORED_XIDS": "13, 94",
           f"{ENV_PREFIX}FAKE_NVML": "true"}
    s = resolve(NvmlProviderSettings, None, env, prefix=ENV_PREFIX)
    assert (s.wait_timeout_ms, s.nvml_ignored_xids, s.fake_nvml) == (250, (13, 94), True)
    assert s.nvml_driver_root == "/run/nvidia/driver"
    import argparse

    from nvsentinel.daemons.nvml_provider import add_parser_arguments

    parser = argparse.ArgumentParser()
    add_parser_arguments(parser)
    s = resolve(NvmlProviderSettings, parser.parse_args(["--wait-timeout-ms", "100"]), env, prefix=ENV_PREFIX)
    assert s.wait_timeout_ms == 100


def test_nvml_provider_cli_and_imports():
    # `nvsentinel nvml-provider` is registered; the library package never imports kubernetes
    out = subprocess.run([sys.executable, "-m", "nvsentinel", "nvml-provider", "--help"],
                         capture_output=True, text=True, timeout=60, env=clean_env())
    assert out.returncode == 0, out.stderr
    for flag in ("--address", "--nvml-driver-root", "--nvml-ignored-xids", "--fake-nvml",
                 "--fake-nvml-topology", "--fake-nvml-control", "--wait-timeout-ms", "--log-format",
                 "--log-level", "--node-name", "NVML_PROVIDER_WAIT_TIMEOUT_MS"):
        assert flag in out.stdout
    code = ("import sys, nvsentinel.node.nvml.provider, nvsentinel.node.nvml.library, nvsentinel.daemons.nvml_provider;"
            "print(any(m.split('.')[0] == 'kubernetes' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env())
    assert out.stdout.strip() == "False", out.stderr
