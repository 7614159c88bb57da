"""Node condition decisions (pure): which of our condition types a Node carries, with which reason and message,
and a patch that holds only our types and moves lastTransitionTime only on a real transition."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from nvsentinel.cluster.conditions import logic
from nvsentinel.cluster.conditions.config import NodeConditionsConfig
from nvsentinel.policy.healthevent import Entity, HealthEvent, HealthEventSpec, HealthEventStatus, Phase, format_time

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
LATER = T0 + dt.timedelta(minutes=5)


def event(name: str, codes: tuple[str, ...] = ("79",), *, at: int = 0, phase: Phase = Phase.QUARANTINED,
          check: str = "xid-error-check", fatal: bool = True, healthy: bool = False, gpus: tuple[str, ...] = ("GPU-a",),
          mode: str = "") -> HealthEvent:
    spec = HealthEventSpec(source="test", node_name="n1", component_class="GPU", check_name=check, is_fatal=fatal,
                           is_healthy=healthy, detected_at=T0 + dt.timedelta(seconds=at), error_codes=codes,
                           entities_impacted=tuple(Entity("GPU", g) for g in gpus))
    return HealthEvent(name=name, spec=spec, status=HealthEventStatus(phase=phase, remediation_mode=mode))


def node(*conds: dict) -> dict:
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastTransitionTime": "2025-01-01T00:00:00Z"}
    return {"metadata": {"name": "n1", "resourceVersion": "7"}, "status": {"conditions": [ready, *conds]}}


def applied(n: dict, p: logic.NodePlan) -> dict:
    """The Node after the API server merged the patch by `type` (strategic merge of status.conditions)."""
    conds = {c["type"]: c for c in n["status"]["conditions"]}
    for c in (p.patch or {"status": {"conditions": []}})["status"]["conditions"]:
        conds[c["type"]] = {**conds.get(c["type"], {}), **c}
    return {**n, "status": {"conditions": list(conds.values())}}


def types(p: logic.NodePlan) -> list[str]:
    return [c["type"] for c in p.patch["status"]["conditions"]] if p.patch else []


# ---- which events count ------------------------------------------------------------------------------

@pytest.mark.parametrize(("ev", "counted"), [
    (event("q", phase=Phase.QUARANTINED), True),
    (event("d", phase=Phase.DRAINING), True),
    (event("r", phase=Phase.REMEDIATED), True),
    (event("new", phase=Phase.NEW), False),              # not taken up by a stage yet
    (event("res", phase=Phase.RESOLVED), False),
    (event("can", phase=Phase.CANCELLED), False),
    (event("warn", fatal=False), False),
    (event("ok", fatal=False, healthy=True), False),
])
def test_which_events_count(ev: HealthEvent, counted: bool) -> None:
    assert logic.counts(ev) is counted


@pytest.mark.parametrize(("codes", "check", "reason", "mirror"), [
    (("79",), "xid-error-check", "GpuXid79", "NvidiaXID79Error"),
    (("145.RLW_SRC_TRACK",), "xid-error-check", "GpuXid145", "NvidiaXID145Error"),
    (("48",), "memory-ecc-check", "GpuXid48", "NvidiaXID48Error"),
    (("SXID.24007",), "nvswitch-sxid-check", "SXid24007", "NvidiaNVLinkError"),
    (("RECOVERY_ACTION.GPU_RESET",), "gpu-recovery-action-check", "RecoveryActionGpuReset", "NvidiaXIDError"),
    (("RECOVERY_ACTION.NODE_REBOOT",), "gpu-recovery-action-check", "RecoveryActionNodeReboot", "NvidiaXIDError"),
    (("NotACode",), "gpu-health-check", "GpuHealthCheck", "NvidiaXIDError"),
    ((), "gpu-lost-check", "GpuLostCheck", "NvidiaXIDError"),
    (("junk", "13"), "xid-error-check", "GpuXid13", "NvidiaXID13Error"),    # the first numeric code
])
def test_reasons(codes: tuple[str, ...], check: str, reason: str, mirror: str) -> None:
    ev = event("e", codes, check=check)
    assert (logic.fault_reason(ev), logic.mirror_reason(ev)) == (reason, mirror)


# ---- our condition --------------------------------------------------------------------------------

def test_a_fault_sets_false_with_reason_and_message_naming_it() -> None:
    p = logic.plan(node(), [event("n1.gpua.xid79", gpus=("GPU-abc",))], "off", T0)
    (c,) = p.patch["status"]["conditions"]
    assert c == {"type": "NVSentinelGPUHealthy", "status": "False", "reason": "GpuXid79",
                 "message": "1 open fatal HealthEvent(s): n1.gpua.xid79 (XID 79, GPU GPU-abc); nvsentinel",
                 "lastHeartbeatTime": format_time(T0), "lastTransitionTime": format_time(T0)}
    assert p.actions == ("set-false",) and p.unhealthy
    assert "Ready" not in types(p), "only our own types are in the patch"


def test_the_oldest_fault_gives_the_reason_and_all_are_named() -> None:
    evs = [event("late", ("SXID.12",), at=30), event("early", ("RECOVERY_ACTION.GPU_RESET",), at=1,
                                                        check="gpu-recovery-action-check")]
    (c,) = logic.plan(node(), evs, "off", T0).patch["status"]["conditions"]
    assert c["reason"] == "RecoveryActionGpuReset"
    assert c["message"].startswith("2 open fatal HealthEvent(s): early (recovery action GPU_RESET, GPU GPU-a), "
                                   "late (SXID 12, GPU GPU-a)")


def test_nothing_is_written_when_already_as_wanted() -> None:
    n = node()
    first = logic.plan(n, [event("e")], "off", T0)
    again = logic.plan(applied(n, first), [event("e")], "off", LATER)
    assert again.patch is None and again.actions == () and again.unhealthy


def test_a_second_fault_keeps_the_transition_time_and_a_resolve_moves_it() -> None:
    n = applied(node(), logic.plan(node(), [event("a")], "off", T0))
    second = logic.plan(n, [event("a"), event("b", ("48",), at=5)], "off", LATER)
    (c,) = second.patch["status"]["conditions"]
    assert c["lastTransitionTime"] == format_time(T0) and c["lastHeartbeatTime"] == format_time(LATER)
    assert "2 open fatal" in c["message"] and c["reason"] == "GpuXid79" and second.actions == ("update",)
    n = applied(n, second)
    gone = T0 + dt.timedelta(hours=1)
    cleared = logic.plan(n, [dataclasses.replace(event("a"), status=HealthEventStatus(phase=Phase.RESOLVED))], "off",
                         gone)
    (c,) = cleared.patch["status"]["conditions"]
    assert (c["status"], c["reason"], c["lastTransitionTime"]) == ("True", "NoOpenFaults", format_time(gone))
    assert cleared.actions == ("set-true",) and not cleared.unhealthy
    assert logic.plan(applied(n, cleared), [], "off", gone + dt.timedelta(hours=1)).patch is None


def test_a_node_that_never_had_a_fault_gets_no_condition() -> None:
    for evs in ([], [event("new", phase=Phase.NEW)], [event("warn", fatal=False)]):
        p = logic.plan(node(), evs, "always", T0)
        assert p.patch is None and not p.unhealthy


def test_values_from_a_node_credential_are_bounded_and_printable() -> None:
    ev = event("x" * 300 + "\x1b[31m", gpus=("GPU-\x00" + "y" * 500,))
    msg = logic.plan(node(), [ev] * 40, "off", T0).patch["status"]["conditions"][0]["message"]
    assert len(msg) <= logic.MAX_MESSAGE and msg.isprintable() and msg.endswith("; nvsentinel")
    assert ", and 35 more; nvsentinel" in msg


# ---- the mirror -----------------------------------------------------------------------------------

def test_mirror_off_writes_only_our_condition() -> None:
    assert types(logic.plan(node(), [event("e", mode="external")], "off", T0)) == ["NVSentinelGPUHealthy"]


def test_mirror_always_sets_accelerated_hardware_ready_false() -> None:
    p = logic.plan(node(), [event("e")], "always", T0)
    mirror = p.patch["status"]["conditions"][1]
    assert (mirror["type"], mirror["status"], mirror["reason"]) == ("AcceleratedHardwareReady", "False",
                                                                     "NvidiaXID79Error")
    assert mirror["message"].endswith(logic.MARKER) and p.actions == ("set-false", "mirror-false")


def test_mirror_external_only_on_handed_off_nodes() -> None:
    assert types(logic.plan(node(), [event("e", mode="nvsentinel")], "external", T0)) == ["NVSentinelGPUHealthy"]
    assert types(logic.plan(node(), [event("e", mode="approve")], "external", T0)) == ["NVSentinelGPUHealthy"]
    assert types(logic.plan(node(), [event("e", mode="external")], "external", T0)) == [
        "NVSentinelGPUHealthy", "AcceleratedHardwareReady"]


def test_our_mirror_is_flipped_back_and_a_foreign_one_left_alone() -> None:
    n = applied(node(), logic.plan(node(), [event("e", mode="external")], "external", T0))
    cleared = logic.plan(n, [], "external", LATER)
    assert [(c["type"], c["status"]) for c in cleared.patch["status"]["conditions"]] == [
        ("NVSentinelGPUHealthy", "True"), ("AcceleratedHardwareReady", "True")]
    assert cleared.actions == ("set-true", "mirror-true")
    # the EKS node monitoring agent's own condition, False or True: never ours to change
    for status in ("False", "True"):
        theirs = {"type": "AcceleratedHardwareReady", "status": status, "reason": "NvidiaXID13Error",
                  "message": "detected XID-13", "lastTransitionTime": "2025-06-01T00:00:00Z"}
        faulty = logic.plan(node(theirs), [event("e")], "always", T0)
        assert types(faulty) == ["NVSentinelGPUHealthy"]
        healthy = applied(node(theirs), faulty)
        assert types(logic.plan(healthy, [], "always", LATER)) == ["NVSentinelGPUHealthy"]


def test_mirror_turned_off_clears_our_earlier_false() -> None:
    n = applied(node(), logic.plan(node(), [event("e")], "always", T0))
    p = logic.plan(n, [event("e")], "off", LATER)
    assert [(c["type"], c["status"]) for c in p.patch["status"]["conditions"]] == [("AcceleratedHardwareReady", "True")]


def test_config_refuses_an_unknown_mirror_mode() -> None:
    NodeConditionsConfig(node_condition_mirror="external").validate()
    with pytest.raises(ValueError, match="--node-condition-mirror must be one of off, external, always"):
        NodeConditionsConfig(node_condition_mirror="on").validate()
