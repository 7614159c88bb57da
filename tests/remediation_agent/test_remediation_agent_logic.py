"""The remediation agent's pure decisions: which GPU gets which reset request, when it goes, and which
verified healthy events a remediation earns (docs/remediation-agent.md, the gpu-reset handshake)."""
from __future__ import annotations

import dataclasses

from agenthelpers import NODE, NOW, T0, UUIDS, at, cond, event, make_gpu
from hypothesis import given, settings
from hypothesis import strategies as st

from nvsentinel._proto import gpu_pb2
from nvsentinel.node.publisher import logic as publisher_logic
from nvsentinel.node.remediation_agent.logic import (
    answered, merge_request, plan, request_for, requests_reset, reset_requests, verification_event, verifications,
    verified_at, gpus_of,
)
from nvsentinel.policy.healthevent import (
    LABEL_COMPONENT_CLASS, LABEL_IS_FATAL, LABEL_NODE, LABEL_SOURCE, Entity, HealthEvent, Phase,
)
from nvsentinel.xid import default_catalog


def request(name: str, when: float = T0) -> gpu_pb2.Condition:
    return cond("ResetRequested", "True", "RemediationRequested", when, name)


def ack(name: str, ok: bool = True, when: float = T0 + 5) -> gpu_pb2.Condition:
    if ok:
        return cond("GpuReset", "True", "ResetVerified", when, f"{name}: GPU reset and re-verified")
    return cond("GpuReset", "False", "ResetFailed", when, f"{name}: nvidia-smi exited 3")


def conds(gpu: gpu_pb2.Gpu | gpu_pb2.GpuStatus) -> list[tuple[str, str, str, str, int, int]]:
    status = gpu.status if isinstance(gpu, gpu_pb2.Gpu) else gpu
    return [(c.type, c.status, c.reason, c.message, c.last_transition_time.seconds, c.last_transition_time.nanos)
            for c in status.conditions]


# ---- which events ask for a reset ----

def test_only_remediating_gpu_reset_requested_events_ask():
    """Verify only phase Remediating with a Remediated condition of reason GpuResetRequested asks for a reset."""
    assert requests_reset(event("e", UUIDS[0]))
    assert not requests_reset(event("e", UUIDS[0], phase=Phase.REMEDIATED))
    assert not requests_reset(event("e", UUIDS[0], phase=Phase.DRAINED))
    assert not requests_reset(event("e", UUIDS[0], reason="RebootJobCreated"))
    assert not requests_reset(event("e", UUIDS[0], reason=""))


def test_reset_requests_are_per_gpu_oldest_first_and_of_this_node_only():
    """Verify requests group by GPU, order by lastRemediationTime then name (unset last), skip other
    nodes' events (even with this node's label) and name a GPU listed twice once."""
    evs = [
        event("late", UUIDS[0], remediated_at=T0 + 50),
        event("b-early", UUIDS[0], UUIDS[1], remediated_at=T0),
        event("a-early", UUIDS[0], remediated_at=T0),
        event("unset", UUIDS[0], remediated_at=None),
        event("twice", UUIDS[2], UUIDS[2]),
        dataclasses.replace(event("other-node", UUIDS[1], node="gpu-node-8"), labels={LABEL_NODE: NODE}),
        event("moved-on", UUIDS[1], phase=Phase.REMEDIATED),
    ]
    assert reset_requests(evs, NODE) == {
        UUIDS[0]: ["a-early", "b-early", "late", "unset"],
        UUIDS[1]: ["b-early"],
        UUIDS[2]: ["twice"],
    }


def test_a_gpu_reset_answer_of_either_outcome_answers_only_its_own_event():
    """Verify a GpuReset condition answers the event its message starts with (`<name>:`), success or
    failure, and not an event whose name is only a prefix of it."""
    assert answered(make_gpu(UUIDS[0], ack("ev")), "ev")
    assert answered(make_gpu(UUIDS[0], ack("ev", ok=False)), "ev")
    assert not answered(make_gpu(UUIDS[0], ack("ev2")), "ev")
    assert not answered(make_gpu(UUIDS[0], cond("KmsgHealthy", "True", "GpuReset", message="ev: x")), "ev")
    gpu = make_gpu(UUIDS[0], ack("first"))
    assert request_for(gpu, ["first", "second"]) == "second"
    assert request_for(gpu, ["first"]) is None
    assert request_for(make_gpu(UUIDS[0]), []) is None


# ---- the condition write ----

def test_merge_appends_the_request_and_touches_nothing_else():
    """Verify a new request is appended with the contract's fields and time `now`; other conditions
    and recommended_action are kept as they were."""
    gpu = make_gpu(UUIDS[0], cond("NvmlHealthy", "False", "Xid48", T0 - 10), cond("KmsgHealthy", "True", "GpuReset"),
                   action="COMPONENT_RESET")
    new = merge_request(gpu.status, "ev-1", NOW)
    assert new is not None
    assert conds(new) == conds(gpu) + [("ResetRequested", "True", "RemediationRequested", "ev-1", T0 + 1000, 0)]
    assert new.recommended_action == "COMPONENT_RESET"
    assert conds(gpu)[-1][0] == "KmsgHealthy"  # the input is not modified


def test_merge_is_idempotent_and_keeps_the_time_of_a_standing_request():
    """Verify the same request writes nothing; a damaged one is repaired in place with its time kept;
    a request for another event gets a fresh time in the same position; duplicates are dropped."""
    standing = make_gpu(UUIDS[0], request("ev-1", T0 + 3), cond("NvmlHealthy", "False", "Xid48"))
    assert merge_request(standing.status, "ev-1", NOW) is None

    damaged = make_gpu(UUIDS[0], cond("ResetRequested", "True", "SomethingElse", T0 + 3, "ev-1"),
                       cond("NvmlHealthy", "False", "Xid48"))
    assert conds(merge_request(damaged.status, "ev-1", NOW))[0] == (
        "ResetRequested", "True", "RemediationRequested", "ev-1", T0 + 3, 0)

    replaced = merge_request(standing.status, "ev-2", NOW)
    assert conds(replaced) == [("ResetRequested", "True", "RemediationRequested", "ev-2", T0 + 1000, 0),
                               conds(standing)[1]]

    dup = make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "NvmlOk"), request("ev-1", T0 + 3), request("ev-1", T0 + 4))
    fixed = merge_request(dup.status, "ev-1", NOW)
    assert conds(fixed) == conds(dup)[:2]


def test_merge_removes_the_request_and_only_it():
    """Verify None removes every ResetRequested (and nothing else); with none there, nothing is written."""
    gpu = make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "GpuReset"), request("ev-1"), ack("ev-1"), action="NONE")
    new = merge_request(gpu.status, None, NOW)
    assert [c[0] for c in conds(new)] == ["NvmlHealthy", "GpuReset"]
    assert conds(new) == [conds(gpu)[0], conds(gpu)[2]]
    assert merge_request(new, None, NOW) is None


# ---- verification after a remediation ----

def test_verified_needs_nvml_true_since_the_remediation_and_nothing_false():
    """Verify NvmlHealthy True since lastRemediationTime (truncated to whole seconds) verifies a GPU;
    any False condition, NvmlHealthy False or missing, an earlier transition or an unset time do not."""
    t = at(T0 + 0.7)  # truncated: T0
    assert verified_at(make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "GpuReset", T0)), t) == at(T0)
    assert verified_at(make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "Recovered", T0 + 9.5)), t) == at(T0 + 9.5)
    assert verified_at(make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "NvmlOk", T0 - 1)), t) is None
    assert verified_at(make_gpu(UUIDS[0], cond("NvmlHealthy", "False", "Xid48", T0 + 9)), t) is None
    assert verified_at(make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "NvmlOk", T0 + 9),
                                cond("KmsgHealthy", "False", "Xid79", T0 - 50)), t) is None
    assert verified_at(make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "GpuReset", T0 + 9), ack("e", ok=False)),
                       t) is None
    assert verified_at(make_gpu(UUIDS[0], cond("KmsgHealthy", "True", "GpuReset", T0 + 9)), t) is None
    assert verified_at(make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "NvmlOk", 0)), t) is None
    # a request still standing is True: it does not block the verification
    assert verified_at(make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "NvmlOk", T0 + 9), request("e")), t) == at(T0 + 9)


def test_verification_event_has_every_contract_field():
    """Verify the verified healthy event's name, spec and labels are exactly the contract's."""
    remediated = event("gpu-node-7.196b7c1a.xid48.1699999900", UUIDS[0], phase=Phase.REMEDIATED,
                       reason="GpuResetVerified", codes=("48", "79"))
    when = at(T0 + 42.25)
    h = verification_event(NODE, UUIDS[0], remediated, when)
    assert h.name == f"{NODE}.196b7c1a.verified.{T0 + 42}"
    assert h.name == publisher_logic.event_name(NODE, UUIDS[0], "verified", when)
    s = h.spec
    assert (s.source, s.agent, s.node_name, s.component_class, s.check_name) == (
        "remediation-agent", "nvsentinel-remediation-agent", NODE, "GPU", "gpu-health-check")
    assert (s.is_fatal, s.is_healthy, s.recommended_action, s.error_codes) == (False, True, "NONE", ("48", "79"))
    assert s.entities_impacted == (Entity("GPU", UUIDS[0]),)
    assert s.message == f"GPU {UUIDS[0]} verified healthy after remediation of HealthEvent {remediated.name}"
    assert s.detected_at == when
    assert dict(s.metadata) == {"remediatedEvent": remediated.name, "reason": "VerifiedAfterRemediation"}
    assert dict(h.labels) == {LABEL_NODE: NODE, LABEL_COMPONENT_CLASS: "GPU", LABEL_IS_FATAL: "false",
                              LABEL_SOURCE: "remediation-agent"}
    # the same four labels, built the same way, as the publisher's healthy event
    ctx = publisher_logic.Context(NODE, default_catalog())
    trigger = publisher_logic.Observed("NvmlHealthy", "True", "GpuReset", "m", when)
    pub = publisher_logic.healthy_event(make_gpu(UUIDS[0]), trigger, (), ctx)
    assert set(pub.labels) == set(h.labels)
    assert {k: v for k, v in pub.labels.items() if k != LABEL_SOURCE} == {
        k: v for k, v in h.labels.items() if k != LABEL_SOURCE}
    # the body the API server gets round-trips
    assert HealthEvent.from_dict({**h.create_body(), "status": {}}).spec == s


def test_verification_event_long_node_names_stay_valid():
    """Verify a 253-character node name still gives a DNS-1123 name and a 63-character node label."""
    node = "n" * 240 + ".example.com"
    h = verification_event(node, UUIDS[1], event("e", UUIDS[1], node=node, phase=Phase.REMEDIATED), at(T0))
    assert len(h.name) <= 253 and h.name.endswith(f".976baef6.verified.{T0}")
    assert len(h.labels[LABEL_NODE]) <= 63


def test_verifications_one_per_gpu_for_remediated_events_only():
    """Verify a Remediated event earns one event per verified GPU it names; an event naming no GPU
    covers every GPU of the node; other phases, other nodes, GPUs the Device API lacks, GPUs not yet
    verified and events without lastRemediationTime earn none; two events give one per GPU."""
    gpus = [make_gpu(UUIDS[0], cond("NvmlHealthy", "True", "GpuReset", T0 + 10)),
            make_gpu(UUIDS[1], cond("NvmlHealthy", "True", "NvmlOk", T0 - 10)),  # before the remediation
            make_gpu(UUIDS[2], cond("NvmlHealthy", "True", "Recovered", T0 + 20))]
    missing = "GPU-11111111-2222-3333-4444-555555555555"
    evs = [
        event("a", UUIDS[0], missing, phase=Phase.REMEDIATED, reason="GpuResetVerified"),
        event("b", UUIDS[0], phase=Phase.REMEDIATED, reason="RebootJobSucceeded"),  # same GPU: one event
        event("c", UUIDS[1], phase=Phase.REMEDIATED),
        event("d", UUIDS[2], phase=Phase.REMEDIATING),
        event("e", UUIDS[2], phase=Phase.RESOLVED),
        event("f", UUIDS[2], phase=Phase.REMEDIATED, remediated_at=None),
        event("g", UUIDS[2], phase=Phase.REMEDIATED, node="gpu-node-8"),
    ]
    out = verifications(evs, gpus, NODE)
    assert [(h.name, h.gpu_uuids, h.spec.metadata["remediatedEvent"]) for h in out] == [
        (f"{NODE}.196b7c1a.verified.{T0 + 10}", (UUIDS[0],), "a")]

    whole_node = event("node-wide", phase=Phase.REMEDIATED, reason="RebootJobSucceeded")
    out = verifications([whole_node], gpus, NODE)
    assert sorted(h.gpu_uuids for h in out) == sorted([(UUIDS[0],), (UUIDS[2],)])
    # already in the cache (created before, or by another agent): not proposed again
    assert verifications([whole_node, *out[:1]], gpus, NODE) == out[1:] and len(out) == 2


# ---- one reconcile ----

def test_plan_ensures_removes_and_creates():
    """Verify the plan requests the reset on the right GPU only, removes answered and orphaned
    requests, leaves settled GPUs alone, and proposes the verified events."""
    gpus = [
        make_gpu(UUIDS[0], cond("NvmlHealthy", "False", "Xid48")),  # asked for: ensure
        make_gpu(UUIDS[1], cond("NvmlHealthy", "True", "GpuReset", T0 + 5), request("done"), ack("done")),  # answered
        make_gpu(UUIDS[2], cond("NvmlHealthy", "True", "NvmlOk"), request("gone")),  # its event is gone
    ]
    evs = [event("want", UUIDS[0]), event("done", UUIDS[1]),
           event("remediated", UUIDS[1], phase=Phase.REMEDIATED, reason="GpuResetVerified")]
    p = plan(evs, gpus, NODE, NOW)
    assert dict(p.ensure) == {UUIDS[0]: "want"}
    assert p.remove == {UUIDS[1], UUIDS[2]}
    assert p.touch == sorted(UUIDS)
    assert dict(p.requests) == {UUIDS[0]: ("want",), UUIDS[1]: ("done",)}
    assert [h.name for h in p.create] == [f"{NODE}.976baef6.verified.{T0 + 5}"]

    settled = [make_gpu(UUIDS[0], cond("NvmlHealthy", "False", "Xid48"), request("want"))]
    p = plan([event("want", UUIDS[0])], settled, NODE, NOW)
    assert (dict(p.ensure), p.remove, p.create, p.touch) == ({}, frozenset(), (), [])


PHASES = st.sampled_from([Phase.DRAINED, Phase.REMEDIATING, Phase.REMEDIATED, Phase.RESOLVED])
EVENT = st.tuples(st.sampled_from(["e1", "e2", "e3"]), PHASES, st.sampled_from(["GpuResetRequested", "Other"]),
                  st.lists(st.sampled_from(UUIDS), max_size=2), st.integers(-5, 5))
GPU_STATE = st.tuples(
    st.sampled_from(["True", "False"]), st.integers(-5, 5),
    st.lists(st.tuples(st.sampled_from(["e1", "e2", "e3", "x"]), st.booleans()), max_size=2),
    st.lists(st.sampled_from(["e1", "e2", "e3", "x"]), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENT, max_size=4, unique_by=lambda e: e[0]), st.lists(GPU_STATE, min_size=3, max_size=3))
def test_applying_the_plan_reaches_a_fixed_point(raw_events, raw_gpus):
    """Verify that after the planned writes are applied (re-judged on the GPU like the agent does),
    a second plan writes nothing and each GPU holds at most one request, for an unanswered asker."""
    evs = [event(n, *u, phase=ph, reason=r, remediated_at=T0 + dt) for n, ph, r, u, dt in raw_events]
    gpus = []
    for uuid, (nvml_status, dt, acks, reqs) in zip(UUIDS, raw_gpus):
        g = make_gpu(uuid, cond("NvmlHealthy", nvml_status, "NvmlOk" if nvml_status == "True" else "Xid48", T0 + dt),
                     *(ack(n, ok) for n, ok in acks), *(request(n) for n in reqs))
        gpus.append(g)
    p = plan(evs, gpus, NODE, NOW)
    after = []
    for g in gpus:
        new = g
        if g.metadata.name in p.touch:
            want = request_for(g, p.requests.get(g.metadata.name, ()))
            status = merge_request(g.status, want, NOW)
            assert status is not None
            new = gpu_pb2.Gpu()
            new.CopyFrom(g)
            new.status.CopyFrom(status)
        after.append(new)
    again = plan(evs, after, NODE, NOW)
    assert (dict(again.ensure), again.remove) == ({}, frozenset())
    asking = reset_requests(evs, NODE)
    for g in after:
        reqs = [c.message for c in g.status.conditions if c.type == "ResetRequested"]
        assert len(reqs) <= 1
        if reqs:
            assert reqs[0] in asking.get(g.metadata.name, ()) and not answered(g, reqs[0])
    # the verified events are a function of the events and GPUs only
    assert [h.name for h in again.create] == [h.name for h in p.create]


# ---- a GPU replaced across a reboot ----

def _slotted(uuid: str, slot: str, serial: str, *conds: gpu_pb2.Condition) -> gpu_pb2.Gpu:
    g = make_gpu(uuid, *conds)
    g.spec.pci_bus_id, g.spec.serial = slot, serial
    return g


def _fault(name: str, uuid: str, slot: str, serial: str) -> HealthEvent:
    e = event(name, uuid, phase=Phase.REMEDIATED, reason="RebootSucceeded", remediated_status="True")
    return dataclasses.replace(e, spec=dataclasses.replace(e.spec, entities_impacted=(
        Entity("GPU", uuid), Entity("PCI", slot), Entity("GPU_SERIAL", serial))))


def test_a_gpu_is_found_by_uuid_else_by_its_pci_slot_never_in_another_slot():
    """Verify gpus_of: the event's UUID first; a new board in the event's slot (any spelling) is found and
    reported replaced; a GPU in another slot is not the event's."""
    fault = _fault("f", UUIDS[0], "00000000:5D:00.0", "S-A")
    same = _slotted(UUIDS[0], "00000000:5D:00.0", "S-A")
    new = _slotted(UUIDS[1], "0000:5d:00.0", "S-B")
    other = _slotted(UUIDS[2], "0000:3b:00.0", "S-C")
    assert [(g.metadata.name, r) for g, r in gpus_of(fault, [same, other])] == [(UUIDS[0], None)]
    assert [(g.metadata.name, r) for g, r in gpus_of(fault, [new, other])] == [(UUIDS[1], (UUIDS[0], "S-A"))]
    assert gpus_of(fault, [other]) == []


def test_verification_of_a_replaced_gpu_names_the_new_board_and_says_so():
    """Verify the healthy event for a board found by its slot names the new UUID, the slot and the new serial,
    and its message says the GPU was replaced (old → new UUID and serial); a same-board one says nothing of it."""
    fault = _fault("f", UUIDS[0], "00000000:5D:00.0", "S-A")
    new = _slotted(UUIDS[1], "0000:5d:00.0", "S-B", cond("NvmlHealthy", "True", "NvmlOk", T0 + 30))
    other = _slotted(UUIDS[2], "0000:3b:00.0", "S-C", cond("NvmlHealthy", "True", "NvmlOk", T0 + 30))
    (h,) = verifications([fault], [new, other], NODE)
    assert h.gpu_uuids == (UUIDS[1],) and h.pci_slots == ("0000:5d:00.0",)
    assert Entity("GPU_SERIAL", "S-B") in h.spec.entities_impacted
    assert f"replaced: UUID {UUIDS[0]} → {UUIDS[1]}, serial S-A → S-B" in h.spec.message
    assert h.spec.metadata["replacedUuid"] == UUIDS[0]
    assert verifications([fault], [other], NODE) == []
    same = _slotted(UUIDS[0], "00000000:5D:00.0", "S-A", cond("NvmlHealthy", "True", "NvmlOk", T0 + 30))
    (s,) = verifications([fault], [same], NODE)
    assert "replaced" not in s.spec.message and "replacedUuid" not in s.spec.metadata
    assert s.spec.entities_impacted == (Entity("GPU", UUIDS[0]), Entity("PCI", "00000000:5D:00.0"),
                                        Entity("GPU_SERIAL", "S-A"))
