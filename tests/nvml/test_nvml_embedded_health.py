"""The `nvml-provider` daemon's health endpoint (sidecar mode): /healthz alive, /readyz 503 until
NVML is up and the server holds every GPU, 503 again while the server is unreachable."""
from __future__ import annotations

import re
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
from apiserver import ThreadServer, http_get, make_settings  # noqa: E402
from nvml_fake_helpers import clean_env  # noqa: E402


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class _Provider:
    def __init__(self, *flags: str) -> None:
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nvsentinel.daemons.nvml_provider", *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            env=clean_env(PYTHONUNBUFFERED="1"),
        )

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            assert self.proc.poll() is None, f"provider exited rc={self.proc.returncode}:\n{self.log()}"
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} in the provider log:\n{self.log()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def _until(what: str, check: Callable[[], bool], provider: _Provider, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        assert provider.proc.poll() is None, f"provider exited rc={provider.proc.returncode}:\n{provider.log()}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}:\n{provider.log()}")


def test_nvml_embedded_health_provider_readyz(sock_dir, tmp_path):
    # a port with no server behind it yet (the server starts on it later)
    first = ThreadServer(make_settings(sock_dir)).start()
    port = first.server.tcp_port
    first.stop()
    provider = _Provider("--fake-nvml", "--fake-nvml-control", str(tmp_path / "ctl"), "--address",
                         f"127.0.0.1:{port}", "--wait-timeout-ms", "100", "--health-port", "0")
    server = None
    try:
        health_port = int(provider.wait_log(r'msg="health endpoint listening".* health_port=(\d+)').group(1))
        assert health_port > 0
        provider.wait_log("device api unreachable")
        assert http_get(health_port, "/healthz") == (200, "ok\n")
        assert http_get(health_port, "/readyz")[0] == 503  # NVML is up, the server is not reachable
        assert http_get(health_port, "/nope")[0] == 404

        server = ThreadServer(make_settings(sock_dir, grpc_address=f"127.0.0.1:{port}")).start()
        _until("readyz 200", lambda: http_get(health_port, "/readyz")[0] == 200, provider)
        assert len(server.store) == 8  # ready means every GPU is registered

        # the server goes away: not ready again
        server.stop()
        server = None
        _until("readyz 503", lambda: http_get(health_port, "/readyz")[0] == 503, provider)
        assert http_get(health_port, "/healthz")[0] == 200

        provider.proc.send_signal(signal.SIGTERM)
        assert provider.proc.wait(20) == 0, provider.log()
        assert "Traceback" not in provider.log()
    finally:
        provider.close()
        if server is not None:
            server.stop()


def test_nvml_embedded_health_bad_port_is_validated(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nvsentinel.daemons.nvml_provider", "--fake-nvml", "--health-port", "70000"],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )
    assert proc.returncode == 2 and "--health-port" in proc.stderr
