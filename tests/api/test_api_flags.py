"""Bad flags stop the daemon with one clear line and exit 2 (no traceback, no spinning core); the
documented forms are accepted. Each case runs the real daemon as a subprocess."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest
from apiserver import SubprocessServer

DAEMON = [sys.executable, "-m", "nvsentinel.daemons.device_api_server"]


def run_daemon(sock_dir: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*DAEMON, "--unix-socket", os.path.join(sock_dir, "d.sock"), "--health-port", "0", "--metrics-port", "0",
           "--shutdown-delay", "0", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, **(env or {})))


def assert_config_error(out: subprocess.CompletedProcess, names: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert names in lines[0], lines[0]


@pytest.mark.parametrize("flags, env, names", [
    (["--keepalive-time", "inf"], {}, "--keepalive-time"),
    (["--keepalive-time", "nan"], {}, "--keepalive-time"),
    (["--keepalive-timeout", "1e999"], {}, "--keepalive-timeout"),
    (["--max-gpus", "40000"], {}, "--max-gpus"),
    (["--max-recv-bytes", "3e9"], {}, "--max-recv-bytes"),
    (["--max-recv-bytes", "3000000000"], {}, "--max-recv-bytes"),
    (["--max-list-bytes", "4000000000"], {}, "--max-list-bytes"),
    (["--bookmark-interval", "1e-9"], {}, "--bookmark-interval"),
    (["--max-watchers", "²"], {}, "--max-watchers"),
    (["--max-watchers", "10" * 30], {}, "--max-watchers"),
    (["--max-watchers-per-peer", "0"], {}, "--max-watchers-per-peer"),
    (["--socket-mode", "0999"], {}, "--socket-mode"),
    (["--socket-mode", "01777"], {}, "--socket-mode"),
    ([], {"DEVICE_API_SHUTDOWN_TIMEOUT": "inf"}, "DEVICE_API_SHUTDOWN_TIMEOUT"),
    (["--grpc-address", "[::]:50051"], {}, "--allow-remote-grpc"),
])
def test_bad_values_are_one_line_and_exit_2(sock_dir, flags, env, names):
    """Verify each bad value stops the daemon at start: exit 2, one stderr line naming the flag."""
    assert_config_error(run_daemon(sock_dir, *flags, env=env), names)


@pytest.fixture
def busy_port():
    """A TCP port something else is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("flag", ["--health-port", "--metrics-port", "--grpc-address"])
def test_busy_ports_are_one_line_and_exit_2(sock_dir, busy_port, flag):
    """Verify a port already taken by another process stops the daemon with one line naming the flag."""
    value = f"127.0.0.1:{busy_port}" if flag == "--grpc-address" else str(busy_port)
    out = run_daemon(sock_dir, flag, value)
    assert_config_error(out, flag)
    assert "in use" in out.stderr
    assert not os.path.exists(os.path.join(sock_dir, "d.sock"))  # nothing left behind


def test_a_live_server_on_the_socket_is_one_line_and_exit_2(sock_dir):
    """Verify a second server on the socket of a live one stops with one line, and the live one's
    socket is left alone (still served)."""
    from nvsentinel.node.client import DeviceApiClient

    first = SubprocessServer.start(sock_dir, "--grpc-address", "")
    try:
        out = subprocess.run([*DAEMON, "--unix-socket", first.unix_socket, "--health-port", "0", "--metrics-port", "0"],
                             capture_output=True, text=True, timeout=60)
        assert_config_error(out, "--unix-socket")
        assert "another server is listening" in out.stderr
        with DeviceApiClient(first.unix) as c:
            c.wait_ready(10)
    finally:
        first.close()


@pytest.mark.parametrize("flags, env, mode", [
    (["--socket-mode", "0660"], {}, 0o660),  # the documented form
    (["--socket-mode", "0600"], {}, 0o600),  # octal, not decimal 600
    (["--socket-mode", "0o640"], {}, 0o640),
    ([], {"DEVICE_API_SOCKET_MODE": "0640"}, 0o640),
])
def test_socket_mode_is_octal(sock_dir, flags, env, mode):
    """Verify --socket-mode (and its variable) is read as octal and the socket really gets that mode."""
    server = SubprocessServer.start(sock_dir, "--grpc-address", "", *flags, env=env)
    try:
        st = os.stat(server.unix_socket)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == mode
    finally:
        server.close()


def test_help_shows_modes_in_octal():
    """Verify --help shows the socket mode's default as 0660, not 432."""
    out = subprocess.run([*DAEMON, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "DEVICE_API_SOCKET_MODE; default 0660]" in text
    assert "default 432" not in text
    assert "DEVICE_API_GRPC_ADDRESS; default '']" in text
