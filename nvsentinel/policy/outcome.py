"""One stage's decision about one HealthEvent, and what it does to the status: shared by every stage.

A stage's pure logic returns an `Outcome` (the phase, the one condition it records, how to follow
up); `apply_outcome` turns it into the next status and `same_decision` tells a new decision from a
message refresh, so actions are counted and Kubernetes Events emitted once per decision. The
status writer that patches it (`nvsentinel.k8s.runtime.status`) is the I/O half. Pure: no I/O, no
clock reads (time is passed in).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any

from nvsentinel.policy.healthevent import Condition, ConditionType, HealthEvent, HealthEventStatus, Phase

__all__ = ["Outcome", "apply_outcome", "changed_conditions", "same_decision"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    phase: Phase
    condition_type: ConditionType
    """The one condition the deciding stage owns (NodeQuarantined, PodsDrained, Remediated, ...)."""
    status: str
    reason: str
    message: str
    action: str | None = None
    """metric label counted when the decision changes to this outcome"""
    requeue_after: float | None = None
    warning: bool = False
    """announce it as a Warning Event (a human should look)"""
    resolved: bool = False
    """the event is finished: stamp resolvedAt once"""
    started: bool = False
    """a remediation begins now: stamp lastRemediationTime"""


def apply_outcome(event: HealthEvent, outcome: Outcome, now: _dt.datetime, *,
                  detected_by: str | None = None) -> HealthEventStatus:
    """The status after `outcome`: its condition, phase and generations.

    `detected_by` (the first stage) also records Detected on first sight. lastTransitionTime moves
    only when a condition's status does (Kubernetes convention).
    """
    gen = event.generation
    status = event.status
    if detected_by is not None and status.condition(ConditionType.DETECTED) is None:
        status = status.with_condition(Condition(
            ConditionType.DETECTED, "True", "Published",
            f"first seen by {detected_by} on node {event.spec.node_name}", now, gen))
    status = status.with_condition(
        Condition(outcome.condition_type, outcome.status, outcome.reason, outcome.message, now, gen))
    changes: dict[str, Any] = {"phase": outcome.phase, "observed_generation": gen}
    if outcome.resolved and status.resolved_at is None:
        changes["resolved_at"] = now
    # a remediation begins: stamp it once (a reconcile repeated after a crash keeps the first stamp)
    if (outcome.started and event.status.phase is not Phase.REMEDIATING) or \
            (outcome.phase is Phase.REMEDIATING and event.status.last_remediation_time is None):
        changes["last_remediation_time"] = now
    return dataclasses.replace(status, **changes)


def changed_conditions(before: HealthEventStatus, after: HealthEventStatus) -> list[Condition]:
    """The conditions of `after` that are new or have another status or reason than in `before`."""
    out = []
    for c in after.conditions:
        old = before.condition(c.type)
        if old is None or (old.status, old.reason) != (c.status, c.reason):
            out.append(c)
    return out


def same_decision(before: HealthEventStatus, after: HealthEventStatus, condition_type: str) -> bool:
    """Whether `after` records the same rule as `before` for `condition_type` (only the message moved)."""
    return before.phase == after.phase and before.condition(condition_type) is not None and \
        after.condition(condition_type) is not None and \
        all(c.type != condition_type for c in changed_conditions(before, after))
