"""What `nvsentinel status` shows: the nodes, the circuit breaker, the HealthEvents, what needs a human.

Pure: it reads the server's JSON (Nodes, HealthEvents, the breaker ConfigMap's data) and a `now`
passed in, and returns a summary, its JSON document and its text. No client, no clock, so every
count and line is unit-tested. Raw dicts, not the typed model: one odd object degrades to a count
instead of failing the whole screen. The rules are the controllers' own (imported, not copied):
the ownership record and GPU test of quarantine, the breaker's window and limit, the reasons that
park an event for a human in remediation, and who remediates each node (its remediation mode: nvsentinel,
external, approve).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nvsentinel.cli.views import display
from nvsentinel.cli.views.approval import would_run
from nvsentinel.cluster.ownership import OWNER_LABEL
from nvsentinel.cluster.quarantine.config import TAINT_KEY, QuarantineConfig
from nvsentinel.cluster.quarantine.logic import ANNOTATION, breaker_report, is_gpu_node, ownership_of
from nvsentinel.cluster.remediation.logic import AWAITING_APPROVAL, HELD_REASONS
from nvsentinel.policy.breaker import BreakerPolicy, BreakerState
from nvsentinel.policy.healthevent import ConditionType, Phase, RemediationMode, format_time, parse_time
from nvsentinel.service.sanitize import printable

__all__ = [
    "OPEN_PHASES", "RECENT", "DRAIN_HELD_REASONS", "BREAKER_HELD_REASON", "NodeSummary", "Human", "EventSummary",
    "Summary", "summarize_nodes", "needs_human", "finished_at", "summarize_events", "breaker_policy", "summarize",
    "to_json", "render", "NodeOwner", "owner_of", "Awaiting", "awaiting_approval", "HandedOff", "handed_off",
]

#: The phases a HealthEvent is still in the chain in, in chain order (Resolved/Cancelled are done).
OPEN_PHASES: tuple[Phase, ...] = tuple(p for p in Phase if not p.terminal)
#: How far back "recently resolved/cancelled" looks.
RECENT = _dt.timedelta(hours=24)
#: `PodsDrained False` reasons that leave a Draining event to a human (a budget blocks its drain).
DRAIN_HELD_REASONS = frozenset({"DrainTimeout"})
#: `NodeQuarantined False` reason of an event the tripped breaker holds in New.
BREAKER_HELD_REASON = "CircuitBreakerOpen"
_MAX_NAMES = 5
"""node names the text shows inline before `+N more` (the JSON has them all)"""


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("name") or "")


def _time(value: Any) -> _dt.datetime | None:
    try:
        return parse_time(value)
    except ValueError:
        return None


def _stamp(t: _dt.datetime | None) -> str:
    return format_time(t) if t else ""


# ---- nodes -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class NodeOwner:
    """Who remediates one quarantined node, and how far the quarantine reaches."""

    node: str
    owner: str
    """the remediation mode: nvsentinel, external, approve ("?" when neither the record nor the label says)"""
    scope: str
    """node (cordoned) or gpu (only the faulty GPUs' pods drained; "?" with a damaged record)"""
    cordon: str
    """nvsentinel | others | none: whose cordon the node has"""
    events: int
    """HealthEvents the record names"""
    since: _dt.datetime | None


def owner_of(node: Mapping[str, Any]) -> NodeOwner:
    """The node's owner: the ownership record's mode (the quarantine stage's decision), else `OWNER_LABEL`."""
    try:
        own = ownership_of(node)
    except ValueError:
        own = None
    label = str((_meta(node).get("labels") or {}).get(OWNER_LABEL) or "")
    cordoned = bool((node.get("spec") or {}).get("unschedulable"))
    cordon = ("nvsentinel" if own is not None and own.cordoned_by_us else "others") if cordoned else "none"
    if own is None:
        return NodeOwner(_name(node), label or "?", "?", cordon, 0, None)
    return NodeOwner(_name(node), own.mode, own.scope, cordon, len(own.events), own.since)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSummary:
    """Counts over the selected Nodes; name lists are sorted.

    `cordoned` = `cordoned_by_nvsentinel` + `cordoned_by_others`. A node nvsentinel quarantined on
    top of someone else's cordon (`cordonedByUs: false`) is both quarantined and cordoned by others:
    nvsentinel will never lift that cordon.
    """

    total: int = 0
    gpu: int = 0
    cordoned: int = 0
    quarantined: tuple[str, ...] = ()
    """nvsentinel's ownership record or taint is on the node"""
    cordoned_by_nvsentinel: tuple[str, ...] = ()
    """cordoned, and the record says the cordon is nvsentinel's"""
    cordoned_by_others: tuple[str, ...] = ()
    """cordoned, and not by nvsentinel"""
    quarantined_uncordoned: tuple[str, ...] = ()
    """quarantined but schedulable: an operator uncordoned it while nvsentinel still holds it"""
    owners: tuple[NodeOwner, ...] = ()
    """each quarantined node's owner and scope, by name"""

    @property
    def by_owner(self) -> dict[str, int]:
        """Quarantined nodes per owner: every mode, zeros included."""
        out = {str(m): 0 for m in RemediationMode}
        for o in self.owners:
            out[o.owner] = out.get(o.owner, 0) + 1
        return out


def _ours(node: Mapping[str, Any]) -> bool:
    """Whether the node's record says nvsentinel made the cordon (a malformed record is not ours)."""
    try:
        own = ownership_of(node)
    except ValueError:
        return False
    return own is not None and own.cordoned_by_us


def summarize_nodes(nodes: Iterable[Mapping[str, Any]], *, taint_key: str = TAINT_KEY) -> NodeSummary:
    total = gpu = cordoned = 0
    quarantined: list[str] = []
    by_us: list[str] = []
    others: list[str] = []
    uncordoned: list[str] = []
    owners: list[NodeOwner] = []
    for node in nodes:
        total += 1
        gpu += is_gpu_node(node)
        name = _name(node)
        spec = node.get("spec") or {}
        is_cordoned = bool(spec.get("unschedulable"))
        # the annotation's key alone marks it: a damaged record is still nvsentinel's hold
        held = ANNOTATION in (_meta(node).get("annotations") or {}) or any(
            isinstance(t, Mapping) and t.get("key") == taint_key for t in spec.get("taints") or ())
        if held:
            quarantined.append(name)
            owners.append(owner_of(node))
            if not is_cordoned:
                uncordoned.append(name)
        if is_cordoned:
            cordoned += 1
            (by_us if _ours(node) else others).append(name)
    return NodeSummary(total=total, gpu=gpu, cordoned=cordoned, quarantined=tuple(sorted(quarantined)),
                       cordoned_by_nvsentinel=tuple(sorted(by_us)), cordoned_by_others=tuple(sorted(others)),
                       quarantined_uncordoned=tuple(sorted(uncordoned)),
                       owners=tuple(sorted(owners, key=lambda o: o.node)))


# ---- HealthEvents ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Human:
    """One event the controllers have left to a person, and why."""

    name: str
    node: str
    phase: str
    condition: str
    reason: str
    message: str
    created: _dt.datetime | None
    since: _dt.datetime | None
    """when the condition took this status (how long it has waited)"""


def _phase(obj: Mapping[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or Phase.NEW)  # the CRD defaults a missing phase to New


def _condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == ctype:
            return c
    return None


def _held(obj: Mapping[str, Any], ctype: str, reasons: frozenset[str]) -> Mapping[str, Any] | None:
    c = _condition(obj, ctype)
    return c if c is not None and c.get("status") == "False" and c.get("reason") in reasons else None


def needs_human(obj: Mapping[str, Any]) -> Human | None:
    """Drained with `Remediated` False and a held reason (remediation stops there), or Draining with
    `PodsDrained` False `DrainTimeout` (a disruption budget blocks it); None otherwise."""
    phase = _phase(obj)
    if phase == Phase.DRAINED:
        ctype, cond = ConditionType.REMEDIATED, _held(obj, ConditionType.REMEDIATED, HELD_REASONS)
    elif phase == Phase.DRAINING:
        ctype, cond = ConditionType.PODS_DRAINED, _held(obj, ConditionType.PODS_DRAINED, DRAIN_HELD_REASONS)
    else:
        return None
    if cond is None:
        return None
    return Human(name=_name(obj), node=str((obj.get("spec") or {}).get("nodeName") or ""), phase=phase,
                 condition=str(ctype), reason=str(cond.get("reason")),
                 message=" ".join(str(cond.get("message") or "").split()),
                 created=_time(_meta(obj).get("creationTimestamp")), since=_time(cond.get("lastTransitionTime")))


@dataclasses.dataclass(frozen=True, slots=True)
class Awaiting:
    """One event the remediation stage holds until an operator approves it (remediation mode approve)."""

    name: str
    node: str
    would_run: str
    """the strategy that starts once approved: reboot, terminate, gpu-reset"""
    created: _dt.datetime | None
    since: _dt.datetime | None

    @property
    def command(self) -> str:
        return f"nvsentinel approve {self.name}"


def awaiting_approval(obj: Mapping[str, Any]) -> Awaiting | None:
    """Drained with `Remediated False AwaitingApproval`; None otherwise."""
    if _phase(obj) != Phase.DRAINED:
        return None
    cond = _held(obj, ConditionType.REMEDIATED, frozenset({AWAITING_APPROVAL}))
    if cond is None:
        return None
    return Awaiting(name=_name(obj), node=str((obj.get("spec") or {}).get("nodeName") or ""),
                    would_run=would_run(obj), created=_time(_meta(obj).get("creationTimestamp")),
                    since=_time(cond.get("lastTransitionTime")))


@dataclasses.dataclass(frozen=True, slots=True)
class HandedOff:
    """One open event another system repairs (remediation mode external)."""

    name: str
    node: str
    phase: str
    action: str
    """what nvsentinel recommends (spec.recommendedAction)"""
    created: _dt.datetime | None


def handed_off(obj: Mapping[str, Any]) -> HandedOff | None:
    """An open event whose `status.remediationMode` is external; None otherwise."""
    phase = _phase(obj)
    if phase in (Phase.RESOLVED, Phase.CANCELLED) or \
            (obj.get("status") or {}).get("remediationMode") != RemediationMode.EXTERNAL:
        return None
    spec = obj.get("spec") or {}
    return HandedOff(name=_name(obj), node=str(spec.get("nodeName") or ""), phase=phase,
                     action=str(spec.get("recommendedAction") or ""),
                     created=_time(_meta(obj).get("creationTimestamp")))


def finished_at(obj: Mapping[str, Any]) -> _dt.datetime | None:
    """When a finished event finished: `resolvedAt`; else (a cancel sets none) its latest condition
    change; else its creation."""
    status = obj.get("status") or {}
    t = _time(status.get("resolvedAt"))
    if t:
        return t
    changes = [t for c in status.get("conditions") or () if isinstance(c, Mapping)
               if (t := _time(c.get("lastTransitionTime")))]
    return max(changes) if changes else _time(_meta(obj).get("creationTimestamp"))


@dataclasses.dataclass(frozen=True, slots=True)
class EventSummary:
    total: int = 0
    by_phase: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """every phase, open and finished, with a count (0 included)"""
    resolved_recent: int = 0
    cancelled_recent: int = 0
    held_by_breaker: int = 0
    needs_human: tuple[Human, ...] = ()
    """oldest first"""
    awaiting_approval: tuple[Awaiting, ...] = ()
    """oldest first"""
    handed_off: tuple[HandedOff, ...] = ()
    """oldest first"""

    @property
    def open(self) -> int:
        return sum(self.by_phase.get(p, 0) for p in OPEN_PHASES)


def summarize_events(objs: Iterable[Mapping[str, Any]], now: _dt.datetime, *,
                     recent: _dt.timedelta = RECENT) -> EventSummary:
    by_phase = {str(p): 0 for p in Phase}
    total = resolved = cancelled = held = 0
    humans: list[Human] = []
    waiting: list[Awaiting] = []
    handed: list[HandedOff] = []
    start = now - recent
    for obj in objs:
        total += 1
        phase = _phase(obj)
        by_phase[phase] = by_phase.get(phase, 0) + 1
        if phase in (Phase.RESOLVED, Phase.CANCELLED):
            t = finished_at(obj)
            if t is not None and start < t <= now:
                if phase == Phase.RESOLVED:
                    resolved += 1
                else:
                    cancelled += 1
        elif phase == Phase.NEW and _held(obj, ConditionType.NODE_QUARANTINED, frozenset({BREAKER_HELD_REASON})):
            held += 1
        elif (human := needs_human(obj)) is not None:
            humans.append(human)
        elif (awaiting := awaiting_approval(obj)) is not None:
            waiting.append(awaiting)
        if (off := handed_off(obj)) is not None:
            handed.append(off)
    far = _dt.datetime.max.replace(tzinfo=_dt.timezone.utc)
    humans.sort(key=lambda h: (h.created or far, h.name))
    waiting.sort(key=lambda a: (a.created or far, a.name))
    handed.sort(key=lambda h: (h.created or far, h.name))
    return EventSummary(total=total, by_phase=by_phase, resolved_recent=resolved, cancelled_recent=cancelled,
                        held_by_breaker=held, needs_human=tuple(humans), awaiting_approval=tuple(waiting),
                        handed_off=tuple(handed))


# ---- the breaker -----------------------------------------------------------------------------------

def breaker_policy(data: Mapping[str, str] | None, *, percent: float | None = None, max_nodes: int | None = None,
                   window: float | None = None) -> BreakerPolicy:
    """The policy as `nvsentinel breaker status` reads it: a flag, else what the controller stored
    with its last trip, else the controller's default."""
    data = data or {}
    default = QuarantineConfig()

    def pick(flag: Any, key: str, kind: type, fallback: Any) -> Any:
        if flag is not None:
            return flag
        try:
            return kind(data[key])
        except (KeyError, ValueError):
            return fallback

    return BreakerPolicy(pick(percent, "percent", float, default.breaker_percent),
                         pick(max_nodes, "maxNodes", int, default.breaker_max_nodes),
                         pick(window, "windowSeconds", float, default.breaker_window))


# ---- the whole screen ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    now: _dt.datetime
    nodes: NodeSummary
    breaker: Mapping[str, Any]
    """`breaker_report`'s keys, plus configMap, configMapFound, heldEvents"""
    events: EventSummary
    node_selector: str = ""
    event_selector: str = ""


def summarize(nodes: Sequence[Mapping[str, Any]], events: Iterable[Mapping[str, Any]],
              breaker_configmap: Mapping[str, Any] | None, *, now: _dt.datetime, configmap_ref: str,
              node_selector: str = "", event_selector: str = "", taint_key: str = TAINT_KEY,
              policy: BreakerPolicy | None = None) -> Summary:
    """`breaker_configmap`: the ConfigMap object, None when it does not exist (never tripped);
    `policy`: overrides what the ConfigMap stored (default: `breaker_policy` of its data)."""
    data = (breaker_configmap or {}).get("data") or {}
    ev = summarize_events(events, now)
    report = breaker_report(BreakerState.from_data(data), list(nodes), policy or breaker_policy(data), now)
    report.update(configMap=configmap_ref, configMapFound=breaker_configmap is not None,
                  heldEvents=ev.held_by_breaker)
    return Summary(now=now, nodes=summarize_nodes(nodes, taint_key=taint_key), breaker=report, events=ev,
                   node_selector=node_selector, event_selector=event_selector)


def to_json(s: Summary) -> dict[str, Any]:
    """The `-o json` document (docs/operations.md, "At a glance"): keys are only ever added."""
    n, e = s.nodes, s.events
    return {
        "time": format_time(s.now),
        "selectors": {"nodes": s.node_selector, "events": s.event_selector},
        "nodes": {
            "total": n.total, "gpu": n.gpu, "cordoned": n.cordoned, "quarantined": len(n.quarantined),
            "cordonedByNvsentinel": len(n.cordoned_by_nvsentinel), "cordonedByOthers": len(n.cordoned_by_others),
            "quarantinedUncordoned": len(n.quarantined_uncordoned),
            "quarantinedNodes": list(n.quarantined), "cordonedByNvsentinelNodes": list(n.cordoned_by_nvsentinel),
            "cordonedByOthersNodes": list(n.cordoned_by_others),
            "quarantinedUncordonedNodes": list(n.quarantined_uncordoned),
            "byOwner": n.by_owner,
            "owners": [{"node": o.node, "owner": o.owner, "scope": o.scope, "cordon": o.cordon, "events": o.events,
                        "since": _stamp(o.since)} for o in n.owners],
        },
        "breaker": dict(s.breaker),
        "healthEvents": {
            "total": e.total, "open": e.open, "byPhase": dict(e.by_phase),
            "resolvedLast24h": e.resolved_recent, "cancelledLast24h": e.cancelled_recent,
            "heldByBreaker": e.held_by_breaker,
            "needsHuman": [{"name": h.name, "node": h.node, "phase": h.phase, "condition": h.condition,
                            "reason": h.reason, "message": h.message, "created": _stamp(h.created),
                            "since": _stamp(h.since)} for h in e.needs_human],
            "awaitingApproval": [{"name": a.name, "node": a.node, "wouldRun": a.would_run, "created": _stamp(a.created),
                                  "since": _stamp(a.since), "approve": a.command} for a in e.awaiting_approval],
            "handedOff": [{"name": h.name, "node": h.node, "phase": h.phase, "action": h.action,
                           "created": _stamp(h.created)} for h in e.handed_off],
        },
    }


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f", +{len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else "")


def _count(names: Sequence[str]) -> str:
    return f"{len(names)}" + (f" ({_names(names)})" if names else "")


def _ago(t: _dt.datetime | None, now: _dt.datetime) -> str:
    return display.human_duration((now - t).total_seconds()) if t else display.NONE


def _column(rows: Sequence[tuple[int, str, str]]) -> int:
    """Where values start: one column for every `Key:` at every indent (kubectl describe's look)."""
    return max(2 * level + len(k) + 1 for level, k, _ in rows) + 2


def _pairs(rows: Sequence[tuple[int, str, str]], column: int) -> list[str]:
    return [f"{'  ' * level + k + ':':<{column}}{v}".rstrip() for level, k, v in rows]


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [(indent + "   ".join(v.ljust(w) for v, w in zip(r, widths))).rstrip() for r in [header, *rows]]


def render(s: Summary) -> str:
    """The default text: `Key: value` blocks for nodes, breaker and events, with the open phases and the
    events that need a human as small tables."""
    n, b, e, now = s.nodes, s.breaker, s.events, s.now
    lapsed = b["state"] != b["storedState"]
    state = str(b["state"]) + (f" (stored {b['storedState']}: the window since the trip has passed)" if lapsed else "")
    window = f"{b['windowSeconds']:g}s"
    trip = _time(b["trippedAt"])
    rows: list[tuple[int, str, str]] = [
        (0, "Nodes", f"{n.total} ({n.gpu} GPU)" + (f", selector {s.node_selector}" if s.node_selector else "")),
        (1, "Cordoned", str(n.cordoned)),
        (1, "Quarantined", _count(n.quarantined)),
        (1, "Cordoned by nvsentinel", _count(n.cordoned_by_nvsentinel)),
        (1, "Cordoned by others", _count(n.cordoned_by_others)),
    ]
    if n.quarantined_uncordoned:
        rows.append((1, "Uncordoned by hand", _count(n.quarantined_uncordoned)))
    if n.owners:
        rows.append((1, "Owners", ", ".join(f"{k} {v}" for k, v in n.by_owner.items() if v)))
    node_rows, rows = rows, []
    rows += [
        (0, "Circuit breaker", state),
        (1, "Cordoned in window", f"{b['cordoned']}" + (" since the reset" if b["resetAt"] else "")),
        (1, "Limit", f"{b['limit']} ({b['percent']:g}% of {b['gpuNodes']} GPU nodes, max {b['maxNodes']})"),
        (1, "Window", window),
    ]
    if trip:
        rows.append((1, "Tripped at", f"{b['trippedAt']} ({_ago(trip, now)} ago)"))
    if b["reason"]:
        rows.append((1, "Reason", " ".join(printable(b["reason"], display.VALUE_LIMIT).split())))
    if b["resetAt"]:
        rows.append((1, "Reset at", f"{b['resetAt']} ({_ago(_time(b['resetAt']), now)} ago)"))
    rows += [
        (1, "Held events", f"{b['heldEvents']} in New ({BREAKER_HELD_REASON})"),
        (1, "ConfigMap", str(b["configMap"]) + ("" if b["configMapFound"] else " (absent: never tripped)")),
    ]
    events_head = [(0, "HealthEvents", f"{e.open} open, {e.total} in all"
                    + (f", selector {s.event_selector}" if s.event_selector else ""))]
    events_tail = [(1, "Resolved (24h)", str(e.resolved_recent)), (1, "Cancelled (24h)", str(e.cancelled_recent)),
                   (0, "Needs a human", str(len(e.needs_human)) if e.needs_human else "none")]
    approvals = [(0, "Awaiting approval", str(len(e.awaiting_approval)) if e.awaiting_approval else "none")]
    handed = [(0, "Handed off", f"{len(e.handed_off)} (remediation mode external)" if e.handed_off else "none")]
    column = _column(node_rows + rows + events_head + events_tail + approvals + handed)
    phases = [str(p) for p in OPEN_PHASES]
    lines = _pairs(node_rows, column)
    if n.owners:
        lines += _table([[o.node, o.owner, o.scope, o.cordon, str(o.events), _ago(o.since, now)] for o in n.owners],
                        ["NODE", "OWNER", "SCOPE", "CORDON", "EVENTS", "SINCE"])
    lines += _pairs(rows + events_head, column)
    lines += _table([[str(e.by_phase.get(p, 0)) for p in phases]], phases)
    lines += _pairs(events_tail, column)
    if e.needs_human:
        lines += _table([[h.name, h.node or display.NONE, h.phase, h.reason, _ago(h.since, now), _ago(h.created, now)]
                         for h in e.needs_human], ["NAME", "NODE", "PHASE", "REASON", "WAITING", "AGE"])
    lines += _pairs(approvals, column)
    if e.awaiting_approval:
        lines += _table([[a.name, a.node or display.NONE, a.would_run, _ago(a.since, now), _ago(a.created, now),
                          a.command] for a in e.awaiting_approval],
                        ["NAME", "NODE", "WOULD RUN", "WAITING", "AGE", "TO APPROVE"])
    lines += _pairs(handed, column)
    if e.handed_off:
        lines += _table([[h.name, h.node or display.NONE, h.phase, h.action or display.NONE, _ago(h.created, now)]
                         for h in e.handed_off], ["NAME", "NODE", "PHASE", "RECOMMENDED", "AGE"])
    return "\n".join(printable(line, 0) for line in lines)  # names and reasons are others' text
