"""The node API is not an open door: unix socket by default, clients told apart by the kernel,
per-client limits on watches and connections (real gRPC over a real unix socket, real processes)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import grpc
import pytest
from apiserver import SubprocessServer, http_get, take
from gpus import gpu, gpu_name

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2, gpu_pb2_grpc
from nvsentinel.node.client import DeviceApiClient

A = gpu_name(1)

# Another process: opens one watch on the given address and prints the first event's type and GPU.
OTHER_CLIENT = textwrap.dedent("""
    import sys
    from nvsentinel.node.client import DeviceApiClient
    with DeviceApiClient(sys.argv[1], timeout=10) as c:
        stream = c.watch_gpus()
        for event in stream:
            print(event.type, event.gpu.metadata.name, flush=True)
            break
        stream.cancel()
""")


def other_process_watch(address: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", OTHER_CLIENT, address], capture_output=True, text=True, timeout=60)


def metric(port: int, name: str) -> float:
    _, text = http_get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_one_client_cannot_take_every_watch(make_server):
    """Verify a client (this process: one uid and pid) opens watches until RESOURCE_EXHAUSTED names the
    per-client limit, another process still gets a watch, and closing one lets this one watch again."""
    server = make_server(max_watchers=256, max_watchers_per_peer=3)
    server.run_sync(server.store.create, gpu(A))
    clients = [DeviceApiClient(server.unix) for _ in range(2)]  # two channels: the same client
    streams = []
    try:
        with pytest.raises(errors.LimitExceeded) as info:
            for i in range(10):
                stream = clients[i % 2].watch_gpus()
                take(stream, 1)  # the refusal comes here, before any event
                streams.append(stream)
        assert len(streams) == 3
        assert "--max-watchers-per-peer 3" in str(info.value) and f"pid={os.getpid()}" in str(info.value)
        assert not isinstance(info.value, errors.Evicted)

        other = other_process_watch(server.unix)
        assert other.returncode == 0, other.stderr
        assert other.stdout.split() == ["ADDED", A]

        streams.pop().cancel()
        deadline = time.monotonic() + 10
        while True:  # the server frees the slot when it sees the cancel
            try:
                stream = clients[0].watch_gpus()
                take(stream, 1)
                streams.append(stream)
                break
            except errors.LimitExceeded:
                assert time.monotonic() < deadline, "the closed watch's slot was never freed"
                time.sleep(0.05)
        assert metric(server.server.metrics_port, 'device_api_server_refused_total{reason="watchers_per_peer"}') >= 1
    finally:
        for s in streams:
            s.cancel()
        for c in clients:
            c.close()


def test_watch_limit_per_peer_through_the_daemon(sock_dir):
    """Verify the flag reaches the daemon: with --max-watchers-per-peer 2 the third watch from this
    process is refused while a second process is served."""
    server = SubprocessServer.start(sock_dir, "--grpc-address", "", "--max-watchers-per-peer", "2")
    try:
        assert server.tcp_port == 0  # no TCP listener
        with DeviceApiClient(server.unix) as c:
            c.create_gpu(gpu(A))
            streams = [c.watch_gpus() for _ in range(2)]
            for s in streams:
                take(s, 1)
            with pytest.raises(errors.LimitExceeded, match="per-peer"):
                take(c.watch_gpus(), 1)
            other = other_process_watch(server.unix)
            assert other.returncode == 0 and other.stdout.split() == ["ADDED", A], other.stderr
            for s in streams:
                s.cancel()
    finally:
        server.close()


def test_connections_per_client_are_capped(make_server):
    """Verify a process holding --max-connections-per-peer connections gets its next one closed at once,
    while another process still connects and is served."""
    server = make_server(max_connections_per_peer=3)
    server.run_sync(server.store.create, gpu(A))
    held = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(server.settings.unix_socket)
            held.append(s)
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.connect(server.settings.unix_socket)
        extra.settimeout(10)
        assert extra.recv(1) == b""  # closed by the server, not left hanging
        extra.close()
        other = other_process_watch(server.unix)
        assert other.returncode == 0 and other.stdout.split() == ["ADDED", A], other.stderr
        assert metric(server.server.metrics_port, 'device_api_server_refused_total{reason="connections_per_peer"}') >= 1
    finally:
        for s in held:
            s.close()


def test_the_private_listener_refuses_direct_connections(server):
    """Verify a client that bypasses the unix socket (straight to gRPC's private abstract listener) is
    refused with PERMISSION_DENIED, so the per-client limits cannot be dodged that way."""
    private = "unix-abstract:" + server.server.relay.target.lstrip("\0")
    with grpc.insecure_channel(private) as ch:
        stub = gpu_pb2_grpc.GpuServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListGpus(gpu_pb2.ListGpusRequest(), timeout=10)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            list(stub.WatchGpus(gpu_pb2.WatchGpusRequest(), timeout=10))
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with DeviceApiClient(server.unix) as c:  # through the socket: served
        assert c.create_gpu(gpu(A))[1] is True


def test_tcp_is_off_by_default_and_loopback_only_unless_allowed(sock_dir):
    """Verify the daemon's defaults listen on the unix socket only; a non-loopback --grpc-address is a
    config error (one line, exit 2) without --allow-remote-grpc, and with it the server starts and
    warns."""
    from nvsentinel.node.api.config import DeviceApiSettings

    assert DeviceApiSettings().grpc_address == ""
    refused = subprocess.run(
        [sys.executable, "-m", "nvsentinel.daemons.device_api_server", "--grpc-address", "0.0.0.0:50051",
         "--unix-socket", os.path.join(sock_dir, "d.sock"), "--health-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "--allow-remote-grpc" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    server = SubprocessServer.start(sock_dir, "--grpc-address", "0.0.0.0:0", "--allow-remote-grpc")
    try:
        assert server.tcp_port > 0
        assert any("level=warning" in line and "--allow-remote-grpc" in line for line in server.log), server.log
        with DeviceApiClient(server.tcp) as c:  # served on TCP (loopback reaches 0.0.0.0)
            assert c.create_gpu(gpu(A))[1] is True
    finally:
        server.close()


def in_pid_namespace() -> tuple[str, ...]:
    """A prefix that runs the server in a pid namespace of its own, as a container is; fails loudly
    where that cannot be done (the suite needs it: no skip stands in for it)."""
    prefix = ("unshare", "--pid", "--fork", "--kill-child", "--")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, f"unshare --pid is needed (root): {probe.stderr.strip()}"
    return prefix


OTHER_GROUP = 4242


def test_clients_in_other_pid_namespaces_are_told_apart_by_uid_and_gid(sock_dir):
    """Verify a server in its own pid namespace (the device API server's container), to which every client
    outside has pid 0 (its sibling containers): clients are told apart by uid and gid, the chart giving
    each client container a group of its own. More connections from one such client share its budget
    (they cannot add up to every slot), while a client with another group still gets its own watch."""
    server = SubprocessServer.start(sock_dir, "--grpc-address", "", "--max-watchers-per-peer", "1",
                                    prefix=in_pid_namespace())
    channels = [grpc.insecure_channel(server.unix, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(2)]  # two connections from this one process
    calls = []
    try:
        with DeviceApiClient(server.unix) as c:
            c.create_gpu(gpu(A))
        stubs = [gpu_pb2_grpc.GpuServiceStub(ch) for ch in channels]

        def first_event(stub):
            call = stub.WatchGpus(gpu_pb2.WatchGpusRequest(), timeout=30)
            calls.append(call)
            return next(iter(call))

        assert first_event(stubs[0]).type == "ADDED"
        for stub in stubs:  # the same connection, and a second one: the one budget is spent
            with pytest.raises(grpc.RpcError) as info:
                first_event(stub)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"uid=0 gid={os.getgid()} pid=?" in info.value.details()
        other = subprocess.run(["setpriv", f"--regid={OTHER_GROUP}", "--clear-groups", sys.executable, "-c",
                                OTHER_CLIENT, server.unix], capture_output=True, text=True, timeout=60)
        assert other.returncode == 0, other.stderr
        assert other.stdout.split() == ["ADDED", A]  # another container's group: a client of its own
    finally:
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()
        server.close()
