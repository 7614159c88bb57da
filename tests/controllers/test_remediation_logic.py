"""Remediation decisions (pure): strategy, escalation, reboot attempts and backoff, gpu-reset verification."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvsentinel.cluster.remediation import logic
from nvsentinel.cluster.remediation.config import RemediationConfig
from nvsentinel.policy.healthevent import (
    Condition, ConditionType, Entity, HealthEvent, HealthEventSpec, HealthEventStatus, Phase, format_time,
)
from nvsentinel.xid import Action

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.timezone.utc)
CFG = RemediationConfig(namespace="nvs", remediation_backoff=10.0, remediation_max_attempts=3)
G1, G2 = "GPU-11111111-0000-4000-8000-000000000000", "GPU-22222222-0000-4000-8000-000000000000"


def event(name: str = "ev-1", *, action: Action = Action.RESTART_BM, phase: Phase = Phase.DRAINED,
          gpus: tuple[str, ...] = (G1,), healthy: bool = False, node: str = "n1", detected: dt.datetime = T0,
          annotations: dict[str, str] | None = None, last_remediation: dt.datetime | None = None,
          conditions: tuple[Condition, ...] = ()) -> HealthEvent:
    spec = HealthEventSpec(source="t", node_name=node, component_class="GPU", check_name="xid-error-check",
                           is_fatal=not healthy, is_healthy=healthy, detected_at=detected,
                           recommended_action=action, entities_impacted=tuple(Entity("GPU", g) for g in gpus))
    return HealthEvent(name=name, spec=spec, annotations=annotations or {}, uid="uid-" + name, generation=1,
                       status=HealthEventStatus(phase=phase, conditions=conditions,
                                                last_remediation_time=last_remediation))


def job(state: str | None, at: dt.datetime = T0) -> dict:
    status: dict = {}
    if state:
        status = {"conditions": [{"type": state, "status": "True", "lastTransitionTime": format_time(at)}]}
    return {"metadata": {"name": "x"}, "status": status}


@pytest.mark.parametrize("action,strategy", [
    (Action.RESTART_VM, "reboot"), (Action.RESTART_BM, "reboot"), (Action.REPLACE_VM, "terminate"),
    (Action.COMPONENT_RESET, "gpu-reset"), (Action.NONE, "none"), (Action.CONTACT_SUPPORT, "manual"),
    (Action.RUN_FIELDDIAG, "manual"), (Action.RUN_DCGMEUD, "manual"), (Action.UNKNOWN, "manual")])
def test_recommended_action_maps_to_the_spec_strategy(action: Action, strategy: str) -> None:
    assert logic.choose_strategy(event(action=action))[0] == strategy


def test_every_action_has_a_strategy() -> None:
    assert set(logic.ACTION_STRATEGY) == set(Action)


def test_annotation_wins_and_an_unknown_one_is_none() -> None:
    ann = {logic.STRATEGY_ANNOTATION: " GPU-Reset "}
    assert logic.choose_strategy(event(action=Action.CONTACT_SUPPORT, annotations=ann))[0] is logic.Strategy.GPU_RESET
    strategy, why = logic.choose_strategy(event(annotations={logic.STRATEGY_ANNOTATION: "nuke"}))
    assert strategy is None and "'nuke' is not one of" in why
    out = logic.held_outcome(event(), strategy, why)
    assert out.reason == "InvalidStrategy" and out.phase is Phase.DRAINED and out.reason in logic.HELD_REASONS


def test_triage_starts_drained_follows_remediating_and_ignores_held_and_others() -> None:
    assert logic.triage(event()) is logic.Triage.START
    assert logic.triage(event(phase=Phase.REMEDIATING)) is logic.Triage.FOLLOW
    for p in (Phase.NEW, Phase.QUARANTINED, Phase.DRAINING, Phase.REMEDIATED, Phase.RESOLVED, Phase.CANCELLED):
        assert logic.triage(event(phase=p)) is logic.Triage.IGNORE
    held = Condition(ConditionType.REMEDIATED, "False", "ManualRemediationRequired", "m", T0)
    assert logic.triage(event(conditions=(held,))) is logic.Triage.IGNORE
    dry = Condition(ConditionType.REMEDIATED, "False", "DryRunRemediation", "m", T0)
    assert logic.triage(event(conditions=(dry,))) is logic.Triage.START
    assert logic.triage(event(healthy=True)) is logic.Triage.IGNORE


@given(st.text(min_size=1, max_size=253), st.integers(1, 20))
def test_job_names_are_fixed_short_and_distinct_per_attempt(name: str, attempt: int) -> None:
    a = logic.job_name(name, attempt)
    assert a == logic.job_name(name, attempt) and len(a) <= 63
    assert a != logic.job_name(name, attempt + 1)
    assert logic.attempts_of(name, [{"metadata": {"name": a}}]) == {attempt: {"metadata": {"name": a}}}


def test_job_body_is_pinned_privileged_host_pid_owned_and_tolerant() -> None:
    body = logic.job_body(event(), 2, CFG)
    pod = body["spec"]["template"]["spec"]
    assert body["metadata"]["name"] == logic.job_name("ev-1", 2) and body["metadata"]["namespace"] == "nvs"
    assert pod["nodeName"] == "n1" and pod["hostPID"] and pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["containers"][0]["securityContext"] == {"privileged": True, "runAsUser": 0}
    assert pod["containers"][0]["command"] == CFG.reboot_argv and body["spec"]["backoffLimit"] == 0
    assert pod["automountServiceAccountToken"] is False
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-ev-1"
    assert body["metadata"]["annotations"][logic.ANNOTATION_EVENT] == "ev-1"
    assert all(body["metadata"]["labels"][k] == v for k, v in logic.JOB_LABELS.items())


def test_reboot_progress_create_wait_succeed() -> None:
    ev = event()
    first = logic.reboot_progress(ev, {}, T0, CFG)
    assert (first.phase, first.create_job, first.started) == (Phase.REMEDIATING, 1, True)
    assert logic.reboot_progress(ev, {1: job(None)}, T0, CFG).create_job is None
    done = logic.reboot_progress(ev, {1: job("Failed"), 2: job("Complete")}, T0, CFG)
    assert (done.phase, done.status, done.reason) == (Phase.REMEDIATED, "True", "RebootSucceeded")


def test_reboot_failure_backs_off_doubling_then_gives_up() -> None:
    ev = event(phase=Phase.REMEDIATING)
    failed_at = T0
    wait = logic.reboot_progress(ev, {1: job("Failed", failed_at)}, failed_at + dt.timedelta(seconds=4), CFG)
    assert wait.reason == "RebootJobFailed" and wait.create_job is None and wait.requeue_after == pytest.approx(6)
    again = logic.reboot_progress(ev, {1: job("Failed", failed_at)}, failed_at + dt.timedelta(seconds=10), CFG)
    assert again.create_job == 2
    # attempt 2 failed: the wait doubles to 20 s
    two = {1: job("Failed"), 2: job("Failed", failed_at)}
    assert logic.reboot_progress(ev, two, failed_at + dt.timedelta(seconds=19), CFG).create_job is None
    assert logic.reboot_progress(ev, two, failed_at + dt.timedelta(seconds=20), CFG).create_job == 3
    three = two | {3: job("Failed")}
    out = logic.reboot_progress(ev, three, T0, CFG)
    assert (out.phase, out.reason, out.create_job) == (Phase.DRAINED, "RemediationFailed", None)
    assert out.reason in logic.HELD_REASONS and out.warning


def test_apply_outcome_stamps_the_remediation_start_once() -> None:
    start = logic.reboot_progress(event(), {}, T0, CFG)
    status = logic.apply_outcome(event(), start, T0)
    assert status.phase is Phase.REMEDIATING and status.last_remediation_time == T0
    later = T0 + dt.timedelta(minutes=1)
    rerun = logic.apply_outcome(event(phase=Phase.REMEDIATING, last_remediation=T0), start, later)
    assert rerun.last_remediation_time == T0  # a repeated reconcile keeps the first stamp


def test_escalation_counts_same_node_and_gpu_within_the_window() -> None:
    now = T0 + dt.timedelta(hours=1)
    others = [
        event("a", last_remediation=T0), event("b", last_remediation=T0 + dt.timedelta(minutes=5)),
        event("old", last_remediation=T0 - dt.timedelta(days=2)),
        event("other-gpu", gpus=(G2,), last_remediation=T0),
        event("other-node", node="n2", last_remediation=T0),
        event("node-wide", gpus=(), last_remediation=T0),
        event("never"),
    ]
    prior = logic.prior_remediations(event("me"), others, now, 86400)
    assert [p.name for p in prior] == ["a", "node-wide", "b"]
    out = logic.escalated_outcome(event("me"), prior, dataclasses.replace(CFG, escalation_threshold=3))
    assert out.reason == "EscalatedToSupport" and "CONTACT_SUPPORT" in out.message and "3 time(s)" in out.message


def test_gpu_reset_verified_only_by_a_healthy_event_since_the_request() -> None:
    asked = T0  # .6 s into the second: detectors report whole seconds
    ev = event(action=Action.COMPONENT_RESET, phase=Phase.REMEDIATING, last_remediation=asked)
    same_second = event("h-now", healthy=True, detected=asked.replace(microsecond=0))
    before = event("h-old", healthy=True, detected=asked - dt.timedelta(seconds=1))
    other = event("h-gpu2", healthy=True, gpus=(G2,), detected=asked + dt.timedelta(seconds=1))
    other_node = event("h-n2", healthy=True, node="n2", detected=asked + dt.timedelta(seconds=1))
    assert logic.gpu_reset_verified_by(ev, [before, other, other_node]) is None
    assert logic.gpu_reset_verified_by(ev, [before, same_second]).name == "h-now"
    done = logic.gpu_reset_progress(ev, [same_second], asked, CFG)
    assert (done.phase, done.reason) == (Phase.REMEDIATED, "GpuResetVerified") and "h-now" in done.message
    waiting = logic.gpu_reset_progress(ev, [], asked + dt.timedelta(seconds=10), CFG)
    assert waiting.phase is Phase.REMEDIATING and waiting.requeue_after == CFG.remediation_poll
    late = logic.gpu_reset_progress(ev, [], asked + dt.timedelta(seconds=CFG.gpu_reset_timeout), CFG)
    assert (late.phase, late.reason) == (Phase.DRAINED, "RemediationFailed")


def test_gpu_reset_without_a_gpu_and_terminate_without_provider_id_are_held() -> None:
    assert logic.gpu_reset_request_outcome(event(gpus=())).reason == "GpuResetNotPossible"
    req = logic.gpu_reset_request_outcome(event())
    assert (req.phase, req.reason, req.started) == (Phase.REMEDIATING, "GpuResetRequested", True)
    assert logic.terminate_outcome(event(), {"spec": {}}).reason == "TerminateNotPossible"
    term = logic.terminate_outcome(event(), {"spec": {"providerID": "aws:///i-1"}})
    assert (term.phase, term.reason, term.delete_node) == (Phase.REMEDIATED, "NodeTerminated", True)
    gone = logic.terminate_outcome(event(), None)
    assert gone.phase is Phase.REMEDIATED and not gone.delete_node


@pytest.mark.parametrize("kw,message", [
    ({"reboot_command": ""}, "--reboot-command must not be empty"),
    ({"reboot_command": "'unbalanced"}, "--reboot-command"),
    ({"reboot_image": " "}, "--reboot-image"),
    ({"remediation_max_attempts": 0}, "--remediation-max-attempts"),
    ({"remediation_backoff": 0}, "--remediation-backoff"),
    ({"gpu_reset_timeout": 0}, "--gpu-reset-timeout"),
    ({"escalation_threshold": -1}, "--escalation-threshold"),
    ({"escalation_window": 0}, "--escalation-window"),
])
def test_config_validation_names_the_flag(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RemediationConfig(**kw).validate()
    RemediationConfig().validate()


# ---- one fault, one remediation; stale evidence -------------------------------------------------------------------

def _cond(reason: str, status: str = "False", at: dt.datetime = T0) -> tuple[Condition, ...]:
    return (Condition(ConditionType.REMEDIATED, status, reason, "m", at),)


def _pci(ev: HealthEvent, uuid: str, slot: str) -> HealthEvent:
    return dataclasses.replace(ev, spec=dataclasses.replace(
        ev.spec, entities_impacted=(Entity("GPU", uuid), Entity("PCI", slot))))


NOW = T0 + dt.timedelta(minutes=10)
REBOOT, RESET = logic.Strategy.REBOOT, logic.Strategy.GPU_RESET


def test_a_second_fault_waits_for_the_running_remediation_that_contends_with_it() -> None:
    me = event("me", detected=T0 + dt.timedelta(minutes=5))
    running = event("run", phase=Phase.REMEDIATING, last_remediation=T0, conditions=_cond("RebootJobCreated"))
    assert logic.remediation_in_progress(me, REBOOT, [me, running], now=NOW, cfg=CFG) is running
    # a reboot of the node contends with anything on it; a reset of another GPU only with a reboot
    other_gpu = event("me2", gpus=(G2,), action=Action.COMPONENT_RESET)
    assert logic.remediation_in_progress(other_gpu, RESET, [running], now=NOW, cfg=CFG) is running
    resetting = event("rs", action=Action.COMPONENT_RESET, phase=Phase.REMEDIATING, last_remediation=T0)
    assert logic.remediation_in_progress(other_gpu, RESET, [resetting], now=NOW, cfg=CFG) is None
    assert logic.remediation_in_progress(event("me3"), RESET, [resetting], now=NOW, cfg=CFG) is resetting
    assert logic.remediation_in_progress(event("x", node="n2"), REBOOT, [running], now=NOW, cfg=CFG) is None
    out = logic.in_progress_outcome(me, running, CFG)
    assert (out.phase, out.status, out.reason) == (Phase.DRAINED, "False", "RemediationInProgress")
    assert "run" in out.message and out.requeue_after == CFG.remediation_poll
    assert out.reason in logic.WAITING_REASONS and out.reason not in logic.HELD_REASONS


def test_of_two_faults_starting_together_only_the_first_observed_acts() -> None:
    a, b = event("a", detected=T0), event("b", detected=T0 + dt.timedelta(seconds=1))
    assert logic.remediation_in_progress(a, REBOOT, [a, b], now=NOW, cfg=CFG) is None
    assert logic.remediation_in_progress(b, REBOOT, [a, b], now=NOW, cfg=CFG) is a
    held = event("a", detected=T0, conditions=_cond("ManualRemediationRequired"))
    assert logic.remediation_in_progress(b, REBOOT, [held, b], now=NOW, cfg=CFG) is None  # it will not act
    stale_cfg = dataclasses.replace(CFG, max_event_age=60)
    assert logic.remediation_in_progress(b, REBOOT, [a, b], now=NOW, cfg=stale_cfg) is None  # a is stale: waits


def test_covered_by_a_remediation_that_succeeded_after_the_fault_was_observed() -> None:
    done_at = T0 + dt.timedelta(minutes=3)
    rebooted = event("r", phase=Phase.REMEDIATED, last_remediation=T0 + dt.timedelta(minutes=1),
                     conditions=_cond("RebootSucceeded", "True", done_at))
    me = event("me", detected=T0 + dt.timedelta(minutes=2))
    assert logic.covered_by(me, REBOOT, [rebooted]) is rebooted
    assert logic.covered_by(me, RESET, [rebooted]) is rebooted              # a reboot resets every GPU
    assert logic.covered_by(event("late", detected=done_at + dt.timedelta(seconds=1)), REBOOT, [rebooted]) is None
    assert logic.covered_by(me, logic.Strategy.MANUAL, [rebooted]) is None
    reset = event("rs", action=Action.COMPONENT_RESET, phase=Phase.RESOLVED, last_remediation=T0,
                  conditions=_cond("GpuResetVerified", "True", done_at))
    assert logic.covered_by(me, RESET, [reset]) is reset
    assert logic.covered_by(me, REBOOT, [reset]) is None                    # a reset is not a reboot
    assert logic.covered_by(event("g2", gpus=(G2,)), RESET, [reset]) is None
    failed = event("f", phase=Phase.DRAINED, last_remediation=T0, conditions=_cond("RemediationFailed"))
    assert logic.covered_by(me, REBOOT, [failed]) is None
    out = logic.covered_outcome(me, rebooted)
    status = logic.apply_outcome(me, out, NOW)
    assert (status.phase, out.reason, out.status) == (Phase.REMEDIATED, "RemediatedWithEvent", "True")
    assert status.last_remediation_time == rebooted.status.last_remediation_time and "r" in out.message
    # the escalation count sees one reboot, not two
    me_done = dataclasses.replace(me, status=status)
    assert [p.name for p in logic.prior_remediations(event("next"), [rebooted, me_done], NOW, 86400)] == ["r"]


def test_stale_evidence_waits_for_fresh_evidence_or_the_operator() -> None:
    old = _pci(event("old", detected=T0 - dt.timedelta(hours=30)), G1, "00000000:5D:00.0")
    fresh = _pci(event("new", detected=NOW), G2, "0000:5d:00.0")                  # same slot, new board
    elsewhere = _pci(event("else", detected=NOW), G2, "0000:3b:00.0")
    assert logic.fresh_evidence(old, [old, fresh, elsewhere], NOW, 86400) is fresh
    assert logic.fresh_evidence(old, [old, elsewhere], NOW, 86400) is None
    assert logic.fresh_evidence(old, [_pci(event("n", detected=T0 - dt.timedelta(hours=25)), G1, "0000:5d:00.0")],
                                NOW, 86400) is None                          # fresh only within the max age
    cfg = dataclasses.replace(CFG, max_event_age=86400)
    alone = logic.stale_outcome(old, None, NOW, cfg)
    assert (alone.phase, alone.status, alone.reason, alone.warning) == (Phase.DRAINED, "False", "StaleEvidence", True)
    assert "--max-event-age 86400s" in alone.message and logic.STALE_ANNOTATION in alone.message
    assert alone.create_job is None and alone.reason in logic.WAITING_REASONS
    with_fresh = logic.stale_outcome(old, fresh, NOW, cfg)
    assert "new" in with_fresh.message and not with_fresh.warning
    assert not logic.stale_approved(old)
    assert logic.stale_approved(dataclasses.replace(old, annotations={logic.STALE_ANNOTATION: "True"}))
    assert logic.triage(dataclasses.replace(old, status=HealthEventStatus(
        phase=Phase.DRAINED, conditions=_cond("StaleEvidence")))) is logic.Triage.START


def test_max_event_age_setting() -> None:
    assert RemediationConfig().max_event_age == 86400
    RemediationConfig(max_event_age=0).validate()
    with pytest.raises(ValueError, match="--max-event-age"):
        RemediationConfig(max_event_age=-1).validate()


def test_a_fault_that_cleared_before_anything_ran_is_not_remediated() -> None:
    """A healthy event of the same GPU, observed no earlier than the fault: nothing runs (the invariant run's
    rule 4); an older one, another GPU's, or one naming no GPU does not count."""
    fault = event("f", detected=T0 + dt.timedelta(minutes=1))
    same = event("h-same", healthy=True, action=Action.NONE, detected=T0 + dt.timedelta(minutes=2))
    older = event("h-old", healthy=True, action=Action.NONE, detected=T0)
    other = event("h-g2", healthy=True, action=Action.NONE, gpus=(G2,), detected=T0 + dt.timedelta(minutes=3))
    vague = event("h-node", healthy=True, action=Action.NONE, gpus=(), detected=T0 + dt.timedelta(minutes=3))
    other_node = event("h-n2", healthy=True, action=Action.NONE, node="n2", detected=T0 + dt.timedelta(minutes=3))
    assert logic.cleared_by(fault, [older, other, vague, other_node]) is None
    assert logic.cleared_by(fault, [older, other, same]) is same
    out = logic.cleared_outcome(fault, same, CFG)
    status = logic.apply_outcome(fault, out, NOW)
    assert (status.phase, out.status, out.reason, out.action) == (Phase.DRAINED, "False", "FaultCleared", "fault-cleared")
    assert "h-same" in out.message and out.create_job is None and out.reason in logic.WAITING_REASONS
