"""Resolution decisions (pure): which healthy event answers which fault, and how a node is released."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from nvsentinel.cluster.quarantine.logic import ANNOTATION, Ownership
from nvsentinel.cluster.resolution import logic
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.policy.healthevent import (
    Condition, ConditionType, Entity, HealthEvent, HealthEventSpec, HealthEventStatus, Phase,
)

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
CFG = ResolutionConfig()
OUR_TAINT = {"key": "nvsentinel.nvidia.com/quarantine", "value": "true", "effect": "NoSchedule"}
DEDICATED = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}


def event(name: str, *, gpus: tuple[str, ...] = ("GPU-a",), healthy: bool = False, at: int = 0,
          phase: Phase = Phase.QUARANTINED, node: str = "n1", created: int | None = None) -> HealthEvent:
    spec = HealthEventSpec(source="test", node_name=node, component_class="GPU", check_name="xid-error-check",
                           is_fatal=not healthy, is_healthy=healthy, detected_at=T0 + dt.timedelta(seconds=at),
                           entities_impacted=tuple(Entity("GPU", g) for g in gpus) + (Entity("PCI", "0000:01"),))
    return HealthEvent(name=name, spec=spec, status=HealthEventStatus(phase=phase), generation=2,
                       resource_version="9",
                       creation_timestamp=None if created is None else T0 + dt.timedelta(seconds=created))


def node(*, by_us: bool | None = True, unschedulable: bool = True, taints: list | None = None,
         annotation: str | None = None) -> dict:
    meta: dict = {"name": "n1", "resourceVersion": "123", "annotations": {"other": "x"}}
    if by_us is not None:
        meta["annotations"][ANNOTATION] = Ownership(("f1",), T0, by_us).to_json()
    if annotation is not None:
        meta["annotations"][ANNOTATION] = annotation
    spec: dict = {"taints": [DEDICATED, OUR_TAINT] if taints is None else taints}
    if unschedulable:
        spec["unschedulable"] = True
    return {"metadata": meta, "spec": spec}


# ---- which events a healthy event resolves -------------------------------------------------------------

@pytest.mark.parametrize(("fatal", "healthy", "expected"), [
    (event("f"), event("h", healthy=True, at=1), True),
    (event("f"), event("h", healthy=True, at=0), True),                       # same instant: not after
    (event("f", at=5), event("h", healthy=True, at=1), False),                # fault newer than the recovery
    (event("f"), event("h", healthy=True, at=1, gpus=("GPU-b",)), False),     # another GPU
    (event("f", gpus=("GPU-a", "GPU-b")), event("h", healthy=True, at=1, gpus=("GPU-b",)), True),
    (event("f"), event("h", healthy=True, at=1, gpus=()), False),             # no GPU entity: not by default
    (event("f", gpus=()), event("h", healthy=True, at=1), False),             # a GPU recovery; fault names none
    (event("f"), event("h", healthy=True, at=1, node="n2"), False),           # another node
    (event("f"), event("h2", at=1), False),                                   # not healthy
])
def test_answers(fatal: HealthEvent, healthy: HealthEvent, expected: bool) -> None:
    assert logic.answers(healthy, fatal) is expected


def test_a_healthy_event_naming_no_gpu_clears_the_node_only_where_the_operator_allows_it() -> None:
    fatal, vague = event("f"), event("h", healthy=True, at=1, gpus=())
    assert not logic.answers(vague, fatal)
    assert logic.answers(vague, fatal, nodewide=True)
    assert logic.plan_resolutions([fatal, vague]) == []
    assert [r.healthy.name for r in logic.plan_resolutions([fatal, vague], nodewide=True)] == ["h"]


@pytest.mark.parametrize(("healthy_at", "healthy_created", "expected"), [
    (10**9, 0, False),      # dated 2099-ish, created before the fault: clamped to creation + 60 s < fault
    (10**9, 200, True),     # dated in the future but created after the fault: a real (later) recovery
    (120, 50, False),       # a node clock 70 s ahead: clamped to 110 s, before the fault at 115 s
    (120, 100, True),       # within the skew: believed
])
def test_detected_at_is_clamped_to_creation_plus_skew(healthy_at: int, healthy_created: int, expected: bool) -> None:
    """A future detectedAt (a lie, or a node clock ahead) cannot date a recovery after a later fault."""
    fatal = event("f", at=115, created=115)
    healthy = event("h", healthy=True, at=healthy_at, created=healthy_created)
    assert logic.answers(healthy, fatal) is expected
    assert bool(logic.plan_resolutions([fatal, healthy])) is expected


def test_observed_at_without_a_creation_time_is_detected_at() -> None:
    ev = event("f", at=10**6)
    assert logic.observed_at(ev) == ev.spec.detected_at
    assert logic.observed_at(event("g", at=10**6, created=0)) == T0 + logic.DEFAULT_SKEW


def test_plan_resolves_only_open_fatal_events_of_the_named_gpu() -> None:
    evs = [event("f-a"), event("f-b", gpus=("GPU-b",)), event("f-done", phase=Phase.RESOLVED),
           event("f-cancel", phase=Phase.CANCELLED), event("f-new", phase=Phase.NEW),
           event("h-a2", healthy=True, at=9), event("h-a1", healthy=True, at=3)]
    plan = logic.plan_resolutions(evs)
    assert [(r.fatal.name, r.healthy.name) for r in plan] == [("f-a", "h-a1"), ("f-new", "h-a1")]


def test_plan_is_empty_without_healthy_events_and_ignores_healthy_ones_as_faults() -> None:
    assert logic.plan_resolutions([event("f-a"), event("f-b")]) == []
    assert logic.plan_resolutions([event("h", healthy=True, phase=Phase.NEW)]) == []


def test_resolved_status_records_the_healthy_event() -> None:
    res = logic.plan_resolutions([event("f"), event("h", healthy=True, at=1)])[0]
    st = logic.resolved_status(res, T0)
    assert st.phase is Phase.RESOLVED and st.resolved_at == T0 and st.observed_generation == 2
    c = st.condition(ConditionType.RESOLVED)
    assert (c.status, c.reason, c.observed_generation) == ("True", "HealthyEventReceived", 2)
    assert "healthy HealthEvent h" in c.message and "GPU-a" in c.message and logic.ACTOR in c.message
    # idempotent: applying it again to the resolved event changes nothing, time included
    again = logic.resolved_status(logic.Resolution(
        HealthEvent(name="f", spec=res.fatal.spec, status=st, generation=2), res.healthy), T0 + dt.timedelta(hours=1))
    assert again == st
    assert '""' not in json.dumps(st.to_dict()), "1.20 rejects empty strings in a custom resource"


def test_resolved_status_dry_run_keeps_the_phase() -> None:
    res = logic.plan_resolutions([event("f"), event("h", healthy=True, at=1)])[0]
    st = logic.resolved_status(res, T0, dry_run=True)
    c = st.condition(ConditionType.RESOLVED)
    assert st.phase is Phase.QUARANTINED and st.resolved_at is None
    assert (c.status, c.reason) == ("False", "DryRunHealthyEventReceived") and c.message.startswith("dry-run:")


# ---- releasing the node -----------------------------------------------------------------------------------

def test_release_of_our_cordon_uncordons_untaints_and_drops_the_record() -> None:
    rel = logic.plan_release(node(), 0, CFG)
    assert rel is not None and (rel.reason, rel.action) == ("Uncordoned", "uncordon")
    assert rel.patch == {"metadata": {"annotations": {ANNOTATION: None}, "resourceVersion": "123"},
                         "spec": {"taints": [DEDICATED], "unschedulable": False}}


def test_release_of_someone_elses_cordon_keeps_the_cordon() -> None:
    rel = logic.plan_release(node(by_us=False), 0, CFG)
    assert rel is not None and (rel.reason, rel.action) == ("TaintRemoved", "remove-taint")
    assert rel.patch["spec"] == {"taints": [DEDICATED]} and "unschedulable" not in rel.patch["spec"]
    assert rel.patch["metadata"]["annotations"] == {ANNOTATION: None}
    assert "left cordoned" in rel.message


def test_release_after_operator_uncordon_only_cleans_up() -> None:
    rel = logic.plan_release(node(unschedulable=False, taints=[OUR_TAINT]), 0, CFG)
    assert rel is not None and rel.reason == "TaintRemoved"
    assert rel.patch["spec"] == {"taints": []}


@pytest.mark.parametrize("kw", [{"by_us": None}, {"by_us": None, "annotation": "not json"}])
def test_no_release_without_our_record(kw: dict) -> None:
    assert logic.plan_release(node(**kw), 0, CFG) is None


def test_no_release_while_faults_are_open() -> None:
    assert logic.plan_release(node(), 1, CFG) is None


@pytest.mark.parametrize(("kw", "open_fatal", "expected"), [
    ({"unschedulable": False}, 1, True),
    ({"unschedulable": False}, 0, False),            # nothing open: a release, not an override
    ({"unschedulable": True}, 1, False),             # still cordoned
    ({"unschedulable": False, "by_us": False}, 1, False),  # not our cordon to miss
    ({"unschedulable": False, "by_us": None}, 1, False),
])
def test_operator_uncordon(kw: dict, open_fatal: int, expected: bool) -> None:
    assert logic.operator_uncordoned(node(**kw), open_fatal) is expected


def test_operator_uncordon_status_keeps_phase_and_transition_time() -> None:
    ev = event("f")
    st = logic.operator_uncordon_status(ev, "n1", T0)
    c = st.condition(ConditionType.NODE_QUARANTINED)
    assert st.phase is Phase.QUARANTINED and (c.status, c.reason) == ("False", "UncordonedByOperator")
    ev2 = HealthEvent(name="f", spec=ev.spec, status=st, generation=2)
    assert logic.operator_uncordon_status(ev2, "n1", T0 + dt.timedelta(minutes=5)) == st
    prior = HealthEventStatus(phase=Phase.QUARANTINED, conditions=(Condition(
        ConditionType.NODE_QUARANTINED, "True", "Cordoned", "x", T0 - dt.timedelta(hours=1), 1),))
    st3 = logic.operator_uncordon_status(HealthEvent(name="f", spec=ev.spec, status=prior, generation=2), "n1", T0)
    assert st3.condition(ConditionType.NODE_QUARANTINED).last_transition_time == T0


def test_config_rejects_an_empty_taint_key() -> None:
    ResolutionConfig().validate()
    with pytest.raises(ValueError, match="taint-key"):
        ResolutionConfig(taint_key="").validate()


def test_a_remediating_event_is_left_to_the_remediation_stage() -> None:
    """Verify a healthy event does not resolve a Remediating fault (remediation records Remediated first),
    and does once it is Remediated."""
    h = event("h", healthy=True, at=5)
    assert logic.plan_resolutions([event("f", phase=Phase.REMEDIATING), h]) == []
    (res,) = logic.plan_resolutions([event("f", phase=Phase.REMEDIATED), h])
    assert res.fatal.name == "f" and res.healthy.name == "h"


def test_a_terminated_node_resolves_its_remediated_events() -> None:
    cond = Condition(ConditionType.REMEDIATED, "True", "NodeTerminated", "deleted", T0)
    ev = event("f", phase=Phase.REMEDIATED)
    done = HealthEvent(name="f", spec=ev.spec, status=HealthEventStatus(phase=Phase.REMEDIATED, conditions=(cond,)))
    assert logic.node_terminated(done) and not logic.node_terminated(ev)
    status = logic.terminated_status(done, T0)
    assert status.phase is Phase.RESOLVED and status.resolved_at == T0
    assert status.condition(ConditionType.RESOLVED).reason == "NodeTerminated"


# ---- a GPU replaced across a reboot: matched by PCI slot, never by UUID alone -----------------------------------

def _with(ev: HealthEvent, *entities: Entity) -> HealthEvent:
    return dataclasses.replace(ev, spec=dataclasses.replace(ev.spec, entities_impacted=entities))


@pytest.mark.parametrize(("healthy_entities", "expected"), [
    ((Entity("GPU", "GPU-new"), Entity("PCI", "0000:5d:00.0")), True),       # another board, the same slot
    ((Entity("GPU", "GPU-new"), Entity("PCI", "00000000:5D:00.0")), True),   # NVML's spelling of it
    ((Entity("GPU", "GPU-new"), Entity("PCI", "0000:3b:00.0")), False),      # another slot
    ((Entity("GPU", "GPU-new"),), False),                                    # no slot: the UUID must match
    ((Entity("GPU", "GPU-old"),), True),                                     # the same board
    ((Entity("PCI", "0000:5d:00.0"),), True),                                # the slot alone names the GPU
])
def test_answers_by_uuid_or_pci_slot(healthy_entities: tuple[Entity, ...], expected: bool) -> None:
    fatal = _with(event("f"), Entity("GPU", "GPU-old"), Entity("PCI", "00000000:5D:00.0"))
    healthy = _with(event("h", healthy=True, at=1), *healthy_entities)
    assert logic.answers(healthy, fatal) is expected
    assert not logic.answers(_with(event("h", healthy=True, at=1, node="n2"), *healthy_entities), fatal)
    assert not logic.answers(_with(event("h", healthy=True, at=-1), *healthy_entities), fatal)  # older


def test_resolved_status_names_the_slot_and_both_uuids_when_the_board_changed() -> None:
    fatal = _with(event("f"), Entity("GPU", "GPU-old"), Entity("PCI", "0000:5d:00.0"))
    healthy = _with(event("h", healthy=True, at=1), Entity("GPU", "GPU-new"), Entity("PCI", "0000:5d:00.0"))
    (res,) = logic.plan_resolutions([fatal, healthy])
    msg = logic.resolved_status(res, T0).condition(ConditionType.RESOLVED).message
    assert "PCI 0000:5d:00.0: GPU-old → GPU-new" in msg and "h" in msg


# ---- the Node is gone ----------------------------------------------------------------------------------------

def test_node_gone_closes_open_events_after_the_grace_only() -> None:
    now = T0 + dt.timedelta(seconds=100)
    old, young = event("old", created=0), event("young", created=90)
    done = event("done", created=0, phase=Phase.RESOLVED)
    term = dataclasses.replace(event("term", created=0), status=HealthEventStatus(
        phase=Phase.REMEDIATED, conditions=(Condition(ConditionType.REMEDIATED, "True", "NodeTerminated", "m", T0),)))
    healthy = event("h", healthy=True, phase=Phase.NEW, created=0)
    assert [e.name for e in logic.node_gone_events([old, young, done, term, healthy], now, 30)] == ["old", "h"]
    assert [e.name for e in logic.node_gone_events([old, young], now, 0)] == ["old", "young"]


def test_node_gone_status_cancels_with_a_reason_and_starts_the_ttl_clock() -> None:
    now = T0 + dt.timedelta(hours=1)
    st = logic.node_gone_status(event("f"), now)
    cond = st.condition(ConditionType.RESOLVED)
    assert st.phase is Phase.CANCELLED and st.resolved_at == now and st.phase.terminal
    assert (cond.status, cond.reason) == ("False", "NodeGone") and "404" in cond.message
    dry = logic.node_gone_status(event("f"), now, dry_run=True)
    assert dry.phase is Phase.QUARANTINED and dry.resolved_at is None
    assert dry.condition(ConditionType.RESOLVED).reason == "DryRunNodeGone"


def test_node_gone_grace_is_validated() -> None:
    ResolutionConfig(node_gone_grace=0).validate()
    with pytest.raises(ValueError, match="--node-gone-grace"):
        ResolutionConfig(node_gone_grace=-1).validate()


def test_evidence_age_is_judged_on_observed_at_and_zero_turns_it_off() -> None:
    from nvsentinel.policy import evidence

    lying = event("f", at=10**6, created=0)  # detectedAt far ahead of its creation: creation + 60 s counts
    assert evidence.observed_at(lying) == T0 + dt.timedelta(seconds=60) == logic.observed_at(lying)
    now = T0 + dt.timedelta(hours=25)
    assert evidence.is_stale(event("f", created=0), now, 86400)
    assert not evidence.is_stale(event("f", created=0), now, 0)
    assert not evidence.is_stale(event("f", at=3600, created=3600), now, 86400)
