"""The quarantine stage's part of hand-off modes and GPU-scoped drains, pure: who owns a node, and cordon or not."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from nvsentinel.cluster.ownership import OWNER_LABEL, RECOMMENDATION_ANNOTATION, Ownership, our_cordons, ownership_of
from nvsentinel.cluster.quarantine import logic
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.resolution import logic as resolution
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.policy.healthevent import (
    ConditionType, Entity, HealthEvent, HealthEventSpec, Phase, PodMapping, PodRef, RemediationMode,
)
from nvsentinel.xid import Action

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
GPU = "GPU-aaaa"
TAINT = {"key": "nvsentinel.nvidia.com/quarantine", "value": "true", "effect": "NoSchedule"}
SOFT = {"key": "nvsentinel.nvidia.com/quarantine", "value": "gpu", "effect": "PreferNoSchedule"}
GPU_SCOPE = QuarantineConfig(drain_scope="gpu")


def node(*, labels: dict | None = None, capacity: int = 8, allocatable: int = 7, unschedulable: bool = False,
         annotations: dict | None = None, taints: list | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "uid-1", "resourceVersion": "5", "labels": dict(labels or {}),
                         "annotations": dict(annotations or {})},
            "spec": {"unschedulable": unschedulable, "taints": list(taints or [])},
            "status": {"capacity": {"nvidia.com/gpu": str(capacity)},
                       "allocatable": {"nvidia.com/gpu": str(allocatable)}}}


def event(name: str = "ev-1", *, action: Action = Action.COMPONENT_RESET, mapping: PodMapping | None = None,
          gpus: tuple[str, ...] = (GPU,)) -> HealthEvent:
    mapping = mapping if mapping is not None else PodMapping("nvidia.com/gpu", (PodRef("ml", "train-0", (GPU,)),))
    spec = HealthEventSpec("nvml-provider", "n1", "GPU", "xid-error-check", True, False, T0, recommended_action=action,
                           error_codes=("48",), entities_impacted=tuple(Entity("GPU", g) for g in gpus),
                           pod_mapping=mapping)
    return HealthEvent(name=name, spec=spec, generation=1)


def applied(n: dict, patch: dict) -> dict:
    """The node after a merge patch of the shape quarantine sends."""
    out = json.loads(json.dumps(n))
    for field in ("annotations", "labels"):
        out["metadata"][field].update((patch["metadata"].get(field) or {}))
    out["spec"].update(patch.get("spec") or {})
    return out


# ---- who owns the node ------------------------------------------------------------------------------------------

def test_the_first_matching_rule_decides_the_mode_and_the_record_keeps_it():
    """Verify the mode comes from the first matching rule, else the default, and a quarantined node keeps its own."""
    rules = json.dumps([{"nodeSelector": "pool=ext", "mode": "external"},
                        {"nodeSelector": "pool in (ext, gated)", "mode": "approve"}])
    cfg = QuarantineConfig(remediation_mode="nvsentinel", remediation_mode_rules=rules)
    assert logic.decide_mode(node(labels={"pool": "ext"}), cfg) is RemediationMode.EXTERNAL
    assert logic.decide_mode(node(labels={"pool": "gated"}), cfg) is RemediationMode.APPROVE
    assert logic.decide_mode(node(labels={"pool": "other"}), cfg) is RemediationMode.NVSENTINEL
    held = Ownership(("ev-0",), T0, True, mode="approve")
    relabelled = node(labels={"pool": "ext"}, annotations={logic.ANNOTATION: held.to_json()})
    assert logic.decide_mode(relabelled, cfg) is RemediationMode.APPROVE


@pytest.mark.parametrize("bad", [
    {"remediation_mode": "karpenter"},
    {"remediation_mode_rules": "not json"},
    {"remediation_mode_rules": '[{"nodeSelector": "a=b"}]'},
    {"remediation_mode_rules": '[{"nodeSelector": "a=(", "mode": "external"}]'},
    {"remediation_mode_rules": '[{"nodeSelector": "a=b", "mode": "manual"}]'},
])
def test_bad_mode_settings_are_refused_at_start(bad):
    """Verify a wrong mode or rule fails validation with a message naming the flag."""
    with pytest.raises(ValueError, match="remediation-mode"):
        QuarantineConfig(**bad).validate()


def test_a_plan_marks_the_owner_and_what_is_recommended():
    """Verify the Node gets the owner label, the mode in its record and one recommendation entry per event."""
    n = node(allocatable=8)
    first = logic.plan_node(n, "ev-1", now=T0, cfg=QuarantineConfig(), mode=RemediationMode.EXTERNAL,
                            recommend=logic.recommendation_entry(event("ev-1")))
    assert first.patch["metadata"]["labels"] == {OWNER_LABEL: "external"}
    assert first.ownership.mode == "external" and ownership_of(applied(n, first.patch)) == first.ownership
    rec = json.loads(first.patch["metadata"]["annotations"][RECOMMENDATION_ANNOTATION])
    assert rec == {"mode": "external", "events": [{"healthEvent": "ev-1", "action": "COMPONENT_RESET",
                                                    "errorCodes": ["48"], "gpus": [GPU]}]}
    # a second event of the node keeps the node's mode whatever the caller decided, and joins the recommendation
    after = applied(n, first.patch)
    second = logic.plan_node(after, "ev-2", now=T0, cfg=QuarantineConfig(), mode=RemediationMode.NVSENTINEL,
                             recommend=logic.recommendation_entry(event("ev-2", action=Action.RESTART_BM)))
    assert second.ownership.mode == "external" and "labels" not in second.patch["metadata"]
    rec = json.loads(second.patch["metadata"]["annotations"][RECOMMENDATION_ANNOTATION])
    assert [e["healthEvent"] for e in rec["events"]] == ["ev-1", "ev-2"]
    # a rerun changes nothing
    again = logic.plan_node(applied(after, second.patch), "ev-2", now=T0, cfg=QuarantineConfig(),
                            recommend=logic.recommendation_entry(event("ev-2", action=Action.RESTART_BM)))
    assert again.patch is None


def test_the_recommendation_keeps_the_newest_entries_and_replaces_garbage():
    """Verify the annotation is bounded and a malformed one is rewritten, not trusted."""
    n = node(annotations={RECOMMENDATION_ANNOTATION: "{garbage"})
    plan = logic.plan_node(n, "ev-1", now=T0, cfg=QuarantineConfig(), recommend=logic.recommendation_entry(event()))
    assert [e["healthEvent"] for e in json.loads(plan.patch["metadata"]["annotations"][RECOMMENDATION_ANNOTATION])
            ["events"]] == ["ev-1"]
    n = applied(n, plan.patch)
    for i in range(2, logic.MAX_RECOMMENDED + 5):
        name = f"ev-{i}"
        n = applied(n, logic.plan_node(n, name, now=T0, cfg=QuarantineConfig(),
                                       recommend=logic.recommendation_entry(event(name))).patch)
    events = json.loads(n["metadata"]["annotations"][RECOMMENDATION_ANNOTATION])["events"]
    assert len(events) == logic.MAX_RECOMMENDED and events[-1]["healthEvent"] == f"ev-{logic.MAX_RECOMMENDED + 4}"


def test_a_quarantine_records_mode_and_node_uid_and_an_external_one_says_handed_off():
    """Verify the status carries the mode and the Node's UID, and mode external adds Remediated False HandedOff."""
    ev = event()
    plan = logic.plan_node(node(allocatable=8), ev.name, now=T0, cfg=QuarantineConfig())
    outcome = logic.quarantined_outcome(ev, plan, QuarantineConfig())
    status = logic.quarantined_status(ev, outcome, T0, mode=RemediationMode.EXTERNAL, node_uid="uid-1")
    assert (status.phase, status.remediation_mode, status.node_uid) == (Phase.QUARANTINED, "external", "uid-1")
    handed = status.condition(ConditionType.REMEDIATED)
    assert (handed.status, handed.reason) == ("False", logic.HANDED_OFF) and "COMPONENT_RESET" in handed.message
    plain = logic.quarantined_status(ev, outcome, T0, mode=RemediationMode.NVSENTINEL, node_uid="uid-1")
    assert plain.remediation_mode == "nvsentinel" and plain.condition(ConditionType.REMEDIATED) is None
    # the UID of the first quarantine stays (a rerun after the node was replaced must not adopt the new one)
    ev2 = dataclasses.replace(ev, status=plain)
    assert logic.quarantined_status(ev2, outcome, T0, mode=RemediationMode.NVSENTINEL,
                                    node_uid="uid-2").node_uid == "uid-1"
    held = logic.hold_outcome(ev, "open", QuarantineConfig())
    assert logic.quarantined_status(ev, held, T0, mode=RemediationMode.EXTERNAL, node_uid="u").remediation_mode == ""


# ---- GPU scope: tainted, not cordoned, where that is safe ----------------------------------------------------

@pytest.mark.parametrize(("case", "cfg", "n", "ev", "mode", "want"), [
    ("gpu scope, a GPU withheld", GPU_SCOPE, node(), event(), RemediationMode.NVSENTINEL, True),
    ("node scope", QuarantineConfig(), node(), event(), RemediationMode.NVSENTINEL, False),
    ("every GPU allocatable", GPU_SCOPE, node(allocatable=8), event(), RemediationMode.NVSENTINEL, False),
    ("handed off", GPU_SCOPE, node(), event(), RemediationMode.EXTERNAL, False),
    ("already cordoned", GPU_SCOPE, node(unschedulable=True), event(), RemediationMode.NVSENTINEL, False),
    ("a reboot", GPU_SCOPE, node(), event(action=Action.RESTART_BM), RemediationMode.NVSENTINEL, False),
    ("no mapping read", GPU_SCOPE, node(), event(mapping=PodMapping(error="socket missing")),
     RemediationMode.NVSENTINEL, False),
    ("no GPU", GPU_SCOPE, node(), event(gpus=()), RemediationMode.NVSENTINEL, False),
])
def test_gpu_scope_leaves_the_node_schedulable_only_where_safe(case, cfg, n, ev, mode, want):
    """Verify the node stays schedulable only for a GPU-scoped fault while the kubelet withholds a GPU."""
    assert logic.wants_gpu_scope(ev, n, cfg, mode) is want, case


def test_a_gpu_scoped_quarantine_taints_softly_is_counted_and_becomes_a_cordon_when_needed():
    """Verify no cordon, our taint PreferNoSchedule, breaker-counted; a whole-node fault later cordons the node."""
    n = node()
    plan = logic.plan_node(n, "ev-1", now=T0, cfg=GPU_SCOPE, gpu_scoped=True)
    assert (plan.reason, plan.action, plan.new_cordon) == ("GpuScoped", "taint-gpu-scope", True)
    assert "unschedulable" not in plan.patch["spec"] and plan.patch["spec"]["taints"] == [SOFT]
    assert (plan.ownership.scope, plan.ownership.cordoned_by_us, plan.ownership.counted) == ("gpu", False, True)
    n = applied(n, plan.patch)
    assert our_cordons([n]) == {"n1": T0}
    assert logic.plan_node(n, "ev-1", now=T0, cfg=GPU_SCOPE, gpu_scoped=True).patch is None
    joined = logic.plan_node(n, "ev-2", now=T0, cfg=GPU_SCOPE, gpu_scoped=True)
    assert joined.reason == "AlreadyQuarantined" and not joined.new_cordon and "spec" not in joined.patch
    n = applied(n, joined.patch)
    whole = logic.plan_node(n, "ev-3", now=T0, cfg=GPU_SCOPE, gpu_scoped=False)
    assert (whole.reason, whole.new_cordon, whole.ownership.scope) == ("Cordoned", False, "node")
    assert whole.patch["spec"] == {"unschedulable": True, "taints": [TAINT]}
    assert whole.ownership.events == ("ev-1", "ev-2", "ev-3") and whole.ownership.since == T0
    msg = logic.quarantined_outcome(event(), plan, GPU_SCOPE).message
    assert "left schedulable" in msg and GPU in msg


def test_release_of_a_gpu_scoped_node_removes_our_marks_and_uncordons_nothing():
    """Verify resolution lifts the soft taint, the record, the owner label and the recommendation, and no cordon."""
    n = node()
    n = applied(n, logic.plan_node(n, "ev-1", now=T0, cfg=GPU_SCOPE, gpu_scoped=True,
                                   recommend=logic.recommendation_entry(event())).patch)
    release = resolution.plan_release(n, 0, ResolutionConfig())
    assert release.reason == "TaintRemoved" and "unschedulable" not in release.patch["spec"]
    assert release.patch["spec"]["taints"] == []
    assert release.patch["metadata"]["labels"] == {OWNER_LABEL: None}
    assert release.patch["metadata"]["annotations"] == {logic.ANNOTATION: None, RECOMMENDATION_ANNOTATION: None}


def test_a_record_with_an_unknown_mode_or_scope_is_not_ours():
    """Verify a hand-edited record with a mode or scope nvsentinel never writes is treated as malformed."""
    for extra in ({"mode": "karpenter"}, {"scope": "rack"}):
        text = json.dumps({"events": ["e"], "since": "2026-01-02T03:04:05Z", "cordonedByUs": True, **extra})
        with pytest.raises(ValueError):
            Ownership.from_json(text)
    own = Ownership(("e",), T0, False, mode="approve", scope="gpu")
    assert Ownership.from_json(own.to_json()) == own
    assert json.loads(Ownership(("e",), T0, True).to_json()) == {"events": ["e"], "since": "2026-01-02T03:04:05Z",
                                                                 "cordonedByUs": True}
