"""Builders for the remediation agent tests: HealthEvents in any phase, GPUs with conditions."""
from __future__ import annotations

import datetime as dt

from nvsentinel._proto import gpu_pb2
from nvsentinel.policy.healthevent import (
    LABEL_COMPONENT_CLASS, LABEL_IS_FATAL, LABEL_NODE, LABEL_SOURCE, Condition, Entity, HealthEvent,
    HealthEventSpec, HealthEventStatus, Phase,
)
from nvsentinel.xid import Action

UUIDS = [
    "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb",
    "GPU-976baef6-3b1f-dc48-2908-168925b1cdbf",
    "GPU-0d1b0f43-1453-595a-d607-8ca6a707ec5e",
]
NODE = "gpu-node-7"
T0 = 1_700_000_000
NOW = dt.datetime.fromtimestamp(T0 + 1000, dt.timezone.utc)


def at(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def cond(type_: str, status: str, reason: str, when: float = T0, message: str = "") -> gpu_pb2.Condition:
    c = gpu_pb2.Condition(type=type_, status=status, reason=reason, message=message or f"{type_} {reason}")
    if when:
        c.last_transition_time.seconds = int(when)
        c.last_transition_time.nanos = int(round((when - int(when)) * 1e9))
    return c


def make_gpu(uuid: str = UUIDS[0], *conds: gpu_pb2.Condition, action: str = "", rv: int = 1) -> gpu_pb2.Gpu:
    g = gpu_pb2.Gpu(resource_version=rv)
    g.metadata.name = uuid
    g.spec.uuid = uuid
    g.status.conditions.extend(conds)
    g.status.recommended_action = action
    return g


def labels(node: str = NODE, source: str = "nvml-provider", fatal: bool = True) -> dict[str, str]:
    return {LABEL_NODE: node, LABEL_COMPONENT_CLASS: "GPU", LABEL_IS_FATAL: "true" if fatal else "false",
            LABEL_SOURCE: source}


def fatal_spec(node: str, uuids: tuple[str, ...], codes: tuple[str, ...] = ("48",),
               action: Action = Action.COMPONENT_RESET, detected: float = T0 - 100) -> HealthEventSpec:
    return HealthEventSpec(
        source="nvml-provider", agent="nvsentinel-publisher", node_name=node, component_class="GPU",
        check_name="xid-error-check", is_fatal=True, is_healthy=False, detected_at=at(detected),
        message="XID 48: Double Bit ECC Error", recommended_action=action, error_codes=codes,
        entities_impacted=tuple(Entity("GPU", u) for u in uuids),
        metadata={"conditionType": "NvmlHealthy", "reason": "Xid48"},
    )


def event(name: str, *uuids: str, phase: Phase = Phase.REMEDIATING, reason: str = "GpuResetRequested",
          remediated_at: float | None = T0, node: str = NODE, codes: tuple[str, ...] = ("48",),
          remediated_status: str = "False") -> HealthEvent:
    """A fatal HealthEvent of `node` in `phase`, with a `Remediated` condition of `reason` (None: none)."""
    conds: tuple[Condition, ...] = ()
    if reason:
        conds = (Condition("Remediated", remediated_status, reason, "the remediation controller's words",
                           at(remediated_at or T0)),)
    status = HealthEventStatus(phase=phase, conditions=conds,
                               last_remediation_time=at(remediated_at) if remediated_at is not None else None)
    return HealthEvent(name=name, spec=fatal_spec(node, uuids, codes), status=status, labels=labels(node))
