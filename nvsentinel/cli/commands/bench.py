"""`nvsentinel bench`: the compiled core against its pure-Python twin, with the SPEC §9 targets.

Runs every case of `nvsentinel.devtools.benchmarks` in this process and prints one table. A missed target
is reported, not a failure; the exit status is 1 only if a result disagrees with the twin (or a
delivery stream has a gap), since then the numbers measure a broken implementation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

__all__ = ["register", "func", "format_table"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the compiled store and fan-out against the pure-Python twin",
        description=(
            "Time the GPU store (get, update-status with RV check, list of 1024, create/delete "
            "churn) and the watch fan-out (publish with 1/16/256 subscribers, delivery to 256 "
            "subscribers), compiled and pure-Python in one run, and check the SPEC §9 targets. "
            "Exit status 1 only if a correctness check fails."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples (a few seconds)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.set_defaults(func=func)


def format_table(rows: list[Any]) -> str:
    """The rows as an aligned text table, one block per case."""
    from nvsentinel.devtools.benchmarks import format_ns, format_ratio  # not at import: keeps the CLI start light

    header = ("case", "impl", "median/op", "ops/s", "vs twin", "vs base", "target", "measured", "met", "ok")
    lines: list[tuple[str, ...]] = [header]
    last_case = None
    for r in rows:
        lines.append((
            r.case if r.case != last_case else "",
            r.impl,
            format_ns(r.ns_per_op),
            f"{r.ops_per_s:,.0f}",
            format_ratio(r.vs_twin),
            format_ratio(r.vs_baseline),
            r.target or "",
            format_ratio(r.target_value) if r.target else "",
            "" if r.met is None else ("yes" if r.met else "MISSED"),
            "yes" if r.correct else "WRONG",
        ))
        last_case = r.case
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 3, 4, 5, 7}
    out = []
    for k, line in enumerate(lines):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def func(args: argparse.Namespace) -> int:
    from nvsentinel.devtools import benchmarks

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    env = benchmarks.environment()
    if "c" not in env["impls"]:
        progress("the compiled core is not built here: timing the twin and the baselines only")
    started = time.perf_counter()
    rows = benchmarks.run_all(quick=args.quick, progress=progress)
    elapsed = time.perf_counter() - started
    ok = all(r.correct for r in rows)
    missed = [f"{r.case} [{r.impl}]" for r in rows if r.met is False]
    if args.json:
        print(json.dumps({
            "quick": args.quick,
            "elapsed_s": round(elapsed, 3),
            "environment": env,
            "targets": {case: t.as_dict() for case, t in benchmarks.TARGETS.items()},
            "rows": [dataclasses.asdict(r) for r in rows],
            "correct": ok,
            "missed": missed,
        }, indent=2))
    else:
        print(f"nvsentinel bench{' --quick' if args.quick else ''}: {env['cpu']}, "
              f"{env['cores']} cores, Python {env['python']}, Cython {env['cython']}")
        print("median per operation; vs twin = twin time / this time (higher is faster); "
              "vs base = this time / the baseline or floor (lower is closer)")
        print()
        print(format_table(rows))
        print()
        print(f"targets missed: {', '.join(missed) if missed else 'none'}; "
              f"correctness: {'all results agree with the twin' if ok else 'FAILED'} "
              f"({elapsed:.1f} s)")
    return 0 if ok else 1
