"""Quarantine decisions (pure): the rule table, the Node patch builder, the status each rule writes."""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json

import pytest

from nvsentinel.cluster.ownership import OWNER_LABEL
from nvsentinel.cluster.quarantine import logic
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.policy.breaker import BreakerPolicy, BreakerState
from nvsentinel.policy.healthevent import (
    Condition, ConditionType, HealthEvent, HealthEventSpec, HealthEventStatus, OverrideFlags, Overrides, Phase,
)

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
CFG = QuarantineConfig()
OUR_TAINT = {"key": "nvsentinel.nvidia.com/quarantine", "value": "true", "effect": "NoSchedule"}


def event(name: str = "ev-1", *, fatal: bool = True, healthy: bool = False, phase: Phase = Phase.NEW,
          skip: bool = False, force: bool = False, node: str = "n1", generation: int = 3,
          conditions: tuple[Condition, ...] = ()) -> HealthEvent:
    spec = HealthEventSpec(source="test", node_name=node, component_class="GPU", check_name="xid-error-check",
                           is_fatal=fatal, is_healthy=healthy, detected_at=T0,
                           overrides=Overrides(quarantine=OverrideFlags(force=force, skip=skip)))
    return HealthEvent(name=name, spec=spec, status=HealthEventStatus(phase=phase, conditions=conditions),
                       generation=generation, resource_version="77")


def node(name: str = "n1", *, unschedulable: bool = False, taints: list | None = None,
         annotation: str | None = None, gpus: int | None = 8, labels: dict | None = None) -> dict:
    meta: dict = {"name": name, "resourceVersion": "123", "labels": dict(labels or {})}
    if annotation is not None:  # a node we quarantined carries the owner label too
        meta["annotations"] = {logic.ANNOTATION: annotation, "other": "x"}
        meta["labels"].setdefault(OWNER_LABEL, "nvsentinel")
    status: dict = {"capacity": {"cpu": "8"}}
    if gpus is not None:
        status["capacity"][logic.GPU_RESOURCE] = str(gpus)
    spec: dict = {}
    if unschedulable:
        spec["unschedulable"] = True
    if taints is not None:
        spec["taints"] = taints
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec, "status": status}


# ---- triage ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "expected"), [
    ({}, logic.Triage.QUARANTINE),
    ({"fatal": False}, logic.Triage.RESOLVE),
    ({"healthy": True, "fatal": False}, logic.Triage.RESOLVE),
    ({"healthy": True, "fatal": True}, logic.Triage.RESOLVE),
    ({"skip": True}, logic.Triage.CANCEL),
    ({"skip": True, "fatal": False}, logic.Triage.CANCEL),
    ({"skip": True, "phase": Phase.QUARANTINED}, logic.Triage.CANCEL),
    ({"phase": Phase.QUARANTINED}, logic.Triage.IGNORE),
    ({"phase": Phase.QUARANTINED, "fatal": False}, logic.Triage.IGNORE),
    ({"force": True}, logic.Triage.QUARANTINE),
] + [({"phase": p, "skip": s}, logic.Triage.IGNORE)
     for p in (Phase.DRAINING, Phase.DRAINED, Phase.REMEDIATING, Phase.REMEDIATED, Phase.RESOLVED, Phase.CANCELLED)
     for s in (False, True)])
def test_triage_table(kw, expected):
    """Verify which rule applies for each phase, fatality, health and override combination."""
    assert logic.triage(event(**kw)) is expected


# ---- ownership and node facts ------------------------------------------------------------------------------

def test_ownership_json_round_trip_and_shape():
    """Verify the annotation is JSON {events, since, cordonedByUs} and parses back to the same record."""
    own = logic.Ownership(events=("a", "b"), since=T0, cordoned_by_us=True)
    text = own.to_json()
    assert json.loads(text) == {"events": ["a", "b"], "since": "2026-01-02T03:04:05Z", "cordonedByUs": True}
    assert logic.Ownership.from_json(text) == own


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"events": "a", "since": "2026-01-01T00:00:00Z", '
                                  '"cordonedByUs": true}', '{"events": [], "since": "yesterday", "cordonedByUs": true}',
                                  '{"events": [], "since": "2026-01-01T00:00:00Z", "cordonedByUs": "yes"}',
                                  '{"events": []}'])
def test_malformed_ownership_raises_value_error(text):
    """Verify an unreadable annotation raises ValueError rather than a random exception."""
    with pytest.raises(ValueError):
        logic.Ownership.from_json(text)


@pytest.mark.parametrize(("n", "expected"), [
    (node(gpus=8), True),
    (node(gpus=0), False),
    (node(gpus=None), False),
    (node(gpus=None, labels={"nvidia.com/gpu.present": "true"}), True),
    (node(gpus=0, labels={"nvidia.com/gpu.present": "false"}), False),
    ({"metadata": {"name": "x"}, "status": {"capacity": {"nvidia.com/gpu": "2.5"}}}, True),
    ({"metadata": {"name": "x"}, "status": {"capacity": {"nvidia.com/gpu": "lots"}}}, False),
    ({"metadata": {"name": "x"}}, False),
])
def test_is_gpu_node(n, expected):
    """Verify GPU nodes are those with nvidia.com/gpu capacity > 0 or the gpu.present=true label."""
    assert logic.is_gpu_node(n) is expected


def test_our_cordons_counts_only_owned_cordons():
    """Verify only nodes whose annotation says cordonedByUs are reported, with their since time."""
    ours = logic.Ownership(("e",), T0, True).to_json()
    theirs = logic.Ownership(("f",), T0, False).to_json()
    nodes = [node("a", annotation=ours), node("b", annotation=theirs), node("c"), node("d", annotation="junk")]
    assert logic.our_cordons(nodes) == {"a": T0}
    assert logic.gpu_node_count(nodes) == 4


# ---- the node patch --------------------------------------------------------------------------------------

def test_fresh_node_is_cordoned_tainted_and_annotated_with_rv():
    """Verify a schedulable node gets unschedulable, existing taints plus ours, the annotation and its RV."""
    other = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
    n = node(taints=[other])
    before = copy.deepcopy(n)
    plan = logic.plan_node(n, "ev-1", now=T0, cfg=CFG)
    assert n == before  # informer objects are shared: never mutated
    assert plan.new_cordon and plan.reason == "Cordoned" and plan.action == "cordon"
    assert plan.patch == {
        "metadata": {"annotations": {logic.ANNOTATION: plan.ownership.to_json()},
                     "labels": {OWNER_LABEL: "nvsentinel"}, "resourceVersion": "123"},
        "spec": {"unschedulable": True, "taints": [other, OUR_TAINT]},
    }
    assert plan.ownership == logic.Ownership(("ev-1",), T0, True)


def test_our_taint_is_not_duplicated():
    """Verify a node that already carries our taint (any value) gets no second copy."""
    n = node(taints=[{"key": "nvsentinel.nvidia.com/quarantine", "value": "other", "effect": "NoSchedule"}])
    plan = logic.plan_node(n, "ev-1", now=T0, cfg=CFG)
    assert "taints" not in plan.patch["spec"]
    assert plan.patch["spec"] == {"unschedulable": True}


def test_same_key_other_effect_is_a_different_taint():
    """Verify a taint with our key but another effect does not count as ours (key+effect identify a taint)."""
    theirs = {"key": "nvsentinel.nvidia.com/quarantine", "effect": "PreferNoSchedule"}
    plan = logic.plan_node(node(taints=[theirs]), "ev-1", now=T0, cfg=CFG)
    assert plan.patch["spec"]["taints"] == [theirs, OUR_TAINT]


def test_custom_taint_from_config():
    """Verify the taint key, value and effect come from the config."""
    cfg = QuarantineConfig(taint_key="example.com/bad-gpu", taint_value="xid", taint_effect="NoExecute")
    plan = logic.plan_node(node(), "ev-1", now=T0, cfg=cfg)
    assert plan.patch["spec"]["taints"] == [{"key": "example.com/bad-gpu", "value": "xid", "effect": "NoExecute"}]


def test_node_cordoned_by_someone_else_is_recorded_not_owned():
    """Verify an unschedulable node without our annotation gets our taint and cordonedByUs false, no new cordon."""
    plan = logic.plan_node(node(unschedulable=True), "ev-1", now=T0, cfg=CFG)
    assert not plan.new_cordon
    assert plan.reason == "AlreadyCordoned" and plan.action == "already-cordoned"
    assert plan.ownership.cordoned_by_us is False
    assert "unschedulable" not in plan.patch["spec"]
    assert plan.patch["spec"]["taints"] == [OUR_TAINT]
    assert json.loads(plan.patch["metadata"]["annotations"][logic.ANNOTATION])["cordonedByUs"] is False


def test_second_event_joins_an_existing_quarantine_without_a_new_cordon():
    """Verify another event on a node we quarantined only adds its name, keeping since and ownership."""
    earlier = T0 - dt.timedelta(minutes=3)
    own = logic.Ownership(("ev-1",), earlier, True)
    n = node(unschedulable=True, taints=[OUR_TAINT], annotation=own.to_json())
    plan = logic.plan_node(n, "ev-2", now=T0, cfg=CFG)
    assert not plan.new_cordon
    assert plan.reason == "AlreadyQuarantined" and plan.action == "add-event"
    assert plan.ownership == logic.Ownership(("ev-1", "ev-2"), earlier, True)
    assert plan.patch == {"metadata": {"annotations": {logic.ANNOTATION: plan.ownership.to_json()},
                                       "resourceVersion": "123"}}


def test_rerun_after_the_node_patch_changes_nothing_and_keeps_the_reason():
    """Verify planning again on the patched node needs no patch and gives the first run's reason (crash safety)."""
    n = node(taints=[{"key": "a", "effect": "NoSchedule"}])
    first = logic.plan_node(n, "ev-1", now=T0, cfg=CFG)
    patched = copy.deepcopy(n)
    patched["spec"].update(first.patch["spec"])
    patched["metadata"].setdefault("annotations", {}).update(first.patch["metadata"]["annotations"])
    patched["metadata"]["labels"].update(first.patch["metadata"]["labels"])
    again = logic.plan_node(patched, "ev-1", now=T0 + dt.timedelta(minutes=5), cfg=CFG)
    assert again.patch is None
    assert (again.reason, again.action, again.new_cordon) == ("Cordoned", "cordon", False)
    assert again.ownership == first.ownership  # since is the first run's, not the rerun's

    second = logic.plan_node(patched, "ev-2", now=T0, cfg=CFG)
    patched["metadata"]["annotations"].update(second.patch["metadata"]["annotations"])
    assert logic.plan_node(patched, "ev-2", now=T0, cfg=CFG).patch is None
    assert logic.plan_node(patched, "ev-2", now=T0, cfg=CFG).reason == "AlreadyQuarantined"


@pytest.mark.parametrize("was_ours", [True, False])
def test_a_node_someone_uncordoned_is_cordoned_again_as_ours_and_counted(was_ours):
    """Verify an annotated node found schedulable (an operator uncordoned it with a fault open; or lifted a cordon
    that was someone else's) is cordoned again for a new event, and that cordon is ours from now: owned, counted
    by the breaker (new_cordon, since now), the new event first. Before, a record saying "not ours" survived the
    re-cordon and resolution never lifted it."""
    earlier = T0 - dt.timedelta(hours=2)
    own = logic.Ownership(("ev-1",), earlier, was_ours)
    plan = logic.plan_node(node(taints=[OUR_TAINT], annotation=own.to_json()), "ev-2", now=T0, cfg=CFG)
    assert plan.patch["spec"] == {"unschedulable": True}
    assert plan.new_cordon and (plan.reason, plan.action) == ("Cordoned", "cordon")
    assert plan.ownership == logic.Ownership(("ev-2", "ev-1"), T0, True)
    assert logic.our_cordons([{"metadata": {"name": "n1", "annotations": {
        logic.ANNOTATION: plan.ownership.to_json()}}}]) == {"n1": T0}
    # a rerun on the patched node: nothing to do, the same reason, no second count
    patched = node(unschedulable=True, taints=[OUR_TAINT], annotation=plan.ownership.to_json())
    again = logic.plan_node(patched, "ev-2", now=T0 + dt.timedelta(minutes=1), cfg=CFG)
    assert again.patch is None and (again.reason, again.new_cordon) == ("Cordoned", False)
    assert again.ownership == plan.ownership


def test_malformed_annotation_is_replaced():
    """Verify a node with garbage in our annotation is treated as unowned and gets a valid record."""
    plan = logic.plan_node(node(annotation="{garbage"), "ev-1", now=T0, cfg=CFG)
    assert plan.new_cordon
    assert logic.Ownership.from_json(plan.patch["metadata"]["annotations"][logic.ANNOTATION]) == plan.ownership


# ---- outcomes and status -------------------------------------------------------------------------------------

def test_resolve_outcomes_name_the_rule():
    """Verify a non-fatal event resolves with NonFatal and a recovery with Healthy, Resolved condition True."""
    nf = logic.resolve_outcome(event(fatal=False))
    assert (nf.phase, nf.condition_type, nf.status, nf.reason, nf.action) == (
        Phase.RESOLVED, ConditionType.RESOLVED, "True", "NonFatal", "resolve-nonfatal")
    assert logic.resolve_outcome(event(healthy=True)).reason == "Healthy"
    assert logic.ACTOR in nf.message


def test_cancel_outcome():
    """Verify the skip override cancels with NodeQuarantined False SkippedByOverride and leaves the node alone."""
    out = logic.cancel_outcome(event(skip=True, phase=Phase.QUARANTINED))
    assert (out.phase, out.condition_type, out.status, out.reason, out.action) == (
        Phase.CANCELLED, ConditionType.NODE_QUARANTINED, "False", "SkippedByOverride", "cancel")
    assert "left as it is" in out.message


def test_quarantined_outcome_and_its_dry_run():
    """Verify Quarantined says what was done and by whom; dry-run keeps New, says False and 'would cordon'."""
    plan = logic.plan_node(node(), "ev-1", now=T0, cfg=CFG)
    out = logic.quarantined_outcome(event(), plan, CFG)
    assert (out.phase, out.status, out.reason, out.action) == (Phase.QUARANTINED, "True", "Cordoned", "cordon")
    assert "cordoned node n1" in out.message and "nvsentinel.nvidia.com/quarantine=true:NoSchedule" in out.message
    assert logic.ACTOR in out.message
    dry = logic.quarantined_outcome(event(), plan, CFG, dry_run=True)
    assert (dry.phase, dry.status, dry.reason, dry.action) == (Phase.NEW, "False", "DryRunCordoned", "dry-run-cordon")
    assert dry.message.startswith("dry-run: would cordon node n1")


def test_already_cordoned_outcome_says_not_owned():
    """Verify the AlreadyCordoned message says the cordon is not ours and will not be undone by us."""
    plan = logic.plan_node(node(unschedulable=True), "ev-1", now=T0, cfg=CFG)
    out = logic.quarantined_outcome(event(), plan, CFG)
    assert out.reason == "AlreadyCordoned" and "never uncordoned by nvsentinel" in out.message


def test_dry_run_keeps_the_phase_for_every_rule():
    """Verify dry-run resolve, cancel, hold and node-missing outcomes keep the phase and prefix the reason."""
    ev = event(fatal=False)
    outs = [logic.resolve_outcome(ev, dry_run=True), logic.cancel_outcome(ev, dry_run=True),
            logic.hold_outcome(ev, "open", CFG, dry_run=True), logic.node_missing_outcome(ev, CFG, dry_run=True)]
    for out in outs:
        assert out.phase is Phase.NEW
        assert out.reason.startswith("DryRun")
        assert out.message.startswith("dry-run:")
        assert not out.resolved


def test_hold_and_node_missing_requeue():
    """Verify a held event and an event without its Node stay New and ask for a re-check."""
    held = logic.hold_outcome(event(), "circuit breaker open", CFG)
    assert (held.phase, held.status, held.reason, held.requeue_after) == (
        Phase.NEW, "False", "CircuitBreakerOpen", CFG.hold_requeue)
    missing = logic.node_missing_outcome(event(), CFG)
    assert (missing.reason, missing.requeue_after) == ("NodeNotFound", CFG.node_missing_requeue)


def test_apply_outcome_records_detected_once_and_generations():
    """Verify the status gains Detected on first sight, the decision, phase and observedGeneration."""
    ev = event(generation=4)
    plan = logic.plan_node(node(), ev.name, now=T0, cfg=CFG)
    status = logic.apply_outcome(ev, logic.quarantined_outcome(ev, plan, CFG), T0)
    assert status.phase is Phase.QUARANTINED and status.observed_generation == 4
    det = status.condition(ConditionType.DETECTED)
    assert (det.status, det.reason, det.observed_generation) == ("True", "Published", 4)
    nq = status.condition(ConditionType.NODE_QUARANTINED)
    assert (nq.status, nq.reason, nq.last_transition_time, nq.observed_generation) == ("True", "Cordoned", T0, 4)
    assert status.resolved_at is None

    later = T0 + dt.timedelta(hours=1)
    again = logic.apply_outcome(dataclasses.replace(ev, status=status), logic.quarantined_outcome(ev, plan, CFG),
                                later)
    assert again == status  # a rerun writes nothing new


def test_apply_outcome_transition_time_moves_only_with_the_status():
    """Verify a held event's condition time stays put across held re-checks and moves when it is quarantined."""
    ev = event()
    held = logic.apply_outcome(ev, logic.hold_outcome(ev, "5/5", CFG), T0)
    ev2 = dataclasses.replace(ev, status=held)
    t1 = T0 + dt.timedelta(seconds=5)
    held2 = logic.apply_outcome(ev2, logic.hold_outcome(ev, "6/5", CFG), t1)
    assert held2.condition(ConditionType.NODE_QUARANTINED).last_transition_time == T0
    assert logic.same_decision(held, held2, ConditionType.NODE_QUARANTINED)
    plan = logic.plan_node(node(), ev.name, now=t1, cfg=CFG)
    done = logic.apply_outcome(ev2, logic.quarantined_outcome(ev, plan, CFG), t1)
    assert done.condition(ConditionType.NODE_QUARANTINED).last_transition_time == t1
    assert not logic.same_decision(held2, done, ConditionType.NODE_QUARANTINED)


def test_resolved_sets_resolved_at():
    """Verify a resolved event records resolvedAt."""
    ev = event(fatal=False)
    status = logic.apply_outcome(ev, logic.resolve_outcome(ev), T0)
    assert status.phase is Phase.RESOLVED and status.resolved_at == T0
    assert status.condition(ConditionType.RESOLVED).status == "True"


def test_breaker_report_counts_owned_cordons_after_reset():
    """Verify the status report counts our cordons inside the window and after the reset, with the limit."""
    nodes = [node(f"n{i}") for i in range(30)]
    nodes[0]["metadata"]["annotations"] = {logic.ANNOTATION: logic.Ownership(("a",), T0, True).to_json()}
    nodes[1]["metadata"]["annotations"] = {
        logic.ANNOTATION: logic.Ownership(("b",), T0 - dt.timedelta(minutes=5), True).to_json()}
    state = BreakerState(reset_at=T0 - dt.timedelta(minutes=1))
    rep = logic.breaker_report(state, nodes, BreakerPolicy(10, 50, 600), T0 + dt.timedelta(seconds=1))
    assert (rep["state"], rep["cordoned"], rep["limit"], rep["gpuNodes"], rep["nodes"]) == (
        "Closed", 1, 3, 30, ["n0"])


def test_config_validation():
    """Verify out-of-range breaker settings and a bad taint effect raise ValueError naming the flag."""
    QuarantineConfig().validate()
    for bad, flag in [({"breaker_percent": 0}, "--breaker-percent"), ({"breaker_percent": 101}, "--breaker-percent"),
                      ({"breaker_max_nodes": 0}, "--breaker-max-nodes"), ({"breaker_window": 0}, "--breaker-window"),
                      ({"taint_effect": "Never"}, "--taint-effect"), ({"hold_requeue": 0}, "--hold-requeue")]:
        with pytest.raises(ValueError, match=flag):
            QuarantineConfig(**bad).validate()
