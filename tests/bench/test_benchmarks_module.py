"""The benchmark workloads, the perf_counter runner and `nvsentinel bench` (not the numbers)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from nvsentinel.cli.commands import bench as bench_command
from nvsentinel.devtools import benchmarks


@pytest.fixture(scope="module")
def quick_rows() -> list[benchmarks.Row]:
    return benchmarks.run_all(quick=True)


def expected_impls() -> tuple[str, ...]:
    impls = benchmarks.available_impls()
    if not os.environ.get("NVSENTINEL_NO_EXTENSIONS"):
        assert impls == ("c", "py"), "the compiled core must be benchmarked by default"
    return impls


def test_quick_run_has_every_case_for_both_implementations(quick_rows):
    """Verify a quick run gives a row per case and implementation (and baseline), all correct."""
    got = {(r.case, r.impl) for r in quick_rows}
    for case in benchmarks.CASES:
        for impl in expected_impls() + benchmarks.CASES[case][1]:
            assert (case, impl) in got, f"no row for {case} [{impl}]"
    assert all(r.correct for r in quick_rows), [(r.case, r.impl) for r in quick_rows if not r.correct]
    assert all(r.ns_per_op > 0 and r.best_ns_per_op <= r.ns_per_op for r in quick_rows)
    assert all(r.vs_twin == 1.0 for r in quick_rows if r.impl == "py")


def test_quick_run_judges_every_target(quick_rows):
    """Verify each SPEC §9 target is judged on its implementation's row, and only there."""
    for r in quick_rows:
        target = benchmarks.TARGETS.get(r.case)
        if target is not None and r.impl in target.impls:
            assert r.target == target.text
            assert isinstance(r.target_value, float) and isinstance(r.met, bool)
            assert r.met == target.judge(r.target_value)
        else:
            assert (r.target, r.target_value, r.met) == (None, None, None)


def _row(case: str, impl: str, ns: float, **kw) -> benchmarks.Row:
    return benchmarks.Row(case=case, impl=impl, ns_per_op=ns, best_ns_per_op=ns, ops_per_s=1e9 / ns,
                          unit="op", vs_twin=kw.get("vs_twin"), vs_baseline=kw.get("vs_baseline"),
                          target=None, target_value=None, met=None, correct=True)


def test_targets_use_the_right_ratio():
    """Verify speedup targets need ≥, cost targets ≤, and publish[256] is judged against publish[1]."""
    rows = [
        _row("store.get", "c", 30.0, vs_twin=4.0),
        _row("store.update_status", "c", 10.0, vs_twin=5.0),
        _row("store.list1024", "c", 100.0, vs_baseline=2.5),
        _row("fanout.publish[1]", "c", 100.0),
        _row("fanout.publish[256]", "c", 150.0),
        _row("fanout.publish[1]", "py", 1000.0),
        _row("fanout.publish[256]", "py", 2500.0),
    ]
    benchmarks.judge_targets(rows)
    assert [r.met for r in rows] == [False, True, False, None, True, None, False]
    assert rows[4].target_value == pytest.approx(1.5)
    assert rows[6].target_value == pytest.approx(2.5)


def test_correctness_checks_catch_a_wrong_result():
    """Verify a corrupted list or a gap in one delivery stream is reported as not correct."""
    impl = expected_impls()[0]
    listing = benchmarks.build("store.list1024", impl)
    mine, twin = listing.probe(), benchmarks.build("store.list1024", "py").probe()
    assert benchmarks.agrees(mine, twin)
    bad = dict(mine, wire=mine["wire"][:-1] + bytes([mine["wire"][-1] ^ 1]))
    assert not benchmarks.agrees(bad, twin)

    delivery = benchmarks.build("fanout.delivery", impl, quick=True)
    delivery.setup()
    streams = delivery.batch()
    assert len(streams) == benchmarks.DELIVERY_SUBSCRIBERS
    assert all(len(s) == benchmarks.DELIVERY_EVENTS_QUICK for s in streams)
    gap = [list(s) for s in streams]
    del gap[7][500]
    swapped = [list(s) for s in streams]
    swapped[3][10], swapped[3][11] = swapped[3][11], swapped[3][10]
    assert delivery.verify(streams)
    assert not delivery.verify(gap)
    assert not delivery.verify(swapped)


def test_table_shows_ratios_targets_and_misses():
    """Verify the text table names each case once and flags missed targets and wrong results."""
    rows = [_row("store.get", "c", 50.0, vs_twin=2.0), _row("store.get", "py", 100.0, vs_twin=1.0)]
    benchmarks.judge_targets(rows)
    rows[1].correct = False
    table = bench_command.format_table(rows)
    assert table.count("store.get") == 1
    assert "≥ 5× twin" in table and "MISSED" in table and "WRONG" in table and "2.00×" in table


def test_command_fails_only_on_a_wrong_result(monkeypatch, capsys):
    """Verify `nvsentinel bench` exits 0 with a missed target and 1 when a result is wrong."""
    rows = [_row("store.get", "c", 50.0, vs_twin=2.0), _row("store.get", "py", 100.0, vs_twin=1.0)]
    benchmarks.judge_targets(rows)
    monkeypatch.setattr(benchmarks, "run_all", lambda **kw: rows)
    args = argparse.Namespace(quick=True, json=False)
    assert bench_command.func(args) == 0
    assert "targets missed: store.get [c]" in capsys.readouterr().out
    rows[0].correct = False
    assert bench_command.func(args) == 1


def test_cli_quick_json_is_parseable():
    """Verify `python -m nvsentinel bench --quick --json` prints JSON rows and exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "nvsentinel", "bench", "--quick", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["quick"] is True and doc["correct"] is True
    assert {(r["case"], r["impl"]) for r in doc["rows"]} >= {
        (case, impl) for case in benchmarks.CASES for impl in expected_impls()
    }
    assert set(doc["targets"]) == set(benchmarks.TARGETS)
    assert doc["environment"]["python"] == sys.version.split()[0]
    assert "bench: store.get" in proc.stderr  # progress goes to stderr, never into the JSON
