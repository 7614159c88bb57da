"""Remediation decisions, pure: which strategy, which reboot Job, and what the status should say.

No I/O and no clock reads: the controller passes the event, the node's other HealthEvents, its reboot
Jobs, its Node and `now` in. Everything is a function of what the cluster holds (the Jobs are the
record of the attempts, the events' `lastRemediationTime` the record for escalation), so a new leader
or a restart continues where the last one stopped, and a retried reconcile never creates a second Job:
the name of attempt n is fixed.

Phases this stage owns (SPEC §7): Drained → Remediating → Remediated; Drained stays Drained with
condition `Remediated False <reason>` when a human is needed (manual, escalation, attempts exhausted), or, in
remediation mode approve, until an operator approves (`AwaitingApproval`, policy/handoff.py).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nvsentinel.cluster.indexes import JOB_EVENT_ANNOTATION
from nvsentinel.cluster.remediation.config import RemediationConfig
from nvsentinel.policy.evidence import DEFAULT_SKEW, is_stale, observed_at, same_gpu
from nvsentinel.policy.handoff import (
    APPROVAL_ANNOTATION, APPROVAL_BY_ANNOTATION, APPROVAL_REASON_ANNOTATION, APPROVED, REJECTED, STRATEGY_ANNOTATION,
    approval_of, mode_of,
)
from nvsentinel.policy.healthevent import (
    GROUP, KIND, VERSION, ConditionType, HealthEvent, HealthEventStatus, Phase, RemediationMode, format_time,
)
from nvsentinel.policy.outcome import Outcome
from nvsentinel.policy.outcome import apply_outcome as outcome_status
from nvsentinel.policy.outcome import same_decision as same_decision_of
from nvsentinel.xid import Action

__all__ = [
    "ACTOR", "STRATEGY_ANNOTATION", "Strategy", "ACTION_STRATEGY", "HELD_REASONS", "choose_strategy",
    "Triage", "triage", "prior_remediations", "JOB_LABELS", "job_name", "job_body", "JobState", "job_state",
    "CONDITION", "RemediationOutcome", "apply_outcome", "same_decision", "reboot_progress", "gpu_reset_verified_by",
    "STALE_ANNOTATION", "WAITING_REASONS", "overlaps", "remediation_in_progress", "in_progress_outcome",
    "covered_by", "covered_outcome", "fresh_evidence", "stale_outcome", "stale_approved", "cleared_by",
    "cleared_outcome", "ACTING", "AWAITING_APPROVAL", "awaits_approval", "awaiting_approval_outcome",
    "approved_outcome",
]

ACTOR = "nvsentinel-remediation"
#: The condition this stage decides.
CONDITION = ConditionType.REMEDIATED
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_REMEDIATION = "nvsentinel.nvidia.com/remediation"
LABEL_EVENT = "nvsentinel.nvidia.com/healthevent-hash"
#: The Job annotation naming its HealthEvent (the Jobs are indexed by it).
ANNOTATION_EVENT = JOB_EVENT_ANNOTATION
#: The label selector of every Job this stage creates.
JOB_LABELS = {LABEL_MANAGED_BY: "nvsentinel", LABEL_REMEDIATION: "reboot"}


class Strategy(enum.StrEnum):
    REBOOT = "reboot"
    TERMINATE = "terminate"
    GPU_RESET = "gpu-reset"
    MANUAL = "manual"
    NONE = "none"


#: SPEC §7: recommendedAction → strategy when the annotation names none.
ACTION_STRATEGY: Mapping[Action, Strategy] = {
    Action.RESTART_VM: Strategy.REBOOT,
    Action.RESTART_BM: Strategy.REBOOT,
    Action.REPLACE_VM: Strategy.TERMINATE,
    Action.COMPONENT_RESET: Strategy.GPU_RESET,
    Action.NONE: Strategy.NONE,
    Action.CONTACT_SUPPORT: Strategy.MANUAL,
    Action.RUN_FIELDDIAG: Strategy.MANUAL,
    Action.RUN_DCGMEUD: Strategy.MANUAL,
    Action.UNKNOWN: Strategy.MANUAL,
}

#: `Remediated False` reasons that park an event in Drained for a human: this stage does nothing more.
HELD_REASONS = frozenset({"ManualRemediationRequired", "EscalatedToSupport", "RemediationFailed",
                          "NoRemediation", "TerminateNotPossible", "GpuResetNotPossible", "InvalidStrategy"})
#: `Remediated False` reasons of an event that waits in Drained for something the cluster will show (another
#: event's remediation to end, fresh evidence, an operator's annotation): judged again whenever the node's
#: events change.
WAITING_REASONS = frozenset({"RemediationInProgress", "StaleEvidence", "FaultCleared", "AwaitingApproval"})
#: `Remediated False`: remediation mode approve, and no operator has approved this event yet (`nvsentinel approve`).
AWAITING_APPROVAL = "AwaitingApproval"
#: `Remediated True`: another event's remediation fixed this fault too (nothing was run for this one).
REMEDIATED_WITH = "RemediatedWithEvent"
APPROVAL_ANNOTATION_TEXT = f"{APPROVAL_ANNOTATION}={APPROVED}"
#: An operator's decision that a stale event (StaleEvidence) is remediated as it is (value `true`).
STALE_ANNOTATION = "nvsentinel.nvidia.com/remediate-stale"


def choose_strategy(event: HealthEvent) -> tuple[Strategy | None, str]:
    """(strategy, why). None: the annotation names no known strategy (the event goes to a human)."""
    named = (event.annotations.get(STRATEGY_ANNOTATION) or "").strip()
    if named:
        try:
            return Strategy(named.lower()), f"annotation {STRATEGY_ANNOTATION}={named}"
        except ValueError:
            return None, f"annotation {STRATEGY_ANNOTATION}={named!r} is not one of " + \
                ", ".join(s.value for s in Strategy)
    action = event.spec.recommended_action
    return ACTION_STRATEGY.get(action, Strategy.MANUAL), f"recommendedAction {action}"


class Triage(enum.Enum):
    IGNORE = "ignore"   # not Drained yet, held for a human, or already Remediated and beyond
    START = "start"     # Drained: choose and begin
    FOLLOW = "follow"   # Remediating: watch the Job / the node agent


def triage(event: HealthEvent) -> Triage:
    if not event.spec.is_fatal or event.spec.is_healthy:
        return Triage.IGNORE
    phase = event.status.phase
    if phase is Phase.REMEDIATING:
        return Triage.FOLLOW
    if phase is not Phase.DRAINED or approval_of(event) == REJECTED:
        return Triage.IGNORE  # a rejected event is the resolution stage's to close: nothing starts
    cond = event.status.condition(ConditionType.REMEDIATED)
    if cond is not None and cond.status == "False" and cond.reason in HELD_REASONS:
        return Triage.IGNORE
    return Triage.START


# ---- escalation ---------------------------------------------------------------------------------------

def _same_entity(a: HealthEvent, b: HealthEvent) -> bool:
    if a.spec.node_name != b.spec.node_name:
        return False
    ga, gb = set(a.gpu_uuids), set(b.gpu_uuids)
    return not ga or not gb or bool(ga & gb)


def _remediated_with_another(event: HealthEvent) -> bool:
    cond = event.status.condition(ConditionType.REMEDIATED)
    return cond is not None and cond.reason == REMEDIATED_WITH


def prior_remediations(event: HealthEvent, others: Iterable[HealthEvent], now: _dt.datetime,
                       window: float) -> list[HealthEvent]:
    """Other events of the same node/GPU whose remediation began within the window, oldest first. An event
    remediated with another (`RemediatedWithEvent`: it shares that one's time) is not a remediation of its own:
    one reboot counts once."""
    since = now - _dt.timedelta(seconds=window)
    out = [o for o in others if o.name != event.name and o.status.last_remediation_time is not None
           and since <= o.status.last_remediation_time <= now and _same_entity(event, o)
           and not _remediated_with_another(o)]
    return sorted(out, key=lambda o: (o.status.last_remediation_time, o.name))


# ---- one fault, one remediation ------------------------------------------------------------------------

#: Strategies that act on the machine; only they wait for, or are covered by, another event's remediation, and only
#: they wait for an operator's approval (remediation mode approve).
ACTING = frozenset({Strategy.REBOOT, Strategy.TERMINATE, Strategy.GPU_RESET})
_FAR_FUTURE = _dt.datetime.max.replace(tzinfo=_dt.timezone.utc)


def overlaps(a: HealthEvent, b: HealthEvent) -> bool:
    """Same node, and the same GPU (UUID or PCI slot), or one of them names no GPU (it is about the node)."""
    if a.spec.node_name != b.spec.node_name:
        return False
    if not (a.gpu_uuids or a.pci_slots) or not (b.gpu_uuids or b.pci_slots):
        return True
    return same_gpu(a, b)


_NODE_WIDE = frozenset({Strategy.REBOOT, Strategy.TERMINATE})


def _contends(a: HealthEvent, sa: Strategy | None, b: HealthEvent, sb: Strategy | None) -> bool:
    """Whether remediating `a` with `sa` and `b` with `sb` at once would act twice or under each other's feet."""
    return a.spec.node_name == b.spec.node_name and (sa in _NODE_WIDE or sb in _NODE_WIDE or overlaps(a, b))


def _order(event: HealthEvent, skew: _dt.timedelta) -> tuple[_dt.datetime, str]:
    return observed_at(event, skew), event.name


def remediation_in_progress(event: HealthEvent, strategy: Strategy | None, others: Iterable[HealthEvent], *,
                            now: _dt.datetime, cfg: RemediationConfig,
                            skew: _dt.timedelta = DEFAULT_SKEW) -> HealthEvent | None:
    """The event whose remediation this one must wait for, else None: another fatal event of the node that is
    `Remediating` in a way that contends with this one (a reboot or terminate of the node, a reboot of it while
    a GPU reset runs, a reset of the same GPU), else one that is first in line to start (Drained, to be acted
    on, observed earlier). Starting now would act twice: a second reboot Job for one node, one fault."""
    running, queued = [], []
    for o in others:
        if o.name == event.name or not o.spec.is_fatal or o.spec.is_healthy:
            continue
        how = choose_strategy(o)[0]
        if how not in ACTING or not _contends(event, strategy, o, how):
            continue
        if o.status.phase is Phase.REMEDIATING:
            running.append(((o.status.last_remediation_time or _FAR_FUTURE), o.name, o))
        elif triage(o) is Triage.START and _order(o, skew) < _order(event, skew) and not awaits_approval(o) and \
                not (is_stale(o, now, cfg.max_event_age, skew) and not stale_approved(o)):
            queued.append((*_order(o, skew), o))
    return min(running)[2] if running else min(queued)[2] if queued else None


def in_progress_outcome(event: HealthEvent, running: HealthEvent, cfg: RemediationConfig) -> RemediationOutcome:
    strategy = choose_strategy(running)[0]
    state = "in progress" if running.status.phase is Phase.REMEDIATING else "first in line"
    return _result(Phase.DRAINED, "False", "RemediationInProgress",
                   f"waiting for HealthEvent {running.name} ({strategy.value if strategy else '?'} on node "
                   f"{event.spec.node_name}, {state}): one remediation at a time; when it succeeds after this "
                   f"fault it counts for this event too; {ACTOR}", requeue_after=cfg.remediation_poll)


def _covers(done: Strategy | None, wanted: Strategy, event: HealthEvent, other: HealthEvent) -> bool:
    if done is Strategy.REBOOT:
        return wanted in (Strategy.REBOOT, Strategy.GPU_RESET)  # a reboot resets every GPU of the node
    if done is Strategy.GPU_RESET:
        return wanted is Strategy.GPU_RESET and overlaps(event, other)
    return False


def covered_by(event: HealthEvent, strategy: Strategy | None, others: Iterable[HealthEvent], *,
               skew: _dt.timedelta = DEFAULT_SKEW) -> HealthEvent | None:
    """Another event of the node whose remediation succeeded after this fault was observed and fixes it too (a
    reboot covers a reboot or a GPU reset; a GPU reset covers a reset of the same GPU), else None. Its success
    is its `Remediated` True transition; the first such by that time. A fault observed after it is a new one."""
    if strategy is None or strategy not in (Strategy.REBOOT, Strategy.GPU_RESET):
        return None
    seen = observed_at(event, skew)
    found = []
    for o in others:
        cond = o.status.condition(ConditionType.REMEDIATED)
        if o.name == event.name or o.spec.node_name != event.spec.node_name or not o.spec.is_fatal or \
                cond is None or cond.status != "True" or o.status.last_remediation_time is None or \
                o.status.phase not in (Phase.REMEDIATED, Phase.RESOLVED) or seen > cond.last_transition_time:
            continue
        if _covers(choose_strategy(o)[0], strategy, event, o):
            found.append((cond.last_transition_time, o.name, o))
    return min(found)[2] if found else None


def covered_outcome(event: HealthEvent, by: HealthEvent) -> RemediationOutcome:
    """Remediated with `by`: its remediation time is this event's too (the node agent's verification and the
    escalation count treat both as one remediation)."""
    how = choose_strategy(by)[0]
    return _result(Phase.REMEDIATED, "True", REMEDIATED_WITH,
                   f"covered by the {how.value if how else '?'} done for HealthEvent {by.name} on node "
                   f"{event.spec.node_name}, which succeeded after this fault was observed; nothing run twice; "
                   f"{ACTOR}", action="remediated-with", remediated_at=by.status.last_remediation_time)


def cleared_by(event: HealthEvent, others: Iterable[HealthEvent], *,
               skew: _dt.timedelta = DEFAULT_SKEW) -> HealthEvent | None:
    """A healthy event of the same GPU (UUID or PCI slot) observed no earlier than this fault, else None: the
    GPU recovered before anything ran (NVML's recovery action back to NONE, a recovery the node saw), so
    nothing is run and resolution closes the event by the same rule. The earliest such."""
    seen = observed_at(event, skew)
    found = [o for o in others if o.spec.is_healthy and same_gpu(event, o) and observed_at(o, skew) >= seen]
    return min(found, key=lambda o: (observed_at(o, skew), o.name)) if found else None


def cleared_outcome(event: HealthEvent, by: HealthEvent, cfg: RemediationConfig) -> RemediationOutcome:
    return _result(Phase.DRAINED, "False", "FaultCleared",
                   f"healthy HealthEvent {by.name} cleared this fault before any remediation began: nothing is "
                   f"run on node {event.spec.node_name}; resolution closes the event; {ACTOR}",
                   action="fault-cleared", requeue_after=cfg.remediation_poll)


def stale_approved(event: HealthEvent) -> bool:
    """The operator's annotation says a stale event is remediated as it is."""
    return (event.annotations.get(STALE_ANNOTATION) or "").strip().lower() == "true"


def fresh_evidence(event: HealthEvent, others: Iterable[HealthEvent], now: _dt.datetime, max_age: float, *,
                   skew: _dt.timedelta = DEFAULT_SKEW) -> HealthEvent | None:
    """A fatal event of the same node and GPU (UUID or PCI slot; or about the whole node) observed within
    `max_age` of `now`: the fault is still there. The newest such, else None."""
    horizon = now - _dt.timedelta(seconds=max_age)
    found = [o for o in others if o.name != event.name and o.spec.is_fatal and not o.spec.is_healthy
             and overlaps(event, o) and observed_at(o, skew) >= horizon]
    return max(found, key=lambda o: (observed_at(o, skew), o.name)) if found else None


def stale_outcome(event: HealthEvent, fresh: HealthEvent | None, now: _dt.datetime, cfg: RemediationConfig, *,
                  skew: _dt.timedelta = DEFAULT_SKEW) -> RemediationOutcome:
    """Quarantined and drained, never remediated on old evidence alone (a cold start after an outage, a breaker
    open for hours): say why, and what lets it proceed."""
    seen = observed_at(event, skew)
    age = (now - seen).total_seconds()
    old = f"observed at {format_time(seen)}, {age / 3600:.1f} h ago, older than --max-event-age {cfg.max_event_age:g}s"
    if fresh is not None:
        return _result(Phase.DRAINED, "False", "StaleEvidence",
                       f"{old}: not remediated on its own; fresh evidence HealthEvent {fresh.name} (observed "
                       f"{format_time(observed_at(fresh, skew))}) is remediated instead, and this event counts as "
                       f"remediated with it; {ACTOR}", action="stale-evidence")
    return _result(Phase.DRAINED, "False", "StaleEvidence",
                   f"{old}: quarantined and drained but not remediated without fresh evidence; it proceeds on a new "
                   f"fatal event for the same GPU (UUID or PCI slot) observed within the max age, or on the "
                   f"operator's annotation {STALE_ANNOTATION}=true; a healthy event resolves it; {ACTOR}",
                   action="stale-evidence", warning=True)


# ---- remediation mode approve ----------------------------------------------------------------------------

def awaits_approval(event: HealthEvent) -> bool:
    """Remediation mode approve (recorded by the quarantine stage) and no operator's `approved` on the event yet: its
    remediation must not start. An approval written before the event reached Drained counts (pre-approval)."""
    return mode_of(event) is RemediationMode.APPROVE and approval_of(event) != APPROVED


def _approver(event: HealthEvent) -> str:
    who = " ".join((event.annotations.get(APPROVAL_BY_ANNOTATION) or "").split())[:128] or \
        f"an operator (no {APPROVAL_BY_ANNOTATION} annotation)"
    why = " ".join((event.annotations.get(APPROVAL_REASON_ANNOTATION) or "").split())[:256]
    return who + (f": {why}" if why else "")


def awaiting_approval_outcome(event: HealthEvent, strategy: Strategy, why: str) -> RemediationOutcome:
    """Drained, `Remediated False AwaitingApproval`: what would run and how to let it (a Warning, once)."""
    return _result(Phase.DRAINED, "False", AWAITING_APPROVAL,
                   f"remediation mode approve: {strategy.value} of node {event.spec.node_name} ({why}) waits for an "
                   f"operator: approve with `nvsentinel approve {event.name}` (or annotate it "
                   f"{APPROVAL_ANNOTATION_TEXT}), close it with `nvsentinel reject {event.name}`; {ACTOR}",
                   action="awaiting-approval", warning=True)


def approved_outcome(event: HealthEvent, outcome: RemediationOutcome) -> RemediationOutcome:
    """The remediation an operator approved, its message naming who approved and why (mode approve only)."""
    if mode_of(event) is not RemediationMode.APPROVE:
        return outcome
    return dataclasses.replace(outcome, message=f"{outcome.message} (approved by {_approver(event)})")


# ---- reboot Jobs --------------------------------------------------------------------------------------

def _event_hash(event_name: str) -> str:
    return hashlib.sha256(event_name.encode()).hexdigest()[:12]


def job_name(event_name: str, attempt: int) -> str:
    """Fixed per (event, attempt): a retried reconcile gets 409, never a second reboot. ≤ 63 characters."""
    return f"nvsentinel-reboot-{_event_hash(event_name)}-{attempt}"


def job_body(event: HealthEvent, attempt: int, cfg: RemediationConfig) -> dict[str, Any]:
    """A privileged pod in the host's PID namespace, pinned to the node (nodeName: no scheduler, and the
    cordon does not apply), tolerating every taint (ours included), run once (we retry, not the Job).

    Owned by the HealthEvent, so the garbage collector removes it with the event (TTL).
    """
    node = event.spec.node_name
    labels = dict(JOB_LABELS) | {LABEL_EVENT: _event_hash(event.name)}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": job_name(event.name, attempt), "namespace": cfg.namespace, "labels": labels,
            "annotations": {ANNOTATION_EVENT: event.name, "nvsentinel.nvidia.com/node": node,
                            "nvsentinel.nvidia.com/attempt": str(attempt)},
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": event.name,
                                 "uid": event.uid}] if event.uid else [],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": cfg.reboot_job_deadline,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeName": node,
                    "hostPID": True,
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 5,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": "reboot", "image": cfg.reboot_image, "command": cfg.reboot_argv,
                        # root explicitly: the chart's default image (nvsentinel's own) runs as 65532
                        "securityContext": {"privileged": True, "runAsUser": 0},
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                      "limits": {"cpu": "100m", "memory": "64Mi"}},
                    }],
                },
            },
        },
    }


class JobState(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def job_state(job: Mapping[str, Any]) -> JobState:
    status = job.get("status") or {}
    if _job_condition(job, "Complete") is not None or int(status.get("succeeded") or 0) > 0:
        return JobState.SUCCEEDED
    if _job_condition(job, "Failed") is not None or int(status.get("failed") or 0) > 0:
        return JobState.FAILED
    return JobState.RUNNING


def _job_finished_at(job: Mapping[str, Any]) -> _dt.datetime | None:
    from nvsentinel.policy.healthevent import parse_time

    cond = _job_condition(job, "Failed") or _job_condition(job, "Complete") or {}
    status = job.get("status") or {}
    for text in (cond.get("lastTransitionTime"), status.get("completionTime"), status.get("startTime"),
                 (job.get("metadata") or {}).get("creationTimestamp")):
        if text:
            try:
                return parse_time(str(text))
            except ValueError:
                continue
    return None


def attempts_of(event_name: str, jobs: Iterable[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """This event's reboot Jobs by attempt number (the name says which)."""
    prefix = f"nvsentinel-reboot-{_event_hash(event_name)}-"
    out: dict[int, Mapping[str, Any]] = {}
    for job in jobs:
        name = str((job.get("metadata") or {}).get("name", ""))
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            out[int(name[len(prefix):])] = job
    return out


# ---- outcomes -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RemediationOutcome(Outcome):
    """An `Outcome` with this stage's two side effects, which the controller performs after the status."""

    create_job: int | None = None
    """create reboot Job attempt n (after the status says Remediating); counted and announced on creation"""
    delete_node: bool = False
    remediated_at: _dt.datetime | None = None
    """lastRemediationTime to record (another event's: remediated together), in place of now"""


def apply_outcome(event: HealthEvent, outcome: Outcome, now: _dt.datetime) -> HealthEventStatus:
    """The status after `outcome` (`policy.outcome.apply_outcome`), with a shared remediation's time."""
    status = outcome_status(event, outcome, now)
    at = getattr(outcome, "remediated_at", None)
    return dataclasses.replace(status, last_remediation_time=at) if at is not None else status


def _result(phase: Phase, status: str, reason: str, message: str, **more: Any) -> RemediationOutcome:
    """This stage's outcome: the condition it decides is `CONDITION`."""
    return RemediationOutcome(phase, CONDITION, status, reason, message, **more)


#: Whether only the message moved, so actions are counted and Events emitted once.
same_decision = functools.partial(same_decision_of, condition_type=CONDITION)


def _held(reason: str, message: str, action: str) -> RemediationOutcome:
    return _result(Phase.DRAINED, "False", reason, f"{message}; a human is needed; {ACTOR}", action=action,
                   warning=True)


def held_outcome(event: HealthEvent, strategy: Strategy | None, why: str) -> RemediationOutcome:
    """manual / none / an unknown annotation: stay Drained with the reason a human reads."""
    node = event.spec.node_name
    if strategy is None:
        return _held("InvalidStrategy", why, "manual")
    if strategy is Strategy.NONE:
        return _result(Phase.DRAINED, "False", "NoRemediation",
                       f"strategy none ({why}): nothing to run; node {node} stays quarantined until a healthy "
                       f"event resolves this; {ACTOR}", action="none")
    return _held("ManualRemediationRequired",
                 f"strategy manual ({why}): nvsentinel does not remediate this automatically on node {node}",
                 "manual")


def escalated_outcome(event: HealthEvent, prior: Sequence[HealthEvent], cfg: RemediationConfig) -> RemediationOutcome:
    names = ", ".join(p.name for p in prior[-5:])
    what = ", ".join(event.gpu_uuids) or f"node {event.spec.node_name}"
    return _held("EscalatedToSupport",
                 f"CONTACT_SUPPORT: {what} was already remediated {len(prior)} time(s) within "
                 f"{cfg.escalation_window:g}s ({names}); escalation threshold {cfg.escalation_threshold}",
                 "escalate")


def terminate_outcome(event: HealthEvent, node: Mapping[str, Any] | None) -> RemediationOutcome:
    name = event.spec.node_name
    if node is None:
        return _result(Phase.REMEDIATED, "True", "NodeTerminated",
                       f"node {name} is already gone; {ACTOR}", action="terminate", started=True)
    provider_id = (node.get("spec") or {}).get("providerID")
    if not provider_id:
        return _held("TerminateNotPossible", f"strategy terminate: node {name} has no spec.providerID, so "
                     "deleting its Node object would not replace the machine", "manual")
    return _result(Phase.REMEDIATED, "True", "NodeTerminated",
                   f"deleted Node {name} (providerID {provider_id}) for the cloud provider to replace; {ACTOR}",
                   action="terminate", started=True, delete_node=True)


def gpu_reset_request_outcome(event: HealthEvent) -> RemediationOutcome:
    gpus = event.gpu_uuids
    if not gpus:
        return _held("GpuResetNotPossible", "strategy gpu-reset: the event names no GPU to reset", "manual")
    return _result(Phase.REMEDIATING, "False", "GpuResetRequested",
                   f"reset of {', '.join(gpus)} requested from the node agent (nvsentinel remediation-agent) "
                   f"on node {event.spec.node_name}; waiting for the GPU to be verified healthy; {ACTOR}",
                   action="gpu-reset-requested", started=True)


def _floor_s(t: _dt.datetime) -> _dt.datetime:
    return t.replace(microsecond=0)


def gpu_reset_verified_by(event: HealthEvent, others: Iterable[HealthEvent]) -> HealthEvent | None:
    """The first healthy event of the node naming one of the event's GPUs (or none), detected since the reset
    was requested (to the whole second: detectors report whole seconds)."""
    since = event.status.last_remediation_time
    if since is None:
        return None
    gpus = set(event.gpu_uuids)
    found = [o for o in others if o.spec.is_healthy and o.spec.node_name == event.spec.node_name
             and o.spec.detected_at >= _floor_s(since)
             and (not o.gpu_uuids or not gpus or gpus & set(o.gpu_uuids))]
    return min(found, key=lambda o: (o.spec.detected_at, o.name)) if found else None


def gpu_reset_progress(event: HealthEvent, others: Iterable[HealthEvent], now: _dt.datetime,
                       cfg: RemediationConfig) -> RemediationOutcome:
    by = gpu_reset_verified_by(event, others)
    if by is not None:
        return _result(Phase.REMEDIATED, "True", "GpuResetVerified",
                       f"{', '.join(event.gpu_uuids)} reset and verified healthy by the node agent "
                       f"(healthy HealthEvent {by.name}); {ACTOR}", action="gpu-reset-verified")
    since = event.status.last_remediation_time or now
    left = cfg.gpu_reset_timeout - (now - since).total_seconds()
    if left <= 0:
        return _held("RemediationFailed",
                     f"GPU reset of {', '.join(event.gpu_uuids)} was not verified healthy within "
                     f"{cfg.gpu_reset_timeout:g}s", "remediation-failed")
    cond = event.status.condition(ConditionType.REMEDIATED)
    return _result(Phase.REMEDIATING, "False", "GpuResetRequested",
                   cond.message if cond is not None else "GPU reset requested",
                   requeue_after=min(left, cfg.remediation_poll))


def reboot_progress(event: HealthEvent, attempts: Mapping[int, Mapping[str, Any]], now: _dt.datetime,
                    cfg: RemediationConfig) -> RemediationOutcome:
    """Follow the reboot Jobs: succeeded → Remediated; running → wait; failed → back off, retry, give up."""
    node = event.spec.node_name
    for n, job in sorted(attempts.items()):
        if job_state(job) is JobState.SUCCEEDED:
            return _result(Phase.REMEDIATED, "True", "RebootSucceeded",
                           f"reboot Job {cfg.namespace}/{job_name(event.name, n)} succeeded on node {node} "
                           f"(attempt {n}); waiting for the node agent to verify the GPUs; {ACTOR}",
                           action="reboot-succeeded")
    if not attempts:
        return _result(Phase.REMEDIATING, "False", "RebootJobCreated",
                       f"reboot Job {cfg.namespace}/{job_name(event.name, 1)} created on node {node} "
                       f"(attempt 1 of {cfg.remediation_max_attempts}); {ACTOR}",
                       started=True, create_job=1, requeue_after=cfg.remediation_poll)
    last = max(attempts)
    job = attempts[last]
    if job_state(job) is JobState.RUNNING:
        return _result(Phase.REMEDIATING, "False", "RebootJobCreated",
                       f"reboot Job {cfg.namespace}/{job_name(event.name, last)} running on node {node} "
                       f"(attempt {last} of {cfg.remediation_max_attempts}); {ACTOR}",
                       requeue_after=cfg.remediation_poll)
    failed = f"reboot Job {cfg.namespace}/{job_name(event.name, last)} failed on node {node}"
    if last >= cfg.remediation_max_attempts:
        return _held("RemediationFailed", f"{failed}; {last} attempt(s), the limit", "remediation-failed")
    wait = cfg.remediation_backoff * 2 ** (last - 1)
    finished = _job_finished_at(job) or now
    left = wait - (now - finished).total_seconds()
    if left > 0:
        return _result(Phase.REMEDIATING, "False", "RebootJobFailed",
                       f"{failed} (attempt {last} of {cfg.remediation_max_attempts}); retrying in {left:.0f}s; "
                       f"{ACTOR}", action="reboot-failed", requeue_after=left, warning=True)
    return _result(Phase.REMEDIATING, "False", "RebootJobCreated",
                   f"reboot Job {cfg.namespace}/{job_name(event.name, last + 1)} created on node {node} "
                   f"(attempt {last + 1} of {cfg.remediation_max_attempts}, after a failure); {ACTOR}",
                   create_job=last + 1, requeue_after=cfg.remediation_poll)


def dry_run_outcome(event: HealthEvent, strategy: Strategy | None, why: str) -> RemediationOutcome:
    what = strategy.value if strategy is not None else "nothing (a human)"
    return _result(event.status.phase, "False", "DryRunRemediation",
                   f"dry-run: would remediate node {event.spec.node_name} with {what} ({why}); {ACTOR}")
