"""The kernel-log monitor's decisions, with no I/O.

The findings are the condition contract's (`nvsentinel.policy.conditions.decide`, `severity`): the
same finding for the same XID, sticky until a recovery signal, benign/ignored XIDs change nothing.
What differs is the condition type (`KmsgHealthy`), the healthy reasons, and that the current view
is read back from the server's condition (the monitor keeps no health state of its own, so a
restart resumes exactly where the server is).
"""
from __future__ import annotations

import dataclasses
from typing import Final

from nvsentinel._proto import gpu_pb2
from nvsentinel.policy.conditions import (
    GPU_RESET, KMSG_HEALTHY, NVML_HEALTHY, REASON_KMSG_HEALTHY, Finding, GpuView, Reason, find_condition, merge_status,
)
from nvsentinel.xid import Catalog, default_catalog

__all__ = [
    "CONDITION_TYPE",
    "REASON_HEALTHY",
    "REASON_RESET",
    "NVML_CONDITION_TYPE",
    "find_condition",
    "view_from_condition",
    "recovered_view",
    "merge_condition",
    "reported_by_nvml",
]

CONDITION_TYPE: Final = KMSG_HEALTHY
REASON_HEALTHY: Final = REASON_KMSG_HEALTHY
REASON_RESET: Final = GPU_RESET
NVML_CONDITION_TYPE: Final = NVML_HEALTHY


def view_from_condition(cond: gpu_pb2.Condition | None, catalog: Catalog | None = None) -> GpuView:
    """The monitor's view of a GPU from its current KmsgHealthy condition (absent → healthy)."""
    if cond is None or cond.status != "False":
        if cond is None:
            return GpuView(None, REASON_HEALTHY, "kernel log shows no fatal error")
        return GpuView(None, cond.reason, cond.message)
    cat = catalog if catalog is not None else default_catalog()
    reason = Reason.from_wire(cond.reason)
    return GpuView(Finding(reason, cond.message, reason.kind_of(cat).classification.action))


def recovered_view(view: GpuView, uuid: str) -> GpuView:
    return dataclasses.replace(view, finding=None, reason_if_healthy=REASON_RESET,
                               message_if_healthy=f"kernel log: GPU reset executed: {uuid}")


def merge_condition(current: gpu_pb2.GpuStatus, view: GpuView, now_seconds: int, now_nanos: int = 0) -> gpu_pb2.GpuStatus:
    """`current` with only the KmsgHealthy condition replaced by `view`'s (contract rules 2, 4, 5, 8)."""
    return merge_status(current, view, now_seconds, now_nanos, condition_type=CONDITION_TYPE)


def reported_by_nvml(status: gpu_pb2.GpuStatus, reason: Reason | str, now: float, window: float) -> bool:
    """Cross-source dedup: the NVML provider's condition is already False with the same reason
    (`Xid<n>`, `GpuLost`), and it went False at most `window` seconds before `now`."""
    wire = reason if isinstance(reason, str) else reason.wire
    cond = find_condition(status, NVML_CONDITION_TYPE)
    if cond is None or cond.status != "False" or cond.reason != wire:
        return False
    ltt = cond.last_transition_time.seconds + cond.last_transition_time.nanos / 1e9
    return abs(now - ltt) <= window  # either order: the two clocks may differ a little
