"""Resolution decisions, pure: which open fatal events a healthy event answers, which an operator rejected or an
external repairer settled by replacing or deleting the Node, and how to release a Node.

No I/O and no clock reads: the controller passes the node's HealthEvents, its Node and `now` in. Every
function is deterministic, so a reconcile repeated after a crash at any point converges: events already
Resolved no longer count as open, and a Node already released has no ownership annotation left.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Iterable, Mapping
from typing import Any

from nvsentinel.cluster.ownership import ANNOTATION, OWNER_LABEL, RECOMMENDATION_ANNOTATION, Ownership, ownership_of
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.policy.evidence import DEFAULT_SKEW, observed_at, same_gpu
from nvsentinel.policy.handoff import APPROVAL_BY_ANNOTATION, APPROVAL_REASON_ANNOTATION, REJECTED, approval_of, mode_of
from nvsentinel.policy.healthevent import (
    Condition, ConditionType, HealthEvent, HealthEventStatus, Phase, RemediationMode,
)

__all__ = [
    "ACTOR", "DEFAULT_SKEW", "observed_at", "is_open_fatal", "answers", "Resolution", "plan_resolutions", "resolved_status",
    "NodeRelease", "plan_release", "node_terminated", "terminated_status", "operator_uncordoned", "operator_uncordon_status",
    "NODE_GONE", "node_gone_events", "node_gone_status", "REJECTED_REASON", "rejected_events", "rejected_status",
    "NODE_REPLACED", "NODE_DELETED", "handed_off", "replaced_events", "replaced_status", "deleted_status",
]

ACTOR = "nvsentinel-resolution"
#: The Resolved reason of an event closed because its Node no longer exists (phase Cancelled).
NODE_GONE = "NodeGone"


#: The Resolved reason of an event an operator rejected (`nvsentinel reject`): phase Cancelled.
REJECTED_REASON = "Rejected"
#: The Resolved reasons of an event handed off (mode external) whose Node the repairer replaced or deleted.
NODE_REPLACED = "NodeReplaced"
NODE_DELETED = "NodeDeleted"


def is_open_fatal(event: HealthEvent) -> bool:
    """A fatal, not healthy event no stage has closed: it keeps its node quarantined."""
    return event.spec.is_fatal and not event.spec.is_healthy and not event.status.phase.terminal


def answers(healthy: HealthEvent, fatal: HealthEvent, *, skew: _dt.timedelta = DEFAULT_SKEW,
            nodewide: bool = False) -> bool:
    """Whether `healthy` resolves `fatal`: same node, not older (`observed_at`), and one of its GPUs, by UUID or
    by PCI slot (`same_gpu`: a board swapped during a reboot comes back with a new UUID in the same slot).

    A healthy event older than the fault says nothing about it (a recovery before a new failure). One that names
    no GPU clears the whole node only where the operator allows it (`nodewide`, --resolve-nodewide-healthy): a
    node's credential cannot clear every fault of its node with one vague event.
    """
    if not healthy.spec.is_healthy or healthy.spec.node_name != fatal.spec.node_name:
        return False
    if observed_at(fatal, skew) > observed_at(healthy, skew):
        return False
    if not healthy.gpu_uuids and not healthy.pci_slots:
        return nodewide
    return same_gpu(healthy, fatal)


@dataclasses.dataclass(frozen=True, slots=True)
class Resolution:
    fatal: HealthEvent
    healthy: HealthEvent


def plan_resolutions(events: Iterable[HealthEvent], *, skew: _dt.timedelta = DEFAULT_SKEW,
                     nodewide: bool = False) -> list[Resolution]:
    """Each open fatal event answered by a healthy one, paired with the earliest such (a stable message).

    A Remediating event is left to the remediation stage: the healthy event may be the very verification
    it waits for, and it records Remediated first; the next pass resolves it.
    """
    evs = sorted(events, key=lambda e: (observed_at(e, skew), e.name))
    healthy = [e for e in evs if e.spec.is_healthy]
    out = []
    for fatal in evs:
        if not is_open_fatal(fatal) or fatal.status.phase is Phase.REMEDIATING or is_rejected(fatal):
            continue
        by = next((h for h in healthy if answers(h, fatal, skew=skew, nodewide=nodewide)), None)
        if by is not None:
            out.append(Resolution(fatal, by))
    return out


def _set(event: HealthEvent, cond: Condition, **changes: Any) -> HealthEventStatus:
    status = event.status.with_condition(cond)
    return dataclasses.replace(status, observed_generation=event.generation, **changes)


def resolved_status(res: Resolution, now: _dt.datetime, *, dry_run: bool = False) -> HealthEventStatus:
    """Resolved, condition Resolved True HealthyEventReceived; dry-run keeps the phase and says False."""
    fatal, healthy = res.fatal, res.healthy
    shared = sorted(set(healthy.gpu_uuids) & set(fatal.gpu_uuids))
    slots = sorted(set(healthy.pci_slots) & set(fatal.pci_slots))
    if not shared and slots:  # the same slot, another board: say both UUIDs
        shared = [f"PCI {s}: {', '.join(fatal.gpu_uuids) or '?'} → {', '.join(healthy.gpu_uuids) or '?'}"
                  for s in slots]
    gpus = ", ".join(shared) or "all GPUs"
    what = f"healthy HealthEvent {healthy.name} on node {fatal.spec.node_name} ({gpus})"
    gen = fatal.generation
    if dry_run:
        return _set(fatal, Condition(ConditionType.RESOLVED, "False", "DryRunHealthyEventReceived",
                                     f"dry-run: would resolve: {what}, by {ACTOR}", now, gen))
    return _set(fatal, Condition(ConditionType.RESOLVED, "True", "HealthyEventReceived",
                                 f"resolved by {what}, by {ACTOR}", now, gen),
                phase=Phase.RESOLVED, resolved_at=fatal.status.resolved_at or now)


def node_terminated(event: HealthEvent) -> bool:
    """Remediated by deleting its Node (strategy terminate): once the Node is gone, nothing is left to wait for."""
    cond = event.status.condition(ConditionType.REMEDIATED)
    return event.status.phase is Phase.REMEDIATED and cond is not None and cond.reason == "NodeTerminated"


def terminated_status(event: HealthEvent, now: _dt.datetime) -> HealthEventStatus:
    """Resolved, condition Resolved True NodeTerminated: the machine was handed back for replacement."""
    return _set(event, Condition(ConditionType.RESOLVED, "True", "NodeTerminated",
                                 f"node {event.spec.node_name} was deleted for replacement; nothing left to "
                                 f"verify, by {ACTOR}", now, event.generation),
                phase=Phase.RESOLVED, resolved_at=event.status.resolved_at or now)


def node_gone_events(events: Iterable[HealthEvent], now: _dt.datetime, grace: float) -> list[HealthEvent]:
    """The open events of a Node the API server says is gone (the caller confirmed it with a GET 404) that nothing
    else will close: not terminal, not remediated by deleting the Node (those resolve as `NodeTerminated`), not
    handed off (those resolve as `NodeDeleted`, at once), and created at least `grace` seconds ago (an event can
    arrive before its Node registers)."""
    horizon = now - _dt.timedelta(seconds=grace)
    return [e for e in events if not e.status.phase.terminal and not node_terminated(e) and not handed_off(e)
            and (e.creation_timestamp or e.spec.detected_at) <= horizon]


def node_gone_status(event: HealthEvent, now: _dt.datetime, *, dry_run: bool = False) -> HealthEventStatus:
    """Cancelled, condition Resolved False NodeGone, `resolvedAt` set (the TTL clock): nothing is left to fix or
    verify, and an open event would be requeued by every stage forever. Dry-run keeps the phase and says so."""
    what = f"node {event.spec.node_name} no longer exists (the API server answered 404)"
    if dry_run:
        return _set(event, Condition(ConditionType.RESOLVED, "False", "DryRun" + NODE_GONE,
                                     f"dry-run: would cancel: {what}, by {ACTOR}", now, event.generation))
    return _set(event, Condition(ConditionType.RESOLVED, "False", NODE_GONE,
                                 f"{what}; cancelled without remediation or verification, by {ACTOR}", now,
                                 event.generation),
                phase=Phase.CANCELLED, resolved_at=event.status.resolved_at or now)


# ---- an operator's rejection, a repairer's replacement ---------------------------------------------------

def is_rejected(event: HealthEvent) -> bool:
    """An operator rejected it (`nvsentinel reject`): it closes unless its remediation already runs (Remediating:
    the CLI refuses that, and a running reboot is not abandoned halfway)."""
    return is_open_fatal(event) and event.status.phase is not Phase.REMEDIATING and approval_of(event) == REJECTED


def rejected_events(events: Iterable[HealthEvent]) -> list[HealthEvent]:
    """The node's open fatal events an operator rejected, by name."""
    return sorted((e for e in events if is_rejected(e)), key=lambda e: e.name)


def _clean(text: str, limit: int) -> str:
    return " ".join((text or "").split())[:limit]


def rejected_status(event: HealthEvent, now: _dt.datetime, *, dry_run: bool = False) -> HealthEventStatus:
    """Cancelled, `Resolved False Rejected` naming who and why, `resolvedAt` set (the TTL clock); dry-run keeps the
    phase and says so."""
    who = _clean(event.annotations.get(APPROVAL_BY_ANNOTATION, ""), 128) or "an operator"
    why = _clean(event.annotations.get(APPROVAL_REASON_ANNOTATION, ""), 256)
    what = f"rejected by {who}" + (f": {why}" if why else " (no reason given)")
    if dry_run:
        return _set(event, Condition(ConditionType.RESOLVED, "False", "DryRun" + REJECTED_REASON,
                                     f"dry-run: would cancel: {what}, by {ACTOR}", now, event.generation))
    return _set(event, Condition(ConditionType.RESOLVED, "False", REJECTED_REASON,
                                 f"{what}; cancelled without remediation, node {event.spec.node_name} is released "
                                 f"when no other fault holds it, by {ACTOR}", now, event.generation),
                phase=Phase.CANCELLED, resolved_at=event.status.resolved_at or now)


def handed_off(event: HealthEvent) -> bool:
    """An open fatal event another system repairs (remediation mode external)."""
    return is_open_fatal(event) and mode_of(event) is RemediationMode.EXTERNAL


def replaced_events(events: Iterable[HealthEvent], node_uid: str) -> list[HealthEvent]:
    """The handed-off events quarantined on another Node object than `node_uid` (the one now under their node's
    name): the repairer deleted the machine's Node and a new one registered. An event that recorded no UID (from
    before UIDs were recorded) proves nothing."""
    return [e for e in events if handed_off(e) and e.status.node_uid and node_uid and e.status.node_uid != node_uid]


def _handed_off_closed(event: HealthEvent, reason: str, what: str, now: _dt.datetime, dry_run: bool
                       ) -> HealthEventStatus:
    what = f"handed off (remediation mode external): {what}"
    if dry_run:
        return _set(event, Condition(ConditionType.RESOLVED, "False", "DryRun" + reason,
                                     f"dry-run: would resolve: {what}, by {ACTOR}", now, event.generation))
    return _set(event, Condition(ConditionType.RESOLVED, "True", reason, f"{what}, by {ACTOR}", now, event.generation),
                phase=Phase.RESOLVED, resolved_at=event.status.resolved_at or now)


def replaced_status(event: HealthEvent, node_uid: str, now: _dt.datetime, *, dry_run: bool = False
                    ) -> HealthEventStatus:
    """Resolved, `Resolved True NodeReplaced`: the Node it was quarantined on is gone, a new one has its name."""
    return _handed_off_closed(event, NODE_REPLACED,
                              f"node {event.spec.node_name} was replaced (Node UID {event.status.node_uid} → "
                              f"{node_uid}); nothing of ours is on the new Node", now, dry_run)


def deleted_status(event: HealthEvent, now: _dt.datetime, *, dry_run: bool = False) -> HealthEventStatus:
    """Resolved, `Resolved True NodeDeleted`: the repairer removed the Node (the server answered 404)."""
    return _handed_off_closed(event, NODE_DELETED,
                              f"node {event.spec.node_name} was deleted (the API server answered 404)", now, dry_run)


# ---- the Node ---------------------------------------------------------------------------------------------

def _ownership(node: Mapping[str, Any]) -> Ownership | None:
    try:
        return ownership_of(node)
    except ValueError:
        return None  # not a record we wrote: not ours to release


def _unschedulable(node: Mapping[str, Any]) -> bool:
    return bool((node.get("spec") or {}).get("unschedulable"))


@dataclasses.dataclass(frozen=True, slots=True)
class NodeRelease:
    patch: dict[str, Any]
    """one merge patch, with metadata.resourceVersion: a concurrent change makes the server refuse it"""
    reason: str
    """Uncordoned | TaintRemoved"""
    action: str
    """metric label: uncordon | remove-taint"""
    message: str


def plan_release(node: Mapping[str, Any], open_fatal: int, cfg: ResolutionConfig) -> NodeRelease | None:
    """Release a node nvsentinel quarantined once no fatal event of it is open; None if nothing to do.

    Uncordon only when our record says the cordon is ours and the node is still cordoned; otherwise
    (someone else's cordon, or an operator already uncordoned) remove only our taint and our record.
    """
    own = _ownership(node)
    if own is None or open_fatal > 0:
        return None
    meta = node.get("metadata") or {}
    name = meta.get("name")
    taints = list((node.get("spec") or {}).get("taints") or [])
    kept = [t for t in taints if t.get("key") != cfg.taint_key]
    spec: dict[str, Any] = {}
    if len(kept) != len(taints):
        spec["taints"] = kept
    uncordon = own.cordoned_by_us and _unschedulable(node)
    if uncordon:
        spec["unschedulable"] = False
    annotations = {ANNOTATION: None}
    if RECOMMENDATION_ANNOTATION in (meta.get("annotations") or {}):
        annotations[RECOMMENDATION_ANNOTATION] = None
    patch: dict[str, Any] = {"metadata": {"annotations": annotations, "resourceVersion": meta.get("resourceVersion")}}
    if OWNER_LABEL in (meta.get("labels") or {}):
        patch["metadata"]["labels"] = {OWNER_LABEL: None}
    if spec:
        patch["spec"] = spec
    if uncordon:
        return NodeRelease(patch, "Uncordoned", "uncordon",
                           f"no unresolved fatal HealthEvents left: uncordoned node {name} and removed taint "
                           f"{cfg.taint_key}, by {ACTOR}")
    whose = "left cordoned by its owner" if _unschedulable(node) else "already schedulable"
    return NodeRelease(patch, "TaintRemoved", "remove-taint",
                       f"no unresolved fatal HealthEvents left: removed taint {cfg.taint_key} from node {name} "
                       f"({whose}), by {ACTOR}")


def operator_uncordoned(node: Mapping[str, Any], open_fatal: int) -> bool:
    """Our cordon is gone while faults are still open: an operator's call, recorded and not fought."""
    own = _ownership(node)
    return own is not None and own.cordoned_by_us and not _unschedulable(node) and open_fatal > 0


def operator_uncordon_status(event: HealthEvent, node_name: str, now: _dt.datetime) -> HealthEventStatus:
    """NodeQuarantined False UncordonedByOperator; the phase stays (the fault is still open)."""
    return _set(event, Condition(
        ConditionType.NODE_QUARANTINED, "False", "UncordonedByOperator",
        f"node {node_name} was uncordoned by someone other than nvsentinel while this event is open; "
        f"{ACTOR} leaves it schedulable", now, event.generation))
