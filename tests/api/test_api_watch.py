"""WatchGpus over real sockets: fresh, resume, gap-free list+watch, expiry, bookmarks, eviction."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from apiserver import take
from gpus import gpu, gpu_name, status

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2, gpu_pb2_grpc
from nvsentinel.node.client import DeviceApiClient

A, B, C = gpu_name(1), gpu_name(2), gpu_name(3)


def test_fresh_watch_then_live(client):
    """Verify a fresh watch gets ADDED for each GPU, then MODIFIED and DELETED with the RV bumped."""
    client.create_gpu(gpu(A))
    client.create_gpu(gpu(B))
    stream = client.watch_gpus()
    client.update_gpu_status(A, status(("Ready", "False")))
    client.delete_gpu(B)
    events = take(stream, 4)
    stream.cancel()
    assert [(e.type, e.gpu.metadata.name, e.resource_version) for e in events] == [
        ("ADDED", A, 1), ("ADDED", B, 2), ("MODIFIED", A, 3), ("DELETED", B, 4),
    ]
    assert events[2].gpu.status.conditions[0].status == "False"


def test_list_then_watch_from_the_list_rv_misses_nothing(client):
    """Verify upstream's gap is closed: list, create another GPU, watch from the list RV → it arrives."""
    client.create_gpu(gpu(A))
    rv, items = client.list_gpus()
    client.create_gpu(gpu(B))
    stream = client.watch_gpus(since_rv=rv)
    (event,) = take(stream, 1)
    stream.cancel()
    assert (event.type, event.gpu.metadata.name, event.resource_version) == ("ADDED", B, 2)


def test_resume_after_dropped_connection_misses_nothing(server):
    """Verify a client that drops its connection resumes from its last RV and gets exactly what it missed."""
    with DeviceApiClient(server.tcp) as first:
        first.create_gpu(gpu(A))
        stream = first.watch_gpus()
        last = take(stream, 1)[0].resource_version
        stream.cancel()
    for i in range(5):
        server.run_sync(server.store.update_status, A, status(("Ready", "True" if i % 2 else "False")))
    server.run_sync(server.store.create, gpu(B))
    with DeviceApiClient(server.unix) as second:
        stream = second.watch_gpus(since_rv=last)
        events = take(stream, 6)
        stream.cancel()
    assert [e.resource_version for e in events] == list(range(last + 1, last + 7))
    assert events[-1].type == "ADDED"


def test_expired_resume_is_out_of_range(make_server):
    """Verify resuming from an RV older than the window gives OUT_OF_RANGE (Expired: relist)."""
    server = make_server(watch_buffer=4)
    server.run_sync(server.store.create, gpu(A))
    for _ in range(10):
        server.run_sync(server.store.update_status, A, status(("Ready", "True")))
    with DeviceApiClient(server.tcp) as c:
        with pytest.raises(errors.Expired):
            list(c.watch_gpus(since_rv=1))
        with pytest.raises(errors.Expired):  # a restarted server: the RV is from the future
            list(c.watch_gpus(since_rv=500))
    with grpc.insecure_channel(server.tcp) as ch:
        stub = gpu_pb2_grpc.GpuServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.WatchGpus(gpu_pb2.WatchGpusRequest(opts=gpu_pb2.ListOptions(resource_version="1"))))
        assert info.value.code() is grpc.StatusCode.OUT_OF_RANGE
        with pytest.raises(grpc.RpcError) as info:
            list(stub.WatchGpus(gpu_pb2.WatchGpusRequest(opts=gpu_pb2.ListOptions(resource_version="abc"))))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_idle_watchers_get_bookmarks(make_server):
    """Verify an idle watch receives BOOKMARKs carrying the current RV in both RV fields."""
    server = make_server(bookmark_interval=0.1)
    server.run_sync(server.store.create, gpu(A))
    with DeviceApiClient(server.tcp) as c:
        stream = c.watch_gpus(since_rv=1)
        (event,) = take(stream, 1)
        stream.cancel()
    assert event.type == "BOOKMARK" and event.resource_version == 1
    assert event.gpu.metadata.resource_version == "1"


def test_slow_watcher_is_evicted_while_255_others_stay_gap_free(make_server):
    """Verify one watcher that stops reading is evicted (RESOURCE_EXHAUSTED) and 255 others see every event."""
    server = make_server(watch_buffer=64, max_watchers=256, max_watchers_per_peer=256)  # one peer: this process
    server.run_sync(server.store.create, gpu(A))
    updates = 600
    statuses = []
    for i in range(2):
        st = status(("Ready", "True" if i % 2 else "False"))
        st.conditions[0].message = "m" * 2048  # big enough that transport buffers cannot hide a lag
        statuses.append(st.SerializeToString())

    async def main():
        # the slow watcher has its own connection with a fixed 64 KiB window (no BDP growth)
        async with grpc.aio.insecure_channel(server.tcp) as ch, grpc.aio.insecure_channel(
            server.tcp, options=[("grpc.http2.bdp_probe", 0)]
        ) as slow_ch:
            stub = gpu_pb2_grpc.GpuServiceStub(ch)
            req = gpu_pb2.WatchGpusRequest(opts=gpu_pb2.ListOptions(resource_version="1"))
            slow = gpu_pb2_grpc.GpuServiceStub(slow_ch).WatchGpus(req)
            fast = [stub.WatchGpus(req) for _ in range(255)]
            for call in [slow, *fast]:
                await call.initial_metadata()  # every stream is subscribed before the writes start

            progress = [0] * len(fast)

            async def consume(i, call):
                rvs = []
                async for resp in call:
                    if resp.type != "BOOKMARK":
                        rvs.append(resp.object.resource_version)
                        progress[i] = len(rvs)
                    if len(rvs) == updates:
                        break
                return rvs

            tasks = [asyncio.create_task(consume(i, c)) for i, c in enumerate(fast)]

            def write(start, n):
                for i in range(start, start + n):
                    server.store.update_status(A, statuses[i % 2])

            def writer():
                # batches of 32 (half the buffer); the 255 readers keep up, the slow one never reads
                for start in range(0, updates, 32):
                    n = min(32, updates - start)
                    server.run_sync(write, start, n)
                    deadline = time.monotonic() + 30
                    while min(progress) < start + n - 32 and time.monotonic() < deadline:
                        time.sleep(0.001)

            await asyncio.get_running_loop().run_in_executor(None, writer)
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
            expected = list(range(2, 2 + updates))
            assert all(r == expected for r in results)
            async def drain_slow():
                async for _ in slow:  # reads what the transport buffered, then the eviction
                    pass

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(drain_slow(), timeout=30)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "behind" in info.value.details()
            for c in fast:
                c.cancel()

    asyncio.run(main())
    assert server.store.stats()["watch"]["evicted_total"] >= 1


def test_watch_limit_is_resource_exhausted(make_server):
    """Verify a watch beyond --max-watchers is refused with RESOURCE_EXHAUSTED."""
    server = make_server(max_watchers=2)
    server.run_sync(server.store.create, gpu(A))
    with DeviceApiClient(server.tcp) as c:
        streams = [c.watch_gpus() for _ in range(2)]
        for s in streams:
            take(s, 1)
        with pytest.raises(errors.LimitExceeded):
            take(c.watch_gpus(), 1)
        for s in streams:
            s.cancel()
