"""GpuInformer against a real server: handlers, cache, relist on expiry, resync."""
from __future__ import annotations

import threading
import time

from gpus import gpu, gpu_name, status

from nvsentinel.node.client import DeviceApiClient
from nvsentinel.node.informer import GpuInformer

A, B, C = gpu_name(1), gpu_name(2), gpu_name(3)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_handlers_and_cache_follow_the_server(server):
    """Verify add/update/delete handlers fire in order and the cache mirrors the server."""
    calls = []
    with DeviceApiClient(server.tcp) as client:
        client.create_gpu(gpu(A))
        informer = GpuInformer(
            client,
            on_add=lambda g: calls.append(("add", g.metadata.name, g.resource_version)),
            on_update=lambda old, new: calls.append(("update", new.metadata.name, old.resource_version, new.resource_version)),
            on_delete=lambda g: calls.append(("delete", g.metadata.name, g.resource_version)),
        )
        with informer:
            assert informer.wait_for_sync(10)
            client.create_gpu(gpu(B))  # rv 2
            client.update_gpu_status(A, status(("Ready", "False")))  # rv 3
            client.delete_gpu(B)  # rv 4
            assert wait_for(lambda: len(calls) == 4)
            assert calls == [("add", A, 1), ("add", B, 2), ("update", A, 1, 3), ("delete", B, 4)]
            assert [g.metadata.name for g in informer.list()] == [A]
            assert informer.get(A).status.conditions[0].status == "False"
            assert informer.get(B) is None
            assert informer.resource_version == 4


def test_expired_watch_makes_the_informer_relist_and_converge(make_server):
    """Verify an informer whose resume RV left the server's window (Expired) relists and converges."""
    server = make_server(watch_buffer=4)
    gate = threading.Event()
    seen = []

    def on_update(old, new):
        seen.append(new.resource_version)
        gate.wait(10)  # a stuck consumer

    with DeviceApiClient(server.tcp) as client:
        client.create_gpu(gpu(A))
        client.create_gpu(gpu(B))
        informer = GpuInformer(client, on_update=on_update, backoff_initial=0.05)
        with informer:
            assert informer.wait_for_sync(10)
            client.update_gpu_status(A, status(("Ready", "True")))  # blocks the informer in on_update
            assert wait_for(lambda: seen == [3])
            informer._stream.cancel()  # the connection drops while the informer is stuck at RV 3
            for i in range(40):  # far past the 4-event window while the informer is stuck
                client.update_gpu_status(B, status(("Ready", "True" if i % 2 else "False")))
            client.delete_gpu(A)
            client.create_gpu(gpu(C))
            gate.set()
            assert wait_for(lambda: {g.metadata.name for g in informer.list()} == {B, C} and informer.resource_version == 45)
            assert informer.relists >= 2
            assert informer.get(B).resource_version == 43


def test_resync_replays_the_cache(server):
    """Verify every resync_period, on_update(obj, obj) is called for each cached GPU."""
    resynced = []
    with DeviceApiClient(server.tcp) as client:
        client.create_gpu(gpu(A))
        informer = GpuInformer(client, on_update=lambda old, new: resynced.append((old is new, new.metadata.name)), resync_period=0.1)
        with informer:
            assert wait_for(lambda: len(resynced) >= 2)
    assert all(same and name == A for same, name in resynced)


def test_informer_rejects_bad_settings(server):
    """Verify nonsensical informer timings are refused up front."""
    import pytest

    with DeviceApiClient(server.tcp) as client:
        with pytest.raises(ValueError):
            GpuInformer(client, resync_period=0)
        with pytest.raises(ValueError):
            GpuInformer(client, backoff_initial=1, backoff_max=0.5)
