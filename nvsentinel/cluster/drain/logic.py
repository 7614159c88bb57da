"""Drain decisions, pure: which pods must go, whether they are gone, and what the status should say.

No I/O and no clock reads: the controller passes the event, the node's pods and `now` in. A drain is
judged against the pods seen when it started (name → UID), so a pod recreated under the same name by
its controller counts as gone: it is a new pod that its owner chose to run (the cordon keeps others off), and
waiting for it would never end.

Phases this stage owns (SPEC §7): Quarantined → Draining → Drained; Quarantined/Draining → Drained
with `DrainSkipped` (`spec.overrides.drain.skip`). Other phases are not touched.

Scope (`--drain-scope`, docs/drain.md#per-gpu-scope): a `Scope` says which of the node's pods the drain covers,
every evictable one or, GPU-scoped, only those the event's pod mapping names on its GPUs. The mapping is only a
list of names: the drain intersects it with the node's own pods (the controller passes only those), so a
mapping naming another node's pod never reaches it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.policy.drainscope import Fallback, gpu_scope, refusal
from nvsentinel.policy.handoff import mode_of
from nvsentinel.policy.healthevent import (
    MAX_MAPPED_PODS, ConditionType, DrainRecord, DrainScope, HealthEvent, HealthEventStatus, Phase, PodRef,
    RemediationMode,
)
from nvsentinel.policy.outcome import Outcome, apply_outcome
from nvsentinel.policy.outcome import same_decision as same_decision_of

__all__ = [
    "ACTOR", "MIRROR_ANNOTATION", "PodKey", "Triage", "triage", "slim_pod", "evictable", "snapshot", "pending",
    "pending_seen", "to_evict", "eviction_body", "draining_since", "timed_out", "Outcome", "skip_outcome",
    "drained_outcome", "draining_outcome", "timeout_outcome", "dry_run_outcome", "apply_outcome",
    "same_decision", "Fallback", "Scope", "NODE_SCOPE", "scope_of", "fallback_of", "others_left", "drain_record",
    "drain_status", "starts_drain", "SCOPE_LABELS",
]

ACTOR = "nvsentinel-drain"
#: The condition this stage decides.
CONDITION = ConditionType.PODS_DRAINED
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

#: (namespace, name)
PodKey = tuple[str, str]


class Triage(enum.Enum):
    IGNORE = "ignore"   # not ours yet (New), already Drained or beyond, or handed off (mode external)
    SKIP = "skip"       # spec.overrides.drain.skip
    DRAIN = "drain"     # Quarantined or Draining: evict and watch the pods go


def triage(event: HealthEvent) -> Triage:
    if event.status.phase not in (Phase.QUARANTINED, Phase.DRAINING):
        return Triage.IGNORE
    if mode_of(event) is RemediationMode.EXTERNAL:
        return Triage.IGNORE  # handed off: the external repairer drains (docs/integrations.md)
    if event.spec.overrides.drain.skip:
        return Triage.SKIP
    return Triage.DRAIN


# ---- scope -------------------------------------------------------------------------------------------

#: Every (scope, fallback) pair the scope metric can take, pre-initialised to 0 for dashboards.
SCOPE_LABELS = ((DrainScope.NODE, Fallback.NONE), (DrainScope.GPU, Fallback.NONE),
                *((DrainScope.NODE, f) for f in Fallback if f is not Fallback.NONE))


@dataclasses.dataclass(frozen=True)
class Scope:
    """What one event's drain covers: every evictable pod of its node (`keys` None), or only these pods."""

    scope: DrainScope = DrainScope.NODE
    gpus: tuple[str, ...] = ()
    keys: frozenset[PodKey] | None = None
    reason: str = ""
    """why a GPU scope asked for fell back to the node ("" when it did not)"""
    fallback: Fallback = Fallback.NONE
    recorded: bool = False
    """whether the drain is recorded in `status.drain` (the GPU scope was asked for)"""

    @property
    def gpu(self) -> bool:
        return self.scope is DrainScope.GPU


#: `--drain-scope node`: every evictable pod, recorded nowhere but the condition (as before the GPU scope).
NODE_SCOPE = Scope()


def fallback_of(event: HealthEvent) -> Fallback:
    """Which of `gpu_scope`'s refusals applies to `event`, as a metric label."""
    return refusal(event)[0]


def scope_of(event: HealthEvent, cfg: DrainConfig) -> Scope:
    """The scope of `event`'s drain under `--drain-scope`: its GPUs' mapped pods, or the node and why."""
    if cfg.drain_scope != DrainScope.GPU:
        return NODE_SCOPE
    found, why = gpu_scope(event, cfg.drain_scope)
    if found is None:
        return Scope(DrainScope.NODE, event.gpu_uuids, None, why, fallback_of(event), recorded=True)
    return Scope(DrainScope.GPU, found.gpus, frozenset(p.key for p in found.pods), "", Fallback.NONE,
                 recorded=True)


def others_left(pods: Iterable[Mapping[str, Any]], skip_namespaces: Iterable[str], scope: Scope) -> int:
    """The node's evictable pods outside a GPU scope: the ones a node drain would have taken, left running."""
    if scope.keys is None:
        return 0
    skip = frozenset(skip_namespaces)
    return sum(1 for p in pods if key_of(p) not in scope.keys and evictable(p, skip))


def drain_record(scope: Scope, drained: Iterable[PodKey], previous: DrainRecord | None) -> DrainRecord | None:
    """`status.drain` for this drain: the scope, GPUs, the pods it covers and any fallback reason; None when the
    GPU scope was not asked for. The pods an earlier record of the same scope named are kept: a new leader's
    snapshot holds only the pods still there, and those already evicted must stay on the record."""
    if not scope.recorded:
        return None
    keys = set(drained)
    if previous is not None and previous.scope == scope.scope:
        keys |= {p.key for p in previous.pods}
    pods = tuple(PodRef(ns, name) for ns, name in sorted(keys) if ns and name)[:MAX_MAPPED_PODS]
    return DrainRecord(str(scope.scope), scope.gpus[:64], pods, scope.reason)


def drain_status(event: HealthEvent, outcome: Outcome, now: _dt.datetime,
                 record: DrainRecord | None = None) -> HealthEventStatus:
    """The status after `outcome`, with the drain's record when there is one (otherwise the event's own kept)."""
    status = apply_outcome(event, outcome, now)
    return dataclasses.replace(status, drain=record) if record is not None else status


def starts_drain(event: HealthEvent, status: HealthEventStatus) -> bool:
    """Whether writing `status` begins `event`'s drain: it leaves Quarantined (counted once per event)."""
    return event.status.phase is Phase.QUARANTINED and status.phase in (Phase.DRAINING, Phase.DRAINED)


# ---- pods --------------------------------------------------------------------------------------------

def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def key_of(pod: Mapping[str, Any]) -> PodKey:
    m = _meta(pod)
    return (str(m.get("namespace", "")), str(m.get("name", "")))


def slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """What the drain's pod cache keeps of a pod: the fields this module reads, nothing else.

    The drain watches every pod of the cluster; containers, volumes, container statuses and labels are
    most of a pod's size (250 MB of cache at 20 000 small pods before this), and none of them is read.
    """
    m = _meta(pod)
    meta: dict[str, Any] = {k: m[k] for k in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
                            if k in m}
    if MIRROR_ANNOTATION in (m.get("annotations") or {}):
        meta["annotations"] = {MIRROR_ANNOTATION: m["annotations"][MIRROR_ANNOTATION]}
    refs = [{"kind": r.get("kind"), "name": r.get("name")} for r in m.get("ownerReferences") or ()]
    if refs:
        meta["ownerReferences"] = refs
    out: dict[str, Any] = {"apiVersion": pod.get("apiVersion", "v1"), "kind": pod.get("kind", "Pod"), "metadata": meta,
                           "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")}}
    phase = (pod.get("status") or {}).get("phase")
    if phase:
        out["status"] = {"phase": phase}
    return out


def evictable(pod: Mapping[str, Any], skip_namespaces: Iterable[str]) -> bool:
    """Whether draining must remove this pod.

    Mirror pods cannot be evicted (the kubelet owns them), finished pods hold no GPU, DaemonSet pods
    would be recreated on the node at once (the DaemonSet tolerates unschedulable), and skipped
    namespaces hold the agents that keep the node manageable.
    """
    m = _meta(pod)
    if m.get("namespace") in set(skip_namespaces):
        return False
    if MIRROR_ANNOTATION in (m.get("annotations") or {}):
        return False
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    return not any(ref.get("kind") == "DaemonSet" for ref in m.get("ownerReferences") or ())


def snapshot(pods: Iterable[Mapping[str, Any]], skip_namespaces: Iterable[str],
             within: frozenset[PodKey] | None = None) -> dict[PodKey, str]:
    """The pods the drain must see gone: key → UID. `within` (a GPU scope's pods): only those of `pods` (the
    node's own) it names, so a name the mapping holds that is not on this node is never taken."""
    skip = frozenset(skip_namespaces)
    return {key_of(p): str(_meta(p).get("uid", "")) for p in pods
            if (within is None or key_of(p) in within) and evictable(p, skip)}


def pending(snap: Mapping[PodKey, str], pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods of the snapshot still present with the same UID (another UID: a replacement, counts as gone)."""
    out = [p for p in pods if snap.get(key_of(p)) == str(_meta(p).get("uid", ""))]
    return sorted(out, key=key_of)


def pending_seen(start: Mapping[PodKey, Mapping[str, Any]], cached: Iterable[Mapping[str, Any]],
                 gone: Iterable[str]) -> list[Mapping[str, Any]]:
    """Pods of the start snapshot not yet gone, judged from a cache that may lag the snapshot.

    `start`: the pods seen at drain start (a server read); `cached`: the node's pods in the informer's
    cache; `gone`: UIDs the informer has seen deleted since before that read. A snapshot pod counts as
    gone only when its deletion was seen, or when the cache holds another pod under its name (a
    replacement: the deletion came first on the watch). One the cache has not seen at all is still
    there: the cache is merely behind the read.
    """
    gone = set(gone)
    by_key = {key_of(p): p for p in cached}
    out = []
    for key, pod in start.items():
        uid = str(_meta(pod).get("uid", ""))
        if uid in gone:
            continue
        now = by_key.get(key)
        if now is None:
            out.append(pod)
        elif str(_meta(now).get("uid", "")) == uid:
            out.append(now)
    return sorted(out, key=key_of)


def to_evict(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pending pods not already terminating: evicting one with a deletionTimestamp again is needless."""
    return [p for p in pods if not _meta(p).get("deletionTimestamp")]


def eviction_body(pod: Mapping[str, Any], grace_period: int) -> dict[str, Any]:
    """No apiVersion: the 1.20 server rejects an explicit policy/v1 and defaults the right one."""
    ns, name = key_of(pod)
    return {"kind": "Eviction", "metadata": {"name": name, "namespace": ns},
            "deleteOptions": {"gracePeriodSeconds": grace_period}}


def blocked_reason(err_message: str, body: Mapping[str, Any]) -> str:
    """What a 429 says: the causes name the PodDisruptionBudget; fall back to the message."""
    causes = [str(c.get("message")) for c in ((body.get("details") or {}).get("causes") or ()) if c.get("message")]
    return "; ".join(causes) or str(body.get("message") or err_message) or "blocked by a disruption budget"


# ---- time --------------------------------------------------------------------------------------------

def draining_since(event: HealthEvent) -> _dt.datetime | None:
    """When the drain began: PodsDrained went False (DrainTimeout keeps it False, so the time holds)."""
    cond = event.status.condition(ConditionType.PODS_DRAINED)
    if event.status.phase is not Phase.DRAINING or cond is None or cond.status != "False":
        return None
    return cond.last_transition_time


def timed_out(since: _dt.datetime | None, now: _dt.datetime, cfg: DrainConfig) -> bool:
    return since is not None and (now - since).total_seconds() >= cfg.drain_timeout


# ---- outcomes ----------------------------------------------------------------------------------------

def _result(phase: Phase, status: str, reason: str, message: str, **more: Any) -> Outcome:
    """This stage's outcome: the condition it decides is `CONDITION`."""
    return Outcome(phase, CONDITION, status, reason, message, **more)


def _pod_list(pods: Iterable[Mapping[str, Any]], limit: int = 5) -> str:
    names = ["/".join(key_of(p)) for p in pods]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _gpu_list(gpus: Iterable[str], limit: int = 4) -> str:
    gpus = list(gpus)
    more = f" and {len(gpus) - limit} more" if len(gpus) > limit else ""
    return ", ".join(gpus[:limit]) + more or "-"


def _where(event: HealthEvent, scope: Scope) -> str:
    """What is drained: the node, or a GPU of it."""
    if scope.gpu:
        return f"GPU {_gpu_list(scope.gpus)} of node {event.spec.node_name}"
    return f"node {event.spec.node_name}"


def _fallback_note(scope: Scope) -> str:
    return f"; GPU scope: falling back to the whole node: {scope.reason}" if scope.reason else ""


def skip_outcome(event: HealthEvent) -> Outcome:
    return _result(Phase.DRAINED, "True", "DrainSkipped",
                   f"spec.overrides.drain.skip is set: node {event.spec.node_name} not drained; {ACTOR}",
                   action="skip")


def drained_outcome(event: HealthEvent, count: int, *, scope: Scope = NODE_SCOPE, others: int = 0) -> Outcome:
    """Every pod of the drain is gone; GPU-scoped, also how many of the node's other pods were left running."""
    node = event.spec.node_name
    if not scope.gpu:
        msg = f"all {count} pod(s) evicted from node {node} are gone{_fallback_note(scope)}"
    elif count:
        msg = f"all {count} pod(s) on GPU {_gpu_list(scope.gpus)} evicted from node {node} are gone " \
              f"(GPU scope; {others} other pod(s) left running)"
    else:
        msg = f"no pod on GPU {_gpu_list(scope.gpus)} of node {node}: nothing to evict " \
              f"(GPU scope; {others} other pod(s) left running)"
    return _result(Phase.DRAINED, "True", "Drained", f"{msg}; {ACTOR}", action="drained")


def draining_outcome(event: HealthEvent, left: list[Mapping[str, Any]], blocked: Mapping[PodKey, str],
                     cfg: DrainConfig, *, scope: Scope = NODE_SCOPE) -> Outcome:
    """Progress: how many pods are left, which are terminating, which a disruption budget blocks."""
    terminating = [p for p in left if _meta(p).get("deletionTimestamp")]
    msg = f"draining {_where(event, scope)}: {len(left)} pod(s) left"
    if terminating:
        msg += f", {len(terminating)} terminating"
    if blocked:
        msg += "; blocked by a disruption budget: " + "; ".join(
            f"{ns}/{name}: {why}" for (ns, name), why in sorted(blocked.items()))
    else:
        msg += f" ({_pod_list(left)})"
    return _result(Phase.DRAINING, "False", "Draining", msg + f"{_fallback_note(scope)}; {ACTOR}",
                   requeue_after=cfg.drain_pdb_retry if blocked else cfg.drain_poll)


def timeout_outcome(event: HealthEvent, left: list[Mapping[str, Any]], cfg: DrainConfig, *,
                    scope: Scope = NODE_SCOPE) -> Outcome:
    return _result(Phase.DRAINING, "False", "DrainTimeout",
                   f"drain of {_where(event, scope)} exceeded {cfg.drain_timeout:g}s with {len(left)} pod(s) "
                   f"left ({_pod_list(left)}); --drain-force-delete is off, so waiting{_fallback_note(scope)}; "
                   f"{ACTOR}", requeue_after=cfg.drain_pdb_retry, warning=True)


def dry_run_outcome(event: HealthEvent, count: int, *, scope: Scope = NODE_SCOPE) -> Outcome:
    """Dry-run: the phase stays, nothing is evicted, the condition says what would happen."""
    what = f"on GPU {_gpu_list(scope.gpus)} " if scope.gpu else ""
    return _result(event.status.phase, "False", "DryRunDraining",
                   f"dry-run: would evict {count} pod(s) {what}from node {event.spec.node_name}"
                   f"{_fallback_note(scope)}; {ACTOR}")


#: Whether only the message moved (progress), so actions are counted and Events emitted once.
same_decision = functools.partial(same_decision_of, condition_type=CONDITION)
