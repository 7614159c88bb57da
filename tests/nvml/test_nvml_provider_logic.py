"""The NVML provider's pure decisions (nvsentinel.policy.conditions): table-driven."""
from __future__ import annotations

import pytest

from nvsentinel._proto import gpu_pb2
from nvsentinel.policy import conditions as logic
from nvsentinel.policy.conditions import DoubleBitEcc, GpuView, Lost, Recovered, SingleBitEcc, Xid
from nvsentinel.xid import Action

HEALTHY = GpuView()
XID79 = logic.decide(HEALTHY, Xid(79)).view
XID48 = logic.decide(HEALTHY, Xid(48)).view
LOST = logic.decide(HEALTHY, Lost()).view


@pytest.mark.parametrize(
    ("view", "event", "ignored", "changed", "status", "reason", "action", "note"),
    [
        (HEALTHY, Xid(79), (), True, "False", "Xid79", Action.RESTART_BM, "fatal"),
        (HEALTHY, Xid(48), (), True, "False", "Xid48", Action.COMPONENT_RESET, "fatal"),
        (HEALTHY, Xid(13), (), False, "True", logic.REASON_HEALTHY, Action.NONE, "benign"),
        (HEALTHY, Xid(31), (), False, "True", logic.REASON_HEALTHY, Action.NONE, "benign"),
        (HEALTHY, Xid(79), (79,), False, "True", logic.REASON_HEALTHY, Action.NONE, "ignored"),
        (HEALTHY, Xid(99999), (), True, "False", "Xid99999", Action.CONTACT_SUPPORT, "fatal"),
        (HEALTHY, DoubleBitEcc(), (), True, "False", "EccDoubleBit", Action.COMPONENT_RESET, "fatal"),
        (HEALTHY, DoubleBitEcc(), (48,), False, "True", logic.REASON_HEALTHY, Action.NONE, "ignored"),
        (HEALTHY, SingleBitEcc(), (), False, "True", logic.REASON_HEALTHY, Action.NONE, "sbe"),
        (HEALTHY, Lost(), (), True, "False", "GpuLost", Action.RESTART_BM, "lost"),
        (HEALTHY, Recovered(), (), False, "True", logic.REASON_HEALTHY, Action.NONE, "healthy"),
        # a later benign XID never heals
        (XID79, Xid(13), (), False, "False", "Xid79", Action.RESTART_BM, "benign"),
        # a later fatal XID replaces the finding only when strictly worse
        (XID79, Xid(48), (), False, "False", "Xid79", Action.RESTART_BM, "not-worse"),
        (XID48, Xid(79), (), True, "False", "Xid79", Action.RESTART_BM, "worse"),
        (XID48, Xid(48), (), False, "False", "Xid48", Action.COMPONENT_RESET, "not-worse"),
        (XID48, Lost(), (), True, "False", "GpuLost", Action.RESTART_BM, "lost"),
        (LOST, Lost(), (), False, "False", "GpuLost", Action.RESTART_BM, "lost"),
        (LOST, Recovered(), (), True, "True", logic.REASON_RECOVERED, Action.NONE, "recovered"),
        (XID79, Recovered(), (), True, "True", logic.REASON_RECOVERED, Action.NONE, "recovered"),
        (XID79, Xid(79), (79,), False, "False", "Xid79", Action.RESTART_BM, "ignored"),
    ],
)
def test_nvml_provider_decide(view, event, ignored, changed, status, reason, action, note):
    d = logic.decide(view, event, ignored_xids=ignored)
    assert (d.changed, d.view.condition()[:2], d.view.action, d.note) == (changed, (status, reason), action, note)


def test_nvml_provider_messages_come_from_the_catalog():
    assert XID79.condition()[2] == "XID 79: GPU has fallen off the bus"
    dbe = logic.decide(HEALTHY, DoubleBitEcc()).view
    assert "Double Bit ECC Error" in dbe.condition()[2]
    assert logic.decide(HEALTHY, SingleBitEcc()).view.sbe_count == 1


def test_nvml_provider_decide_rejects_unknown_events():
    with pytest.raises(TypeError):
        logic.decide(HEALTHY, object())  # type: ignore[arg-type]


def _cond(type_, status, reason="r", seconds=100):
    c = gpu_pb2.Condition(type=type_, status=status, reason=reason, message="m")
    c.last_transition_time.seconds = seconds
    return c


@pytest.mark.parametrize(
    ("others", "current_action", "view", "expect_action"),
    [
        ([], "", HEALTHY, "NONE"),
        ([], "", XID79, "RESTART_BM"),
        ([], "RESTART_BM", HEALTHY, "NONE"),
        ([_cond("KmsgHealthy", "False")], "RESTART_BM", HEALTHY, "RESTART_BM"),  # not ours to clear
        ([_cond("KmsgHealthy", "False")], "RESTART_BM", XID48, "RESTART_BM"),  # worse one kept
        ([_cond("KmsgHealthy", "False")], "COMPONENT_RESET", XID79, "RESTART_BM"),
        ([_cond("KmsgHealthy", "True")], "RESTART_BM", XID48, "COMPONENT_RESET"),
    ],
)
def test_nvml_provider_merge_status(others, current_action, view, expect_action):
    current = gpu_pb2.GpuStatus(recommended_action=current_action)
    current.conditions.extend(others)
    out = logic.merge_status(current, view, 200)
    assert out.recommended_action == expect_action
    assert list(out.conditions[:-1]) == others  # other providers' conditions untouched, in order
    mine = out.conditions[-1]
    assert (mine.type, mine.status, mine.reason) == ("NvmlHealthy", *view.condition()[:2])
    assert mine.last_transition_time.seconds == 200


def test_nvml_provider_merge_replaces_in_place_and_keeps_transition_time():
    current = gpu_pb2.GpuStatus(recommended_action="NONE")
    current.conditions.extend([_cond("A", "True"), _cond("NvmlHealthy", "True", logic.REASON_HEALTHY, 50),
                               _cond("B", "True"), _cond("NvmlHealthy", "True", "dup", 60)])
    current.conditions[1].message = HEALTHY.condition()[2]
    same = logic.merge_status(current, HEALTHY, 999)
    assert [c.type for c in same.conditions] == ["A", "NvmlHealthy", "B"]
    assert same.conditions[1].last_transition_time.seconds == 50  # status unchanged: time kept
    flipped = logic.merge_status(same, XID79, 999)
    assert [c.type for c in flipped.conditions] == ["A", "NvmlHealthy", "B"]
    assert flipped.conditions[1].last_transition_time.seconds == 999
    assert logic.merge_status(same, HEALTHY, 1234) == same  # idempotent: no write needed
