"""bench/report.py: saved pytest-benchmark JSON in, the RESULTS.md ratio table out."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(case: str, impl: str, median_s: float, ops: int, *, target=None, correct=True, reference=None):
    return {
        "group": case, "name": f"test[{impl}]", "params": {"impl": impl},
        "stats": {"median": median_s, "min": median_s * 0.9, "iqr": median_s * 0.01, "rounds": 10},
        "extra_info": {"case": case, "impl": impl, "ops": ops, "unit": "op", "note": "",
                       "reference": reference, "target": target, "correct": correct},
    }


GET_TARGET = {"text": "≥ 5× twin", "kind": "vs_twin", "value": 5.0, "impls": ["c"], "ref": ""}
PUB_TARGET = {"text": "≤ 2× publish[1]", "kind": "vs_case", "value": 2.0, "impls": ["c"], "ref": "fanout.publish[1]"}


def saved_run(tmp_path: pathlib.Path, *, correct: bool = True) -> pathlib.Path:
    doc = {
        "machine_info": {"python_version": "3.11.7", "nvsentinel": {"cpu": "Test CPU", "cores": 2, "cython": "3.3.1", "command": "bench/run"}},
        "commit_info": {"id": "abc123", "dirty": True},
        "datetime": "2026-01-02T03:04:05+00:00",
        "version": "5.3.1",
        "benchmarks": [
            bench("fanout.publish[1]", "c", 100e-9 * 1024, 1024),
            bench("fanout.publish[256]", "c", 120e-9 * 1024, 1024, target=PUB_TARGET),
            bench("store.get", "c", 60e-9 * 4096, 4096, target=GET_TARGET, reference="floor", correct=correct),
            bench("store.get", "py", 180e-9 * 4096, 4096, reference="floor"),
            bench("store.get", "floor", 50e-9 * 4096, 4096, reference="floor"),
            bench("xid.decode", "c", 1e-3, 1),
        ],
    }
    path = tmp_path / "0001_run.json"
    path.write_text(json.dumps(doc))
    return path


def test_report_computes_ratios_targets_and_order(report, tmp_path, capsys):
    """Verify per-op medians, twin and floor ratios, targets, store-first order and group filters."""
    assert report.main([str(saved_run(tmp_path)), "--groups", "store.", "fanout."]) == 0
    out = capsys.readouterr().out
    assert "xid.decode" not in out
    assert out.index("`store.get`") < out.index("`fanout.publish[1]`")
    get_c = next(line for line in out.splitlines() if line.startswith("| `store.get` | c |"))
    assert "60.0 ns" in get_c and "3.00×" in get_c and "1.20×" in get_c and "**missed**" in get_c
    pub = next(line for line in out.splitlines() if "`fanout.publish[256]`" in line)
    assert "1.20×" in pub and "| yes |" in pub
    assert "git commit: abc123 + uncommitted changes" in out and "Test CPU" in out
    assert "**Missed:** `store.get` [c] measured 3.00×" in out
    assert "floor (`dict.get` on the same keys, same driver) was 3.60× faster" in out
    assert "no implementation of get could reach the target" in out  # the floor itself is < 5×


def test_report_updates_only_its_block_and_fails_on_wrong_results(report, tmp_path):
    """Verify --update rewrites only the marked block, and a wrong result makes the exit status 1."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n<!-- report:core:begin -->\nold\n<!-- report:core:end -->\n\n## XID decoder\nkeep me\n")
    assert report.main([str(saved_run(tmp_path, correct=False)), "--update", str(results)]) == 1
    text = results.read_text()
    assert "old" not in text and "**WRONG**" in text
    assert text.endswith("## XID decoder\nkeep me\n")
