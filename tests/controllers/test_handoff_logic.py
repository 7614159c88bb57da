"""Hand-off decisions (pure): the mode rules, the operator's approval, what remediation waits for, and how
resolution closes a rejected event or one whose Node an external repairer replaced or deleted."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from nvsentinel.cluster.remediation import logic as rem
from nvsentinel.cluster.remediation.config import RemediationConfig
from nvsentinel.cluster.resolution import logic as res
from nvsentinel.policy import handoff
from nvsentinel.policy.healthevent import (
    Condition, ConditionType, Entity, HealthEvent, HealthEventSpec, HealthEventStatus, Phase, RemediationMode,
)
from nvsentinel.xid import Action

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
CFG = RemediationConfig(namespace="nvs")
APPROVE, EXTERNAL, NVS = RemediationMode.APPROVE, RemediationMode.EXTERNAL, RemediationMode.NVSENTINEL


def event(name: str = "ev", *, mode: RemediationMode | None = None, approval: str | None = None, by: str = "",
          why: str = "", phase: Phase = Phase.DRAINED, action: Action = Action.RESTART_BM, at: int = 0,
          gpu: str = "GPU-a", node_uid: str = "", healthy: bool = False,
          conditions: tuple[Condition, ...] = ()) -> HealthEvent:
    ann = {}
    if approval is not None:
        ann[handoff.APPROVAL_ANNOTATION] = approval
    if by:
        ann[handoff.APPROVAL_BY_ANNOTATION] = by
    if why:
        ann[handoff.APPROVAL_REASON_ANNOTATION] = why
    spec = HealthEventSpec(source="t", node_name="n1", component_class="GPU", check_name="xid-error-check",
                           is_fatal=not healthy, is_healthy=healthy, detected_at=T0 + dt.timedelta(seconds=at),
                           recommended_action=action, entities_impacted=(Entity("GPU", gpu),))
    return HealthEvent(name=name, spec=spec, annotations=ann, generation=3, resource_version="7",
                       status=HealthEventStatus(phase=phase, conditions=conditions,
                                                remediation_mode=str(mode) if mode else "", node_uid=node_uid))


# ---- policy/handoff: mode rules and the approval annotation ----------------------------------------------

def test_mode_rules_parse_and_the_first_match_wins() -> None:
    rules = handoff.parse_mode_rules(json.dumps([
        {"nodeSelector": "pool=aws,tier in (a,b)", "mode": "external"},
        {"nodeSelector": "pool=aws", "mode": "approve"},
        {"nodeSelector": "", "mode": "nvsentinel"}]))
    assert [r.mode for r in rules] == [EXTERNAL, APPROVE, NVS]
    assert rules[0].to_dict() == {"nodeSelector": "pool=aws,tier in (a,b)", "mode": "external"}
    assert handoff.mode_for({"pool": "aws", "tier": "a"}, rules) is EXTERNAL
    assert handoff.mode_for({"pool": "aws", "tier": "c"}, rules) is APPROVE
    assert handoff.mode_for({"pool": "gcp"}, rules) is NVS  # the empty selector matches every node
    assert handoff.mode_for(None, rules[:2], APPROVE) is APPROVE  # no rule matches: the default
    assert handoff.parse_mode_rules("  ") == ()


@pytest.mark.parametrize(("text", "says"), [
    ("{", "is not JSON"),
    ('{"nodeSelector": "a", "mode": "external"}', "must be a JSON list"),
    (json.dumps([{"nodeSelector": "a"}] * 65), "must be a JSON list of at most 64"),
    ('[{"nodeSelector": "a"}]', "[0]: want"),
    ('[{"nodeSelector": "a", "mode": "external", "extra": 1}]', "[0]: want"),
    ('["pool=a"]', "[0]: want"),
    ('[{"nodeSelector": 5, "mode": "external"}]', "[0]: nodeSelector must be a string"),
    ('[{"nodeSelector": "pool=aws", "mode": "external"}, {"nodeSelector": "a in (b", "mode": "approve"}]',
     "[1]: unbalanced '('"),
    ('[{"nodeSelector": "bad key=x", "mode": "approve"}]', "[0]: selector 'bad key=x': 'bad key' is not a label key"),
    ('[{"nodeSelector": "a", "mode": "karpenter"}]',
     "[0]: mode 'karpenter' is not one of nvsentinel, external, approve"),
])
def test_bad_mode_rules_name_the_rule_and_the_fault(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="--remediation-mode-rules") as exc:
        handoff.parse_mode_rules(text)
    assert says in str(exc.value)


def test_mode_of_reads_the_record_and_defaults_to_nvsentinel() -> None:
    assert handoff.mode_of(event(mode=EXTERNAL)) is EXTERNAL
    assert handoff.mode_of(event()) is NVS  # quarantined before modes existed
    garbage = event()
    garbage = dataclasses.replace(garbage, status=dataclasses.replace(garbage.status, remediation_mode="bogus"))
    assert handoff.mode_of(garbage) is NVS


@pytest.mark.parametrize(("value", "decision"), [
    ("approved", "approved"), (" Approved ", "approved"), ("REJECTED", "rejected"), ("maybe", ""), ("", ""),
    (None, "")])
def test_approval_of_reads_only_a_decision(value: str | None, decision: str) -> None:
    assert handoff.approval_of(event(approval=value)) == decision


# ---- remediation: approve mode --------------------------------------------------------------------------

def test_only_an_unapproved_approve_mode_event_waits() -> None:
    assert rem.awaits_approval(event(mode=APPROVE))
    assert rem.awaits_approval(event(mode=APPROVE, approval="rejected"))
    assert rem.awaits_approval(event(mode=APPROVE, approval="yes please"))  # not a decision
    assert not rem.awaits_approval(event(mode=APPROVE, approval="approved"))
    assert not rem.awaits_approval(event(mode=NVS))
    assert not rem.awaits_approval(event())  # no mode recorded: nvsentinel


def test_awaiting_approval_is_a_waiting_warning_that_says_what_would_run_and_how_to_approve() -> None:
    out = rem.awaiting_approval_outcome(event("ev-9", mode=APPROVE), rem.Strategy.REBOOT, "recommendedAction X")
    assert (out.phase, out.status, out.reason, out.action) == (Phase.DRAINED, "False", "AwaitingApproval",
                                                                "awaiting-approval")
    assert out.warning and out.create_job is None and not out.started and not out.delete_node
    assert "reboot of node n1" in out.message and "`nvsentinel approve ev-9`" in out.message
    assert "nvsentinel.nvidia.com/approval=approved" in out.message and "`nvsentinel reject ev-9`" in out.message
    assert rem.AWAITING_APPROVAL in rem.WAITING_REASONS and rem.AWAITING_APPROVAL not in rem.HELD_REASONS
    waiting = Condition(ConditionType.REMEDIATED, "False", "AwaitingApproval", "m", T0)
    assert rem.triage(event(mode=APPROVE, conditions=(waiting,))) is rem.Triage.START  # judged again on a change


def test_a_rejected_drained_event_is_never_started() -> None:
    assert rem.triage(event(approval="rejected")) is rem.Triage.IGNORE
    assert rem.triage(event(mode=APPROVE, approval="rejected")) is rem.Triage.IGNORE
    # a remediation already under way is followed to its end (the CLI refuses such a rejection)
    assert rem.triage(event(approval="rejected", phase=Phase.REMEDIATING)) is rem.Triage.FOLLOW


def test_the_started_remediation_names_who_approved_and_why() -> None:
    start = rem.reboot_progress(event(), {}, T0, CFG)
    ev = event(mode=APPROVE, approval="approved", by="alice@example.com", why="window\nopen")
    out = rem.approved_outcome(ev, start)
    assert out.create_job == 1 and out.reason == "RebootJobCreated" and out.started
    assert out.message.endswith("(approved by alice@example.com: window open)")
    bare = rem.approved_outcome(event(mode=APPROVE, approval="approved"), start)
    assert "approved by an operator (no nvsentinel.nvidia.com/approval-by annotation)" in bare.message
    assert rem.approved_outcome(event(mode=NVS, approval="approved"), start) == start  # nothing to say


def test_an_event_awaiting_approval_does_not_hold_a_later_one_in_line() -> None:
    """One remediation at a time, but an event nobody approved is not "first in line": the later one may be
    approved and run (and its reboot then covers the earlier one)."""
    early = event("early", mode=APPROVE, at=0)
    late = event("late", mode=APPROVE, approval="approved", at=10)
    now = T0 + dt.timedelta(seconds=20)
    assert rem.remediation_in_progress(late, rem.Strategy.REBOOT, [early, late], now=now, cfg=CFG) is None
    approved_early = event("early", mode=APPROVE, approval="approved", at=0)
    assert rem.remediation_in_progress(late, rem.Strategy.REBOOT, [approved_early, late], now=now,
                                       cfg=CFG) is approved_early
    rejected_early = event("early", approval="rejected", at=0)
    assert rem.remediation_in_progress(late, rem.Strategy.REBOOT, [rejected_early, late], now=now, cfg=CFG) is None


# ---- resolution: rejection --------------------------------------------------------------------------------

@pytest.mark.parametrize(("phase", "rejected"), [
    (Phase.NEW, True), (Phase.QUARANTINED, True), (Phase.DRAINING, True), (Phase.DRAINED, True),
    (Phase.REMEDIATED, True), (Phase.REMEDIATING, False), (Phase.RESOLVED, False), (Phase.CANCELLED, False)])
def test_a_rejection_closes_any_open_event_but_a_running_remediation(phase: Phase, rejected: bool) -> None:
    assert res.is_rejected(event(approval="rejected", phase=phase)) is rejected
    assert not res.is_rejected(event(approval="approved", phase=phase))
    assert not res.is_rejected(event(approval="rejected", phase=phase, healthy=True))


def test_rejected_status_cancels_says_who_and_why_and_starts_the_ttl_clock() -> None:
    ev = event("ev", mode=APPROVE, approval="rejected", by="bob", why="known\tflaky  test")
    st = res.rejected_status(ev, T0)
    c = st.condition(ConditionType.RESOLVED)
    assert st.phase is Phase.CANCELLED and st.resolved_at == T0 and st.observed_generation == 3
    assert (c.status, c.reason) == ("False", "Rejected")
    assert c.message.startswith("rejected by bob: known flaky test; cancelled without remediation")
    assert res.rejected_status(event(approval="rejected"), T0).condition(ConditionType.RESOLVED).message.startswith(
        "rejected by an operator (no reason given)")
    dry = res.rejected_status(ev, T0, dry_run=True)
    assert dry.phase is Phase.DRAINED and dry.resolved_at is None
    assert dry.condition(ConditionType.RESOLVED).reason == "DryRunRejected"


def test_rejected_events_are_not_also_resolved_by_a_healthy_event() -> None:
    evs = [event("f-rej", approval="rejected"), event("f-open"), event("h", healthy=True, at=5)]
    assert [e.name for e in res.rejected_events(evs)] == ["f-rej"]
    assert [r.fatal.name for r in res.plan_resolutions(evs)] == ["f-open"]


# ---- resolution: handed off (mode external) -----------------------------------------------------------------

def test_a_handed_off_event_resolves_when_its_node_object_was_replaced() -> None:
    ext = event("ext", mode=EXTERNAL, phase=Phase.QUARANTINED, node_uid="uid-1")
    assert res.handed_off(ext) and not res.handed_off(event(mode=APPROVE))
    assert res.replaced_events([ext], "uid-2") == [ext]
    assert res.replaced_events([ext], "uid-1") == []  # the same Node: not replaced
    assert res.replaced_events([event("old", mode=EXTERNAL, phase=Phase.QUARANTINED)], "uid-2") == []  # no UID kept
    assert res.replaced_events([event("nv", mode=NVS, node_uid="uid-1")], "uid-2") == []  # not handed off
    done = event("done", mode=EXTERNAL, phase=Phase.RESOLVED, node_uid="uid-1")
    assert res.replaced_events([done], "uid-2") == []
    st = res.replaced_status(ext, "uid-2", T0)
    c = st.condition(ConditionType.RESOLVED)
    assert st.phase is Phase.RESOLVED and st.resolved_at == T0 and (c.status, c.reason) == ("True", "NodeReplaced")
    assert "uid-1 → uid-2" in c.message
    dry = res.replaced_status(ext, "uid-2", T0, dry_run=True)
    assert dry.phase is Phase.QUARANTINED and dry.condition(ConditionType.RESOLVED).reason == "DryRunNodeReplaced"


def test_a_handed_off_event_resolves_at_once_when_its_node_is_deleted() -> None:
    ext = event("ext", mode=EXTERNAL, phase=Phase.QUARANTINED, node_uid="uid-1")
    st = res.deleted_status(ext, T0)
    c = st.condition(ConditionType.RESOLVED)
    assert st.phase is Phase.RESOLVED and (c.status, c.reason) == ("True", "NodeDeleted") and "404" in c.message
    assert res.deleted_status(ext, T0, dry_run=True).condition(ConditionType.RESOLVED).reason == "DryRunNodeDeleted"
    # the NodeGone rule (after a grace) is for the other modes: a handed-off event is not waiting for it
    nvs = event("nvs", phase=Phase.QUARANTINED)
    later = T0 + dt.timedelta(hours=1)
    assert [e.name for e in res.node_gone_events([ext, nvs], later, 30)] == ["nvs"]
