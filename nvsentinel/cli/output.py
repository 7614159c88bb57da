"""Shared output helpers for the kubectl-like commands (table, wide, json, yaml)."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from nvsentinel.types import health_of

FORMATS = ("table", "wide", "json", "yaml")


def gpu_dict(gpu: Any) -> dict:
    return json_format.MessageToDict(gpu)


def dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=False)
    import yaml

    return yaml.safe_dump(doc, sort_keys=False).rstrip("\n")


def gpu_row(gpu: Any, wide: bool) -> list[str]:
    conds = list(gpu.status.conditions)
    health = health_of(tuple(c.status for c in conds))
    row = [
        gpu.metadata.name,
        health.upper(),
        gpu.status.recommended_action or "-",
        str(gpu.resource_version),
        ",".join(f"{c.type}={c.status}" for c in conds) or "-",
    ]
    if wide:
        row.append(",".join(c.reason for c in conds if c.status != "True" and c.reason) or "-")
        row.append(gpu.metadata.namespace or "-")
    return row


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


HEADER = ["NAME", "HEALTH", "ACTION", "RV", "CONDITIONS"]
WIDE_HEADER = HEADER + ["REASONS", "NAMESPACE"]


def print_gpus(gpus: Sequence[Any], fmt: str, rv: int | None = None) -> None:
    if fmt in ("json", "yaml"):
        if rv is None and len(gpus) == 1:
            doc: Any = gpu_dict(gpus[0])
        else:
            doc = {"metadata": {"resourceVersion": str(rv or 0)}, "items": [gpu_dict(g) for g in gpus]}
        print(dump(doc, fmt))
        return
    wide = fmt == "wide"
    if not gpus:
        print("No GPUs found.", file=sys.stderr)
        return
    print(table([gpu_row(g, wide) for g in gpus], WIDE_HEADER if wide else HEADER))
