"""CI smoke test of bench/fleet.py (the fleet-scale benchmark): a small fleet, the whole chain, real numbers.

`python bench/fleet.py --nodes 1000 --pods 4 --burst 1000` is how the numbers are taken; here a burst of
10 events on 20 nodes (breaker out of the way) and 10 on 30 nodes with the breaker at its defaults
(10 % of 30 = 3 cordoned, 7 held) check that the harness measures what it says: every node cordoned
and back in service, every event Resolved, one eviction per pod, the controllers' requests counted
from the audit log of their own identity. No fixed sleeps: every wait is for a state, with a deadline.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import PHASES, FleetPlane, render, run_fleet  # noqa: E402


@pytest.fixture(scope="module")
def plane() -> Iterator[FleetPlane]:
    with FleetPlane() as cp:
        yield cp


def _common(r: dict, *, remediated: int, pods: int) -> None:
    counts, q = r["counts"], r["requests"]
    assert counts["cordoned"] == remediated and counts["back_in_service"] == remediated, counts
    assert counts["resolved"] == remediated and counts["jobs"] == remediated and counts["jobs_per_node_max"] == 1
    assert counts["pods_gone_on_remediated_nodes"] == remediated * pods, counts
    for phase in PHASES:
        assert r["latency_s"][phase]["n"] == remediated, (phase, r["latency_s"][phase])
    for row in ("cordon", "job created", "back in service"):
        s = r["latency_s"][row]
        assert s["n"] == remediated and 0 < s["p50"] <= s["p99"] <= s["max"], (row, s)
    # the order of the chain, per the medians: cordon before the drain, the Job before Remediated, ...
    lat = r["latency_s"]
    assert lat["cordon"]["p50"] <= lat["Drained"]["p50"] <= lat["job created"]["p50"] <= lat["Resolved"]["p50"]
    # the audit log of the controllers' identity: exactly one eviction per pod, the node patches, all counted
    assert q["evictions"] == remediated * pods and q["pods_evicted"] == remediated * pods
    assert q["evictions_per_pod"] == 1.0 and q["pods_evicted_more_than_once"] == 0
    assert q["by_call"].get("create pods/eviction") == remediated * pods, q["by_call"]
    assert q["by_call"].get("patch nodes", 0) >= 2 * remediated, q["by_call"]  # cordon + uncordon
    assert q["by_call"].get("create jobs", 0) >= remediated and q["by_call"].get("patch healthevents/status", 0) > 0
    assert q["total"] == sum(q["by_call"].values()) == sum(q["by_code"].values()) and q["per_node"] > 0
    assert q["before_window"] > 0  # the informers' lists and watches, at start-up
    assert r["controller"]["peak_rss_mib"] > 0 and r["controller"]["cpu_s"] > 0
    assert r["cordon"]["throughput_nodes_per_s"] > 0 and r["cordon"]["ratio_to_baseline"] > 0
    assert r["baseline"]["nodes"] == r["config"]["events"] and r["baseline"]["throughput_nodes_per_s"] > 0
    assert r["apiserver"]["mutating_requests"] > 0 and r["apiserver"]["request_total_delta"]
    assert r["controllers_log_tracebacks"] == 0
    assert render(r)


def test_fleet_burst_all_back_in_service(plane: FleetPlane) -> None:
    r = run_fleet(nodes=20, pods=2, burst=10, plane=plane)
    print(render(r))
    _common(r, remediated=10, pods=2)
    assert r["counts"]["held"] == 0
    assert r["controller"]["metrics"].get("resolution.uncordon") == 10


def test_fleet_breaker_default_stops_at_the_cap(plane: FleetPlane) -> None:
    r = run_fleet(nodes=30, pods=2, burst=10, breaker="default", plane=plane)
    print(render(r))
    assert r["counts"]["breaker_cap"] == 3 and r["controller"]["metrics"].get(
        "nvsentinel_quarantine_controller_breaker_limit") == 3
    _common(r, remediated=3, pods=2)
    assert r["counts"]["held"] == 7 and r["counts"]["held_and_cordoned"] == 0
    assert r["controller"]["metrics"].get("nvsentinel_quarantine_controller_breaker_tripped") == 1
