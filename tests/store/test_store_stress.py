"""Multi-threaded stress: writers, readers and subscribers at once (SPEC §2.1 lock design, §2.2)."""
from __future__ import annotations

import random
import threading
import time

from gpus import gpu, gpu_name, status, wire

from nvsentinel._proto import gpu_pb2
from nvsentinel.errors import Conflict, Evicted

GPUS = [gpu_name(i) for i in range(8)]
DURATION = 1.5


def test_concurrent_writers_readers_and_subscribers(impl):
    """Verify no reader sees a torn object and every subscriber sees a gap-free RV stream or an eviction."""
    mod = impl.load("store")
    store = mod.GpuStore(max_lag=512, subscribe_burst=100)
    for name in GPUS:
        store.create(gpu(name))  # RVs 1..8, replayed to each subscriber
    statuses = [
        wire(status(*[("Ready", random.choice(["True", "False", "Unknown"])), ("Xid", "True")][: k + 1], action="NONE"))
        for k in range(2)
        for _ in range(8)
    ]
    stop = threading.Event()
    failures: list[str] = []
    writes = [0, 0]
    conflicts = [0]
    reads = [0]
    outcomes: list[str] = []

    def writer(idx):
        rng = random.Random(idx)
        while not stop.is_set():
            name = rng.choice(GPUS)
            try:
                if rng.random() < 0.5:
                    current = store.get(name).resource_version
                    store.update_status(name, rng.choice(statuses), expected_rv=current)
                else:
                    store.update_status(name, rng.choice(statuses))
                writes[idx] += 1
            except Conflict:
                conflicts[0] += 1

    def reader():
        while not stop.is_set():
            rv, records = store.list()
            for rec in records:
                msg = gpu_pb2.Gpu.FromString(rec.data)
                if msg.resource_version != rec.resource_version or msg.metadata.resource_version != str(rec.resource_version):
                    failures.append(f"torn record {rec!r}")
                if rec.resource_version > rv:
                    failures.append(f"record newer than its list: {rec.resource_version} > {rv}")
            one = store.get(random.choice(GPUS))
            if gpu_pb2.Gpu.FromString(one.data).metadata.name != one.name:
                failures.append("torn get")
            reads[0] += 1

    def subscriber(sub, slow):
        last = 0
        try:
            while not stop.is_set():
                ev = sub.get(timeout=0.05)
                if ev is None or ev.type == "BOOKMARK":
                    continue
                if ev.resource_version != last + 1:
                    failures.append(f"gap: {last} -> {ev.resource_version}")
                    return
                last = ev.resource_version
                if slow:
                    time.sleep(0.01)
            outcomes.append("kept up")
        except Evicted:
            outcomes.append("evicted")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    # subscribed before any write starts: each must see RVs 9, 10, 11, ... with no gap
    threads += [threading.Thread(target=subscriber, args=(store.watch(since_rv=0), i == 0)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(DURATION)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not failures, failures[:5]
    assert sum(writes) > 100 and reads[0] > 10
    assert store.resource_version == len(GPUS) + sum(writes)
    assert outcomes.count("evicted") >= 1, outcomes  # the slow one
    assert len(outcomes) == 4
