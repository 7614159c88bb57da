"""Exporter throughput against a bare loop of HTTP POSTs to the same sink (bench/exporter.py).

`pytest bench --benchmark-disable` (the CI smoke test) exports 100 events (200 CloudEvents) and checks
no loss and no duplicates; a benchmark run exports EXPORTER_EVENTS (3000) and checks the targets too:
>= 500 CloudEvents/s and within 1.5x of the bare loop.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "k8s"))

import exporter as bench_exporter  # noqa: E402
from cluster import ControlPlane  # noqa: E402

SMOKE_EVENTS = 100
EVENTS = int(os.environ.get("EXPORTER_EVENTS", "3000"))


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with ControlPlane(controller_manager=False) as cp:
        yield cp


def test_exporter_throughput(benchmark: Any, plane: ControlPlane) -> None:
    events = SMOKE_EVENTS if benchmark.disabled else EVENTS
    res = benchmark.pedantic(bench_exporter.run, args=(plane, events), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    assert res["lost"] == 0 and res["duplicates"] == 0, res
    if not benchmark.disabled:
        assert res["exporter_rate"] >= bench_exporter.TARGET_RATE, res
        assert res["ratio_bare_over_exporter"] <= bench_exporter.TARGET_RATIO, res
