"""The exporter's pure decisions: ids, what each status proves, what goes after downtime, the data."""
from __future__ import annotations

import datetime as _dt
import json

import pytest
from exporter_events import T0, event

from nvsentinel.cluster.exporter import logic
from nvsentinel.cluster.exporter.logic import PHASE_RANK, Verdict
from nvsentinel.policy.healthevent import HealthEvent, Phase

CHAIN = ["New", "Quarantined", "Draining", "Drained", "Remediating", "Remediated", "Resolved"]


def he(phase: str, **kw: object) -> HealthEvent:
    return HealthEvent.from_dict(event(phase=phase, **kw))


def phases(phase: str, after: int = -1) -> list[str]:
    return [str(t.phase) for t in logic.pending_transitions(he(phase), after, "c1")]


def test_ids_are_stable_and_types_name_the_phase() -> None:
    a = logic.pending_transitions(he("Quarantined"), -1, "c1")
    b = logic.pending_transitions(he("Quarantined"), -1, "c1")
    assert [t.id for t in a] == [t.id for t in b] == ["uid-1.New", "uid-1.Quarantined"]
    attrs = logic.cloudevent_attributes(a[1], "c1")
    assert attrs["type"] == "com.nvidia.nvsentinel.healthevent.quarantined"
    assert attrs["source"] == "/clusters/c1/healthevents" and attrs["subject"] == "he-1"
    assert attrs["time"] == T0 + _dt.timedelta(seconds=1) and attrs["specversion"] == "1.0"


@pytest.mark.parametrize("phase,expected", [
    ("New", ["New"]),
    ("Quarantined", ["New", "Quarantined"]),
    ("Draining", ["New", "Quarantined", "Draining"]),
    # Draining left no trace once Drained: only what the status proves is sent
    ("Drained", ["New", "Quarantined", "Drained"]),
    ("Remediating", ["New", "Quarantined", "Drained", "Remediating"]),
    ("Remediated", ["New", "Quarantined", "Drained", "Remediated"]),
    ("Resolved", ["New", "Quarantined", "Drained", "Remediated", "Resolved"]),
    ("Cancelled", ["New", "Cancelled"]),
])
def test_what_a_status_proves_after_downtime(phase: str, expected: list[str]) -> None:
    assert phases(phase) == expected


def test_only_phases_after_the_checkpoint_go_and_in_chain_order() -> None:
    assert phases("Resolved", PHASE_RANK[Phase.QUARANTINED]) == ["Drained", "Remediated", "Resolved"]
    assert phases("Resolved", PHASE_RANK[Phase.RESOLVED]) == []
    # a status that went backwards (hand-edited) proves nothing new
    assert phases("Quarantined", PHASE_RANK[Phase.DRAINED]) == []
    trs = logic.pending_transitions(he("Resolved"), -1, "c1")
    assert [t.rank for t in trs] == sorted(t.rank for t in trs)
    assert [t.time for t in trs] == sorted(t.time for t in trs)


def test_transition_times_come_from_the_status() -> None:
    trs = {str(t.phase): t.time for t in logic.pending_transitions(he("Remediating"), -1, "c1")}
    assert trs == {"New": T0, "Quarantined": T0 + _dt.timedelta(seconds=1), "Drained": T0 + _dt.timedelta(seconds=3),
                   "Remediating": T0 + _dt.timedelta(seconds=4)}


def test_data_carries_what_incident_tooling_needs() -> None:
    obj = event(phase="Drained", pods=(("team-a", "train-0"), ("team-b", "train-1")))
    tr = logic.pending_transitions(HealthEvent.from_dict(obj), PHASE_RANK[Phase.QUARANTINED], "prod-1")[0]
    d = tr.data
    assert d["cluster"] == "prod-1" and d["node"] == "node-a" and d["phase"] == "Drained"
    assert d["gpus"] == ["GPU-0000"] and d["pciSlots"] == ["0000:b3:00.0"]
    assert d["errorCodes"] == ["79"] and d["xids"] == [79] and d["recommendedAction"] == "RESTART_BM"
    assert d["reason"] == "Drained" and d["remediationMode"] == "nvsentinel"
    assert d["pods"] == [{"namespace": "team-a", "name": "train-0"}, {"namespace": "team-b", "name": "train-1"}]
    assert d["podsFrom"] == "podMapping"
    json.dumps(d)  # JSON-ready as it is
    # the drain's record, when there is one, names the pods the event really affected
    obj["status"]["drain"] = {"scope": "gpu", "gpus": ["GPU-0000"], "pods": [{"namespace": "team-a", "name": "x"}]}
    d2 = logic.transition_data(HealthEvent.from_dict(obj), Phase.DRAINED, "prod-1")
    assert d2["pods"] == [{"namespace": "team-a", "name": "x"}] and d2["podsFrom"] == "drain"


def test_data_is_bounded_and_sanitized() -> None:
    pods = tuple(("ns", f"p{i}") for i in range(logic.MAX_PODS + 10))
    obj = event(phase="Quarantined", pods=pods)
    obj["spec"]["message"] = "evil\x1b[31m red\nforged line " + "x" * 5000
    d = logic.transition_data(HealthEvent.from_dict(obj), Phase.QUARANTINED, "c1")
    assert len(d["pods"]) == logic.MAX_PODS and d["podsOmitted"] == 10
    assert len(d["message"]) <= logic.MAX_TEXT + 20  # printable says how long it was: "…(5026 chars)"
    assert "\x1b" not in d["message"] and "\n" not in d["message"] and d["message"].startswith("evil red")


@pytest.mark.parametrize("status,verdict", [
    (None, Verdict.RETRY), (200, Verdict.OK), (202, Verdict.OK), (204, Verdict.OK), (408, Verdict.RETRY),
    (429, Verdict.RETRY), (500, Verdict.RETRY), (503, Verdict.RETRY), (400, Verdict.POISON), (413, Verdict.POISON),
    (301, Verdict.RETRY),
])
def test_classify(status: int | None, verdict: Verdict) -> None:
    assert logic.classify(status)[0] is verdict


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    steps = [logic.backoff_delay(a, 0.2, 30, 1.0) for a in range(12)]
    assert steps[:4] == [0.2, 0.4, 0.8, 1.6] and max(steps) == 30
    assert logic.backoff_delay(3, 0.2, 30, 0.0) == 0.8  # the jitter halves at most
    assert logic.backoff_delay(10_000, 0.2, 30, 0.5) == 22.5


def test_retry_after() -> None:
    now = _dt.datetime(2025, 1, 1, tzinfo=_dt.timezone.utc)
    assert logic.retry_after_seconds("7", now) == 7
    assert logic.retry_after_seconds("Wed, 01 Jan 2025 00:00:30 GMT", now) == 30
    assert logic.retry_after_seconds("soon", now) is None and logic.retry_after_seconds(None, now) is None


def test_checkpoint_round_trips_and_survives_garbage() -> None:
    cp = {"u2": Phase.DRAINED, "u1": Phase.RESOLVED}
    text = logic.encode_checkpoint(cp)
    assert logic.decode_checkpoint(text) == cp and text == logic.encode_checkpoint(dict(reversed(cp.items())))
    assert logic.decode_checkpoint("not json") == {} and logic.decode_checkpoint("[1]") == {}
    assert logic.decode_checkpoint('{"a":"Drained","b":"Bogus"}') == {"a": Phase.DRAINED}
