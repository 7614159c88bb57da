"""`nvsentinel status`'s summary (nvsentinel/cli/views/status.py) from fixed objects and a fixed clock, and its parser."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import pathlib

import pytest

from nvsentinel.cli.commands import status as status_command
from nvsentinel.cli.views import status
from nvsentinel.cluster.quarantine.logic import ANNOTATION
from nvsentinel.policy.breaker import BreakerPolicy

UTC = dt.timezone.utc
NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
TAINT = {"key": "nvsentinel.nvidia.com/quarantine", "value": "true", "effect": "NoSchedule"}
#: The reasons the brief (and docs/operations.md, "What needs a human") say park a Drained event.
HUMAN_REASONS = ("ManualRemediationRequired", "EscalatedToSupport", "RemediationFailed", "TerminateNotPossible",
                 "GpuResetNotPossible", "InvalidStrategy", "NoRemediation")


def ts(minutes_ago: float) -> str:
    return (NOW - dt.timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(name, *, gpu=True, cordoned=False, record=None, taint=False, capacity=None):
    meta = {"name": name, "labels": {"nvidia.com/gpu.present": "true"} if gpu and capacity is None else {}}
    if record is not None:
        meta["annotations"] = {ANNOTATION: record if isinstance(record, str) else json.dumps(record)}
    spec = {"unschedulable": cordoned} if cordoned else {}
    if taint:
        spec["taints"] = [{"key": "dedicated", "effect": "NoSchedule"}, TAINT]
    out = {"metadata": meta, "spec": spec}
    if capacity is not None:
        out["status"] = {"capacity": {"nvidia.com/gpu": capacity}}
    return out


def ours(since_min=1, by_us=True):
    return {"events": ["e"], "since": ts(since_min), "cordonedByUs": by_us}


def event(name, phase=None, *, node_name="n1", created=60, conditions=(), resolved_at=None):
    st = {"conditions": [{"type": t, "status": s, "reason": r, "message": f"{r} message\nsecond line",
                          "lastTransitionTime": ts(ago)} for t, s, r, ago in conditions]}
    if phase is not None:
        st["phase"] = phase
    if resolved_at is not None:
        st["resolvedAt"] = ts(resolved_at)
    return {"metadata": {"name": name, "creationTimestamp": ts(created)}, "spec": {"nodeName": node_name},
            "status": st}


def drained(name, reason, status_="False", **kw):
    return event(name, "Drained", conditions=[("Remediated", status_, reason, 10)], **kw)


# ---- nodes -------------------------------------------------------------------------------------------

def test_node_counts_split_cordons_by_owner():
    """Verify total/GPU/cordoned, and that a cordon is nvsentinel's only when its record says so."""
    nodes = [
        node("a", cordoned=True, record=ours(), taint=True),                   # ours
        node("b", cordoned=True),                                              # someone else, not ours at all
        node("c", cordoned=True, record=ours(by_us=False), taint=True),        # quarantined on another's cordon
        node("d", record=ours(), taint=True),                                  # uncordoned by hand, still held
        node("e", cordoned=True, taint=True),                                  # our taint, record removed by hand
        node("f", gpu=False),                                                  # a CPU node
        node("g", capacity="8"),                                               # GPU by capacity, no label
        node("h", capacity="0"),                                               # capacity 0: not a GPU node
    ]
    s = status.summarize_nodes(nodes)
    assert (s.total, s.gpu, s.cordoned) == (8, 6, 4)
    assert s.quarantined == ("a", "c", "d", "e")
    assert s.cordoned_by_nvsentinel == ("a",)
    assert s.cordoned_by_others == ("b", "c", "e")
    assert s.quarantined_uncordoned == ("d",)


def test_malformed_record_is_a_hold_but_not_our_cordon():
    """Verify a damaged ownership annotation still marks the node quarantined, never as our cordon."""
    s = status.summarize_nodes([node("x", cordoned=True, record="{not json")])
    assert s.quarantined == ("x",) and s.cordoned_by_nvsentinel == () and s.cordoned_by_others == ("x",)


def test_taint_key_is_the_controllers_flag():
    """Verify --taint-key decides which taint marks a quarantine."""
    n = node("x", cordoned=True, taint=True)
    assert status.summarize_nodes([n]).quarantined == ("x",)
    assert status.summarize_nodes([n], taint_key="other/key").quarantined == ()
    assert status.summarize_nodes([n], taint_key="dedicated").quarantined == ("x",)


# ---- HealthEvents ------------------------------------------------------------------------------------

def test_held_reasons_are_the_remediation_controller_s():
    """Verify the reasons counted as needing a human are exactly the remediation stage's held ones."""
    from nvsentinel.cluster.remediation.logic import HELD_REASONS

    assert set(HUMAN_REASONS) == set(HELD_REASONS)


@pytest.mark.parametrize("reason", HUMAN_REASONS)
def test_each_held_reason_in_drained_needs_a_human(reason):
    """Verify Drained + Remediated False + each held reason is listed, with node, condition and waiting time."""
    h = status.needs_human(drained("e1", reason))
    assert h is not None
    assert (h.name, h.node, h.phase, h.condition, h.reason) == ("e1", "n1", "Drained", "Remediated", reason)
    assert h.since == NOW - dt.timedelta(minutes=10) and h.created == NOW - dt.timedelta(minutes=60)
    assert h.message == f"{reason} message second line"  # one line


@pytest.mark.parametrize("obj", [
    drained("x", "ManualRemediationRequired", status_="True"),             # not False
    drained("x", "RebootJobFailed"),                                       # retried by the controller
    event("x", "Drained"),                                                 # no Remediated condition yet
    event("x", "Remediating", conditions=[("Remediated", "False", "RemediationFailed", 1)]),  # not parked
    event("x", "Draining", conditions=[("PodsDrained", "False", "Draining", 1)]),
    event("x", "Draining", conditions=[("PodsDrained", "True", "DrainTimeout", 1)]),
    event("x", "Quarantined", conditions=[("PodsDrained", "False", "DrainTimeout", 1)]),
    event("x", "New", conditions=[("NodeQuarantined", "False", "CircuitBreakerOpen", 1)]),
])
def test_other_states_do_not_need_a_human(obj):
    """Verify events the controllers still move (or that are not parked) are not listed."""
    assert status.needs_human(obj) is None


def test_drain_timeout_needs_a_human():
    """Verify Draining with PodsDrained False DrainTimeout is listed (a budget blocks the drain)."""
    h = status.needs_human(event("d", "Draining", conditions=[("PodsDrained", "False", "DrainTimeout", 5)]))
    assert h is not None and (h.phase, h.condition, h.reason) == ("Draining", "PodsDrained", "DrainTimeout")


def test_finished_at_prefers_resolved_at_then_latest_condition_then_creation():
    """Verify a cancel (no resolvedAt) counts from its latest condition change."""
    assert status.finished_at(event("r", "Resolved", resolved_at=5, conditions=[("Resolved", "True", "x", 1)])) == \
        NOW - dt.timedelta(minutes=5)
    assert status.finished_at(event("c", "Cancelled", conditions=[("Detected", "True", "a", 30),
                                                                  ("NodeQuarantined", "False", "b", 3)])) == \
        NOW - dt.timedelta(minutes=3)
    assert status.finished_at(event("c", "Cancelled", created=7)) == NOW - dt.timedelta(minutes=7)
    assert status.finished_at({"metadata": {}, "status": {"phase": "Cancelled"}}) is None


def test_event_counts_by_phase_recent_finished_and_humans():
    """Verify per-phase counts (missing phase = New), 24 h counts, breaker holds and humans oldest first."""
    objs = [
        event("new-1"),                                                                    # no phase: New
        event("new-held", "New", conditions=[("NodeQuarantined", "False", "CircuitBreakerOpen", 1)]),
        event("new-dry", "New", conditions=[("NodeQuarantined", "False", "DryRunCircuitBreakerOpen", 1)]),
        event("q", "Quarantined"),
        event("dr", "Draining", created=30, conditions=[("PodsDrained", "False", "DrainTimeout", 5)]),
        drained("h-young", "NoRemediation", created=20),
        drained("h-old", "EscalatedToSupport", created=90),
        drained("d", "RebootJobFailed"),
        event("rm", "Remediating"), event("rd", "Remediated"),
        event("res-recent", "Resolved", resolved_at=23 * 60),
        event("res-old", "Resolved", resolved_at=25 * 60),
        event("can-recent", "Cancelled", conditions=[("NodeQuarantined", "False", "SkippedByOverride", 60)]),
        event("can-old", "Cancelled", created=48 * 60),
    ]
    e = status.summarize_events(objs, NOW)
    assert e.total == 14 and e.open == 10
    assert dict(e.by_phase) == {"New": 3, "Quarantined": 1, "Draining": 1, "Drained": 3, "Remediating": 1,
                                "Remediated": 1, "Resolved": 2, "Cancelled": 2}
    assert (e.resolved_recent, e.cancelled_recent, e.held_by_breaker) == (1, 1, 1)
    assert [h.name for h in e.needs_human] == ["h-old", "dr", "h-young"]


def test_recent_window_is_a_parameter():
    """Verify the 24 h look-back can be narrowed (the JSON names it resolvedLast24h for the default)."""
    objs = [event("r", "Resolved", resolved_at=90)]
    assert status.summarize_events(objs, NOW).resolved_recent == 1
    assert status.summarize_events(objs, NOW, recent=dt.timedelta(hours=1)).resolved_recent == 0


# ---- the breaker -------------------------------------------------------------------------------------

def test_breaker_policy_flag_then_stored_then_default():
    """Verify the policy is read like `breaker status` reads it; unreadable stored values fall back."""
    assert status.breaker_policy(None) == BreakerPolicy(10.0, 50, 600.0)
    data = {"percent": "20", "maxNodes": "3", "windowSeconds": "bad"}
    assert status.breaker_policy(data) == BreakerPolicy(20.0, 3, 600.0)
    assert status.breaker_policy(data, max_nodes=7, window=60) == BreakerPolicy(20.0, 7, 60)


def cluster(n_gpu=20, cordoned_ago=(1, 2, 3)):
    nodes = [node(f"g{i:02d}") for i in range(n_gpu)]
    for i, ago in enumerate(cordoned_ago):
        nodes[i] = node(f"g{i:02d}", cordoned=True, record=ours(since_min=ago), taint=True)
    return nodes


def test_tripped_breaker_counts_cordons_in_the_window():
    """Verify state, counted cordons (only those in the window), limit from the stored policy, and the ref."""
    cm = {"data": {"state": "Tripped", "trippedAt": ts(2), "reason": "cordoning node g03 would make 3",
                   "percent": "10", "maxNodes": "50", "windowSeconds": "600"}}
    s = status.summarize(cluster(cordoned_ago=(1, 2, 30)), [], cm, now=NOW, configmap_ref="ns/cm")
    b = s.breaker
    assert (b["state"], b["storedState"], b["cordoned"], b["limit"], b["gpuNodes"]) == ("Tripped", "Tripped", 2, 2, 20)
    assert b["nodes"] == ["g00", "g01"] and b["windowSeconds"] == 600.0
    assert (b["configMap"], b["configMapFound"]) == ("ns/cm", True)


def test_trip_lapses_after_the_window_and_absent_configmap_is_closed():
    """Verify a trip older than the window reads Closed (stored Tripped), and no ConfigMap reads Closed."""
    cm = {"data": {"state": "Tripped", "trippedAt": ts(11)}}
    b = status.summarize(cluster(), [], cm, now=NOW, configmap_ref="ns/cm").breaker
    assert (b["state"], b["storedState"]) == ("Closed", "Tripped")
    b = status.summarize(cluster(), [], None, now=NOW, configmap_ref="ns/cm").breaker
    assert (b["state"], b["configMapFound"], b["cordoned"], b["limit"]) == ("Closed", False, 3, 2)


def test_reset_stops_earlier_cordons_counting_and_policy_override_wins():
    """Verify resetAt excludes earlier cordons, and an explicit policy replaces the stored one."""
    cm = {"data": {"state": "Closed", "resetAt": ts(1.5), "maxNodes": "1"}}
    b = status.summarize(cluster(), [], cm, now=NOW, configmap_ref="ns/cm").breaker
    assert (b["cordoned"], b["limit"]) == (1, 1)
    b = status.summarize(cluster(), [], cm, now=NOW, configmap_ref="ns/cm",
                         policy=BreakerPolicy(50, 50, 600)).breaker
    assert b["limit"] == 10


# ---- the document and the text -----------------------------------------------------------------------

def world():
    nodes = cluster(n_gpu=10, cordoned_ago=(1,)) + [node("other", gpu=False, cordoned=True)]
    events = [event("held", "New", conditions=[("NodeQuarantined", "False", "CircuitBreakerOpen", 1)]),
              drained("needs-me", "RemediationFailed", node_name="g00", created=125),
              event("res", "Resolved", resolved_at=30)]
    cm = {"data": {"state": "Tripped", "trippedAt": ts(1), "reason": "too\nmany"}}
    return status.summarize(nodes, events, cm, now=NOW, configmap_ref="nvsentinel/nvsentinel-circuit-breaker",
                            node_selector="pool=a", event_selector="team=b")


def test_json_shape_is_stable():
    """Verify the documented -o json keys (scripts rely on them) and a few values."""
    doc = status.to_json(world())
    json.dumps(doc)  # serializable as is
    assert list(doc) == ["time", "selectors", "nodes", "breaker", "healthEvents"]
    assert doc["time"] == "2024-05-01T12:00:00Z" and doc["selectors"] == {"nodes": "pool=a", "events": "team=b"}
    assert set(doc["nodes"]) == {"total", "gpu", "cordoned", "quarantined", "cordonedByNvsentinel",
                                 "cordonedByOthers", "quarantinedUncordoned", "quarantinedNodes",
                                 "cordonedByNvsentinelNodes", "cordonedByOthersNodes", "quarantinedUncordonedNodes",
                                 "byOwner", "owners"}
    assert set(doc["breaker"]) == {"state", "storedState", "trippedAt", "resetAt", "reason", "cordoned", "limit",
                                   "gpuNodes", "percent", "maxNodes", "windowSeconds", "nodes", "configMap",
                                   "configMapFound", "heldEvents"}
    assert set(doc["healthEvents"]) == {"total", "open", "byPhase", "resolvedLast24h", "cancelledLast24h",
                                        "heldByBreaker", "needsHuman", "awaitingApproval", "handedOff"}
    assert doc["nodes"]["byOwner"] == {"nvsentinel": 1, "external": 0, "approve": 0}
    assert doc["nodes"]["owners"] == [{"node": "g00", "owner": "nvsentinel", "scope": "node", "cordon": "nvsentinel",
                                       "events": 1, "since": ts(1)}]
    assert doc["healthEvents"]["awaitingApproval"] == [] and doc["healthEvents"]["handedOff"] == []
    assert doc["nodes"]["cordonedByOthersNodes"] == ["other"] and doc["nodes"]["cordoned"] == 2
    assert doc["breaker"]["heldEvents"] == doc["healthEvents"]["heldByBreaker"] == 1
    assert doc["healthEvents"]["needsHuman"] == [{
        "name": "needs-me", "node": "g00", "phase": "Drained", "condition": "Remediated",
        "reason": "RemediationFailed", "message": "RemediationFailed message second line",
        "created": ts(125), "since": ts(10)}]
    assert list(doc["healthEvents"]["byPhase"]) == ["New", "Quarantined", "Draining", "Drained", "Remediating",
                                                    "Remediated", "Resolved", "Cancelled"]


def test_text_has_each_block_aligned():
    """Verify the one-screen text: node, breaker and event lines, the phase table and the human's table."""
    lines = status.render(world()).splitlines()
    pairs = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in lines
             if ":" in ln and not ln.startswith("    ")}
    assert pairs["Nodes"] == "11 (10 GPU), selector pool=a"
    assert pairs["Cordoned"] == "2"
    assert pairs["Quarantined"] == "1 (g00)" and pairs["Cordoned by others"] == "1 (other)"
    assert pairs["Circuit breaker"] == "Tripped"
    assert pairs["Cordoned in window"] == "1" and pairs["Limit"] == "1 (10% of 10 GPU nodes, max 50)"
    assert pairs["Window"] == "600s" and pairs["Reason"] == "too many"
    assert pairs["Tripped at"] == f"{ts(1)} (60s ago)"
    assert pairs["Held events"] == "1 in New (CircuitBreakerOpen)"
    assert pairs["HealthEvents"] == "2 open, 3 in all, selector team=b"
    assert pairs["Resolved (24h)"] == "1" and pairs["Cancelled (24h)"] == "0" and pairs["Needs a human"] == "1"
    # every `Key:` value starts in one column
    starts = {len(ln) - len(ln.split(":", 1)[1].lstrip()) for ln in lines if ":" in ln and "T" not in ln[:3]}
    assert len(starts) == 1, starts
    phases = lines.index("  New   Quarantined   Draining   Drained   Remediating   Remediated")
    assert lines[phases + 1].split() == ["1", "0", "0", "1", "0", "0"]
    human = lines.index(next(ln for ln in lines if ln.split()[:2] == ["NAME", "NODE"]))
    assert lines[human].split() == ["NAME", "NODE", "PHASE", "REASON", "WAITING", "AGE"]
    assert lines[human + 1].split() == ["needs-me", "g00", "Drained", "RemediationFailed", "10m", "125m"]
    assert lines[human + 2:] == ["Awaiting approval:         none", "Handed off:                none"]
    owners = lines.index(next(ln for ln in lines if ln.split()[:2] == ["NODE", "OWNER"]))
    assert lines[owners + 1].split() == ["g00", "nvsentinel", "node", "nvsentinel", "1", "60s"]
    assert pairs["Owners"] == "nvsentinel 1"


def test_text_lists_few_names_and_says_none():
    """Verify long node lists are cut to five names with a count, and an empty cluster reads plainly."""
    nodes = [node(f"n{i}", cordoned=True) for i in range(7)]
    text = status.render(status.summarize(nodes, [], None, now=NOW, configmap_ref="ns/cm"))
    assert "Cordoned by others:      7 (n0, n1, n2, n3, n4, +2 more)" in text
    assert "ns/cm (absent: never tripped)" in text
    assert text.splitlines()[-3].split(":") == ["Needs a human", "             none"]
    assert text.splitlines()[-2:] == ["Awaiting approval:         none", "Handed off:                none"]
    assert "Tripped at" not in text and "Reason" not in text


def test_text_says_when_a_trip_has_lapsed_and_a_reset():
    """Verify a stored trip past its window is shown Closed with the stored state, and a reset with its age."""
    cm = {"data": {"state": "Tripped", "trippedAt": ts(20), "resetAt": ts(2.5)}}
    text = status.render(status.summarize(cluster(), [], cm, now=NOW, configmap_ref="ns/cm"))
    assert "Closed (stored Tripped: the window since the trip has passed)" in text
    assert f"Reset at:                {ts(2.5)} (2m30s ago)" in text
    assert "Cordoned in window:      2 since the reset" in text  # the cordon 3 minutes ago is before it


def test_uncordoned_by_hand_shows_only_when_some():
    """Verify the 'Uncordoned by hand' line appears for a held node an operator uncordoned."""
    assert "Uncordoned by hand" not in status.render(world())
    nodes = [node("u", record=ours(), taint=True)]
    assert "  Uncordoned by hand:" in status.render(status.summarize(nodes, [], None, now=NOW, configmap_ref="x"))


# ---- the command -------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nvsentinel")
    status_command.register(p.add_subparsers(dest="command"))
    return p


def test_command_flags_and_defaults(monkeypatch):
    """Verify the flags and defaults: controllers' namespace from $POD_NAMESPACE, the breaker ConfigMap, table."""
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    args = parser().parse_args(["status"])
    assert (args.namespace, args.breaker_configmap, args.output) == \
        ("nvsentinel", "nvsentinel-circuit-breaker", "table")
    assert (args.node_selector, args.event_selector, args.taint_key) == ("", "", "nvsentinel.nvidia.com/quarantine")
    assert (args.breaker_percent, args.breaker_max_nodes, args.breaker_window) == (None, None, None)
    assert args.func is status_command.run
    args = parser().parse_args(["status", "-o", "json", "--node-selector", "a=b", "--event-selector", "c=d",
                                "--namespace", "x", "--breaker-configmap", "y", "--breaker-window", "60"])
    assert (args.output, args.node_selector, args.event_selector, args.namespace, args.breaker_configmap,
            args.breaker_window) == ("json", "a=b", "c=d", "x", "y", 60.0)
    monkeypatch.setenv("POD_NAMESPACE", "ctl")
    assert parser().parse_args(["status"]).namespace == "ctl"


def test_missing_kubeconfig_is_one_line(tmp_path, capsys):
    """Verify a missing kubeconfig prints one error line naming it and returns 1."""
    missing = tmp_path / "nope"
    args = parser().parse_args(["status", "--kubeconfig", str(missing)])
    assert args.func(args) == 1
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1
    assert out.err.startswith("error: ") and str(missing) in out.err


def test_summary_module_reads_no_clock():
    """Verify nvsentinel/cli/views/status.py reads no clock (its imports are an import-linter contract)."""
    path = pathlib.Path(status.__file__)
    assert "utcnow" not in path.read_text() and ".now(" not in path.read_text()


# ---- hand-off: who owns each node, what awaits approval, what is handed off ------------------------------

OWNER_LABEL = "nvsentinel.nvidia.com/remediation-owner"


def owned(name, *, mode=None, scope=None, cordoned=True, label=None, record_text=None):
    rec = dict(ours(by_us=cordoned))
    if mode:
        rec["mode"] = mode
    if scope:
        rec["scope"] = scope
    n = node(name, cordoned=cordoned, record=record_text if record_text is not None else rec, taint=True)
    if label:
        n["metadata"]["labels"][OWNER_LABEL] = label
    return n


def test_each_quarantined_node_names_its_owner_and_scope():
    """Verify the owner is the ownership record's mode (the label only when the record is unreadable), the scope
    the record's, the cordon whose, and that unquarantined nodes are not listed."""
    nodes = [owned("a"), owned("b", mode="external", label="external"), owned("c", mode="approve", label="approve"),
             owned("d", scope="gpu", cordoned=False), owned("e", label="external", record_text="{bad"),
             owned("f", record_text="{bad"), node("plain")]
    s = status.summarize_nodes(nodes)
    got = {o.node: (o.owner, o.scope, o.cordon, o.events) for o in s.owners}
    assert got == {"a": ("nvsentinel", "node", "nvsentinel", 1), "b": ("external", "node", "nvsentinel", 1),
                   "c": ("approve", "node", "nvsentinel", 1), "d": ("nvsentinel", "gpu", "none", 1),
                   "e": ("external", "?", "others", 0), "f": ("?", "?", "others", 0)}
    assert s.by_owner == {"nvsentinel": 2, "external": 2, "approve": 1, "?": 1}
    assert [o.node for o in s.owners] == ["a", "b", "c", "d", "e", "f"]


def approve_wait(name, *, action="RESTART_BM", strategy=None, created=30, waiting=5, phase="Drained",
                 reason="AwaitingApproval", status_="False"):
    e = event(name, phase, created=created, conditions=[("Remediated", status_, reason, waiting)])
    e["spec"]["recommendedAction"] = action
    e["status"]["remediationMode"] = "approve"
    if strategy:
        e["metadata"]["annotations"] = {"nvsentinel.nvidia.com/remediation-strategy": strategy}
    return e


def handed(name, phase="Quarantined", *, action="RESTART_BM", created=20):
    e = event(name, phase, created=created, conditions=[("Remediated", "False", "HandedOff", created)])
    e["spec"]["recommendedAction"] = action
    e["status"]["remediationMode"] = "external"
    return e


def test_awaiting_approval_lists_what_would_run_and_the_command():
    """Verify Drained + Remediated False AwaitingApproval is listed (not as needing a human) with the strategy that
    would run (annotation first), its waiting time and `nvsentinel approve NAME`; other states are not."""
    a = status.awaiting_approval(approve_wait("x", action="REPLACE_VM"))
    assert a is not None
    assert (a.name, a.node, a.would_run, a.command) == ("x", "n1", "terminate", "nvsentinel approve x")
    assert a.since == NOW - dt.timedelta(minutes=5) and a.created == NOW - dt.timedelta(minutes=30)
    assert status.awaiting_approval(approve_wait("y", strategy="gpu-reset")).would_run == "gpu-reset"
    for other in (approve_wait("z", phase="Remediating"), approve_wait("z", status_="True"),
                  approve_wait("z", reason="RemediationInProgress")):
        assert status.awaiting_approval(other) is None
    assert status.needs_human(approve_wait("x")) is None


def test_handed_off_events_are_counted_with_the_recommended_action():
    """Verify open events of mode external are listed (oldest first) with the recommended action; closed ones not."""
    objs = [handed("h-new", created=5), handed("h-old", action="REPLACE_VM", created=50),
            handed("h-done", "Resolved"), approve_wait("w-1", created=40), approve_wait("w-2", created=45)]
    e = status.summarize_events(objs, NOW)
    assert [(h.name, h.phase, h.action) for h in e.handed_off] == [("h-old", "Quarantined", "REPLACE_VM"),
                                                                     ("h-new", "Quarantined", "RESTART_BM")]
    assert [a.name for a in e.awaiting_approval] == ["w-2", "w-1"] and e.needs_human == ()


def test_json_and_text_show_owners_approvals_and_hand_offs():
    """Verify -o json carries byOwner/owners, awaitingApproval and handedOff, and the text their tables."""
    nodes = [owned("n1", mode="approve", label="approve"), owned("n2", mode="external", label="external")]
    events = [approve_wait("wait-me"), handed("given", created=20)]
    events[1]["spec"]["nodeName"] = "n2"
    s = status.summarize(nodes, events, None, now=NOW, configmap_ref="ns/cm")
    doc = status.to_json(s)
    assert doc["nodes"]["byOwner"] == {"nvsentinel": 0, "external": 1, "approve": 1}
    assert [(o["node"], o["owner"], o["scope"]) for o in doc["nodes"]["owners"]] == [("n1", "approve", "node"),
                                                                                    ("n2", "external", "node")]
    assert doc["healthEvents"]["awaitingApproval"] == [{
        "name": "wait-me", "node": "n1", "wouldRun": "reboot", "created": ts(30), "since": ts(5),
        "approve": "nvsentinel approve wait-me"}]
    assert doc["healthEvents"]["handedOff"] == [{"name": "given", "node": "n2", "phase": "Quarantined",
                                                 "action": "RESTART_BM", "created": ts(20)}]
    lines = status.render(s).splitlines()
    assert "  Owners:                  external 1, approve 1" in lines
    at = lines.index("Awaiting approval:         1")
    assert lines[at + 1].split() == ["NAME", "NODE", "WOULD", "RUN", "WAITING", "AGE", "TO", "APPROVE"]
    assert lines[at + 2].split() == ["wait-me", "n1", "reboot", "5m", "30m", "nvsentinel", "approve", "wait-me"]
    at = lines.index("Handed off:                1 (remediation mode external)")
    assert lines[at + 2].split() == ["given", "n2", "Quarantined", "RESTART_BM", "20m"]
    owners = lines.index(next(ln for ln in lines if ln.split()[:2] == ["NODE", "OWNER"]))
    assert [ln.split()[:3] for ln in lines[owners + 1:owners + 3]] == [["n1", "approve", "node"],
                                                                       ["n2", "external", "node"]]


# ---- `nvsentinel approve|reject`: what may be written, and what the operator is told -----------------------

def decided(phase="Drained", *, mode="approve", approval=None, by="alice", fatal=True, healthy=False,
            reason="AwaitingApproval", action="RESTART_BM"):
    from nvsentinel.policy.handoff import APPROVAL_ANNOTATION, APPROVAL_BY_ANNOTATION

    e = event("ev", phase, conditions=[("Remediated", "False", reason, 5)] if reason else ())
    e["spec"].update(isFatal=fatal, isHealthy=healthy, recommendedAction=action)
    if mode:
        e["status"]["remediationMode"] = mode
    if approval:
        e["metadata"]["annotations"] = {APPROVAL_ANNOTATION: approval, APPROVAL_BY_ANNOTATION: by}
    return e


@pytest.mark.parametrize(("obj", "decision", "force", "refusal"), [
    (decided("Resolved"), "approved", False, "healthevent ev is Resolved: it is closed, nothing to approve"),
    (decided("Cancelled"), "rejected", True, "healthevent ev is Cancelled: it is closed, nothing to reject"),
    (decided(healthy=True), "approved", False, "healthevent ev is not a fatal fault: nothing to approve"),
    (decided(fatal=False), "rejected", False, "healthevent ev is not a fatal fault: nothing to reject"),
    (decided("Remediating"), "rejected", True, "healthevent ev is Remediating: its reboot is under way and is not "
     "abandoned halfway; wait until it is Remediated (a healthy event then resolves it)"),
    (decided(approval="rejected"), "approved", False,
     "healthevent ev was already rejected by alice; pass --force to approve it instead"),
    (decided(approval="approved", by="bob"), "rejected", False,
     "healthevent ev was already approved by bob; pass --force to reject it instead"),
])
def test_decisions_the_cli_refuses(obj, decision, force, refusal):
    """Verify the one-line refusals: closed, not a fault, a running remediation's rejection, the other decision."""
    from nvsentinel.cli.views import approval

    assert approval.check(obj, decision, force=force) == approval.Check(refusal=refusal)


def test_decisions_the_cli_writes_with_or_without_a_warning():
    """Verify --force overrides the other decision, the same decision is written again, and another mode warns."""
    from nvsentinel.cli.views import approval

    assert approval.check(decided(approval="rejected"), "approved", force=True) == approval.Check()
    assert approval.check(decided(approval="approved"), "approved") == approval.Check()
    assert approval.check(decided("Remediating"), "approved") == approval.Check()  # harmless
    warn = approval.check(decided("Quarantined", mode="nvsentinel"), "approved").warning
    assert warn == "healthevent ev is in remediation mode nvsentinel, not approve: it does not wait for an " \
                   "approval (recorded as a pre-approval, harmless)"
    warn = approval.check(decided("New", mode=None), "rejected").warning
    assert warn.startswith("healthevent ev is in remediation mode not decided yet (not quarantined), not approve: "
                           "rejecting cancels it all the same")


def test_decision_annotations_and_next_step():
    """Verify the written annotations (a missing reason removes the old one) and the one line said after."""
    from nvsentinel.cli.views import approval

    assert approval.annotations("approved", " alice \n", "") == {
        "nvsentinel.nvidia.com/approval": "approved", "nvsentinel.nvidia.com/approval-by": "alice",
        "nvsentinel.nvidia.com/approval-reason": None}
    assert approval.annotations("rejected", "", "a\tb")["nvsentinel.nvidia.com/approval-reason"] == "a b"
    assert approval.next_step(decided(), "approved") == \
        "approved healthevent ev: the remediation controller starts its reboot of node n1 now"
    assert approval.next_step(decided("Quarantined", reason=None), "approved") == \
        "approved healthevent ev: its reboot of node n1 starts without waiting once it is drained " \
        "(phase Quarantined now)"
    assert approval.next_step(decided(mode="nvsentinel", action="REPLACE_VM"), "approved") == \
        "approved healthevent ev (pre-approval): if it ever waits for approval, its terminate starts at once"
    assert approval.next_step(decided(action="CONTACT_SUPPORT"), "approved") == \
        "approved healthevent ev: its strategy is manual, which nvsentinel never runs by itself"
    assert approval.next_step(decided("Remediating"), "approved").endswith("already started (phase Remediating): "
                                                                          "nothing changes")
    assert approval.next_step(decided(), "rejected") == \
        "rejected healthevent ev: the resolution controller cancels it (Resolved False Rejected) and releases node " \
        "n1 once no other fault holds it"
