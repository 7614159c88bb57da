"""Health as a level (pure, nvsentinel.policy.conditions): NVML's recovery action beside the sticky
event finding, Unknown while NVML does not answer, and what merge_status writes for each."""
from __future__ import annotations

import pytest

from nvsentinel._proto import gpu_pb2
from nvsentinel.policy import conditions as c
from nvsentinel.policy.conditions import (
    GpuView, Lost, RecoveryAction, Recovered, Reset, Responsive, Unresponsive, Xid, decide,
)
from nvsentinel.xid import Action, default_catalog, load_catalog, parse_overrides

HEALTHY = GpuView()


def run(*events, view=HEALTHY, **kw):
    decisions = []
    for event in events:
        d = decide(view, event, **kw)
        decisions.append(d)
        view = d.view
    return view, decisions


@pytest.mark.parametrize(
    ("value", "reason", "action"),
    [
        (1, "RecoveryActionGpuReset", Action.COMPONENT_RESET),
        (2, "RecoveryActionNodeReboot", Action.RESTART_BM),
        (3, "RecoveryActionDrainP2p", Action.COMPONENT_RESET),
        (4, "RecoveryActionDrainAndReset", Action.COMPONENT_RESET),
        (5, "RecoveryActionRecoverImexDomain", Action.CONTACT_SUPPORT),
        (6, "RecoveryActionBusReset", Action.COMPONENT_RESET),
        (7, "RecoveryActionSystemReboot", Action.RESTART_BM),
        (42, "RecoveryAction42", Action.UNKNOWN),  # unknown: never healthy, a human looks
    ],
)
def test_each_recovery_action_is_a_false_condition_with_its_action(value, reason, action):
    view, (d,) = run(RecoveryAction(value))
    assert (d.changed, d.note) == (True, "recovery-action")
    assert view.condition()[:2] == ("False", reason)
    assert view.action == action
    # the wire form round-trips to the same meaning (what the publisher decodes)
    kind = c.Reason.from_wire(reason).kind_of(default_catalog())
    assert (kind.check_name, kind.classification.action, kind.classification.fatal) == (
        c.CHECK_RECOVERY_ACTION, action, True)


def test_none_is_healthy_and_back_to_none_is_recovered():
    view, (d,) = run(RecoveryAction(0))
    assert (d.changed, view.condition()[:2]) == (False, ("True", c.REASON_HEALTHY))
    view, ds = run(RecoveryAction(1), RecoveryAction(1), RecoveryAction(0))
    assert [d.changed for d in ds] == [True, False, True]  # the same level again writes nothing
    assert view.condition()[:2] == ("True", c.REASON_RECOVERED)
    assert c.REASON_RECOVERED in c.RECOVERY_REASONS  # so the publisher publishes the healthy event
    assert "GPU_RESET" in view.condition()[2] and view.action == Action.NONE


def test_the_worse_of_the_event_finding_and_the_level_shows():
    # XID 48 (COMPONENT_RESET) open, then NODE_REBOOT (RESTART_BM): the level is worse and shows
    view, ds = run(Xid(48), RecoveryAction(2))
    assert view.condition()[:2] == ("False", "RecoveryActionNodeReboot") and view.action == Action.RESTART_BM
    # the level drops to GPU_RESET: a tie with XID 48, the event finding shows
    view, (d,) = run(RecoveryAction(1), view=view)
    assert view.condition()[:2] == ("False", "Xid48") and d.changed
    # back to NONE with the event finding open: still False (sticky), not Recovered
    view, (d,) = run(RecoveryAction(0), view=view)
    assert view.condition()[:2] == ("False", "Xid48") and view.recovery is None and not d.changed
    # XID 79 open, GPU_RESET level: the XID is worse
    view, _ = run(Xid(79), RecoveryAction(1))
    assert view.condition()[:2] == ("False", "Xid79")


def test_a_recovery_signal_clears_the_event_finding_but_not_the_level():
    view, _ = run(Lost(), RecoveryAction(1))
    assert view.condition()[1] == "GpuLost"
    view, (d,) = run(Recovered(), view=view)
    assert view.condition()[:2] == ("False", "RecoveryActionGpuReset") and d.changed
    view, _ = run(RecoveryAction(0), view=view)
    assert view.condition()[:2] == ("True", c.REASON_RECOVERED)


def test_a_reset_clears_both_and_a_level_still_set_comes_back():
    view, _ = run(Xid(79), RecoveryAction(2))
    view, (d,) = run(Reset("he-1"), view=view)
    assert view.condition()[:2] == ("True", c.REASON_GPU_RESET) and d.changed
    view, _ = run(Reset("he-2"), RecoveryAction(2), view=run(Xid(79))[0])
    assert view.condition()[:2] == ("False", "RecoveryActionNodeReboot")


def test_unresponsive_is_unknown_until_a_fresh_answer():
    view, (d,) = run(Unresponsive("nvmlDeviceGetFieldValues on GPU 2 did not return within 10 s"))
    assert view.condition() == ("Unknown", c.REASON_UNRESPONSIVE,
                                "nvmlDeviceGetFieldValues on GPU 2 did not return within 10 s")
    assert d.changed and not view.healthy and view.action == Action.NONE
    assert c.Reason.from_wire(c.REASON_UNRESPONSIVE) == c.UNRESPONSIVE
    # an event while unresponsive is kept, and shows once NVML answers again
    view, ds = run(Xid(79), Responsive(), view=view)
    assert ds[0].view.condition()[0] == "Unknown" and ds[0].changed  # the action changed (RESTART_BM)
    assert ds[1].changed and view.condition()[:2] == ("False", "Xid79")
    # Responsive on an answering GPU changes nothing
    view, (d,) = run(Responsive())
    assert (d.changed, d.note, view) == (False, "responsive", HEALTHY)
    view, _ = run(Unresponsive("x"), Responsive())
    assert view.condition()[:2] == ("True", c.REASON_HEALTHY)


def test_an_xid_override_is_applied_by_decide():
    catalog = load_catalog(parse_overrides({"version": 1, "overrides": {"13": {"action": "COMPONENT_RESET"}}}))
    assert decide(HEALTHY, Xid(13)).view.condition()[0] == "True"  # benign in the package catalog
    view = decide(HEALTHY, Xid(13), catalog=catalog).view
    assert view.condition()[:2] == ("False", "Xid13") and view.action == Action.COMPONENT_RESET


def _status(*conds, action=""):
    st = gpu_pb2.GpuStatus(recommended_action=action)
    for type_, status, reason in conds:
        st.conditions.add(type=type_, status=status, reason=reason, message="m")
    return st


@pytest.mark.parametrize(
    ("current", "view", "status", "action"),
    [
        # Unknown on a healthy GPU: NONE stays NONE, nothing raised
        (_status(("NvmlHealthy", "True", "NvmlOk"), action="NONE"), run(Unresponsive("x"))[0], "Unknown", "NONE"),
        # Unknown over an open XID 79: its action stands
        (_status(("NvmlHealthy", "False", "Xid79"), action="RESTART_BM"), run(Xid(79), Unresponsive("x"))[0],
         "Unknown", "RESTART_BM"),
        # a level: False with its action
        (_status(action="NONE"), run(RecoveryAction(1))[0], "False", "COMPONENT_RESET"),
        # back to NONE: True, NONE (rule 8)
        (_status(("NvmlHealthy", "False", "RecoveryActionGpuReset"), action="COMPONENT_RESET"),
         run(RecoveryAction(1), RecoveryAction(0))[0], "True", "NONE"),
    ],
)
def test_merge_status_for_levels_and_unknown(current, view, status, action):
    out = c.merge_status(current, view, 100)
    mine = c.find_condition(out, c.NVML_HEALTHY)
    assert (mine.status, out.recommended_action) == (status, action)
