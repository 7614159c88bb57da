"""Shared fixtures of the pytest-benchmark suites (STYLE §15).

Every case is parametrized by `impl`: "c" (compiled, marked `c_extension`), "py" (the twin) and,
where the case has one, "baseline" (dict + Lock) or "floor" (the physical floor). The workloads
come from `nvsentinel.devtools.benchmarks`, the same ones `nvsentinel bench` times.

`NVSENTINEL_NO_EXTENSIONS=1` (or `--no-c-extensions` when tests/conftest.py is loaded too)
deselects the compiled cases. `pytest bench --benchmark-disable` runs each case once, on the
quick sizes, as the CI smoke test; bench/run is how the numbers in RESULTS.md are taken.
"""
from __future__ import annotations

import gc
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nvsentinel.devtools import benchmarks

# Child Pythons the benches start (daemons, servers) must import the installed package, never the
# source tree in the working directory (as tests/conftest.py does for the tests).
os.environ["PYTHONSAFEPATH"] = "1"

#: Rounds of a case whose batch needs fresh state (delivery): each round is one full run.
SETUP_ROUNDS = 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the compiled cases of bench/ `c_extension`; drop them when the twins are forced."""
    drop = bool(os.environ.get("NVSENTINEL_NO_EXTENSIONS"))
    here = pathlib.Path(__file__).resolve().parent
    kept, deselected = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        in_bench = here in pathlib.Path(str(item.path)).resolve().parents
        if in_bench and callspec is not None and callspec.params.get("impl") == "c":
            item.add_marker(pytest.mark.c_extension)
            if drop:
                deselected.append(item)
                continue
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Record what bench/RESULTS.md must state: CPU, cores, Cython, flags, the command."""
    env = benchmarks.environment()
    machine_info["nvsentinel"] = {
        **env,
        "command": os.environ.get("BENCH_COMMAND") or " ".join(["pytest", *config.invocation_params.args]),
        "pinned_cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


@pytest.fixture
def frozen_gc() -> Iterator[Callable[[], None]]:
    """Call it after building a workload: collect, then freeze what setup made (gc.freeze)."""
    frozen = []

    def freeze() -> None:
        gc.collect()
        gc.freeze()
        frozen.append(True)

    yield freeze
    if frozen:
        gc.unfreeze()


@pytest.fixture
def run_case(benchmark: Any, frozen_gc: Callable[[], None]) -> Callable[[str, str], Any]:
    """run_case(case, impl): build the workload, benchmark it, record and assert correctness.

    Sets `benchmark.group` to the case and `extra_info` to impl, ops per round, unit, target and
    `correct` (the result verified and, through `probe`, checked against the twin).
    """

    def run(case: str, impl: str) -> Any:
        quick = bool(benchmark.disabled)
        workload = benchmarks.build(case, impl, quick=quick)
        twin = workload if impl == benchmarks.TWIN else benchmarks.build(case, benchmarks.TWIN, quick=True)
        frozen_gc()
        benchmark.group = case
        target = benchmarks.TARGETS.get(case)
        benchmark.extra_info.update(
            case=case,
            impl=impl,
            ops=workload.ops,
            unit=workload.unit,
            note=workload.note,
            reference=benchmarks.reference_of(case),
            target=target.as_dict() if target and impl in target.impls else None,
        )
        if workload.setup is not None:
            result = benchmark.pedantic(workload.batch, setup=workload.setup, rounds=SETUP_ROUNDS,
                                        iterations=1, warmup_rounds=0)
        else:
            result = benchmark(workload.batch)
        correct = workload.verify(result) if workload.verify else True
        if workload.probe is not None:
            correct = correct and benchmarks.agrees(workload.probe(), twin.probe() if twin.probe else None)
        benchmark.extra_info["correct"] = bool(correct)
        assert correct, f"{case} [{impl}] disagrees with the twin"
        return result

    return run
