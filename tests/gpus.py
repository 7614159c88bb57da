"""Test helpers: realistic GPU names, objects and statuses."""
from __future__ import annotations

import uuid as _uuid

from nvsentinel._proto import gpu_pb2


def gpu_name(i: int) -> str:
    """A deterministic NVML-style UUID name for GPU number i."""
    return f"GPU-{_uuid.UUID(int=(0x5A17 << 112) | i)}"


def gpu(name: str, *, conditions: tuple[tuple[str, str], ...] = (), action: str = "", namespace: str = "") -> gpu_pb2.Gpu:
    g = gpu_pb2.Gpu()
    g.metadata.name = name
    if namespace:
        g.metadata.namespace = namespace
    g.spec.uuid = name
    if conditions or action:
        g.status.CopyFrom(status(*conditions, action=action))
    return g


def status(*conditions: tuple[str, str], action: str = "", seconds: int = 1_700_000_000) -> gpu_pb2.GpuStatus:
    st = gpu_pb2.GpuStatus(recommended_action=action)
    for i, (ctype, cstatus) in enumerate(conditions):
        c = st.conditions.add(type=ctype, status=cstatus, reason=f"{ctype}Reason", message="m")
        c.last_transition_time.seconds = seconds + i
    return st


def wire(msg) -> bytes:
    return msg.SerializeToString()
