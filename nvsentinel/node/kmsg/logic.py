"""The kernel-log monitor's decisions, with no I/O.

The findings are the condition contract's (`nvsentinel.policy.conditions.decide`, `severity`): the
same finding for the same XID, sticky until a recovery signal, benign/ignored XIDs change nothing.
What differs is the condition type (`KmsgHealthy`), the healthy reasons, and that the current view
is read back from the server's condition (the monitor keeps no health state of its own, so a
restart resumes exactly where the server is).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Final

from nvsentinel._proto import gpu_pb2
from nvsentinel.policy.conditions import (
    GPU_RESET, KMSG_HEALTHY, NVML_HEALTHY, REASON_KMSG_HEALTHY, Decision, Finding, GpuView, Reason, find_condition,
    merge_status, severity,
)
from nvsentinel.xid import CLOCK_MONOTONIC, CLOCK_REALTIME, Catalog, Classification, XidEvent, default_catalog

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
    "MAX_SXID_MESSAGE",
    "sxid_message",
    "decide_sxid",
    "record_time",
    "shared_sxid_time",
    "with_transition_time",
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


# ---- NVSwitch SXids: one switch fault, written on every GPU of the node ------------------------

MAX_SXID_MESSAGE: Final = 512
"""Characters of the driver's text kept in the condition message (a kernel line may be 64 KiB)."""


def sxid_message(ev: XidEvent) -> str:
    """The condition message: which switch (nvidia-nvswitchN, its PCI id), the SXid, the driver's text."""
    name = f"nvidia-nvswitch{ev.switch}" if ev.switch is not None else "an NVSwitch"
    where = f" (PCI {ev.pci})" if ev.pci else " (PCI id not printed)"
    link = f", link {ev.link}" if ev.link is not None else ""
    text = ev.message.strip()
    if len(text) > MAX_SXID_MESSAGE:
        text = text[: MAX_SXID_MESSAGE - 1] + "…"
    return f"NVSwitch fault on {name}{where}: SXid {ev.xid}{link}" + (f": {text}" if text else "")


def decide_sxid(view: GpuView, sxid: int, cls: Classification, message: str) -> Decision:
    """One GPU's new view after a fatal NVSwitch SXid (the condition contract's rules 6 and 7).

    `cls` is the decoder's classification of the line (its severity and the catalog, with site
    overrides): not fatal or ignored → nothing changes ("benign"/"ignored"); a GPU already failing
    with an action at least as bad keeps its finding ("not-worse").
    """
    if cls.ignored:
        return Decision(view, False, "ignored")
    if not cls.fatal:
        return Decision(view, False, "benign")
    finding = Finding(Reason.for_sxid(sxid), message, cls.action)
    if view.finding is not None:
        if view.finding.reason == finding.reason or severity(finding.action) <= severity(view.finding.action):
            return Decision(view, False, "not-worse")
        return Decision(dataclasses.replace(view, finding=finding), True, "worse")
    return Decision(dataclasses.replace(view, finding=finding), True, "fatal")


def record_time(timestamp: float | None, clock: str, *, now: float, monotonic_now: float, same_boot: bool) -> float:
    """When a kernel-log record happened, as UNIX seconds, never later than `now`.

    A realtime stamp is taken as is (clamped: `dmesg -T` local time read as UTC may lie ahead); a
    monotonic stamp (seconds since boot) is converted only when the source is this boot's ring
    (`same_boot`: syslog(2), /dev/kmsg); anything else (a file's old boot, a yearless stamp) → `now`.
    """
    if timestamp is None:
        return now
    if clock == CLOCK_REALTIME:
        return min(timestamp, now)
    if clock == CLOCK_MONOTONIC and same_boot and 0 <= timestamp <= monotonic_now:
        return now - (monotonic_now - timestamp)
    return now


def shared_sxid_time(statuses: Iterable[gpu_pb2.GpuStatus], reason: Reason, record: float) -> float:
    """The one transition time an SXid is written with on every GPU: that of a GPU already
    reporting this very reason (the fault is open: a replay or a repeat joins it), else the record's."""
    times = []
    for st in statuses:
        cond = find_condition(st, CONDITION_TYPE)
        if cond is not None and cond.status == "False" and cond.reason == reason.wire:
            times.append(cond.last_transition_time.seconds + cond.last_transition_time.nanos / 1e9)
    return min(times) if times else record


def with_transition_time(status: gpu_pb2.GpuStatus, seconds: int, nanos: int) -> gpu_pb2.GpuStatus:
    """`status` with the KmsgHealthy condition's last_transition_time set: the SXid's shared time,
    so every GPU's copy of one switch fault names the same node-level HealthEvent."""
    out = gpu_pb2.GpuStatus()
    out.CopyFrom(status)
    for cond in out.conditions:
        if cond.type == CONDITION_TYPE:
            cond.last_transition_time.seconds = seconds
            cond.last_transition_time.nanos = nanos
    return out
