"""The invariant run, short: a seeded random scenario on the real control plane, then the checks.

`NVSENTINEL_INVARIANT_SEED` picks the seed (default: fixed, so a failure reproduces); the long run is
`python bench/invariants.py --steps 200` (docs/testing.md).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from cluster import ControlPlane
from invariants import Run

SEED = int(os.environ.get("NVSENTINEL_INVARIANT_SEED", "1717"))
STEPS = 14


def test_invariants_hold_after_a_seeded_random_scenario(control_plane: ControlPlane, crd_installed: None,
                                                         unique: str) -> None:
    d = tempfile.mkdtemp(prefix="nvs-inv-", dir="/tmp")
    run = Run(control_plane, unique, d, SEED)
    try:
        print(f"\ninvariant run: seed {SEED}, {STEPS} steps")
        run.play(STEPS, deadline=time.monotonic() + 240)
        assert run.settle(timeout=240), f"never went quiet after {run.steps}"
        found = run.violations()
        print(f"  {len(run.steps)} steps, {len(run.watches.rec.phases)} HealthEvents, "
              f"{len(run.watches.rec.job_adds)} reboot Jobs, violations: {found or 'none'}")
        assert found == [], f"seed {SEED}, steps {run.steps}: {found}"
        # the run exercised the chain, not an idle node: faults were published and acted on
        assert any(p == "Resolved" for seen in run.watches.rec.phases.values() for _, p in seen), run.steps
        assert "Traceback" not in "".join(d.text() for d in run.daemons())
    finally:
        run.close()
        shutil.rmtree(d, ignore_errors=True)
