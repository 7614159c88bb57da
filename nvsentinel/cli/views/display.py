"""How `nvsentinel get healthevents` and `describe healthevent` show HealthEvents (kubectl's look).

Pure text from the server's JSON: no I/O and no clock reads (`now` is passed in), so every column
and line is unit-tested. Works on raw dicts, not the typed model, so one odd object (written by hand,
from an older schema) degrades to `<none>` cells instead of failing the whole listing.

Whoever can write a HealthEvent or an Event chooses its text, so nothing reaches the terminal raw:
each value is cut to a bound (`CELL_LIMIT` in a table, `VALUE_LIMIT` in describe) and every line
leaves through `printable`, which removes escape sequences and control characters (a message that
would recolour the terminal, move the cursor or forge an extra line shows as plain text).
"""
from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from nvsentinel.policy.healthevent import API_VERSION, KIND, Phase, parse_time
from nvsentinel.service.sanitize import printable, printable_lines

__all__ = [
    "FORMATS", "HEADER", "WIDE_HEADER", "NONE", "human_duration", "age", "sort_events", "is_terminal",
    "row", "render_table", "render_list", "render_one", "describe", "CELL_LIMIT", "VALUE_LIMIT",
]

FORMATS = ("table", "wide", "json", "yaml")
HEADER = ("NAME", "NODE", "SOURCE", "FATAL", "ACTION", "PHASE", "AGE")
WIDE_HEADER = (*HEADER, "ERRORS", "GPUS", "MESSAGE")
NONE = "<none>"
#: Characters of one table cell, and of one describe value, at most.
CELL_LIMIT = 256
VALUE_LIMIT = 4096
_TERMINAL = frozenset({str(Phase.RESOLVED), str(Phase.CANCELLED)})


# ---- times ---------------------------------------------------------------------------------------
def human_duration(seconds: float) -> str:
    """kubectl's `duration.HumanDuration`: 90s, 5m3s, 3h10m, 2d4h, 1y30d (same cut-offs)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"  # kubectl tolerates a second of clock skew
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _time(value: Any) -> _dt.datetime | None:
    try:
        return parse_time(value)
    except ValueError:
        return None


def age(timestamp: Any, now: _dt.datetime) -> str:
    t = _time(timestamp)
    return human_duration((now - t).total_seconds()) if t else "<unknown>"


# ---- the list ------------------------------------------------------------------------------------
def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _phase(obj: Mapping[str, Any]) -> str:
    # a missing phase is New (HealthEventStatus.from_dict); the CRD defaults it too
    return str((obj.get("status") or {}).get("phase") or Phase.NEW)


def _cell(value: Any) -> str:
    text = " ".join(printable(value, CELL_LIMIT).split()) if value is not None else ""  # one line per row
    return text or NONE


def _bool(value: Any) -> str:
    return "true" if value is True else "false" if value is False else NONE


def sort_events(objs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Oldest first (the order faults happened in), then by name; undated objects last."""
    far = _dt.datetime.max.replace(tzinfo=_dt.timezone.utc)
    return sorted(objs, key=lambda o: (_time(_meta(o).get("creationTimestamp")) or far, str(_meta(o).get("name", ""))))


def is_terminal(obj: Mapping[str, Any]) -> bool:
    """Resolved or Cancelled: nothing more will happen to it (the default listing hides these)."""
    return _phase(obj) in _TERMINAL


def row(obj: Mapping[str, Any], now: _dt.datetime, *, wide: bool = False) -> list[str]:
    spec = _spec(obj)
    cells = [
        _cell(_meta(obj).get("name")),
        _cell(spec.get("nodeName")),
        _cell(spec.get("source")),
        _bool(spec.get("isFatal")),
        _cell(spec.get("recommendedAction")),
        _cell(_phase(obj)),
        age(_meta(obj).get("creationTimestamp"), now),
    ]
    if wide:
        entities = spec.get("entitiesImpacted") or ()
        gpus = [str(e.get("value", "")) for e in entities if isinstance(e, Mapping) and e.get("type") == "GPU"]
        cells += [_cell(",".join(str(c) for c in spec.get("errorCodes") or ())), _cell(",".join(gpus)),
                  _cell(spec.get("message"))]
    return cells


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [printable(indent + "   ".join(v.ljust(w) for v, w in zip(r, widths)), 0).rstrip()
            for r in [header, *rows]]


def render_table(objs: Iterable[Mapping[str, Any]], now: _dt.datetime, *, wide: bool = False) -> str:
    """The `get` table, sorted by creation time; "" for no objects (the caller says so on stderr)."""
    rows = [row(o, now, wide=wide) for o in sort_events(objs)]
    if not rows:
        return ""
    return "\n".join(_table(rows, WIDE_HEADER if wide else HEADER))


def _clean(obj: Mapping[str, Any]) -> dict[str, Any]:
    # managedFields are noise for a reader (kubectl hides them by default since 1.21)
    meta = {k: v for k, v in _meta(obj).items() if k != "managedFields"}
    out = {"apiVersion": obj.get("apiVersion") or API_VERSION, "kind": obj.get("kind") or KIND, "metadata": meta}
    out.update((k, v) for k, v in obj.items() if k not in out)
    return out


def _dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2)
    return yaml.safe_dump(doc, sort_keys=False).rstrip("\n")


def render_list(objs: Iterable[Mapping[str, Any]], fmt: str, now: _dt.datetime, resource_version: str = "") -> str:
    """A listing in any of FORMATS: json/yaml is a kubectl-style `List` with the list's resourceVersion."""
    if fmt in ("json", "yaml"):
        doc = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": resource_version},
               "items": [_clean(o) for o in sort_events(objs)]}
        return _dump(doc, fmt)
    if fmt not in ("table", "wide"):
        raise ValueError(f"unknown output format {fmt!r}; want one of {', '.join(FORMATS)}")
    return render_table(objs, now, wide=fmt == "wide")


def render_one(obj: Mapping[str, Any], fmt: str, now: _dt.datetime) -> str:
    """One named object: the object itself for json/yaml, a one-row table otherwise."""
    if fmt in ("json", "yaml"):
        return _dump(_clean(obj), fmt)
    return render_list([obj], fmt, now)


# ---- describe ------------------------------------------------------------------------------------
class _Writer:
    """kubectl describe's layout: `Key:` padded to one column per level, nested by two spaces."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def block(self, level: int, pairs: Sequence[tuple[str, Any]], width: int = 0) -> int:
        width = width or max(len(k) for k, _ in pairs) + 2
        for key, value in pairs:
            first, *more = str(value).splitlines() or [""]
            self.line(level, f"{key + ':':<{width}}{first}".rstrip())
            for extra in more:  # a multi-line message stays inside its value column
                self.line(level, f"{'':<{width}}{extra}".rstrip())
        return width

    def line(self, level: int, text: str) -> None:
        self.lines.append(printable("  " * level + text, 0))  # the last word: nothing raw leaves

    def mapping(self, level: int, key: str, width: int, items: Mapping[str, Any]) -> None:
        """`Labels:  a=b` then continuation lines aligned under the first value (kubectl's look)."""
        pairs = [printable(f"{k}={v}", CELL_LIMIT) for k, v in sorted(items.items(), key=lambda kv: str(kv[0]))] or [NONE]
        self.line(level, f"{key + ':':<{width}}{pairs[0]}")
        for p in pairs[1:]:
            self.line(level, " " * width + p)


def _text(value: Any) -> str:
    """A describe value: bounded, printable, its own line breaks kept (see `_Writer.block`)."""
    return printable_lines(value, VALUE_LIMIT) if value not in (None, "") else NONE


def _when(timestamp: Any, now: _dt.datetime) -> str:
    return f"{timestamp} ({age(timestamp, now)} ago)" if _time(timestamp) else _text(timestamp)


def _event_time(ev: Mapping[str, Any]) -> Any:
    return (ev.get("lastTimestamp") or ev.get("eventTime") or (ev.get("series") or {}).get("lastObservedTime")
            or _meta(ev).get("creationTimestamp"))


def _event_age(ev: Mapping[str, Any], now: _dt.datetime) -> str:
    """kubectl's `5m (x3 over 12m)` for a repeated Event."""
    last = age(_event_time(ev), now)
    try:
        count = int(ev.get("count") or (ev.get("series") or {}).get("count") or 1)
    except (TypeError, ValueError):  # a hand-written Event: show it, do not fail the describe
        count = 1
    first = ev.get("firstTimestamp") or ev.get("eventTime")
    if count > 1 and _time(first):
        return f"{last} (x{count} over {age(first, now)})"
    return last


def _event_source(ev: Mapping[str, Any]) -> str:
    src = ev.get("source") or {}
    name = src.get("component") or ev.get("reportingComponent") or ev.get("reportingController") or ""
    host = src.get("host") or ""
    return _cell(f"{name}, {host}" if name and host else name or host)


def _pods(value: Any) -> list[Mapping[str, Any]]:
    return [p for p in value or () if isinstance(p, Mapping)] if isinstance(value, (list, tuple)) else []


def _joined(value: Any) -> str:
    """A list written by a node (GPU UUIDs, devices) as one value; anything else as it is."""
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value or "")


def _pod_mapping(w: _Writer, mapping: Mapping[str, Any], now: _dt.datetime) -> None:
    """spec.podMapping: which pods held the event's GPUs, as the node's publisher read them (or why it could not)."""
    w.line(1, "Pod Mapping:")
    pods = _pods(mapping.get("pods"))
    pairs = [("Resource", _text(mapping.get("resourceName"))), ("Read At", _when(mapping.get("readAt"), now))]
    if mapping.get("error"):
        pairs.append(("Error", _text(mapping.get("error"))))
    if not pods:
        pairs.append(("Pods", NONE))
    w.block(2, pairs)
    if pods:
        w.line(2, "Pods:")
        w.lines.extend(_table([[_cell(p.get("namespace")), _cell(p.get("name")), _cell(",".join(
            str(d) for d in p.get("devices") or ()))] for p in pods], ["Namespace", "Name", "Devices"],
            indent="      "))


def _drain(w: _Writer, drain: Mapping[str, Any]) -> None:
    """status.drain: what the drain stage evicted (the whole node or the pods on the event's GPUs) and any fallback."""
    w.line(1, "Drain:")
    pods = _pods(drain.get("pods"))
    pairs = [("Scope", _text(drain.get("scope"))), ("GPUs", _text(_joined(drain.get("gpus")))),
             ("Fallback Reason", _text(drain.get("reason")))]
    if not pods:
        pairs.append(("Pods Evicted", NONE))
    w.block(2, pairs)
    if pods:
        w.line(2, "Pods Evicted:")
        w.lines.extend(_table([[_cell(p.get("namespace")), _cell(p.get("name"))] for p in pods],
                              ["Namespace", "Name"], indent="      "))


def describe(obj: Mapping[str, Any], events: Iterable[Mapping[str, Any]], now: _dt.datetime) -> str:
    """`kubectl describe`-style text: metadata, spec, status with conditions, then related Events."""
    meta, spec, status = _meta(obj), _spec(obj), obj.get("status") or {}
    w = _Writer()
    top = ["Name", "Labels", "Annotations", "API Version", "Kind", "Created", "UID", "Resource Version"]
    width = max(len(k) for k in top) + 2
    w.line(0, f"{'Name:':<{width}}{_text(meta.get('name'))}")
    w.mapping(0, "Labels", width, meta.get("labels") or {})
    w.mapping(0, "Annotations", width, meta.get("annotations") or {})
    for key, value in (("API Version", obj.get("apiVersion") or API_VERSION), ("Kind", obj.get("kind") or KIND),
                       ("Created", _when(meta.get("creationTimestamp"), now)), ("UID", _text(meta.get("uid"))),
                       ("Resource Version", _text(meta.get("resourceVersion")))):
        w.line(0, f"{key + ':':<{width}}{value}")

    w.line(0, "Spec:")
    overrides = spec.get("overrides") or {}
    spec_width = w.block(1, [
        ("Source", _text(spec.get("source"))),
        ("Agent", _text(spec.get("agent"))),
        ("Node Name", _text(spec.get("nodeName"))),
        ("Component Class", _text(spec.get("componentClass"))),
        ("Check Name", _text(spec.get("checkName"))),
        ("Fatal", _bool(spec.get("isFatal"))),
        ("Healthy", _bool(spec.get("isHealthy"))),
        ("Recommended Action", _text(spec.get("recommendedAction"))),
        ("Error Codes", _text(", ".join(str(c) for c in spec.get("errorCodes") or ()))),
        ("Detected At", _when(spec.get("detectedAt"), now)),
        ("Message", _text(spec.get("message"))),
        ("Overrides", "; ".join(
            f"{stage}: force={_bool((overrides.get(stage) or {}).get('force', False))} "
            f"skip={_bool((overrides.get(stage) or {}).get('skip', False))}" for stage in ("quarantine", "drain"))),
    ])
    entities = [e for e in spec.get("entitiesImpacted") or () if isinstance(e, Mapping)]
    if entities:
        w.line(1, "Entities Impacted:")
        w.lines.extend(_table([[_cell(e.get("type")), _cell(e.get("value"))] for e in entities],
                              ["Type", "Value"], indent="    "))
    else:
        w.line(1, f"{'Entities Impacted:':<{spec_width}}{NONE}")
    w.mapping(1, "Metadata", spec_width, spec.get("metadata") or {})
    maint = spec.get("maintenance")
    if maint:
        w.line(1, "Maintenance:")
        w.block(2, [("CSP", _text(maint.get("csp"))), ("Event ID", _text(maint.get("eventId"))),
                    ("Type", _text(maint.get("maintenanceType"))),
                    ("Scheduled Start", _text(maint.get("scheduledStartTime"))),
                    ("Scheduled End", _text(maint.get("scheduledEndTime")))])
    mapping = spec.get("podMapping")
    if isinstance(mapping, Mapping):
        _pod_mapping(w, mapping, now)

    w.line(0, "Status:")
    w.block(1, [
        ("Phase", _text(_phase(obj))),
        ("Observed Generation", _text(status.get("observedGeneration"))),
        ("Last Remediation Time", _when(status.get("lastRemediationTime"), now)),
        ("Resolved At", _when(status.get("resolvedAt"), now)),
    ])
    drain = status.get("drain")
    if isinstance(drain, Mapping):
        _drain(w, drain)
    conds = [c for c in status.get("conditions") or () if isinstance(c, Mapping)]
    if conds:
        w.line(1, "Conditions:")
        rows = [[_cell(c.get("type")), _cell(c.get("status")), _cell(c.get("reason")),
                 age(c.get("lastTransitionTime"), now), _cell(c.get("message"))] for c in conds]
        header = ["Type", "Status", "Reason", "Age", "Message"]
        w.lines.extend(_table([["-" * len(h) for h in header], *rows], header, indent="    "))
    else:
        w.line(1, f"Conditions:  {NONE}")

    evs = sorted(events, key=lambda e: _time(_event_time(e)) or _dt.datetime.min.replace(tzinfo=_dt.timezone.utc))
    if evs:
        w.line(0, "Events:")
        header = ["Type", "Reason", "Age", "From", "Message"]
        rows = [[_cell(e.get("type")), _cell(e.get("reason")), _event_age(e, now), _event_source(e),
                 _cell(e.get("message"))] for e in evs]
        w.lines.extend(_table([["-" * len(h) for h in header], *rows], header, indent="  "))
    else:
        w.line(0, f"Events:  {NONE}")
    return "\n".join(w.lines)
