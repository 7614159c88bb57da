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
from procs import wait_until

from nvsentinel.k8s.resources import HEALTHEVENTS, JOBS
from nvsentinel.policy.healthevent import LABEL_NODE, Entity, HealthEvent, HealthEventSpec, utcnow
from nvsentinel.policy.naming import label_value
from nvsentinel.xid import Action

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
        plant_violations_and_see_them_caught(run)
    finally:
        run.close()
        shutil.rmtree(d, ignore_errors=True)


def plant_violations_and_see_them_caught(run: Run) -> None:
    """The checks bite: with the controllers stopped, a reboot Job created twice under one name and a fatal
    event left with no condition are each reported."""
    assert run.ctl is not None
    run.ctl.kill()
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "planted-reboot-1", "namespace": run.ns},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "nodeName": "nowhere",
                                          "containers": [{"name": "c", "image": "none"}]}}}}
    run.kube.create(JOBS, job, run.ns)
    run.kube.delete(JOBS, "planted-reboot-1", run.ns, propagation="Background")
    wait_until(lambda: "planted-reboot-1" not in {j["metadata"]["name"] for j in run.kube.list(JOBS, run.ns)[0]},
               timeout=60, what="the planted Job deleted")
    run.kube.create(JOBS, job, run.ns)
    spec = HealthEventSpec(source="test", agent="test", node_name=run.node_name, component_class="GPU",
                           check_name="xid-error-check", is_fatal=True, is_healthy=False, detected_at=utcnow(),
                           recommended_action=Action.RESTART_BM, error_codes=("79",),
                           entities_impacted=(Entity("GPU", run.node.uuid(0)),))
    run.kube.create(HEALTHEVENTS, HealthEvent(name=f"{run.node_name}.planted", spec=spec,
                                              labels={LABEL_NODE: label_value(run.node_name)}).create_body())
    found = wait_until(lambda: (v := run.violations()) and any("created 2 times" in x for x in v) and v,
                       timeout=60, what="the planted violations reported")
    assert any("planted-reboot-1 created 2 times" in v for v in found), found
    assert any(f"{run.node_name}.planted waits in phase New with no condition" in v for v in found), found
