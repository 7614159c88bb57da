"""The long invariant run: a seeded random scenario against the real control plane, then the checks.

The scenario and the checks are tests/k8s/invariants.py (the suite runs a short one,
tests/k8s/test_invariants.py). This script runs as many rounds as asked, each a fresh node and a fresh
seed (`--seed` + round), prints every step, and ends with one line per round: seed, steps, events,
reboot Jobs, violations. Exit 1 when any round found a violation or never went quiet, so a seed that
breaks an invariant is a one-line reproduction:

    python bench/invariants.py --steps 200                 # one long round, seed 1
    python bench/invariants.py --rounds 5 --steps 60 --seed 100
    NVSENTINEL_INVARIANT_SEED=103 pytest tests/k8s/test_invariants.py   # a short replay of a seed

Run it with the venv whose `nvsentinel` is under test; it starts the kube-apiserver + etcd the tests
use (built once and cached, docs/testing.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "k8s"))
from invariants import Run  # noqa: E402

from nvsentinel.devtools.devcluster.controlplane import ControlPlane  # noqa: E402
from nvsentinel.k8s.crd import install_crd  # noqa: E402


def one_round(cp: ControlPlane, seed: int, steps: int, budget: float) -> dict:
    d = tempfile.mkdtemp(prefix="nvs-inv-", dir="/tmp")
    t0 = time.monotonic()
    run = Run(cp, uuid.uuid4().hex[:8], d, seed, log=lambda line: print(line, flush=True))
    try:
        print(f"round seed={seed} steps={steps}", flush=True)
        run.play(steps, deadline=t0 + budget)
        quiet = run.settle(timeout=max(120.0, steps * 3.0))
        found = run.violations() if quiet else ["never went quiet"]
        return {"seed": seed, "steps": len(run.steps), "events": len(run.watches.rec.phases),
                "reboot_jobs": len(run.watches.rec.job_adds), "violations": found,
                "seconds": round(time.monotonic() - t0, 1), "step_list": run.steps}
    finally:
        run.close()
        shutil.rmtree(d, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100, help="steps per round (default 100)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, each a fresh node and seed (default 1)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the first round; round i uses seed+i (default 1)")
    ap.add_argument("--budget", type=float, default=1800.0, help="seconds of steps per round at most (default 1800)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the rounds' results as JSON here")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.budget <= 0:
        ap.error("--steps, --rounds and --budget must be positive")
    results = []
    with ControlPlane() as cp:
        k = cp.kube()
        try:
            install_crd(k)
        finally:
            k.close()
        for i in range(args.rounds):
            results.append(one_round(cp, args.seed + i, args.steps, args.budget))
    print("\nseed    steps  events  reboot-jobs  seconds  violations")
    for r in results:
        print(f"{r['seed']:<7d} {r['steps']:>5d}  {r['events']:>6d}  {r['reboot_jobs']:>11d}  {r['seconds']:>7.1f}  "
              f"{'; '.join(r['violations']) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(r["violations"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
