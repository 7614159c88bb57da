"""Watch fan-out benchmarks (SPEC §9): compiled vs twin, workloads from nvsentinel.devtools.benchmarks.

Targets: publishing cost independent of the subscriber count (256 subscribers ≤ 2× one); delivery
of 10 000 events to each of 256 subscribers ≥ 5× the twin, every subscriber gap-free and in order.
"""
from __future__ import annotations

import pytest

from nvsentinel.devtools.benchmarks import PUBLISH_SUBSCRIBERS


@pytest.mark.parametrize("impl", ["c", "py"])
@pytest.mark.parametrize("subscribers", PUBLISH_SUBSCRIBERS)
def test_publish(run_case, impl, subscribers):
    """Time one publish with 1, 16 or 256 idle subscribers attached (1024 events per round)."""
    run_case(f"fanout.publish[{subscribers}]", impl)


@pytest.mark.parametrize("impl", ["c", "py"])
def test_delivery(run_case, impl):
    """Time publishing 10 000 events and draining them from 256 subscribers; verify every stream."""
    run_case("fanout.delivery", impl)
