"""Drain decisions, pure: which pods must go, whether they are gone, and what the status should say.

No I/O and no clock reads: the controller passes the event, the node's pods and `now` in. A drain is
judged against the pods seen when it started (name → UID), so a pod recreated under the same name by
its controller counts as gone: it is a new pod that its owner chose to run (the cordon keeps others off), and
waiting for it would never end.

Phases this stage owns (SPEC §7): Quarantined → Draining → Drained; Quarantined/Draining → Drained
with `DrainSkipped` (`spec.overrides.drain.skip`). Other phases are not touched.
"""
from __future__ import annotations

import datetime as _dt
import enum
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.policy.handoff import mode_of
from nvsentinel.policy.healthevent import ConditionType, HealthEvent, Phase, RemediationMode
from nvsentinel.policy.outcome import Outcome, apply_outcome
from nvsentinel.policy.outcome import same_decision as same_decision_of

__all__ = [
    "ACTOR", "MIRROR_ANNOTATION", "PodKey", "Triage", "triage", "slim_pod", "evictable", "snapshot", "pending",
    "pending_seen", "to_evict", "eviction_body", "draining_since", "timed_out", "Outcome", "skip_outcome",
    "drained_outcome", "draining_outcome", "timeout_outcome", "dry_run_outcome", "apply_outcome",
    "same_decision",
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


def snapshot(pods: Iterable[Mapping[str, Any]], skip_namespaces: Iterable[str]) -> dict[PodKey, str]:
    """The pods the drain must see gone: key → UID."""
    skip = frozenset(skip_namespaces)
    return {key_of(p): str(_meta(p).get("uid", "")) for p in pods if evictable(p, skip)}


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


def skip_outcome(event: HealthEvent) -> Outcome:
    return _result(Phase.DRAINED, "True", "DrainSkipped",
                   f"spec.overrides.drain.skip is set: node {event.spec.node_name} not drained; {ACTOR}",
                   action="skip")


def drained_outcome(event: HealthEvent, count: int) -> Outcome:
    return _result(Phase.DRAINED, "True", "Drained",
                   f"all {count} pod(s) evicted from node {event.spec.node_name} are gone; {ACTOR}",
                   action="drained")


def draining_outcome(event: HealthEvent, left: list[Mapping[str, Any]], blocked: Mapping[PodKey, str],
                     cfg: DrainConfig) -> Outcome:
    """Progress: how many pods are left, which are terminating, which a disruption budget blocks."""
    terminating = [p for p in left if _meta(p).get("deletionTimestamp")]
    msg = f"draining node {event.spec.node_name}: {len(left)} pod(s) left"
    if terminating:
        msg += f", {len(terminating)} terminating"
    if blocked:
        msg += "; blocked by a disruption budget: " + "; ".join(
            f"{ns}/{name}: {why}" for (ns, name), why in sorted(blocked.items()))
    else:
        msg += f" ({_pod_list(left)})"
    return _result(Phase.DRAINING, "False", "Draining", msg + f"; {ACTOR}",
                   requeue_after=cfg.drain_pdb_retry if blocked else cfg.drain_poll)


def timeout_outcome(event: HealthEvent, left: list[Mapping[str, Any]], cfg: DrainConfig) -> Outcome:
    return _result(Phase.DRAINING, "False", "DrainTimeout",
                   f"drain of node {event.spec.node_name} exceeded {cfg.drain_timeout:g}s with {len(left)} pod(s) "
                   f"left ({_pod_list(left)}); --drain-force-delete is off, so waiting; {ACTOR}",
                   requeue_after=cfg.drain_pdb_retry, warning=True)


def dry_run_outcome(event: HealthEvent, count: int) -> Outcome:
    """Dry-run: the phase stays, nothing is evicted, the condition says what would happen."""
    return _result(event.status.phase, "False", "DryRunDraining",
                   f"dry-run: would evict {count} pod(s) from node {event.spec.node_name}; {ACTOR}")


#: Whether only the message moved (progress), so actions are counted and Events emitted once.
same_decision = functools.partial(same_decision_of, condition_type=CONDITION)
