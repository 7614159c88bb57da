"""The TTL controller's pure parts: policy parsing and the choice of what to delete."""
from __future__ import annotations

import datetime as dt

import pytest

from nvsentinel.policy.ttl import (
    Item, Policy, PolicyError, item_from_obj, parse_duration, parse_policy, plan_cleanup,
)

NOW = dt.datetime(2026, 1, 10, tzinfo=dt.timezone.utc)
H = 3600


def ago(hours: float) -> dt.datetime:
    return NOW - dt.timedelta(hours=hours)


def item(name: str, hours_ago: float, *, node: str = "n1", terminal: bool = True) -> Item:
    return Item(name=name, uid=f"uid-{name}", node=node, terminal=terminal, finished_at=ago(hours_ago))


def names(plan) -> list[str]:
    return [d.name for d in plan.deletions]


# ---- parsing ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("2s", 2), ("5m", 300), ("168h", 168 * H), ("90d", 90 * 86400), ("1h30m", 5400), ("1.5h", 5400), (" 10s ", 10),
])
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "h", "-5m", "5 m", "5w", "1h junk", "5mm"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_absent_configmap_data_gives_the_spec_defaults() -> None:
    p = parse_policy(None)
    assert p == Policy()
    assert (p.ttl_after_resolved, p.compliance_retention, p.batch_size, p.cleanup_interval) == (
        168 * H, 2160 * H, 100, 300)
    assert (p.retention_mode, p.max_events_per_node, p.max_total_events) == ("standard", 0, 0)


def test_every_key_is_read() -> None:
    p = parse_policy({"ttlAfterResolved": "2s", "retentionMode": "compliance", "complianceRetention": "30d",
                      "batchSize": "7", "cleanupInterval": "1s", "maxEventsPerNode": "3", "maxTotalEvents": "50"})
    assert p == Policy(ttl_after_resolved=2, retention_mode="compliance", compliance_retention=30 * 86400,
                       batch_size=7, cleanup_interval=1, max_events_per_node=3, max_total_events=50)
    assert p.retention == 30 * 86400


def test_every_bad_key_is_named() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy({"ttlAfterResolved": "soon", "retentionMode": "forever", "batchSize": "0",
                      "maxEventsPerNode": "-1", "maxTotalEvents": "ten", "cleanupInterval": "0s"})
    keys = {p.split(":")[0] for p in err.value.problems}
    assert keys == {"ttlAfterResolved", "retentionMode", "batchSize", "maxEventsPerNode", "maxTotalEvents",
                    "cleanupInterval"}


def test_item_uses_resolved_at_then_creation_time_and_phase() -> None:
    base = {"metadata": {"name": "e", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n"}}
    open_item = item_from_obj(base)
    assert (open_item.terminal, open_item.finished_at, open_item.node) == (
        False, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "n")
    done = item_from_obj({**base, "status": {"phase": "Resolved", "resolvedAt": "2026-01-05T00:00:00Z"}})
    assert done.terminal and done.finished_at == dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
    assert item_from_obj({**base, "status": {"phase": "Cancelled"}}).terminal
    assert not item_from_obj({**base, "status": {"phase": "Quarantined"}}).terminal


# ---- selection ----------------------------------------------------------------------------------------------

def test_only_finished_events_past_the_ttl_are_deleted_oldest_first() -> None:
    items = [item("young", 10), item("old", 200), item("older", 300), item("open-old", 999, terminal=False)]
    plan = plan_cleanup(items, Policy(), NOW)
    assert names(plan) == ["older", "old"]
    assert {d.reason for d in plan.deletions} == {"Expired"}
    assert plan.deletions[0].uid == "uid-older"
    assert plan.open_over == ()


def test_compliance_mode_keeps_events_for_the_compliance_retention() -> None:
    items = [item("a", 200), item("b", 3000)]
    assert names(plan_cleanup(items, Policy(retention_mode="compliance"), NOW)) == ["b"]
    assert names(plan_cleanup(items, Policy(), NOW)) == ["b", "a"]


def test_a_pass_deletes_at_most_a_batch() -> None:
    items = [item(f"e{i:02d}", 200 + i) for i in range(10)]
    plan = plan_cleanup(items, Policy(batch_size=3), NOW)
    assert names(plan) == ["e09", "e08", "e07"]


def test_equal_times_order_by_name() -> None:
    items = [item("b", 200), item("a", 200)]
    assert names(plan_cleanup(items, Policy(), NOW)) == ["a", "b"]


def test_per_node_bound_deletes_the_oldest_finished_events_of_that_node() -> None:
    items = [item("n1-a", 1), item("n1-b", 2), item("n1-c", 3), item("n1-open", 4, terminal=False),
             item("n2-a", 5, node="n2"), item("n2-b", 6, node="n2")]
    plan = plan_cleanup(items, Policy(max_events_per_node=2), NOW)
    assert names(plan) == ["n1-c", "n1-b"]
    assert {d.reason for d in plan.deletions} == {"NodeBound"}


def test_per_node_bound_counts_what_the_ttl_already_removes() -> None:
    items = [item("expired", 500), item("a", 1), item("b", 2)]
    plan = plan_cleanup(items, Policy(max_events_per_node=2), NOW)
    assert [(d.name, d.reason) for d in plan.deletions] == [("expired", "Expired")]


def test_open_events_over_a_node_bound_are_reported_never_deleted() -> None:
    items = [item("o1", 1, terminal=False), item("o2", 2, terminal=False), item("o3", 3, terminal=False),
             item("done", 4)]
    plan = plan_cleanup(items, Policy(max_events_per_node=2), NOW)
    assert names(plan) == ["done"]
    assert len(plan.open_over) == 1 and "node n1" in plan.open_over[0] and "3 open" in plan.open_over[0]


def test_total_bound_deletes_the_oldest_finished_events_across_nodes() -> None:
    items = [item("a", 1, node="n1"), item("b", 9, node="n2"), item("c", 5, node="n3"),
             item("open", 99, terminal=False, node="n4")]
    plan = plan_cleanup(items, Policy(max_total_events=2), NOW)
    assert [(d.name, d.reason) for d in plan.deletions] == [("b", "TotalBound"), ("c", "TotalBound")]
    assert plan.open_over == ()


def test_open_events_over_the_total_bound_are_reported_never_deleted() -> None:
    items = [item(f"o{i}", i, terminal=False, node=f"n{i}") for i in range(4)]
    plan = plan_cleanup(items, Policy(max_total_events=2), NOW)
    assert plan.deletions == ()
    assert len(plan.open_over) == 1 and "maxTotalEvents=2" in plan.open_over[0]


def test_the_batch_caps_bound_deletions_too() -> None:
    items = [item(f"e{i}", i) for i in range(10)]
    plan = plan_cleanup(items, Policy(batch_size=4, max_total_events=1), NOW)
    assert names(plan) == ["e9", "e8", "e7", "e6"]
    assert plan.open_over == ()  # finished events can satisfy it on later passes


def test_no_bounds_and_nothing_expired_deletes_nothing() -> None:
    items = [item(f"e{i}", i) for i in range(50)] + [item("open", 9999, terminal=False)]
    assert plan_cleanup(items, Policy(), NOW).deletions == ()
