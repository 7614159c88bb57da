"""Quarantine decisions, pure: what an event's status should say and what the Node patch should be.

No I/O and no clock reads: the controller passes the HealthEvent, the Node (or None), `now` and the
breaker's verdict in, and applies what comes out. Every function here is deterministic, so a
reconcile repeated after a crash at any point computes the same patches and converges.

Phases this stage owns (SPEC §7): New → Quarantined; New → Resolved (non-fatal or healthy events);
New/Quarantined → Cancelled (`spec.overrides.quarantine.skip`). Later phases are not touched.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
from collections.abc import Mapping
from typing import Any

from nvsentinel.cluster.ownership import (
    ANNOTATION, GPU_PRESENT_LABEL, GPU_RESOURCE, OWNER_LABEL, RECOMMENDATION_ANNOTATION, Ownership, gpu_node_count,
    is_gpu_node, our_cordons, ownership_of,
)
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.policy.breaker import BreakerPolicy, BreakerState, counted_cordons
from nvsentinel.policy.drainscope import gpu_scope, leaves_node_schedulable
from nvsentinel.policy.handoff import mode_for
from nvsentinel.policy.healthevent import (
    Condition, ConditionType, DrainScope, HealthEvent, HealthEventStatus, Phase, RemediationMode, format_time,
)
from nvsentinel.policy.outcome import Outcome, same_decision
from nvsentinel.policy.outcome import apply_outcome as outcome_status

__all__ = [
    "ACTOR", "ANNOTATION", "GPU_RESOURCE", "GPU_PRESENT_LABEL", "Triage", "triage", "Ownership",
    "ownership_of", "is_gpu_node", "gpu_node_count", "our_cordons", "NodePlan", "plan_node", "Outcome",
    "resolve_outcome", "cancel_outcome", "quarantined_outcome", "hold_outcome", "node_missing_outcome",
    "apply_outcome", "same_decision", "cordon_patch", "breaker_report", "decide_mode", "wants_gpu_scope",
    "recommendation_entry", "quarantined_status", "HANDED_OFF", "GPU_SCOPE_TAINT_VALUE", "GPU_SCOPE_TAINT_EFFECT", "MAX_RECOMMENDED",
]

#: A GPU-scoped quarantine leaves the node schedulable: our taint with this value and effect steers new pods to
#: other nodes without keeping them off (the device plugin already withheld the bad GPU).
GPU_SCOPE_TAINT_VALUE = "gpu"
GPU_SCOPE_TAINT_EFFECT = "PreferNoSchedule"
#: HealthEvents named in the recommendation annotation at most (the newest are kept).
MAX_RECOMMENDED = 16

ACTOR = "nvsentinel-quarantine"

_LATER_PHASES = frozenset({Phase.DRAINING, Phase.DRAINED, Phase.REMEDIATING, Phase.REMEDIATED,
                           Phase.RESOLVED, Phase.CANCELLED})


# ---- triage: which rule applies to the event ---------------------------------------------------------

class Triage(enum.Enum):
    IGNORE = "ignore"           # a later stage owns it, or it is already quarantined
    CANCEL = "cancel"           # skip override
    RESOLVE = "resolve"         # non-fatal or healthy: nothing to quarantine
    QUARANTINE = "quarantine"   # fatal: the node must be cordoned and tainted


def triage(event: HealthEvent) -> Triage:
    phase = event.status.phase
    if phase in _LATER_PHASES:
        return Triage.IGNORE
    if event.spec.overrides.quarantine.skip:
        return Triage.CANCEL
    if phase is not Phase.NEW:
        return Triage.IGNORE  # Quarantined: done; re-cordoning would fight an operator's uncordon
    if event.spec.is_healthy or not event.spec.is_fatal:
        return Triage.RESOLVE
    return Triage.QUARANTINE


# ---- nodes -------------------------------------------------------------------------------------------

def _is_unschedulable(node: Mapping[str, Any]) -> bool:
    return bool((node.get("spec") or {}).get("unschedulable"))


def _taints(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((node.get("spec") or {}).get("taints") or [])


@dataclasses.dataclass(frozen=True, slots=True)
class NodePlan:
    """What quarantining `event` on this node takes."""

    ownership: Ownership
    """the annotation after the patch"""
    patch: dict[str, Any] | None
    """merge patch (with metadata.resourceVersion), or None when the node is already as wanted"""
    reason: str
    """Cordoned | AlreadyCordoned | AlreadyQuarantined"""
    action: str
    """metric label: cordon | already-cordoned | add-event"""
    new_cordon: bool
    """nvsentinel cordons a node it had not: the breaker must allow it"""


def decide_mode(node: Mapping[str, Any], cfg: QuarantineConfig) -> RemediationMode:
    """Who remediates this node: what its quarantine record says (one owner until it is released), else the first
    --remediation-mode-rules entry matching its labels, else --remediation-mode."""
    try:
        current = ownership_of(node)
    except ValueError:
        current = None
    if current is not None:
        return RemediationMode(current.mode)
    labels = (node.get("metadata") or {}).get("labels") or {}
    return mode_for(labels, cfg.mode_rules, cfg.default_mode)


def wants_gpu_scope(event: HealthEvent, node: Mapping[str, Any], cfg: QuarantineConfig,
                    mode: RemediationMode) -> bool:
    """Quarantine `event` without cordoning (GPU scope): the drain will take only its GPUs' pods, and the kubelet
    already withholds a GPU, so the node can keep running work on the others (policy/drainscope.py)."""
    if cfg.drain_scope != DrainScope.GPU or mode is RemediationMode.EXTERNAL or _is_unschedulable(node):
        return False
    scope, _ = gpu_scope(event, cfg.drain_scope)
    return scope is not None and leaves_node_schedulable(node, scope.resource_name)


def recommendation_entry(event: HealthEvent) -> dict[str, Any]:
    """What the recommendation annotation says about one event: enough to act on without reading the event."""
    return {"healthEvent": event.name, "action": str(event.spec.recommended_action),
            "errorCodes": list(event.spec.error_codes[:8]), "gpus": list(event.gpu_uuids[:8])}


def _recommendation(node: Mapping[str, Any], mode: str, entry: Mapping[str, Any] | None) -> str | None:
    """The recommendation annotation with `entry` in it; None when it already holds it (or there is none to add)."""
    if entry is None:
        return None
    text = ((node.get("metadata") or {}).get("annotations") or {}).get(RECOMMENDATION_ANNOTATION) or ""
    try:
        current = json.loads(text) if text else {}
        entries = [e for e in current.get("events") or [] if isinstance(e, dict)]
    except (ValueError, AttributeError):
        current, entries = {}, []
    if any(e.get("healthEvent") == entry["healthEvent"] for e in entries) and current.get("mode") == mode:
        return None
    entries = [e for e in entries if e.get("healthEvent") != entry["healthEvent"]] + [dict(entry)]
    return json.dumps({"mode": mode, "events": entries[-MAX_RECOMMENDED:]}, separators=(",", ":"))


def plan_node(node: Mapping[str, Any], event_name: str, *, now: _dt.datetime, cfg: QuarantineConfig,
              mode: RemediationMode = RemediationMode.NVSENTINEL, gpu_scoped: bool = False,
              recommend: Mapping[str, Any] | None = None) -> NodePlan:
    """Cordon + taint + ownership for `event_name`, idempotent.

    No annotation and schedulable → our cordon (counted by the breaker). No annotation but already
    unschedulable → someone else's cordon: `cordonedByUs: false`, we only add our taint. Our
    annotation present → add the event's name (the cordon was counted when it was made). A malformed
    annotation is treated as absent and overwritten with a valid record.

    Annotation present but the node schedulable (an operator uncordoned it while a fault was open, or
    lifted the cordon that was someone else's) → this plan cordons it again, and that cordon is ours:
    the record says so from now (`cordonedByUs: true`, `since` now, this event first), and the breaker
    counts it. Otherwise resolution would read "not ours" and never lift a cordon we made.

    `gpu_scoped` (`wants_gpu_scope`): no cordon, our taint PreferNoSchedule, `scope: gpu` in the record (counted
    by the breaker all the same). A later event that needs the whole node turns it into a cordon. `mode` is
    recorded on the node (record and `OWNER_LABEL`); a node already quarantined keeps the mode it has.
    """
    try:
        current = ownership_of(node)
    except ValueError:
        current = None
    if current is not None:
        mode = RemediationMode(current.mode)
    if current is not None and current.scope == DrainScope.GPU:
        names = current.events if event_name in current.events else current.events + (event_name,)
        if gpu_scoped:
            own = dataclasses.replace(current, events=names)
            first = own.events[0] == event_name
            reason, action = ("GpuScoped", "taint-gpu-scope") if first else ("AlreadyQuarantined", "add-event")
            return NodePlan(ownership=own, patch=cordon_patch(node, own, cfg, recommend=recommend), reason=reason,
                            action=action, new_cordon=False)
        # this fault needs the whole node: the GPU-scoped quarantine becomes a cordon (already counted)
        by_us = not _is_unschedulable(node)
        own = Ownership(events=names, since=current.since, cordoned_by_us=by_us, mode=current.mode, scope="node")
        reason, action = ("Cordoned", "cordon") if by_us else ("AlreadyCordoned", "already-cordoned")
        return NodePlan(ownership=own, patch=cordon_patch(node, own, cfg, recommend=recommend), reason=reason,
                        action=action, new_cordon=False)
    if current is not None and not _is_unschedulable(node):
        others = tuple(e for e in current.events if e != event_name)
        own = Ownership(events=(event_name, *others), since=now, cordoned_by_us=True, mode=current.mode)
        return NodePlan(ownership=own, patch=cordon_patch(node, own, cfg, recommend=recommend), reason="Cordoned",
                        action="cordon", new_cordon=True)
    if current is None:
        if gpu_scoped and not _is_unschedulable(node):
            own = Ownership(events=(event_name,), since=now, cordoned_by_us=False, mode=str(mode), scope="gpu")
            return NodePlan(ownership=own, patch=cordon_patch(node, own, cfg, recommend=recommend),
                            reason="GpuScoped", action="taint-gpu-scope", new_cordon=True)
        by_us = not _is_unschedulable(node)
        own = Ownership(events=(event_name,), since=now, cordoned_by_us=by_us, mode=str(mode))
        reason, action = ("Cordoned", "cordon") if by_us else ("AlreadyCordoned", "already-cordoned")
        new_cordon = by_us
    else:
        own = current if event_name in current.events else dataclasses.replace(
            current, events=current.events + (event_name,))
        # the same reason on every rerun: the event that created the record is its first name
        if own.events[0] == event_name:
            reason, action = ("Cordoned", "cordon") if own.cordoned_by_us else ("AlreadyCordoned", "already-cordoned")
        else:
            reason, action = ("AlreadyQuarantined", "add-event") if own.cordoned_by_us else (
                "AlreadyCordoned", "add-event")
        new_cordon = False
    return NodePlan(ownership=own, patch=cordon_patch(node, own, cfg, recommend=recommend), reason=reason,
                    action=action, new_cordon=new_cordon)


def cordon_patch(node: Mapping[str, Any], own: Ownership, cfg: QuarantineConfig, *,
                 recommend: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The merge patch that makes the node unschedulable, tainted and annotated; None if it already is.

    Taints are a list, which a merge patch replaces whole: we send the existing taints plus ours, and
    the resourceVersion makes the server refuse the patch if someone changed them meanwhile. A GPU-scoped record
    (`scope: gpu`) gets our taint PreferNoSchedule and no cordon; a node-scoped one replaces that taint with ours.
    """
    spec: dict[str, Any] = {}
    gpu = own.scope == DrainScope.GPU
    if not gpu and not _is_unschedulable(node):
        spec["unschedulable"] = True
    value, effect = (GPU_SCOPE_TAINT_VALUE, GPU_SCOPE_TAINT_EFFECT) if gpu else (cfg.taint_value, cfg.taint_effect)
    taints = _taints(node)
    # a node-scoped record replaces the GPU-scoped taint we put (another taint with our key is someone else's)
    stale = [] if gpu else [t for t in taints if (t.get("key"), t.get("value"), t.get("effect")) == (
        cfg.taint_key, GPU_SCOPE_TAINT_VALUE, GPU_SCOPE_TAINT_EFFECT)]
    if stale or not any(t.get("key") == cfg.taint_key and t.get("effect") == effect for t in taints):
        spec["taints"] = [t for t in taints if t not in stale] + [
            {"key": cfg.taint_key, "value": value, "effect": effect}]
    try:
        current = ownership_of(node)
    except ValueError:
        current = None
    meta: dict[str, Any] = {}
    if current != own:
        meta["annotations"] = {ANNOTATION: own.to_json()}
    rec = _recommendation(node, own.mode, recommend)
    if rec is not None:
        meta.setdefault("annotations", {})[RECOMMENDATION_ANNOTATION] = rec
    if ((node.get("metadata") or {}).get("labels") or {}).get(OWNER_LABEL) != own.mode:
        meta["labels"] = {OWNER_LABEL: own.mode}
    if not spec and not meta:
        return None
    meta["resourceVersion"] = (node.get("metadata") or {}).get("resourceVersion")
    patch: dict[str, Any] = {"metadata": meta}
    if spec:
        patch["spec"] = spec
    return patch


# ---- outcomes: what the status says --------------------------------------------------------------------

def _dry(outcome: Outcome, dry_run: bool, phase: Phase, what: str, action: str) -> Outcome:
    """Dry-run: keep the phase, say False (nothing was done), prefix the reason, say what would happen."""
    if not dry_run:
        return outcome
    return dataclasses.replace(outcome, phase=phase, status="False", reason="DryRun" + outcome.reason,
                               message=f"dry-run: would {what}, by {ACTOR}", action=action, resolved=False)


def resolve_outcome(event: HealthEvent, *, dry_run: bool = False) -> Outcome:
    reason = "Healthy" if event.spec.is_healthy else "NonFatal"
    what = "a recovery (isHealthy)" if event.spec.is_healthy else "not fatal"
    out = Outcome(Phase.RESOLVED, ConditionType.RESOLVED, "True", reason,
                  f"{what}: no quarantine needed for node {event.spec.node_name}; resolved by {ACTOR}",
                  action="resolve-nonfatal", resolved=True)
    return _dry(out, dry_run, event.status.phase, f"resolve ({what}) without quarantine",
                "dry-run-resolve-nonfatal")


def cancel_outcome(event: HealthEvent, *, dry_run: bool = False) -> Outcome:
    out = Outcome(Phase.CANCELLED, ConditionType.NODE_QUARANTINED, "False", "SkippedByOverride",
                  f"spec.overrides.quarantine.skip is set: cancelled by {ACTOR}; node "
                  f"{event.spec.node_name} left as it is", action="cancel")
    return _dry(out, dry_run, event.status.phase, "cancel (spec.overrides.quarantine.skip)", "dry-run-cancel")


def quarantined_outcome(event: HealthEvent, plan: NodePlan, cfg: QuarantineConfig, *, dry_run: bool = False,
                        breaker_note: str = "") -> Outcome:
    node = event.spec.node_name
    taint = f"{cfg.taint_key}={cfg.taint_value}:{cfg.taint_effect}"
    if plan.reason == "Cordoned":
        what = f"cordoned node {node} and added taint {taint}"
    elif plan.reason == "GpuScoped":
        what = f"GPU-scoped quarantine of {', '.join(event.gpu_uuids) or 'its GPU'}: node {node} left schedulable " \
               f"(the kubelet withholds a GPU) with taint {cfg.taint_key}={GPU_SCOPE_TAINT_VALUE}:" \
               f"{GPU_SCOPE_TAINT_EFFECT}"
    elif plan.reason == "AlreadyCordoned":
        what = f"node {node} was already cordoned by someone else (not owned; never uncordoned by nvsentinel); " \
               f"added taint {taint}"
    else:
        what = f"node {node} already quarantined by nvsentinel for {', '.join(plan.ownership.events[:-1]) or '-'}; " \
               f"added this event"
    note = f" ({breaker_note})" if breaker_note else ""
    out = Outcome(Phase.QUARANTINED, ConditionType.NODE_QUARANTINED, "True", plan.reason,
                  f"{what}, by {ACTOR}{note}", action=plan.action)
    if plan.reason == "Cordoned":
        would = f"cordon node {node} and add taint {taint}{note}"
    elif plan.reason == "GpuScoped":
        would = f"quarantine GPU {', '.join(event.gpu_uuids)} of node {node} without cordoning it"
    elif plan.reason == "AlreadyCordoned":
        would = f"add taint {taint} to node {node}, already cordoned by someone else"
    else:
        would = f"add this event to node {node}'s quarantine"
    return _dry(out, dry_run, event.status.phase, would, "dry-run-cordon")


#: The Remediated reason of an event handed to another system (mode external): this chain acts no further.
HANDED_OFF = "HandedOff"


def quarantined_status(event: HealthEvent, outcome: Outcome, now: _dt.datetime, *, mode: RemediationMode,
                       node_uid: str) -> HealthEventStatus:
    """The status of a quarantine that happened: the outcome, who remediates and which Node object it was; for an
    event handed off (mode external), also `Remediated False HandedOff`, saying what is recommended."""
    status = apply_outcome(event, outcome, now)
    if outcome.phase is not Phase.QUARANTINED:
        return status
    status = dataclasses.replace(status, remediation_mode=str(mode), node_uid=status.node_uid or node_uid)
    if mode is RemediationMode.EXTERNAL:
        status = status.with_condition(Condition(
            ConditionType.REMEDIATED, "False", HANDED_OFF,
            f"remediation handed off (remediation mode external): recommended {event.spec.recommended_action}; "
            f"nvsentinel does not drain or remediate node {event.spec.node_name}, and resolves this event when the "
            f"node is replaced or deleted, or its GPU verifies healthy; {ACTOR}", now, event.generation))
    return status


def hold_outcome(event: HealthEvent, message: str, cfg: QuarantineConfig, *, dry_run: bool = False) -> Outcome:
    out = Outcome(event.status.phase, ConditionType.NODE_QUARANTINED, "False", "CircuitBreakerOpen",
                  f"not cordoning node {event.spec.node_name}: {message}; {ACTOR}", action="hold",
                  requeue_after=cfg.hold_requeue)
    if dry_run:
        return dataclasses.replace(out, reason="DryRunCircuitBreakerOpen",
                                   message=f"dry-run: would hold: {out.message}")
    return out


def node_missing_outcome(event: HealthEvent, cfg: QuarantineConfig, *, dry_run: bool = False) -> Outcome:
    out = Outcome(event.status.phase, ConditionType.NODE_QUARANTINED, "False", "NodeNotFound",
                  f"node {event.spec.node_name} not found (or not selected); {ACTOR} will check again",
                  requeue_after=cfg.node_missing_requeue)
    if dry_run:
        return dataclasses.replace(out, reason="DryRunNodeNotFound", message="dry-run: " + out.message)
    return out


def apply_outcome(event: HealthEvent, outcome: Outcome, now: _dt.datetime) -> HealthEventStatus:
    """The status after `outcome`; this first stage also records Detected on first sight."""
    return outcome_status(event, outcome, now, detected_by=ACTOR)


def breaker_report(state: BreakerState, nodes: list[Mapping[str, Any]], policy: BreakerPolicy,
                   now: _dt.datetime) -> dict[str, Any]:
    """The breaker as the controller would see it now (for `nvsentinel breaker status`)."""
    current = state.effective(now, policy.window)
    gpu = gpu_node_count(nodes)
    counted = counted_cordons(our_cordons(nodes), now=now, window=policy.window, reset_at=current.reset_at)
    return {
        "state": current.state, "storedState": state.state,
        "trippedAt": format_time(state.tripped_at) if state.tripped_at else "",
        "resetAt": format_time(state.reset_at) if state.reset_at else "",
        "reason": current.reason, "cordoned": len(counted), "limit": policy.limit(gpu), "gpuNodes": gpu,
        "percent": policy.percent, "maxNodes": policy.max_nodes, "windowSeconds": policy.window,
        "nodes": sorted(counted),
    }
