"""ListGpus cannot take the server past its memory limit (the real daemon, its peak RSS from /proc).

The chart gives the device API server 256 Mi. A full store (1 024 GPUs × 64 KiB, the store's
bounds) already holds ~175 MB, and every ListGpus in flight used to cost twice the list (the
response bytes and gRPC's copy), so a few clients listing at once pushed the process past 500 MB.
Now a list over --max-list-bytes is refused and read through a fresh watch instead (one GPU per
message), and the bytes of lists in flight are capped.
"""
from __future__ import annotations

import threading
import time

import grpc
import pytest
from apiserver import SubprocessServer
from gpus import gpu, gpu_name

from nvsentinel._proto import gpu_pb2
from nvsentinel.node.client import DeviceApiClient
from nvsentinel.node.endpoints import LIST_FALLBACK_KEY

MIB = 1024 * 1024
CHART_LIMIT = 256 * MIB  # charts/nvsentinel/values.yaml node.deviceApiServer.resources.limits.memory


def rss(pid: int, key: str = "VmRSS") -> int:
    """Bytes of the process's resident set (VmHWM: its peak so far)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def big_gpu(i: int, size: int = 64 * 1024 - 200) -> gpu_pb2.Gpu:
    g = gpu(gpu_name(i), conditions=(("Ready", "True"),))
    g.status.conditions[0].message = "x" * (size - g.ByteSize())
    return g


def fill(address: str, count: int) -> None:
    """`count` GPUs of ~64 KiB each, written by 4 client threads."""
    def writer(part: range) -> None:
        with DeviceApiClient(address, timeout=60) as c:
            for i in part:
                c.create_gpu(big_gpu(i))

    threads = [threading.Thread(target=writer, args=(range(k, count, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def list_concurrently(address: str, clients: int, rounds: int) -> list[int]:
    """Every client lists `rounds` times at once; the sizes of the lists they got."""
    sizes: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(clients)

    def lister() -> None:
        try:
            with DeviceApiClient(address, timeout=120) as c:
                start.wait(30)
                for _ in range(rounds):
                    sizes.append(len(c.list_gpus()[1]))
        except BaseException as exc:  # handed to the test thread
            failures.append(exc)

    threads = [threading.Thread(target=lister) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures
    return sizes


@pytest.fixture
def server_factory(sock_dir):
    servers = []

    def start(*flags: str) -> SubprocessServer:
        server = SubprocessServer.start(sock_dir, *flags, timeout=60)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def test_a_full_store_listed_by_many_clients_stays_under_the_chart_limit(server_factory):
    """Verify 1 024 × 64 KiB listed by 8 clients at once: ListGpus refuses it (RESOURCE_EXHAUSTED
    with the fallback key), every client still gets all 1 024 GPUs (through a watch), and the
    server's peak RSS stays under 256 Mi, growing by less than a tenth of the store."""
    server = server_factory()
    pid = server.proc.pid
    fill(server.unix, 1024)
    with grpc.insecure_channel(server.unix) as ch:
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/nvidia.device.v1alpha1.GpuService/ListGpus")(b"", timeout=30)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-list-bytes" in info.value.details()
    assert (LIST_FALLBACK_KEY, "watch") in tuple(info.value.trailing_metadata())
    filled = rss(pid)
    assert filled > 100 * MIB, filled  # the store really holds ~2 × 64 MiB

    sizes = list_concurrently(server.unix, clients=8, rounds=2)

    peak = rss(pid, "VmHWM")
    assert sizes == [1024] * 16
    assert peak < CHART_LIMIT, f"peak {peak / MIB:.0f} MiB"
    assert rss(pid) - filled < 64 * MIB // 10, f"grew {(rss(pid) - filled) / MIB:.0f} MiB listing"


def test_lists_in_flight_are_capped(server_factory):
    """Verify lists under --max-list-bytes, 8 at once: the bytes in flight are capped (the others are
    refused and fall back to a watch), so the peak grows by about one list's two copies, not eight."""
    server = server_factory("--max-list-bytes-in-flight", str(16 * MIB))
    pid = server.proc.pid
    fill(server.unix, 200)  # ~12.5 MiB: one list fits the cap
    with DeviceApiClient(server.unix) as c:
        rv, items = c.list_gpus()  # a plain ListGpus (under the cap)
        assert (rv, len(items)) == (200, 200)
    settled = rss(pid, "VmHWM")

    sizes = list_concurrently(server.unix, clients=8, rounds=2)

    assert sizes == [200] * 16
    growth = rss(pid, "VmHWM") - settled
    # eight lists in flight at once would add 8 × 2 × 12.5 MiB = 200 MiB
    assert growth < 80 * MIB, f"peak grew {growth / MIB:.0f} MiB"
    metrics = server_metrics(server)
    assert 'device_api_server_refused_total{reason="list_busy"}' in metrics
    assert metric_value(metrics, 'device_api_server_refused_total{reason="list_busy"}') >= 1


def server_metrics(server: SubprocessServer) -> str:
    from apiserver import http_get

    status, text = http_get(server.metrics_port, "/metrics")
    assert status == 200
    return text


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_the_watch_fallback_lists_exactly_what_listgpus_would(make_server):
    """Verify a list too large for ListGpus, read through a fresh watch by the client, has the store's
    GPUs (deletes and updates applied) and its RV, and an informer syncs and follows through it."""
    from gpus import status

    from nvsentinel.node.informer import GpuInformer

    server = make_server(max_object_bytes=4096, max_recv_bytes=70_000, max_list_bytes=70_000,
                         max_list_bytes_in_flight=70_000)
    for i in range(40):
        server.run_sync(server.store.create, gpu(gpu_name(i)))
    server.run_sync(server.store.delete, gpu_name(3))
    wide = status(("Ready", "True"))
    wide.conditions[0].message = "x" * 3000
    for i in range(10, 40):  # 30 × ~3 KiB: over the 70 000-byte list cap
        server.run_sync(server.store.update_status, gpu_name(i), wide)
    expected = sorted(gpu_name(i) for i in range(40) if i != 3)
    with grpc.insecure_channel(server.unix) as ch, pytest.raises(grpc.RpcError) as info:
        ch.unary_unary("/nvidia.device.v1alpha1.GpuService/ListGpus")(b"", timeout=10)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    with DeviceApiClient(server.unix) as c:
        rv, items = c.list_gpus()
        assert rv == server.store.resource_version == 71
        assert sorted(g.metadata.name for g in items) == expected
        assert {g.metadata.name: g.resource_version for g in items} == {
            r.name: r.resource_version for r in server.store.list()[1]}
        assert c.server_epoch == server.server.epoch
        with GpuInformer(c) as informer:
            assert informer.wait_for_sync(10)
            assert sorted(g.metadata.name for g in informer.list()) == expected
            server.run_sync(server.store.delete, gpu_name(0))
            deadline = time.monotonic() + 10
            while informer.get(gpu_name(0)) is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert informer.get(gpu_name(0)) is None
    deadline = time.monotonic() + 10  # every list has left: its bytes are no longer counted in flight
    while server.server.servicer.list_bytes_in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.server.servicer.list_bytes_in_flight == 0


def test_a_refused_fallback_watch_says_why(make_server):
    """Verify a list too large for ListGpus whose fallback watch is refused too (the client already holds its
    share of watches) fails with that refusal (RESOURCE_EXHAUSTED → LimitExceeded naming the limit), not with a
    misleading "no snapshot size"."""
    from nvsentinel import errors

    server = make_server(max_object_bytes=4096, max_recv_bytes=70_000, max_list_bytes=5_000,
                         max_list_bytes_in_flight=5_000, max_watchers_per_peer=1)
    from gpus import status

    wide = status(("Ready", "True"))
    wide.conditions[0].message = "x" * 3000
    for i in range(4):  # 4 × ~3 KiB: over the 5 000-byte list cap
        server.run_sync(server.store.create, gpu(gpu_name(i)))
        server.run_sync(server.store.update_status, gpu_name(i), wide)
    with DeviceApiClient(server.unix) as c:
        held = c.watch_gpus()
        try:
            next(iter(held))  # this client's one watch is in use
            with pytest.raises(errors.LimitExceeded) as info:
                c.list_gpus()
            assert "max-watchers-per-peer" in str(info.value)
        finally:
            held.cancel()
