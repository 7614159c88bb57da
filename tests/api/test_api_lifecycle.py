"""Readiness gate, health service, metrics, settings, SIGTERM shutdown and kill -9 (real daemon)."""
from __future__ import annotations

import os
import stat
import threading
import time

import grpc
import pytest
from apiserver import SubprocessServer, http_get
from gpus import gpu, gpu_name, status
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nvsentinel import errors
from nvsentinel.node.api.config import ENV_PREFIX, DeviceApiSettings
from nvsentinel.node.client import DeviceApiClient
from nvsentinel.node.informer import GpuInformer
from nvsentinel.service.settings import SettingsError, resolve

A, B, C = gpu_name(1), gpu_name(2), gpu_name(3)
SERVICE = "nvidia.device.v1alpha1.GpuService"


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_readiness_gate_opens_on_first_gpu(server):
    """Verify before any GPU: reads UNAVAILABLE, writes pass, /readyz 503, health NOT_SERVING; then all flip."""
    assert server.http("health", "/readyz")[0] == 503
    assert server.http("health", "/healthz") == (200, "ok\n")
    assert server.http("health", "/livez")[0] == 200
    assert health_status(server.tcp) == health_pb2.HealthCheckResponse.NOT_SERVING
    with DeviceApiClient(server.unix) as c:
        with pytest.raises(errors.Unavailable, match="not ready"):
            c.list_gpus()
        with pytest.raises(errors.Unavailable):
            c.get_gpu(A)
        with pytest.raises(errors.Unavailable):
            list(c.watch_gpus())
        assert c.create_gpu(gpu(A))[1] is True  # writes pass
        assert c.list_gpus()[0] == 1
    assert server.http("health", "/readyz")[0] == 200
    assert wait_for(lambda: health_status(server.tcp) == health_pb2.HealthCheckResponse.SERVING)
    assert health_status(server.tcp, SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_readiness_gate_opens_after_timeout_without_gpus(make_server):
    """Verify a node without GPUs becomes ready after --ready-timeout."""
    server = make_server(ready_timeout=0.3)
    assert server.http("health", "/readyz")[0] == 503
    assert wait_for(lambda: health_status(server.tcp) == health_pb2.HealthCheckResponse.SERVING, timeout=5)
    assert server.http("health", "/readyz")[0] == 200
    with DeviceApiClient(server.tcp) as c:
        assert c.list_gpus() == (0, [])


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_metrics_move_with_the_traffic(make_server):
    """Verify every listed metric exists and moves: cache, updates, requests, watch streams, evictions, readiness."""
    server = make_server(watch_buffer=4)
    with DeviceApiClient(server.tcp) as c:
        c.create_gpu(gpu(A, conditions=(("Ready", "True"),)))
        c.create_gpu(gpu(B, conditions=(("Ready", "False"),)))
        c.update_gpu_status(A, status(("Ready", "True")))
        with pytest.raises(errors.NotFound):
            c.get_gpu(C)
        with pytest.raises(errors.Conflict):
            c.update_gpu_status(A, status(), resource_version=1)
        stream = c.watch_gpus()
        it = iter(stream)
        next(it)
        _, text = server.http("metrics", "/metrics")
        assert metric(text, 'device_api_server_cache_gpus{state="total"}') == 2
        assert metric(text, 'device_api_server_cache_gpus{state="healthy"}') == 1
        assert metric(text, 'device_api_server_cache_gpus{state="unhealthy"}') == 1
        assert metric(text, "device_api_server_cache_resource_version") == 3
        assert metric(text, 'device_api_server_cache_updates_total{operation="create"}') == 2
        assert metric(text, 'device_api_server_cache_updates_total{operation="update_status"}') == 1
        assert metric(text, 'device_api_server_cache_rejected_total{reason="conflict"}') == 1
        assert metric(text, 'device_api_server_grpc_requests_total{code="NOT_FOUND",method="GetGpu"}') == 1
        assert metric(text, 'device_api_server_grpc_requests_total{code="OK",method="CreateGpu"}') == 2
        assert metric(text, 'device_api_server_grpc_request_duration_seconds_count{method="CreateGpu"}') == 2
        assert metric(text, "device_api_server_watch_streams_active") == 1
        assert metric(text, 'device_api_server_watch_events_total{type="ADDED"}') >= 1
        assert metric(text, "device_api_server_ready") == 1
        # a watcher that stops reading is evicted (buffer 4) and counted (gRPC-level eviction is
        # proven in test_api_watch; here an in-process subscriber keeps the transport out of it)
        slow = server.run_sync(server.store.watch, 3)
        for _ in range(8):
            server.run_sync(server.store.update_status, B, status(("Ready", "False")))
        stream.cancel()
        with pytest.raises(errors.Evicted):
            server.run_sync(slow.get_nowait)
        _, text = server.http("metrics", "/metrics")
        assert metric(text, "device_api_server_watch_subscribers_evicted_total") == 1
        assert wait_for(lambda: metric(server.http("metrics", "/metrics")[1], "device_api_server_watch_streams_active") == 0)


def test_settings_precedence_and_validation():
    """Verify flags > DEVICE_API_* environment > defaults, and clear errors naming the flag or variable."""
    import argparse

    from nvsentinel.service.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser, DeviceApiSettings, ENV_PREFIX)
    env = {"DEVICE_API_HEALTH_PORT": "9000", "DEVICE_API_METRICS_PORT": "9100", "DEVICE_API_NVML_IGNORED_XIDS": "13, 31"}
    s = resolve(DeviceApiSettings, parser.parse_args(["--health-port", "7000"]), env, prefix=ENV_PREFIX)
    assert (s.health_port, s.metrics_port, s.nvml_ignored_xids) == (7000, 9100, (13, 31))
    assert s.grpc_address == "" and s.unix_socket == "/var/run/device-api/device.sock"  # no TCP by default
    assert s.socket_mode == 0o660
    assert resolve(DeviceApiSettings, parser.parse_args(["--grpc-address", ""]), {}, prefix=ENV_PREFIX).grpc_address == ""
    for argv, env, match in [
        (["--grpc-address", "", "--unix-socket", ""], {}, "nothing to listen on"),
        (["--grpc-address", "0.0.0.0"], {}, "--grpc-address must be host:port"),
        ([], {"DEVICE_API_SHUTDOWN_TIMEOUT": "soon"}, "DEVICE_API_SHUTDOWN_TIMEOUT"),
        (["--health-port", "70000"], {}, "--health-port must be between 0 and 65535"),
        (["--unix-socket", "relative.sock"], {}, "absolute path"),
        ([], {"DEVICE_API_ENABLE_NVML_PROVIDER": "maybe"}, "expected true or false"),
        (["--log-format", "xml"], {}, "--log-format"),
    ]:
        with pytest.raises(SettingsError, match=match):
            resolve(DeviceApiSettings, parser.parse_args(argv), env, prefix=ENV_PREFIX)


def test_daemon_rejects_bad_flags_with_exit_2():
    """Verify the daemon prints one clear error line and exits 2 on a bad setting."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "nvsentinel.daemons.device_api_server", "--grpc-address", "nope"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert "--grpc-address must be host:port" in out.stderr


def test_sigterm_drains_streams_and_removes_the_socket(sock_dir):
    """Verify SIGTERM: not ready first, open watches end with UNAVAILABLE, exit 0, socket gone."""
    server = SubprocessServer.start(sock_dir, "--shutdown-delay", "1.0")
    try:
        mode = os.stat(server.unix_socket).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        with DeviceApiClient(server.unix) as c:
            c.create_gpu(gpu(A))
            stream = c.watch_gpus()
            ended = []

            def follow():
                try:
                    for ev in stream:
                        ended.append(ev.type)
                except errors.NvsentinelError as exc:
                    ended.append(exc)

            t = threading.Thread(target=follow)
            t.start()
            assert wait_for(lambda: ended == ["ADDED"])
            server.proc.send_signal(15)
            assert wait_for(lambda: http_get(server.health_port, "/readyz")[0] == 503, timeout=5)
            assert server.proc.wait(20) == 0
            t.join(10)
        assert isinstance(ended[-1], errors.Unavailable), ended
        assert not os.path.exists(server.unix_socket)
        assert any("msg=stopped" in line for line in server.log)
    finally:
        server.close()


def test_kill9_client_and_informer_reconnect_and_converge(sock_dir):
    """Verify after kill -9 and a restart (stale socket, new store), client and informer converge to the new state."""
    server = SubprocessServer.start(sock_dir)
    port = server.tcp_port
    events = []
    client = DeviceApiClient(server.unix, timeout=5)
    informer = GpuInformer(
        client,
        on_add=lambda g: events.append(("add", g.metadata.name)),
        on_delete=lambda g: events.append(("delete", g.metadata.name)),
        backoff_initial=0.05,
        backoff_max=0.5,
    )
    try:
        client.create_gpu(gpu(A))
        client.create_gpu(gpu(B))
        informer.start()
        assert informer.wait_for_sync(10)
        assert wait_for(lambda: {g.metadata.name for g in informer.list()} == {A, B})
        server.kill()
        assert os.path.exists(server.unix_socket)  # stale socket left behind
        with pytest.raises(errors.Unavailable):
            client.list_gpus(timeout=1)
        server = SubprocessServer.start(sock_dir, tcp_port=port)  # removes the stale socket
        with DeviceApiClient(server.tcp) as fresh:  # the new incarnation: different GPUs, RVs from 0
            fresh.create_gpu(gpu(B))
            fresh.create_gpu(gpu(C))
            for _ in range(5):
                fresh.update_gpu_status(C, status(("Ready", "True")))
        assert wait_for(lambda: {g.metadata.name for g in informer.list()} == {B, C}, timeout=20), informer.list()
        assert informer.get(C).resource_version == 7
        assert ("delete", A) in events and ("add", C) in events
        assert client.list_gpus()[0] == 7  # the old client object reconnected by itself
    finally:
        informer.stop()
        client.close()
        server.close()


def test_every_setting_is_documented():
    """Verify docs/device-api.md lists every flag with its environment variable."""
    import dataclasses
    import pathlib

    from nvsentinel.node.api.config import ENV_PREFIX
    from nvsentinel.service.settings import env_name

    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "device-api.md").read_text()
    for field in dataclasses.fields(DeviceApiSettings):
        flag = "--" + field.name.replace("_", "-")
        assert f"| `{flag}` | `{env_name(ENV_PREFIX, field)}` |" in doc, flag
