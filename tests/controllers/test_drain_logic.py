"""Drain decisions (pure): which pods go, when the drain is done, when it times out, what the status says."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from nvsentinel.cluster.drain import logic
from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.policy.healthevent import (
    Condition, ConditionType, HealthEvent, HealthEventSpec, HealthEventStatus, OverrideFlags, Overrides, Phase,
)

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
CFG = DrainConfig()
SKIP = CFG.skip_namespaces


def event(*, phase: Phase = Phase.QUARANTINED, skip: bool = False, conditions: tuple[Condition, ...] = ()
          ) -> HealthEvent:
    spec = HealthEventSpec(source="test", node_name="n1", component_class="GPU", check_name="xid-error-check",
                           is_fatal=True, is_healthy=False, detected_at=T0,
                           overrides=Overrides(drain=OverrideFlags(skip=skip)))
    return HealthEvent(name="ev-1", spec=spec, status=HealthEventStatus(phase=phase, conditions=conditions),
                       generation=2, resource_version="9")


def pod(name: str, *, ns: str = "work", uid: str | None = None, phase: str = "Running", owner: str | None = None,
        mirror: bool = False, deleting: bool = False) -> dict:
    meta: dict = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "uid": "x", "controller": True}]
    if mirror:
        meta["annotations"] = {logic.MIRROR_ANNOTATION: "abc"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    return {"metadata": meta, "spec": {"nodeName": "n1"}, "status": {"phase": phase}}


@pytest.mark.parametrize(("kw", "expected"), [
    ({}, logic.Triage.DRAIN),
    ({"phase": Phase.DRAINING}, logic.Triage.DRAIN),
    ({"skip": True}, logic.Triage.SKIP),
    ({"phase": Phase.NEW}, logic.Triage.IGNORE),
    ({"phase": Phase.DRAINED}, logic.Triage.IGNORE),
    ({"phase": Phase.DRAINED, "skip": True}, logic.Triage.IGNORE),
    ({"phase": Phase.RESOLVED}, logic.Triage.IGNORE),
    ({"phase": Phase.CANCELLED}, logic.Triage.IGNORE),
])
def test_triage_owns_only_quarantined_and_draining(kw: dict, expected: logic.Triage) -> None:
    """Verify the drain stage acts on Quarantined/Draining events only and honours the skip override."""
    assert logic.triage(event(**kw)) is expected


@pytest.mark.parametrize(("p", "expected"), [
    (pod("a"), True),
    (pod("a", owner="ReplicaSet"), True),
    (pod("a", owner="DaemonSet"), False),
    (pod("a", mirror=True), False),
    (pod("a", phase="Succeeded"), False),
    (pod("a", phase="Failed"), False),
    (pod("a", ns="kube-system"), False),
    (pod("a", phase="Pending"), True),
])
def test_evictable_skips_daemonsets_mirrors_finished_and_system_pods(p: dict, expected: bool) -> None:
    """Verify which pods a drain must remove."""
    assert logic.evictable(p, SKIP) is expected


def test_skip_namespaces_are_configurable() -> None:
    """Verify --drain-skip-namespaces replaces the default list."""
    cfg = DrainConfig(drain_skip_namespaces="infra, monitoring")
    assert cfg.skip_namespaces == {"infra", "monitoring"}
    assert logic.evictable(pod("a", ns="kube-system"), cfg.skip_namespaces)
    assert not logic.evictable(pod("a", ns="monitoring"), cfg.skip_namespaces)


def test_pending_counts_a_replacement_with_another_uid_as_gone() -> None:
    """Verify the drain waits for the pods seen at its start, by UID, not for their replacements."""
    start = [pod("a"), pod("b"), pod("ds", owner="DaemonSet")]
    snap = logic.snapshot(start, SKIP)
    assert snap == {("work", "a"): "uid-a", ("work", "b"): "uid-b"}
    now = [pod("a", uid="new-a"), pod("b", deleting=True), pod("ds", owner="DaemonSet"), pod("c")]
    left = logic.pending(snap, now)
    assert [logic.key_of(p) for p in left] == [("work", "b")]
    assert logic.to_evict(left) == []  # terminating: not evicted again
    assert logic.pending(snap, [pod("ds", owner="DaemonSet")]) == []


def test_eviction_body_has_no_api_version() -> None:
    """Verify the Eviction body the 1.20 server accepts (an explicit policy/v1 is rejected)."""
    body = logic.eviction_body(pod("a"), 30)
    assert body == {"kind": "Eviction", "metadata": {"name": "a", "namespace": "work"},
                    "deleteOptions": {"gracePeriodSeconds": 30}}


def test_blocked_reason_names_the_budget_from_the_causes() -> None:
    """Verify a 429's causes (which name the PDB) end up in the progress message."""
    body = {"message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget",
                                    "message": "The disruption budget guard needs 1 healthy pods"}]}}
    assert "guard" in logic.blocked_reason("429", body)
    assert "disruption budget" in logic.blocked_reason("429", {"message": body["message"]})


def test_draining_since_and_timeout() -> None:
    """Verify the timeout runs from the Draining transition and DrainTimeout keeps that time."""
    assert logic.draining_since(event()) is None
    ev = event()
    status = logic.apply_outcome(ev, logic.draining_outcome(ev, [pod("a")], {}, CFG), T0)
    ev = dataclasses.replace(ev, status=status)
    assert logic.draining_since(ev) == T0
    later = T0 + dt.timedelta(seconds=CFG.drain_timeout)
    assert not logic.timed_out(logic.draining_since(ev), later - dt.timedelta(seconds=1), CFG)
    assert logic.timed_out(logic.draining_since(ev), later, CFG)
    status = logic.apply_outcome(ev, logic.timeout_outcome(ev, [pod("a")], CFG), later)
    assert status.condition(ConditionType.PODS_DRAINED).reason == "DrainTimeout"
    assert status.condition(ConditionType.PODS_DRAINED).last_transition_time == T0
    assert status.phase is Phase.DRAINING


def test_draining_message_reports_progress_and_blocking() -> None:
    """Verify the progress message says how many pods are left and which budget blocks."""
    ev = event()
    out = logic.draining_outcome(ev, [pod("a"), pod("b", deleting=True)],
                                 {("work", "a"): "The disruption budget guard needs 1"}, CFG)
    assert (out.phase, out.status, out.reason) == (Phase.DRAINING, "False", "Draining")
    assert "2 pod(s) left" in out.message and "1 terminating" in out.message
    assert "disruption budget" in out.message and "work/a" in out.message
    assert out.requeue_after == CFG.drain_pdb_retry
    assert logic.draining_outcome(ev, [pod("a")], {}, CFG).requeue_after == CFG.drain_poll


def test_outcomes_set_phase_and_condition() -> None:
    """Verify Drained, DrainSkipped and dry-run statuses; dry-run keeps the phase."""
    ev = event()
    done = logic.apply_outcome(ev, logic.drained_outcome(ev, 3), T0)
    assert done.phase is Phase.DRAINED
    c = done.condition(ConditionType.PODS_DRAINED)
    assert (c.status, c.reason, c.observed_generation) == ("True", "Drained", 2)
    skipped = logic.apply_outcome(ev, logic.skip_outcome(ev), T0)
    assert skipped.phase is Phase.DRAINED
    assert skipped.condition(ConditionType.PODS_DRAINED).reason == "DrainSkipped"
    dry = logic.dry_run_outcome(ev, 4)
    assert dry.phase is Phase.QUARANTINED and "would evict 4 pod(s)" in dry.message
    assert all(v != "" for v in logic.apply_outcome(ev, dry, T0).to_dict()["conditions"][0].values())


def test_same_decision_ignores_message_progress() -> None:
    """Verify progress updates are not counted as new decisions (actions and Events once)."""
    ev = event()
    a = logic.apply_outcome(ev, logic.draining_outcome(ev, [pod("a"), pod("b")], {}, CFG), T0)
    ev2 = dataclasses.replace(ev, status=a)
    b = logic.apply_outcome(ev2, logic.draining_outcome(ev2, [pod("a")], {}, CFG), T0)
    assert logic.same_decision(a, b)
    assert not logic.same_decision(ev.status, a)


@pytest.mark.parametrize("kw", [{"drain_pdb_retry": 0}, {"drain_timeout": 0}, {"drain_grace_period": -1},
                                {"drain_poll": 10000}])
def test_config_validation(kw: dict) -> None:
    """Verify out-of-range settings are refused."""
    with pytest.raises(ValueError):
        DrainConfig(**kw).validate()
    DrainConfig().validate()


def test_pending_seen_trusts_only_seen_deletions_not_a_lagging_cache() -> None:
    """Verify a snapshot pod the cache has not caught up with stays pending; a seen deletion or a
    replacement under its name counts as gone; a pod present with its UID is pending (the cache's copy)."""
    start = {logic.key_of(p): p for p in (pod("a"), pod("b"), pod("c"), pod("d"))}
    cached = [pod("a", deleting=True), pod("c", uid="uid-new"), pod("x")]
    left = logic.pending_seen(start, cached, gone={"uid-b"})
    assert [logic.key_of(p)[1] for p in left] == ["a", "d"]  # b deleted, c replaced, d not in the cache yet
    assert left[0]["metadata"].get("deletionTimestamp")  # the cache's (newer) copy of a
    assert logic.pending_seen(start, [], gone={"uid-a", "uid-b", "uid-c", "uid-d"}) == []


@pytest.mark.parametrize("phase", [Phase.QUARANTINED, Phase.DRAINING])
def test_triage_leaves_a_handed_off_event_to_the_external_repairer(phase: Phase) -> None:
    """Verify an event in remediation mode external is never drained (the repairer drains), whatever its phase,
    while the same event in modes nvsentinel and approve is drained."""
    from nvsentinel.policy.healthevent import RemediationMode

    for mode, expected in ((RemediationMode.EXTERNAL, logic.Triage.IGNORE),
                           (RemediationMode.APPROVE, logic.Triage.DRAIN),
                           (RemediationMode.NVSENTINEL, logic.Triage.DRAIN)):
        ev = event(phase=phase)
        ev = dataclasses.replace(ev, status=dataclasses.replace(ev.status, remediation_mode=str(mode)))
        assert logic.triage(ev) is expected, mode
    ev = event(phase=phase, skip=True)  # not even a drain skip: it is not ours to write
    ev = dataclasses.replace(ev, status=dataclasses.replace(ev.status, remediation_mode="external"))
    assert logic.triage(ev) is logic.Triage.IGNORE
