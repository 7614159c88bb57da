"""Embed nvsentinel's GPU store and watch fan-out in your own tool.

Run: python docs/examples/embed_store.py
"""
from __future__ import annotations

import threading

from nvsentinel._proto import gpu_pb2
from nvsentinel.errors import Conflict
from nvsentinel.store import IMPLEMENTATION, GpuStore

store = GpuStore(max_gpus=8)
print(f"store implementation: {IMPLEMENTATION}")

# Register a GPU (a gpu_pb2.Gpu or its serialized bytes). Creating it again is a no-op.
gpu = gpu_pb2.Gpu()
gpu.metadata.name = gpu.spec.uuid = "GPU-8b2c6a4e-1f0d-4c1e-9a53-0b1c2d3e4f50"
record, created = store.create(gpu)
assert created and record.resource_version == 1

# Watch from "now": a synthetic ADDED for every GPU, then every change, in RV order.
watch = store.watch()
seen: list[tuple[str, int]] = []


def consume() -> None:
    for event in watch:  # ends when the store is closed
        seen.append((event.type, event.resource_version))


consumer = threading.Thread(target=consume)
consumer.start()

# A provider reports an uncorrectable ECC error, with optimistic concurrency on the RV.
status = gpu_pb2.GpuStatus(recommended_action="COMPONENT_RESET")
cond = status.conditions.add(type="EccHealthy", status="False", reason="Xid48", message="DBE")
cond.last_transition_time.GetCurrentTime()
record = store.update_status(record.name, status, expected_rv=record.resource_version)
print(f"{record.name}: {record.health} at rv {record.resource_version}")

try:  # a writer holding the old RV loses, and nothing changes
    store.update_status(record.name, gpu_pb2.GpuStatus(), expected_rv=1)
except Conflict as exc:
    print(f"refused: {exc}")

print(store.counts())  # HealthCounts(total=1, healthy=0, unhealthy=1, unknown=0)
store.close()
consumer.join()
print(f"watch saw: {seen}")
assert seen == [("ADDED", 1), ("MODIFIED", 2)]

