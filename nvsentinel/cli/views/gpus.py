"""How `nvsentinel get gpus|gpu` and `watch gpus` show GPUs from the node's Device API.

Pure text from the objects (no I/O): table, wide, json or yaml. Every string field of a GPU is
written by some client of an unauthenticated API (condition types, reasons, messages, the
recommended action), so table cells and watch lines go through `printable`: no escape sequence
or control character reaches the terminal, and no cell is longer than `CELL_LIMIT`. JSON and YAML
escape control characters themselves and stay complete (they are for programs).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml
from google.protobuf import json_format

from nvsentinel.service.sanitize import printable
from nvsentinel.types import health_of

__all__ = ["FORMATS", "HEADER", "WIDE_HEADER", "CELL_LIMIT", "gpu_dict", "gpu_row", "render_gpus", "watch_line"]

FORMATS = ("table", "wide", "json", "yaml")
HEADER = ("NAME", "HEALTH", "ACTION", "RV", "CONDITIONS")
WIDE_HEADER = (*HEADER, "REASONS", "NAMESPACE")
#: Characters of one table cell at most.
CELL_LIMIT = 120


def gpu_dict(gpu: Any) -> dict:
    return json_format.MessageToDict(gpu)


def _cell(value: str) -> str:
    return printable(value, CELL_LIMIT) or "-"


def gpu_row(gpu: Any, wide: bool = False) -> list[str]:
    conds = list(gpu.status.conditions)
    health = health_of(tuple(c.status for c in conds))
    row = [
        _cell(gpu.metadata.name),
        health.upper(),
        _cell(gpu.status.recommended_action),
        str(gpu.resource_version),
        _cell(",".join(f"{c.type}={c.status}" for c in conds)),
    ]
    if wide:
        row.append(_cell(",".join(c.reason for c in conds if c.status != "True" and c.reason)))
        row.append(_cell(gpu.metadata.namespace))
    return row


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2)
    return yaml.safe_dump(doc, sort_keys=False).rstrip("\n")


def render_gpus(gpus: Sequence[Any], fmt: str, rv: int | None = None) -> str:
    """GPUs in one of FORMATS; "" for an empty table (the caller says so on stderr). One GPU with
    no list RV is shown as the object itself in json/yaml (`get gpu NAME`)."""
    if fmt in ("json", "yaml"):
        if rv is None and len(gpus) == 1:
            return _dump(gpu_dict(gpus[0]), fmt)
        return _dump({"metadata": {"resourceVersion": str(rv or 0)}, "items": [gpu_dict(g) for g in gpus]}, fmt)
    if fmt not in ("table", "wide"):
        raise ValueError(f"unknown output format {fmt!r}; want one of {', '.join(FORMATS)}")
    if not gpus:
        return ""
    wide = fmt == "wide"
    return _table([gpu_row(g, wide) for g in gpus], WIDE_HEADER if wide else HEADER)


def watch_line(event_type: str, gpu: Any, resource_version: int, fmt: str) -> str:
    """One watch event: a JSON object per line, or `TYPE  NAME  HEALTH  action=..  rv=..  CONDITIONS`."""
    if fmt == "json":
        return json.dumps({"type": event_type, "resourceVersion": resource_version, "object": gpu_dict(gpu)})
    if event_type == "BOOKMARK":
        return f"BOOKMARK   rv={resource_version}"
    name, health, action, rv, conds = gpu_row(gpu)
    return f"{printable(event_type, 20):<10} {name}  {health}  action={action}  rv={rv}  {conds}"
