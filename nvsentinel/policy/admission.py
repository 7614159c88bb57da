"""Admission decisions, pure: what a node's credential and each stage's credential may write (docs/security.md).

The threat is root on one GPU node. Its credentials (the publisher's, the remediation agent's) may only create
HealthEvents for that node, set no field an operator owns, date nothing in the future and clear a fault only by
naming the GPU. The stages' credentials are narrowed to the fields, the ConfigMap and the Job shape they write, so
a stolen controller token cannot be turned into an arbitrary Node edit or an arbitrary privileged pod.

The same rules are the chart's ValidatingAdmissionPolicy (CEL, Kubernetes >= 1.30) and the admission webhook
(`nvsentinel admission-webhook`, any version); one case table checks both. `review()` takes the AdmissionReview
`request` as a plain mapping, the caller's node (resolved from the bound token by the webhook) and the time.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping
from typing import Any

from nvsentinel.policy.healthevent import LABEL_NODE, LABEL_PREFIX, PLURAL, parse_time
from nvsentinel.policy.naming import label_value

__all__ = ["AdmissionRules", "Verdict", "review", "NODE_NAME_CLAIM", "POD_NAME_CLAIM", "POD_UID_CLAIM",
           "service_account_of", "REBOOT_JOB_PREFIX"]

#: userInfo.extra keys of a bound service-account token: the node (Kubernetes >= 1.30) and the pod it is bound to.
NODE_NAME_CLAIM = "authentication.kubernetes.io/node-name"
POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
POD_UID_CLAIM = "authentication.kubernetes.io/pod-uid"
#: Every reboot Job's name starts so (remediation/logic.py job_name).
REBOOT_JOB_PREFIX = "nvsentinel-reboot-"
_JOB_NODE_ANNOTATION = f"{LABEL_PREFIX}node"
_OVERRIDE_FLAGS = (("quarantine", "force"), ("quarantine", "skip"), ("drain", "force"), ("drain", "skip"))


@dataclasses.dataclass(frozen=True)
class AdmissionRules:
    """Who is held to what. Usernames are `system:serviceaccount:<ns>:<name>`; an empty set checks nobody."""

    node_identities: frozenset[str] = frozenset()
    """the publisher's and the remediation agent's: HealthEvents for their own node only"""
    node_writers: frozenset[str] = frozenset()
    """the quarantine and resolution stages': Node updates touch only the cordon, our taint, our keys"""
    breaker_writer: str = ""
    """the quarantine stage's: writes only `breaker_configmap`"""
    breaker_configmap: str = ""
    job_creator: str = ""
    """the remediation stage's: creates only reboot Jobs of our template"""
    reboot_image: str = ""
    reboot_command: tuple[str, ...] = ()
    taint_key: str = "nvsentinel.nvidia.com/quarantine"
    condition_writer: str = ""
    """the conditions stage's: its nodes/status updates change only conditions of `condition_types`"""
    condition_types: frozenset[str] = frozenset({"NVSentinelGPUHealthy"})
    max_clock_skew: _dt.timedelta = _dt.timedelta(seconds=60)
    require_gpu_on_healthy: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str = ""
    """N1..N7 (node identities), S1 (Node fields), S2 (ConfigMap), S3 (Job template), S4 (Node conditions); empty
    when allowed"""
    message: str = ""

    @classmethod
    def allow(cls) -> Verdict:
        return cls(True)


def _deny(rule: str, message: str) -> Verdict:
    return Verdict(False, rule, message)


def service_account_of(username: str) -> tuple[str, str] | None:
    """(namespace, name) of a service-account username, else None."""
    parts = username.split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not parts[2] or not parts[3]:
        return None
    return parts[2], parts[3]


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def _short(value: Any, limit: int = 80) -> str:
    """An attacker's value, bounded and printable, for a denial message."""
    text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return text + ("…" if len(str(value)) > limit else "")


def review(request: Mapping[str, Any], node: str | None, now: _dt.datetime, rules: AdmissionRules) -> Verdict:
    """The decision for one AdmissionReview request. `node`: the caller's node, None if it has none."""
    user = str((request.get("userInfo") or {}).get("username") or "")
    resource = (request.get("resource") or {}).get("resource")
    sub = request.get("subResource") or ""
    op = str(request.get("operation") or "")
    obj, old = request.get("object"), request.get("oldObject")
    if resource == PLURAL and user in rules.node_identities:
        return _node_event(op, sub, obj, node, now, rules)
    if resource == "nodes" and sub == "status" and rules.condition_writer and user == rules.condition_writer:
        return _node_conditions(obj, old, rules)
    if sub:
        return Verdict.allow()
    if resource == "nodes" and op == "UPDATE" and user in rules.node_writers:
        return _node_fields(obj, old, rules)
    if resource == "configmaps" and rules.breaker_writer and user == rules.breaker_writer:
        name = _meta(obj or old).get("name") or request.get("name")
        if name != rules.breaker_configmap:
            return _deny("S2", f"the quarantine stage writes only ConfigMap {rules.breaker_configmap}, not "
                               f"{_short(name)}")
        return Verdict.allow()
    if resource == "jobs" and op == "CREATE" and rules.job_creator and user == rules.job_creator:
        return _reboot_job(obj, rules)
    return Verdict.allow()


# ---- node identities: HealthEvents for their own node only ------------------------------------------------------

def _node_event(op: str, sub: str, obj: Mapping[str, Any] | None, node: str | None, now: _dt.datetime,
                rules: AdmissionRules) -> Verdict:
    if op != "CREATE" or sub:
        return _deny("N1", f"a node identity only creates HealthEvents ({op.lower()} "
                           f"{'of ' + sub + ' ' if sub else ''}refused)")
    if not node:
        return _deny("N2", "a node identity without a node: use the bound projected service-account token of a pod "
                           "on that node")
    spec = (obj or {}).get("spec") or {}
    meta = _meta(obj)
    if spec.get("nodeName") != node:
        return _deny("N2", f"node {node} may create HealthEvents only for itself, not for "
                           f"{_short(spec.get('nodeName'))}")
    labels = meta.get("labels") or {}
    if LABEL_NODE in labels and labels[LABEL_NODE] != label_value(node):
        return _deny("N3", f"label {LABEL_NODE} must name node {node}, not {_short(labels[LABEL_NODE])}")
    overrides = spec.get("overrides") or {}
    for stage, flag in _OVERRIDE_FLAGS:
        if ((overrides.get(stage) or {}) or {}).get(flag):
            return _deny("N4", f"spec.overrides.{stage}.{flag} is for operators only")
    for key in meta.get("annotations") or {}:
        if str(key).startswith(LABEL_PREFIX):
            return _deny("N5", f"annotation {_short(key)} is for operators only")
    verdict = _detected_at(spec, meta, now, rules)
    if verdict is not None:
        return verdict
    if rules.require_gpu_on_healthy and spec.get("isHealthy") is True:
        gpus = [e for e in spec.get("entitiesImpacted") or [] if isinstance(e, Mapping)
                and e.get("type") == "GPU" and e.get("value")]
        if not gpus:
            return _deny("N7", "a healthy HealthEvent from a node must name the GPU it clears (entitiesImpacted)")
    return Verdict.allow()


def _detected_at(spec: Mapping[str, Any], meta: Mapping[str, Any], now: _dt.datetime,
                 rules: AdmissionRules) -> Verdict | None:
    try:
        detected = parse_time(str(spec.get("detectedAt")))
    except (TypeError, ValueError):
        return _deny("N6", f"spec.detectedAt {_short(spec.get('detectedAt'))} is not an RFC 3339 time")
    try:
        created = parse_time(str(meta["creationTimestamp"])) if meta.get("creationTimestamp") else now
    except (TypeError, ValueError):
        created = now
    if detected > created + rules.max_clock_skew:
        return _deny("N6", f"spec.detectedAt {_short(spec.get('detectedAt'))} is more than "
                           f"{int(rules.max_clock_skew.total_seconds())} s after the object's creation")
    return None


# ---- the stages: their own fields, ConfigMap and Job ---------------------------------------------------------------

def _without(d: Mapping[str, Any] | None, keep: Any) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if not keep(k)}


def _ours(key: Any) -> bool:
    return str(key).startswith(LABEL_PREFIX)


def _node_fields(obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None, rules: AdmissionRules) -> Verdict:
    """Only spec.unschedulable, taints with our key, and nvsentinel.nvidia.com/ labels and annotations change."""
    new_spec, old_spec = dict((obj or {}).get("spec") or {}), dict((old or {}).get("spec") or {})
    for spec in (new_spec, old_spec):
        spec.pop("unschedulable", None)
        spec["taints"] = [t for t in spec.get("taints") or [] if not (isinstance(t, Mapping)
                                                                       and t.get("key") == rules.taint_key)]
    if new_spec != old_spec:
        changed = sorted(k for k in set(new_spec) | set(old_spec) if new_spec.get(k) != old_spec.get(k))
        return _deny("S1", f"a stage changes only spec.unschedulable and its own taint on a Node, not "
                           f"spec.{', spec.'.join(_short(k, 40) for k in changed)}")
    new_meta, old_meta = _meta(obj), _meta(old)
    for field in ("labels", "annotations"):
        if _without(new_meta.get(field), _ours) != _without(old_meta.get(field), _ours):
            return _deny("S1", f"a stage changes only {LABEL_PREFIX} {field} on a Node")
    for field in ("ownerReferences", "finalizers"):
        if new_meta.get(field) != old_meta.get(field):
            return _deny("S1", f"a stage does not change a Node's metadata.{field}")
    if (obj or {}).get("status") != (old or {}).get("status"):
        return _deny("S1", "a stage does not change a Node's status")
    return Verdict.allow()


def _node_conditions(obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None, rules: AdmissionRules) -> Verdict:
    """A nodes/status update changes only the conditions of our own types: every other condition, every other status
    field and the Node's labels, annotations, finalizers and ownerReferences stay as they were."""
    types = ", ".join(sorted(rules.condition_types))
    new_status, old_status = dict((obj or {}).get("status") or {}), dict((old or {}).get("status") or {})

    def others(status: Mapping[str, Any]) -> list[Any]:
        return [c for c in status.get("conditions") or [] if not (isinstance(c, Mapping)
                                                                   and c.get("type") in rules.condition_types)]

    if others(new_status) != others(old_status):
        return _deny("S4", f"the conditions stage changes only Node conditions of its own types ({types}), no other "
                           "writer's")
    new_status.pop("conditions", None)
    old_status.pop("conditions", None)
    if new_status != old_status:
        changed = sorted(k for k in set(new_status) | set(old_status) if new_status.get(k) != old_status.get(k))
        return _deny("S4", f"the conditions stage changes only status.conditions of a Node, not "
                           f"status.{', status.'.join(_short(k, 40) for k in changed)}")
    new_meta, old_meta = _meta(obj), _meta(old)
    for field in ("labels", "annotations", "ownerReferences", "finalizers"):
        if new_meta.get(field) != old_meta.get(field):
            return _deny("S4", f"the conditions stage does not change a Node's metadata.{field}")
    if (obj or {}).get("spec") != (old or {}).get("spec"):
        return _deny("S4", "the conditions stage does not change a Node's spec")
    return Verdict.allow()


def _reboot_job(obj: Mapping[str, Any] | None, rules: AdmissionRules) -> Verdict:
    """The shape of remediation/logic.py job_body: one privileged `reboot` container of the configured image and
    command, in the host's PID namespace only, no volumes, no token, pinned to the node its annotation names."""
    meta = _meta(obj)
    name = str(meta.get("name") or "")
    if not name.startswith(REBOOT_JOB_PREFIX):
        return _deny("S3", f"the remediation stage creates only {REBOOT_JOB_PREFIX}* Jobs, not {_short(name)}")
    pod = (((obj or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = pod.get("containers") or []
    problems = []
    if len(containers) != 1 or pod.get("initContainers") or pod.get("ephemeralContainers"):
        problems.append("exactly one container")
    else:
        c = containers[0]
        if c.get("name") != "reboot":
            problems.append("the container named reboot")
        if c.get("image") != rules.reboot_image:
            problems.append(f"image {rules.reboot_image}")
        if tuple(c.get("command") or ()) != rules.reboot_command or c.get("args"):
            problems.append("the configured reboot command and no args")
        if c.get("volumeMounts") or c.get("volumeDevices") or c.get("envFrom") or c.get("env"):
            problems.append("no mounts and no environment (a Secret could be read through it)")
    if pod.get("volumes"):
        problems.append("no volumes")
    if pod.get("hostPID") is not True or pod.get("hostNetwork") or pod.get("hostIPC"):
        problems.append("hostPID only (no hostNetwork, no hostIPC)")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken false")
    if pod.get("serviceAccountName") not in (None, "", "default"):
        problems.append("the default service account")
    node = (meta.get("annotations") or {}).get(_JOB_NODE_ANNOTATION)
    if not node or pod.get("nodeName") != node:
        problems.append(f"nodeName equal to its {_JOB_NODE_ANNOTATION} annotation")
    if problems:
        return _deny("S3", "not a reboot Job of nvsentinel's template: needs " + "; ".join(problems))
    return Verdict.allow()
