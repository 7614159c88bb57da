"""GPU store benchmarks (SPEC §9): compiled vs twin vs baseline, workloads from nvsentinel.devtools.benchmarks.

Targets: get and update-status (RV checked, expected = current) ≥ 5× the twin; a list of 1024
GPUs as wire bytes within 2× of `b"".join` over the stored per-GPU bytes. Churn has no target.
"""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("impl", ["c", "py", "baseline", "floor"])
def test_get(run_case, impl):
    """Time get of one GPU by name in a store of 1024 (4096 lookups per round)."""
    run_case("store.get", impl)


@pytest.mark.parametrize("impl", ["c", "py", "baseline"])
def test_update_status(run_case, impl):
    """Time update-status with the RV check (expected = current) over 1024 GPUs, 8 conditions each."""
    run_case("store.update_status", impl)


@pytest.mark.parametrize("impl", ["c", "py", "floor"])
def test_list1024(run_case, impl):
    """Time a serialized GpuList of 1024 GPUs against the b"".join floor of their stored bytes."""
    run_case("store.list1024", impl)


@pytest.mark.parametrize("impl", ["c", "py", "baseline"])
def test_churn(run_case, impl):
    """Time a create (from wire bytes) plus a delete, 64 pairs per round, next to 960 resident GPUs."""
    run_case("store.churn", impl)
