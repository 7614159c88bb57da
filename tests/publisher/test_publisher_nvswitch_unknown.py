"""The publisher's issue-17 rules: NVSwitch SXids are one node-level event, Unknown conditions are
published non-fatal, and GPU events carry the GPU's PCI slot and board serial (docs/publisher.md)."""
from __future__ import annotations

import datetime as dt

import pytest
from pubhelpers import NOW, T0, UUIDS, FakeKube, kmsg, make_gpu, nvml

from nvsentinel.node.publisher.logic import Context, observe
from nvsentinel.node.publisher.publisher import Publisher
from nvsentinel.policy.conditions import CHECK_RESPONSIVE, CHECK_SXID, REASON_UNRESPONSIVE, Reason
from nvsentinel.policy.healthevent import (
    ENTITY_GPU, ENTITY_GPU_SERIAL, ENTITY_PCI, LABEL_COMPONENT_CLASS, LABEL_IS_FATAL, Entity, HealthEvent,
)
from nvsentinel.xid import Action, Override, default_catalog, load_catalog

NODE = "gpu-node-7"
CTX = Context(node_name=NODE, catalog=default_catalog())
SXID = Reason.for_sxid(24007).wire
SWITCH_MSG = "NVSwitch fault on nvidia-nvswitch0 (PCI 0000:c3:00): SXid 24007, link 28: sourcetrack timeout"
EIGHT = [f"GPU-{i:08x}-b6d3-9791-4798-481be2406bdb" for i in range(0x10, 0x18)]


def run(*gpus, view=None, ctx=CTX):
    events = []
    for g in gpus:
        view, evs = observe(view, g, NOW, ctx)
        events.extend(evs)
    return view, events


def with_slot(gpu, pci="00000000:5D:00.0", serial="1650924060041"):
    gpu.spec.pci_bus_id = pci
    gpu.spec.serial = serial
    return gpu


# ---- NVSwitch ----

def test_sxid_on_every_gpu_is_one_nvswitch_event():
    """Verify eight GPUs reporting one SXid at one shared time each compute the same node-level
    event: NVSwitch, nvswitch-sxid-check, SXID.24007, fatal CONTACT_SUPPORT, no GPU entity."""
    names, evs = set(), []
    for uuid in EIGHT:  # each GPU with its own view, as the publisher keeps them
        _, events = run(make_gpu(uuid, kmsg("False", SXID, T0 + 0.5, SWITCH_MSG), action="RESTART_BM"))
        (ev,) = events
        names.add(ev.name)
        evs.append(ev)
    assert names == {f"{NODE}.nvswitch.sxid24007.{T0}"}
    assert all(e.create_body() == evs[0].create_body() for e in evs)  # identical copies
    assert HealthEvent.from_dict(evs[0].to_dict()) == evs[0]
    s = evs[0].spec
    assert (s.component_class, s.check_name, s.error_codes) == ("NVSwitch", CHECK_SXID, ("SXID.24007",))
    assert (s.is_fatal, s.is_healthy, s.recommended_action) == (True, False, Action.CONTACT_SUPPORT)
    assert s.entities_impacted == ()
    assert (s.source, s.message) == ("kmsg-monitor", SWITCH_MSG)
    assert s.detected_at == dt.datetime.fromtimestamp(T0 + 0.5, dt.timezone.utc)
    assert dict(s.metadata) == {"conditionType": "KmsgHealthy", "reason": SXID}
    assert evs[0].labels[LABEL_COMPONENT_CLASS] == "NVSwitch" and evs[0].labels[LABEL_IS_FATAL] == "true"


@pytest.mark.parametrize("override, fatal, action", [
    ({"SXID.24007": Override(fatal=False)}, False, Action.NONE),
    ({"SXID.24007": Override(action=Action.RESTART_BM)}, True, Action.RESTART_BM),
])
def test_sxid_event_follows_site_overrides(override, fatal, action):
    """Verify the NVSwitch event's isFatal and action come from the catalog with site overrides."""
    ctx = Context(NODE, load_catalog(override))
    _, (ev,) = run(make_gpu(UUIDS[0], kmsg("False", SXID, T0, SWITCH_MSG)), ctx=ctx)
    assert (ev.spec.is_fatal, ev.spec.recommended_action) == (fatal, action)
    assert ev.labels[LABEL_IS_FATAL] == ("true" if fatal else "false")


def test_gpu_recovery_neither_lists_nor_closes_the_switch_fault():
    """Verify a GPU reset that clears a GPU's SXid copy publishes no healthy event of its own, and a
    healthy event for a real GPU fault closed alongside lists only that fault's code."""
    _, events = run(make_gpu(UUIDS[0], kmsg("False", SXID, T0, SWITCH_MSG)),
                    make_gpu(UUIDS[0], kmsg("True", "GpuReset", T0 + 30)))
    assert [e.spec.component_class for e in events] == ["NVSwitch"]
    _, events = run(make_gpu(UUIDS[1], nvml("False", "Xid79", T0), kmsg("False", SXID, T0 + 1, SWITCH_MSG)),
                    make_gpu(UUIDS[1], nvml("True", "Recovered", T0 + 20), kmsg("False", SXID, T0 + 1, SWITCH_MSG)),
                    make_gpu(UUIDS[1], nvml("True", "Recovered", T0 + 20), kmsg("True", "GpuReset", T0 + 40)))
    assert [(e.spec.component_class, e.spec.is_healthy) for e in events] == [
        ("GPU", False), ("NVSwitch", False), ("GPU", True)]  # no healthy while the SXid is open
    healthy = events[2]
    assert (healthy.spec.error_codes, healthy.spec.check_name) == (("79",), "xid-error-check")
    assert healthy.gpu_uuids == (UUIDS[1],)


def test_publisher_sends_one_create_for_the_whole_node(started_pub):
    """Verify the runtime queues the node-level event once, not once per GPU (no 409 storm)."""
    kube = FakeKube()
    pub = started_pub(kube)
    for uuid in EIGHT:
        pub.on_add(make_gpu(uuid, kmsg("False", SXID, T0, SWITCH_MSG)))
    assert pub.wait_idle(10)
    assert kube.order == [f"{NODE}.nvswitch.sxid24007.{T0}"] and kube.calls == 1
    assert kube.objects[kube.order[0]]["spec"]["componentClass"] == "NVSwitch"


@pytest.fixture
def started_pub():
    pubs: list[Publisher] = []

    def start(kube) -> Publisher:
        pub = Publisher(kube, node_name=NODE, debounce=0.0, backoff_initial=0.01, backoff_max=0.05).start()
        pubs.append(pub)
        return pub

    yield start
    for p in pubs:
        p.stop(flush_timeout=1.0)


# ---- Unknown ----

def test_unresponsive_is_published_non_fatal():
    """Verify NvmlHealthy Unknown/NvmlUnresponsive opens a fault whose event is non-fatal."""
    view, (ev,) = run(make_gpu(UUIDS[0], nvml("Unknown", REASON_UNRESPONSIVE, T0, "nvmlDeviceGetX ran past 5 s"),
                               action="RESTART_BM"))
    s = ev.spec
    assert (s.is_fatal, s.is_healthy, s.recommended_action) == (False, False, Action.NONE)
    assert (s.check_name, s.error_codes) == (CHECK_RESPONSIVE, ("NVML_UNRESPONSIVE",))
    assert ev.name == f"{NODE}.196b7c1a.nvmlunresponsive.{T0}"
    assert ev.labels[LABEL_IS_FATAL] == "false"
    assert set(view.faults) == {REASON_UNRESPONSIVE}


@pytest.mark.parametrize("reason, name", [("Xid79", "xid79"), ("", "unknown")])
def test_unknown_with_any_reason_is_non_fatal(reason, name):
    """Verify an Unknown condition with a reason the catalog calls fatal (or none) still publishes
    a non-fatal event: Unknown means the provider cannot tell."""
    _, (ev,) = run(make_gpu(UUIDS[0], nvml("Unknown", reason, T0), action="RESTART_BM"))
    assert (ev.spec.is_fatal, ev.spec.recommended_action) == (False, Action.NONE)
    assert ev.name == f"{NODE}.196b7c1a.{name}.{T0}"


def test_unknown_never_closes_a_fault_nor_counts_as_healthy():
    """Verify a fault reported by NVML and the kernel log stays open while one of them is Unknown,
    and closes (one healthy event) only when both are True."""
    _, events = run(
        make_gpu(UUIDS[0], nvml("False", "Xid79", T0), kmsg("False", "Xid79", T0)),
        make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 5), kmsg("Unknown", "KmsgStalled", T0 + 6)),
        make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 5), kmsg("True", "GpuReset", T0 + 9)),
    )
    assert [(e.spec.is_healthy, e.spec.is_fatal, e.spec.metadata["reason"]) for e in events] == [
        (False, True, "Xid79"), (False, False, "KmsgStalled"), (True, False, "GpuReset")]
    assert events[2].name == f"{NODE}.196b7c1a.healthy.{T0 + 9}"


def test_unknown_then_false_with_the_same_reason_publishes_the_fatal_event():
    """Verify a reason first seen Unknown (non-fatal) and then False gets its fatal event."""
    _, events = run(make_gpu(UUIDS[0], nvml("Unknown", "Xid79", T0)),
                    make_gpu(UUIDS[0], nvml("False", "Xid79", T0 + 3)))
    assert [(e.spec.is_fatal, e.name) for e in events] == [
        (False, f"{NODE}.196b7c1a.xid79.{T0}"), (True, f"{NODE}.196b7c1a.xid79.{T0 + 3}")]


# ---- the GPU's slot and board ----

def test_gpu_events_carry_pci_slot_and_serial():
    """Verify fatal and healthy GPU events name the GPU, then its PCI slot, then its serial."""
    _, events = run(with_slot(make_gpu(UUIDS[0], nvml("False", "Xid79", T0))),
                    with_slot(make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 5))))
    want = (Entity(ENTITY_GPU, UUIDS[0]), Entity(ENTITY_PCI, "00000000:5D:00.0"),
            Entity(ENTITY_GPU_SERIAL, "1650924060041"))
    assert [e.spec.entities_impacted for e in events] == [want, want]
    assert events[0].pci_slots == ("0000:5d:00.0",)


@pytest.mark.parametrize("pci, serial, want", [
    ("", "", [ENTITY_GPU]),
    ("0000:3b:00.0", "", [ENTITY_GPU, ENTITY_PCI]),
    ("", "42", [ENTITY_GPU, ENTITY_GPU_SERIAL]),
])
def test_gpu_events_name_only_what_the_device_api_has(pci, serial, want):
    """Verify a missing PCI id or serial is left out, never sent empty (the CRD wants minLength 1)."""
    _, (ev,) = run(with_slot(make_gpu(UUIDS[0], nvml("False", "Xid48", T0)), pci, serial))
    assert [e.type for e in ev.spec.entities_impacted] == want
