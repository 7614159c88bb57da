"""The publisher's pure decisions: GPU conditions → HealthEvents (docs/publisher.md)."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pubhelpers import NOW, T0, UUIDS, cond, kmsg, make_gpu, nvml

from nvsentinel.node.publisher.logic import (
    AGENT, MAX_NAME, Context, GpuView, event_name, gpu_short, label_value, observe,
)
from nvsentinel.policy.healthevent import (
    LABEL_COMPONENT_CLASS, LABEL_IS_FATAL, LABEL_NODE, LABEL_SOURCE, Entity, HealthEvent,
)
from nvsentinel.xid import Action, Override, default_catalog, load_catalog

NODE = "gpu-node-7"
CTX = Context(node_name=NODE, catalog=default_catalog())
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def run(*gpus, view=None, ctx=CTX):
    """Observe GPU states in order; returns the final view and every event, in order."""
    events = []
    for g in gpus:
        view, evs = observe(view, g, NOW, ctx)
        events.extend(evs)
    return view, events


def test_fatal_event_carries_the_contract_fields():
    """Verify an NvmlHealthy=False Xid79 gives one fatal event with every field the brief names."""
    msg = "XID 79: GPU has fallen off the bus"
    g = make_gpu(UUIDS[0], nvml("False", "Xid79", T0 + 0.25, msg), action="RESTART_BM")
    view, events = observe(None, g, NOW, CTX)
    assert len(events) == 1
    ev = events[0]
    assert ev.name == f"{NODE}.196b7c1a.xid79.{T0}"
    s = ev.spec
    assert (s.source, s.agent, s.node_name, s.component_class) == ("nvml-provider", AGENT, NODE, "GPU")
    assert (s.check_name, s.error_codes, s.recommended_action) == ("xid-error-check", ("79",), Action.RESTART_BM)
    assert s.is_fatal is True and s.is_healthy is False
    assert s.message == msg
    assert s.entities_impacted == (Entity("GPU", UUIDS[0]),)
    assert s.detected_at == dt.datetime.fromtimestamp(T0 + 0.25, dt.timezone.utc)
    assert dict(s.metadata) == {"conditionType": "NvmlHealthy", "reason": "Xid79"}
    assert dict(ev.labels) == {LABEL_NODE: NODE, LABEL_COMPONENT_CLASS: "GPU", LABEL_IS_FATAL: "true",
                               LABEL_SOURCE: "nvml-provider"}
    assert set(view.faults) == {"Xid79"}
    # the body round-trips through the typed model and carries no status (status subresource)
    body = ev.create_body()
    assert "status" not in body and body["metadata"]["name"] == ev.name
    assert HealthEvent.from_dict(ev.to_dict()) == ev


@pytest.mark.parametrize("reason, action, check, codes, want_action", [
    ("Xid48", "", "xid-error-check", ("48",), Action.COMPONENT_RESET),
    ("Xid999", "", "xid-error-check", ("999",), Action.CONTACT_SUPPORT),  # not in the catalog
    ("EccDoubleBit", "", "memory-ecc-check", ("48",), Action.COMPONENT_RESET),
    ("GpuLost", "", "gpu-lost-check", ("79",), Action.RESTART_BM),
    ("Xid48", "RESTART_BM", "xid-error-check", ("48",), Action.RESTART_BM),  # the GPU's action wins
    ("Xid154", "COMPONENT_RESET", "xid-error-check", ("154",), Action.COMPONENT_RESET),  # action from the line
    ("Xid48", "NONE", "xid-error-check", ("48",), Action.COMPONENT_RESET),  # NONE is "not set" for a fault
])
def test_reason_maps_to_check_codes_and_action(reason, action, check, codes, want_action):
    """Verify each condition reason's checkName, errorCodes and recommendedAction (GPU's, else catalog)."""
    _, events = run(make_gpu(UUIDS[1], nvml("False", reason), action=action))
    (ev,) = events
    assert (ev.spec.check_name, ev.spec.error_codes, ev.spec.recommended_action) == (check, codes, want_action)
    assert ev.spec.is_fatal is True
    assert ev.name == f"{NODE}.976baef6.{reason.lower()}.{T0}"


def test_site_override_can_make_a_reason_non_fatal():
    """Verify a site override marking XID 79 non-fatal gives isFatal false and action NONE."""
    ctx = Context(NODE, load_catalog({"79": Override(fatal=False)}))
    _, events = run(make_gpu(UUIDS[0], nvml("False", "Xid79"), action="RESTART_BM"), ctx=ctx)
    (ev,) = events
    assert ev.spec.is_fatal is False and ev.spec.recommended_action is Action.NONE
    assert ev.labels[LABEL_IS_FATAL] == "false"


def test_same_reason_from_nvml_and_kmsg_is_one_fault():
    """Verify NVML and the kernel log reporting the same Xid produce one event, in any order."""
    both = make_gpu(UUIDS[0], nvml("False", "Xid79", T0 + 2), kmsg("False", "Xid79", T0))
    _, events = run(both)
    assert [e.name for e in events] == [f"{NODE}.196b7c1a.xid79.{T0}"]
    assert events[0].spec.source == "kmsg-monitor"  # the earliest report is the source
    assert events[0].spec.metadata["conditionType"] == "KmsgHealthy"
    # in sequence: NVML first, the kernel log later: still one event
    _, seq = run(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)),
                 make_gpu(UUIDS[0], nvml("False", "Xid79", T0), kmsg("False", "Xid79", T0 + 3)))
    assert [e.name for e in seq] == [f"{NODE}.196b7c1a.xid79.{T0}"]
    assert seq[0].spec.source == "nvml-provider"
    # a restarted publisher (no view) computes the same name from the same conditions: a 409
    _, again = run(make_gpu(UUIDS[0], nvml("False", "Xid79", T0), kmsg("False", "Xid79", T0 + 3)))
    assert [e.name for e in again] == [seq[0].name]


def test_open_fault_is_not_republished_after_a_device_api_restart():
    """Verify a GPU that vanishes and comes back with a new transition time publishes nothing new."""
    view, events = run(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
    assert len(events) == 1
    # re-registered with no conditions yet, then the provider re-sends with a fresh time
    view, more = run(make_gpu(UUIDS[0]), make_gpu(UUIDS[0], nvml("False", "Xid79", T0 + 500)), view=view)
    assert more == []
    assert set(view.faults) == {"Xid79"}


def test_recovery_publishes_one_healthy_event():
    """Verify False→True publishes an isHealthy event named by the True transition, closing the fault."""
    view, events = run(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)),
                       make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 60, "NVML healthy again")))
    fatal, healthy = events
    assert healthy.name == f"{NODE}.196b7c1a.healthy.{T0 + 60}"
    s = healthy.spec
    assert s.is_healthy is True and s.is_fatal is False and s.recommended_action is Action.NONE
    assert (s.check_name, s.error_codes, s.source) == ("xid-error-check", ("79",), "nvml-provider")
    assert s.entities_impacted == (Entity("GPU", UUIDS[0]),)
    assert s.message == "NVML healthy again"
    assert healthy.labels[LABEL_IS_FATAL] == "false"
    assert view.faults == {} and view.closed == ()
    # a resync of the same state publishes nothing
    _, again = run(make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 60)), view=view)
    assert again == []


def test_healthy_waits_until_every_reporter_recovered():
    """Verify a fault both conditions reported closes only when both are True again."""
    view, events = run(make_gpu(UUIDS[0], nvml("False", "Xid79", T0), kmsg("False", "Xid79", T0 + 1)),
                       make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 10), kmsg("False", "Xid79", T0 + 1)))
    assert len(events) == 1 and not events[0].spec.is_healthy
    assert set(view.faults) == {"Xid79"}
    view, events = run(make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 10), kmsg("True", "GpuReset", T0 + 20)),
                       view=view)
    (healthy,) = events
    assert healthy.name == f"{NODE}.196b7c1a.healthy.{T0 + 20}"
    assert healthy.spec.source == "kmsg-monitor" and healthy.spec.error_codes == ("79",)


def test_healthy_lists_every_fault_it_closes():
    """Verify different faults on two conditions: healthy only when both recovered, with both codes."""
    view, events = run(make_gpu(UUIDS[0], nvml("False", "Xid48", T0), kmsg("False", "Xid79", T0 + 1)))
    assert sorted(e.spec.error_codes for e in events) == [("48",), ("79",)]
    view, events = run(make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 5), kmsg("False", "Xid79", T0 + 1)),
                       view=view)
    assert events == [] and set(view.faults) == {"Xid79"}
    _, events = run(make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 5), kmsg("True", "GpuReset", T0 + 9)),
                    view=view)
    (healthy,) = events
    assert healthy.spec.error_codes == ("48", "79") and healthy.spec.check_name == "xid-error-check"


def test_worse_reason_is_a_new_fault_and_both_close_together():
    """Verify Xid48 replaced by Xid79 (same transition time) publishes Xid79; recovery closes both."""
    view, events = run(make_gpu(UUIDS[0], nvml("False", "Xid48", T0)),
                       make_gpu(UUIDS[0], nvml("False", "Xid79", T0)),
                       make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 30)))
    assert [e.name for e in events] == [
        f"{NODE}.196b7c1a.xid48.{T0}", f"{NODE}.196b7c1a.xid79.{T0}", f"{NODE}.196b7c1a.healthy.{T0 + 30}"]
    assert events[2].spec.error_codes == ("48", "79")


def test_recurrence_after_recovery_is_a_new_event():
    """Verify the same XID after a recovery publishes again, under its new transition time."""
    _, events = run(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)),
                    make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 10)),
                    make_gpu(UUIDS[0], nvml("False", "Xid79", T0 + 20)))
    assert [e.name for e in events] == [
        f"{NODE}.196b7c1a.xid79.{T0}", f"{NODE}.196b7c1a.healthy.{T0 + 10}", f"{NODE}.196b7c1a.xid79.{T0 + 20}"]


def test_unknown_between_false_and_true_still_recovers():
    """Verify an Unknown status closes nothing (its own report is a non-fatal event), and a later
    True still closes every fault with one healthy event."""
    _, events = run(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)),
                    make_gpu(UUIDS[0], nvml("Unknown", "NvmlDown", T0 + 5)),
                    make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 9)))
    assert [(e.spec.is_healthy, e.spec.is_fatal, e.spec.metadata["reason"]) for e in events] == [
        (False, True, "Xid79"), (False, False, "NvmlDown"), (True, False, "Recovered")]
    assert events[2].spec.error_codes == ("79", "NvmlDown")


@pytest.mark.parametrize("conds, want", [
    ((nvml("True", "Recovered", T0 + 7),), [("healthy", "nvml-provider")]),
    ((nvml("True", "NvmlOk", T0 + 7),), []),  # the initial reason is not a recovery
    ((nvml("True", "NvmlOk", T0), kmsg("True", "GpuReset", T0 + 7)), [("healthy", "kmsg-monitor")]),
    ((nvml("True", "Recovered", T0), kmsg("False", "Xid79", T0 + 7)), [("xid79", "kmsg-monitor")]),
])
def test_startup_publishes_a_recovery_it_missed(conds, want):
    """Verify first sight of a GPU publishes a recovery that happened while the publisher was down."""
    _, events = run(make_gpu(UUIDS[0], *conds))
    assert [(e.name.split(".")[2], e.spec.source) for e in events] == want
    for e in events:
        assert e.name.endswith(f".{T0 + 7}")
        if e.spec.is_healthy:
            assert e.spec.error_codes == () and e.spec.check_name == "gpu-health-check"


def test_only_watched_conditions_count():
    """Verify an unwatched condition type is ignored, and a watched unknown one is a generic fault."""
    g = make_gpu(UUIDS[0], cond("DcgmHealthy", "False", "DcgmFieldError"), action="CONTACT_SUPPORT")
    assert run(g) == (GpuView(), [])
    ctx = Context(NODE, default_catalog(), watched=("NvmlHealthy", "DcgmHealthy"))
    _, events = run(g, ctx=ctx)
    (ev,) = events
    assert (ev.spec.source, ev.spec.check_name, ev.spec.error_codes) == ("DcgmHealthy", "gpu-health-check",
                                                                        ("DcgmFieldError",))
    assert ev.spec.recommended_action is Action.CONTACT_SUPPORT and ev.labels[LABEL_SOURCE] == "DcgmHealthy"
    _, events = run(make_gpu(UUIDS[0], cond("DcgmHealthy", "False", "")), ctx=ctx)
    assert events[0].name == f"{NODE}.196b7c1a.unhealthy.{T0}"
    assert events[0].spec.recommended_action is Action.UNKNOWN


def test_unset_transition_time_falls_back_to_now():
    """Verify a condition without last_transition_time is dated by the clock passed in."""
    c = nvml("False", "Xid79")
    c.ClearField("last_transition_time")
    _, events = run(make_gpu(UUIDS[0], c))
    assert events[0].spec.detected_at == NOW
    assert events[0].name.endswith(f".{int(NOW.timestamp())}")


def test_names_and_labels_stay_valid_for_long_nodes():
    """Verify a 253-character node gives a ≤253-character DNS-1123 name with a hash, and a ≤63 label."""
    node = ".".join(["a" * 62] * 4) + ".x"  # 253 characters: the longest valid node name
    assert len(node) == 253
    name = event_name(node, UUIDS[0], "Xid79", NOW)
    assert len(name) <= MAX_NAME and DNS1123.fullmatch(name)
    assert name.endswith(f".196b7c1a.xid79.{int(NOW.timestamp())}")
    other = event_name(node[:-1] + "y", UUIDS[0], "Xid79", NOW)
    assert other != name and len(other) <= MAX_NAME
    value = label_value(node)
    assert len(value) <= 63 and LABEL.fullmatch(value)
    assert label_value(NODE) == NODE


def test_gpu_short():
    """Verify the GPU part of names is the UUID's first group, or a hash for odd UUIDs."""
    assert gpu_short(UUIDS[2]) == "0d1b0f43"
    assert gpu_short("MIG-ABCDEF12-0000") == "abcdef12"
    odd = gpu_short("not-a-uuid")
    assert re.fullmatch(r"[0-9a-f]{8}", odd) and odd == gpu_short("not-a-uuid")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=300), st.text(max_size=60), st.text(max_size=80),
       st.integers(min_value=0, max_value=2**33))
def test_event_names_are_always_valid_and_deterministic(node, uuid, identity, seconds):
    """Verify any node, UUID, identity and time give a valid, deterministic name of at most 253 chars."""
    when = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    name = event_name(node, uuid, identity, when)
    assert len(name) <= MAX_NAME and DNS1123.fullmatch(name), name
    assert event_name(node, uuid, identity, when) == name
    assert LABEL.fullmatch(label_value(node)) and len(label_value(node)) <= 63


STATUSES = st.sampled_from(["True", "False", "Unknown", None])
REASONS = st.sampled_from(["Xid79", "Xid48", "GpuLost", "EccDoubleBit"])
STEP = st.tuples(STATUSES, REASONS, STATUSES, REASONS, st.sampled_from(["Recovered", "NvmlOk", "GpuReset"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=12))
def test_observe_invariants(steps):
    """Verify over random condition histories: a fault is published only when it opens, every False
    reason is open afterwards, healthy only when nothing is open, re-observing publishes nothing,
    and every name is valid."""
    view = None
    t = T0
    for n_status, n_reason, k_status, k_reason, true_reason in steps:
        t += 5
        conds = []
        if n_status is not None:
            conds.append(nvml(n_status, n_reason if n_status == "False" else true_reason, t))
        if k_status is not None:
            conds.append(kmsg(k_status, k_reason if k_status == "False" else "GpuReset", t))
        g = make_gpu(UUIDS[0], *conds)
        before = set(view.faults) if view is not None else set()
        new, events = observe(view, g, NOW, CTX)
        false_reasons = {c.reason for c in conds if c.status == "False"}
        assert false_reasons <= set(new.faults)
        for e in events:
            assert DNS1123.fullmatch(e.name) and len(e.name) <= MAX_NAME
            if e.spec.is_healthy:
                assert not new.faults
            else:
                reason = e.spec.metadata["reason"]
                assert reason not in before and reason in new.faults
        assert len({e.name for e in events}) == len(events)
        again, repeat = observe(new, g, NOW, CTX)
        assert repeat == [] and again.faults == new.faults
        view = new
