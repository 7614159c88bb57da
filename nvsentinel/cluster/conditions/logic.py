"""Node condition decisions, pure: which of our condition types a Node should carry, and the patch that gets it there.

No I/O and no clock reads: the controller passes the Node, its HealthEvents and `now` in. Deterministic, so a
reconcile repeated after a crash converges: a condition already as wanted (type, status, reason, message) is not
written again, and `lastTransitionTime` moves only when the status does.

Only our own condition types are ever in the patch (a strategic merge patch keyed on `type`), so the kubelet's,
Node Problem Detector's and every other writer's conditions are untouched. The mirror type,
`AcceleratedHardwareReady`, may have another writer (the EKS node monitoring agent): ours carries `MARKER` at the
end of its message, and one that does not is never changed.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nvsentinel.policy.evidence import observed_at
from nvsentinel.policy.handoff import mode_of
from nvsentinel.policy.healthevent import HealthEvent, Phase, RemediationMode, format_time

__all__ = ["CONDITION_TYPE", "MIRROR_TYPE", "MARKER", "REASON_CLEAR", "Wanted", "NodePlan", "counts",
           "open_faults", "fault_reason", "mirror_reason", "fault_text", "summary", "is_ours", "condition_of",
           "wanted", "plan"]

#: Our condition: False while the node holds an open fatal HealthEvent past New.
CONDITION_TYPE = "NVSentinelGPUHealthy"
#: The mirror, in the form EKS node auto repair and Karpenter's node repair on AWS read.
MIRROR_TYPE = "AcceleratedHardwareReady"
#: The end of every message we write: how a condition of a shared type is known to be ours.
MARKER = "; nvsentinel"
#: Reason of both types once the node's last open fault is closed.
REASON_CLEAR = "NoOpenFaults"
#: Events named in a message; the rest are counted.
MAX_LISTED = 5
MAX_MESSAGE = 1024

_NUMERIC = re.compile(r"(\d{1,10})(?:\.[A-Za-z0-9_]{1,64})?")
_SXID = re.compile(r"SXID\.(\d{1,10})")
_RECOVERY = re.compile(r"RECOVERY_ACTION\.([A-Za-z0-9_]{1,40})")


def counts(event: HealthEvent) -> bool:
    """A fatal, not healthy, open event a stage took up (Quarantined..Remediated): the node is not healthy."""
    return (event.spec.is_fatal and not event.spec.is_healthy and not event.status.phase.terminal
            and event.status.phase is not Phase.NEW)


def open_faults(events: Iterable[HealthEvent]) -> list[HealthEvent]:
    """The events that count, oldest first (`observed_at`, then name: a stable reason)."""
    return sorted((e for e in events if counts(e)), key=lambda e: (observed_at(e), e.name))


def _fault(event: HealthEvent) -> tuple[str, str]:
    """(kind, value): ("xid", "79"), ("sxid", "12"), ("recovery", "GPU_RESET") or ("check", check name)."""
    codes = event.spec.error_codes
    for kind, pattern in (("xid", _NUMERIC), ("sxid", _SXID), ("recovery", _RECOVERY)):
        for code in codes:
            m = pattern.fullmatch(code.strip())
            if m:
                return kind, str(int(m.group(1))) if kind != "recovery" else m.group(1).upper()
    return "check", event.spec.check_name


def _camel(text: str, limit: int = 64) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", text) if w]
    return "".join(w[:1].upper() + w[1:].lower() for w in words)[:limit]


def fault_reason(event: HealthEvent) -> str:
    """`GpuXid79`, `SXid12`, `RecoveryActionGpuReset`, else the check name in CamelCase."""
    kind, value = _fault(event)
    if kind == "xid":
        return f"GpuXid{value}"
    if kind == "sxid":
        return f"SXid{value}"
    if kind == "recovery":
        return "RecoveryAction" + _camel(value)
    return _camel(value) or "GpuFault"


def mirror_reason(event: HealthEvent) -> str:
    """The EKS node monitoring agent's form: `NvidiaXID79Error`; an NVSwitch SXid is `NvidiaNVLinkError`; a fault
    the agent has no reason for (an NVML recovery action, another check) the code-less `NvidiaXIDError`."""
    kind, value = _fault(event)
    if kind == "xid":
        return f"NvidiaXID{value}Error"
    if kind == "sxid":
        return "NvidiaNVLinkError"
    return "NvidiaXIDError"


def _clean(value: Any, limit: int) -> str:
    """A value a node's credential wrote, bounded and printable."""
    text = str(value)
    out = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return out + ("…" if len(text) > limit else "")


def fault_text(event: HealthEvent) -> str:
    """`gpu-1.xid79.123 (XID 79, GPU GPU-abc)`."""
    kind, value = _fault(event)
    what = {"xid": "XID ", "sxid": "SXID ", "recovery": "recovery action "}.get(kind, "") + value
    gpus = ",".join(_clean(u, 64) for u in event.gpu_uuids[:4]) + (",…" if len(event.gpu_uuids) > 4 else "")
    return f"{_clean(event.name, 253)} ({_clean(what, 80)}{', GPU ' + gpus if gpus else ''})"


def summary(faults: Sequence[HealthEvent]) -> str:
    """`2 open fatal HealthEvent(s): a (XID 79, GPU x), b (...); nvsentinel`, at most MAX_MESSAGE characters."""
    listed = ", ".join(fault_text(e) for e in faults[:MAX_LISTED])
    more = f", and {len(faults) - MAX_LISTED} more" if len(faults) > MAX_LISTED else ""
    head = f"{len(faults)} open fatal HealthEvent(s): "
    room = MAX_MESSAGE - len(head) - len(more) - len(MARKER)
    if len(listed) > room:
        listed = listed[:room - 1] + "…"
    return head + listed + more + MARKER


def is_ours(cond: Mapping[str, Any] | None) -> bool:
    return cond is not None and str(cond.get("message") or "").endswith(MARKER)


def condition_of(node: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (node.get("status") or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == type_:
            return c
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Wanted:
    type: str
    status: str
    reason: str
    message: str

    def satisfied_by(self, cond: Mapping[str, Any] | None) -> bool:
        return cond is not None and (cond.get("status"), cond.get("reason") or "", cond.get("message") or "") == (
            self.status, self.reason, self.message)


def _mirror_wanted(faults: Sequence[HealthEvent], mirror: str) -> bool:
    if not faults or mirror == "off":
        return False
    if mirror == "always":
        return True
    return any(mode_of(e) is RemediationMode.EXTERNAL for e in faults)  # external: handed off, one repairer


def wanted(node: Mapping[str, Any], events: Iterable[HealthEvent], mirror: str) -> list[Wanted]:
    """The conditions of our types the node should carry (only those it lacks or that differ are written).

    Our own type: False while a fault counts; True (`NoOpenFaults`) once none does, only where it was False (a node
    that never had a fault gets no condition). The mirror: False where `mirror` wants it and the current one is
    absent or ours; our False flipped back to True otherwise. Another writer's mirror is never changed.
    """
    faults = open_faults(events)
    out: list[Wanted] = []
    ours = condition_of(node, CONDITION_TYPE)
    if faults:
        out.append(Wanted(CONDITION_TYPE, "False", fault_reason(faults[0]), summary(faults)))
    elif ours is not None and ours.get("status") == "False":
        out.append(Wanted(CONDITION_TYPE, "True", REASON_CLEAR, "no open fatal HealthEvents" + MARKER))
    current = condition_of(node, MIRROR_TYPE)
    if current is not None and not is_ours(current):
        return out  # someone else's: theirs to say
    if _mirror_wanted(faults, mirror):
        out.append(Wanted(MIRROR_TYPE, "False", mirror_reason(faults[0]), summary(faults)))
    elif current is not None and current.get("status") == "False":
        out.append(Wanted(MIRROR_TYPE, "True", REASON_CLEAR, "no open fatal HealthEvents" + MARKER))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class NodePlan:
    patch: dict[str, Any] | None
    """a strategic merge patch of nodes/status holding only our condition types; None: nothing to write"""
    actions: tuple[str, ...]
    """metric labels: set-false, set-true, update, mirror-false, mirror-true, mirror-update"""
    unhealthy: bool
    """our condition is False once the patch is applied"""


def _action(w: Wanted, cond: Mapping[str, Any] | None) -> str:
    prefix = "mirror-" if w.type == MIRROR_TYPE else "set-"
    if cond is not None and cond.get("status") == w.status:
        return "mirror-update" if w.type == MIRROR_TYPE else "update"
    return prefix + ("false" if w.status == "False" else "true")


def plan(node: Mapping[str, Any], events: Iterable[HealthEvent], mirror: str, now: _dt.datetime) -> NodePlan:
    """The patch that brings the node's conditions of our types to `wanted`; `lastHeartbeatTime` is `now`,
    `lastTransitionTime` is kept unless the status changes."""
    want = wanted(node, events, mirror)
    conds, actions = [], []
    stamp = format_time(now.replace(microsecond=0))
    for w in want:
        cur = condition_of(node, w.type)
        if w.satisfied_by(cur):
            continue
        keep = cur is not None and cur.get("status") == w.status and cur.get("lastTransitionTime")
        conds.append({"type": w.type, "status": w.status, "reason": w.reason, "message": w.message,
                      "lastHeartbeatTime": stamp,
                      "lastTransitionTime": cur["lastTransitionTime"] if keep and cur is not None else stamp})
        actions.append(_action(w, cur))
    ours = next((w for w in want if w.type == CONDITION_TYPE), None)
    current = condition_of(node, CONDITION_TYPE)
    unhealthy = (ours.status if ours is not None else (current or {}).get("status")) == "False"
    return NodePlan({"status": {"conditions": conds}} if conds else None, tuple(actions), unhealthy)
