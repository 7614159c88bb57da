#!/usr/bin/env python3
"""Turn a saved pytest-benchmark run (bench/run) into the ratio tables of bench/RESULTS.md.

    bench/report.py                          newest run under .benchmarks/, every group, to stdout
    bench/report.py RUN.json --groups store. fanout.
    bench/report.py --groups store. fanout. --update bench/RESULTS.md

    bench/report.py --groups api. --format api --section api --update bench/RESULTS.md

`--update` rewrites only the text between the `<!-- report:<name>:begin -->` and
`<!-- report:<name>:end -->` markers of that file (name: `--section`, default "core"), so hand-written
sections around it (the XID decoder's, the notes) stay as they are.

Per group (one case) and implementation: median time per operation (round median / the
`ops` in extra_info), operations per second, ratio against the twin (twin time / this time: > 1 is
faster), ratio against the case's baseline or floor (this time / reference time), and the SPEC §9
target the suites attached in extra_info["target"], judged here. Standalone: reads JSON only.

`--format api` (the Device API suite, bench/test_bench_api.py) adds the p99 per call and the
interleaved ratio to the timed cases (a target against a reference row is judged on the
interleaved ratio when there is one), and renders the one-run cases (watch latency, RSS: their
numbers are in extra_info["result"], not in the timing) as a second table. Those one-run cases
never appear in the default format's ratio table.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from typing import Any

from nvsentinel.devtools.benchmarks import format_ns, format_ratio

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMPL_ORDER = ("c", "py", "baseline", "floor")
#: Groups with these prefixes come first, in this order; the rest follow in run order.
GROUP_ORDER = ("store.", "fanout.")
TWIN = "py"

#: Why a target is missed, for the cases where the reason is structural; `{...}` fields come from
#: the run (ceiling = twin time / reference time: the best ratio any implementation could reach).
WHY: dict[str, str] = {
    "store.get": (
        "A get is one dict lookup behind one call, in both implementations. In this run the floor "
        "(`dict.get` on the same keys, same driver) was {ceiling:.2f}× faster than the twin and the "
        "compiled get took {impl_vs_ref:.2f}× the floor's time{verdict}"
    ),
}
#: Appended to a WHY text: whether the floor itself could have met the target in this run.
VERDICT_OUT_OF_REACH = ": no implementation of get could reach the target against this twin."
VERDICT_REACHABLE = (
    "; the floor would meet the target in this run, so the gap is the compiled call's overhead over "
    "the bare lookup (or noise between sequentially timed groups: compare the interleaved "
    "`nvsentinel bench`)."
)


def newest_run(storage: pathlib.Path) -> pathlib.Path:
    runs = sorted(storage.glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit(f"no saved benchmark run under {storage}: run bench/run first")
    return runs[-1]


def load_rows(doc: dict[str, Any], groups: list[str] | None) -> list[dict[str, Any]]:
    """One row per benchmark: case, impl, ns/op, ops/s and the extra_info the suite recorded."""
    rows = []
    for bench in doc["benchmarks"]:
        info = bench.get("extra_info", {})
        case = bench.get("group") or info.get("case") or bench["name"]
        if groups and not any(case.startswith(g) for g in groups):
            continue
        if "result" in info:
            continue  # a one-run measurement (api format), not a timing
        ops = info.get("ops") or 1
        median = bench["stats"]["median"] / ops * 1e9
        rows.append({
            "case": case,
            "impl": info.get("impl") or (bench.get("params") or {}).get("impl", "?"),
            "ns": median,
            "best": bench["stats"]["min"] / ops * 1e9,
            "iqr": bench["stats"]["iqr"] / ops * 1e9,
            "rounds": bench["stats"]["rounds"],
            "ops_per_s": 1e9 / median if median else float("inf"),
            "unit": info.get("unit", "op"),
            "note": info.get("note", ""),
            "reference": info.get("reference"),
            "target": info.get("target"),
            "correct": info.get("correct"),
        })
    order = {impl: k for k, impl in enumerate(IMPL_ORDER)}
    cases: list[str] = []
    for r in rows:
        if r["case"] not in cases:
            cases.append(r["case"])
    def family(case: str) -> int:
        return next((k for k, p in enumerate(GROUP_ORDER) if case.startswith(p)), len(GROUP_ORDER))

    rows.sort(key=lambda r: (family(r["case"]), cases.index(r["case"]), order.get(r["impl"], 99), r["impl"]))
    return rows


def judge(rows: list[dict[str, Any]]) -> None:
    """Ratios against the twin and the reference, and the targets (in place)."""
    by = {(r["case"], r["impl"]): r for r in rows}
    for r in rows:
        twin = by.get((r["case"], TWIN))
        ref = by.get((r["case"], r["reference"])) if r["reference"] else None
        r["vs_twin"] = twin["ns"] / r["ns"] if twin and r["ns"] else None
        r["vs_ref"] = r["ns"] / ref["ns"] if ref and ref is not r and ref["ns"] else None
        r["ceiling"] = twin["ns"] / ref["ns"] if twin and ref and ref["ns"] else None
        r["measured"] = r["met"] = None
        target = r["target"]
        if not target:
            continue
        kind, value = target["kind"], target["value"]
        if kind == "vs_twin":
            measured = r["vs_twin"]
        elif kind == "vs_baseline":
            measured = r["vs_ref"]
        else:
            other = by.get((target["ref"], r["impl"]))
            measured = r["ns"] / other["ns"] if other and other["ns"] else None
        r["measured"] = measured
        if measured is not None:
            r["met"] = measured >= value if kind == "vs_twin" else measured <= value


_ns = format_ns
_x = format_ratio


def facts(doc: dict[str, Any]) -> list[str]:
    """The reproduction facts of a run, as markdown bullet lines."""
    mi = doc.get("machine_info", {})
    ours = mi.get("nvsentinel", {})
    ci = doc.get("commit_info", {})
    commit = ci.get("id") or "uncommitted"
    if ci.get("dirty"):
        commit += " + uncommitted changes"
    pinned = ours.get("pinned_cpus")
    return [
        f"- CPU: {ours.get('cpu') or mi.get('processor')} ({ours.get('cores')} cores"
        + (f", pinned to CPU {','.join(map(str, pinned))}" if pinned and len(pinned) < (ours.get('cores') or 0) else "")
        + f"); {mi.get('system')} {mi.get('release')}",
        f"- Python {mi.get('python_version')} ({mi.get('python_implementation')}, {mi.get('python_compiler')}); "
        f"Cython {ours.get('cython')}; compiled with {ours.get('cflags', '-O2')}; "
        f"pytest-benchmark {doc.get('version')}",
        f"- git commit: {commit}",
        f"- date: {doc.get('datetime', '')[:19].replace('T', ' ')} UTC",
        f"- command: `{ours.get('command', 'bench/run')}`, then `bench/report.py`",
    ]


def markdown(doc: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    out = facts(doc)
    out += [
        "",
        "| case | impl | median / op | ops/s | IQR | vs twin | vs baseline | target | measured | met | correct |",
        "|---|---|--:|--:|--:|--:|--:|---|--:|---|---|",
    ]
    last = None
    for r in rows:
        label = f"`{r['case']}`" if r["case"] != last else ""
        impl = r["impl"] + (f" ({r['note']})" if r["note"] and r["impl"] not in ("c", "py") else "")
        t = r["target"]
        out.append(
            f"| {label} | {impl} | {_ns(r['ns'])} | {r['ops_per_s']:,.0f} | {_ns(r['iqr'])} | "
            f"{_x(r['vs_twin'])} | {_x(r['vs_ref'])} | {t['text'] if t else ''} | "
            f"{_x(r['measured']) if t else ''} | "
            f"{'' if r['met'] is None else ('yes' if r['met'] else '**missed**')} | "
            f"{'' if r['correct'] is None else ('yes' if r['correct'] else '**WRONG**')} |"
        )
        last = r["case"]
    units = sorted({f"{r['case']}: one {r['unit']}" for r in rows if r["unit"] != "op"})
    if units:
        out += ["", "Operation per case: " + "; ".join(units) + "."]
    missed = [r for r in rows if r["met"] is False]
    for r in missed:
        why = WHY.get(r["case"], "")
        if why:
            ceiling = r["ceiling"] or float("nan")
            reachable = r["target"]["kind"] == "vs_twin" and ceiling >= r["target"]["value"]
            why = " " + why.format(
                ceiling=ceiling,
                impl_vs_ref=r["vs_ref"] or float("nan"),
                verdict=VERDICT_REACHABLE if reachable else VERDICT_OUT_OF_REACH,
            )
        out += ["", f"**Missed:** `{r['case']}` [{r['impl']}] measured {_x(r['measured'])}, "
                    f"target {r['target']['text']}.{why}"]
    return "\n".join(out) + "\n"


def update(path: pathlib.Path, section: str, text: str) -> None:
    begin, end = f"<!-- report:{section}:begin -->", f"<!-- report:{section}:end -->"
    doc = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path} has no {begin} ... {end} block")
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}{end}", doc), encoding="utf-8")


# ---- the Device API format ------------------------------------------------------------------------


def measure_rows(doc: dict[str, Any], groups: list[str] | None) -> list[dict[str, Any]]:
    """The one-run cases (extra_info["result"]), in run order."""
    out = []
    for bench in doc["benchmarks"]:
        info = bench.get("extra_info", {})
        case = bench.get("group") or info.get("case") or bench["name"]
        if "result" not in info or (groups and not any(case.startswith(g) for g in groups)):
            continue
        out.append({"case": case, **info})
    return out


def api_markdown(doc: dict[str, Any], rows: list[dict[str, Any]], measures: list[dict[str, Any]]) -> str:
    """Timed cases with p99 and the interleaved ratio, then the one-run cases."""
    out = facts(doc)
    infos = {(b.get("group"), b.get("extra_info", {}).get("impl")): b.get("extra_info", {}) for b in doc["benchmarks"]}
    versions = sorted({i.get("grpcio") for i in infos.values() if i.get("grpcio")})
    loads = [i.get("load") for i in infos.values() if i.get("load")]
    cpus = sorted({",".join(map(str, c)) if isinstance(c, list) else str(c)
                   for i in infos.values() if (c := i.get("server_cpus")) is not None})
    if versions:
        out.append(f"- grpcio {', '.join(versions)}; server subprocess on CPU {', '.join(cpus)}; "
                   f"load average (1/5/15 min) at the start of the first and last case: {loads[0]} … {loads[-1]} "
                   "(the bench's own server and client processes count)")
    run_order = {(b.get("group"), b.get("extra_info", {}).get("impl")): k for k, b in enumerate(doc["benchmarks"])}
    first = {}
    for r in rows:
        first.setdefault(r["case"], run_order.get((r["case"], r["impl"]), 0))
    rows = sorted(rows, key=lambda r: (first[r["case"]], run_order.get((r["case"], r["impl"]), 0)))
    if rows:
        out += [
            "",
            "| case | impl | median / op | p99 / op | ops/s | vs reference | interleaved | target | measured | met | correct |",
            "|---|---|--:|--:|--:|--:|--:|---|--:|---|---|",
        ]
        last = None
        for r in rows:
            info = infos.get((r["case"], r["impl"]), {})
            inter = info.get("interleaved") or {}
            ratio = inter.get("ratio")
            if ratio and r["target"] and r["target"].get("kind") == "vs_baseline":
                # judged on the interleaved ratio: sequential groups drift apart on a shared VM
                r["measured"], r["met"] = ratio, ratio <= r["target"]["value"]
            label = f"`{r['case']}`" if r["case"] != last else ""
            impl = r["impl"] + (f" ({r['note']})" if r["note"] else "")
            p99 = info.get("p99_ns")
            t = r["target"]
            vs_ref = r["vs_ref"]
            out.append(
                f"| {label} | {impl} | {_ns(r['ns'])} | {_ns(p99) if p99 else ''} | {r['ops_per_s']:,.0f} | "
                f"{_x(vs_ref) + ' ' + r['reference'] if vs_ref else ''} | {_x(ratio) if ratio else ''} | "
                f"{t['text'] if t else ''} | {_x(r['measured']) if t else ''} | "
                f"{'' if r['met'] is None else ('yes' if r['met'] else '**missed**')} | "
                f"{'' if r['correct'] is None else ('yes' if r['correct'] else '**WRONG**')} |"
            )
            last = r["case"]
        units = sorted({f"{r['case']}: one {r['unit']}" for r in rows if r["unit"] != "op"})
        out += ["", "Operation per case: " + "; ".join(units) + ". *vs reference*: this median / the named "
                "row's median (sequential groups); *interleaved*: the same ratio from calls alternated one by one, "
                "which is what *measured* and *met* use when a case has it."]
    if measures:
        out += [
            "",
            "| case | configuration | result | target | measured | met | correct |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in measures:
            t = m.get("target") or {}
            met = m.get("met")
            out.append(
                f"| `{m['case']}` | {m.get('configuration', '')} | {m['result']} | {t.get('text', '')} | "
                f"{m.get('measured', '')} | {'' if met is None else ('yes' if met else '**missed**')} | "
                f"{'' if m.get('correct') is None else ('yes' if m['correct'] else '**WRONG**')} |"
            )
    for r in rows:
        if r["met"] is False:
            out += ["", f"**Missed:** `{r['case']}` [{r['impl']}] measured {_x(r['measured'])}, target {r['target']['text']}."]
    for m in measures:
        if m.get("met") is False:
            out += ["", f"**Missed:** `{m['case']}`: {m.get('measured', '')}; target {m['target']['text']}."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=pathlib.Path, help="saved run JSON (default: newest under --storage)")
    parser.add_argument("--storage", type=pathlib.Path, default=ROOT / ".benchmarks")
    parser.add_argument("--groups", nargs="*", help="only groups starting with these prefixes")
    parser.add_argument("--update", type=pathlib.Path, help="rewrite the marked block of this file")
    parser.add_argument("--section", default="core", help="marker name of the block (default: core)")
    parser.add_argument("--format", choices=("ratios", "api"), default="ratios",
                        help="ratios (default): the ratio table; api: p99, interleaved ratios and one-run cases")
    args = parser.parse_args(argv)
    path = args.run or newest_run(args.storage)
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = load_rows(doc, args.groups)
    measures = measure_rows(doc, args.groups) if args.format == "api" else []
    if not rows and not measures:
        raise SystemExit(f"{path}: no benchmarks" + (f" in groups {args.groups}" if args.groups else ""))
    judge(rows)
    text = api_markdown(doc, rows, measures) if args.format == "api" else markdown(doc, rows)
    if args.update:
        update(args.update, args.section, text)
        print(f"{args.update}: {args.section} tables rewritten from {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 1 if any(r["correct"] is False for r in [*rows, *measures]) else 0


if __name__ == "__main__":
    sys.exit(main())
