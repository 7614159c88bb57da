"""The retention policy and what to delete under it: pure, no I/O, no clock reads (time is passed in).

The policy ConfigMap is hand-edited, so parsing reports every bad key at once and the caller keeps
the last good policy: a typo must never turn into "delete everything now".
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from nvsentinel.policy.healthevent import Phase, parse_time

__all__ = ["Policy", "PolicyError", "Item", "Deletion", "Plan", "parse_duration", "parse_policy", "item_from_obj",
           "plan_cleanup", "STANDARD", "COMPLIANCE"]

STANDARD = "standard"
COMPLIANCE = "compliance"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_TERMINAL = frozenset({Phase.RESOLVED.value, Phase.CANCELLED.value})


class PolicyError(ValueError):
    """One or more bad keys in the policy ConfigMap; `problems` names each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclasses.dataclass(frozen=True)
class Policy:
    """Seconds for durations; 0 for a bound means unlimited."""

    ttl_after_resolved: float = 168 * 3600
    retention_mode: str = STANDARD
    compliance_retention: float = 2160 * 3600
    batch_size: int = 100
    cleanup_interval: float = 300.0
    max_events_per_node: int = 0
    max_total_events: int = 0

    @property
    def retention(self) -> float:
        """How long a finished event is kept in the current mode."""
        return self.compliance_retention if self.retention_mode == COMPLIANCE else self.ttl_after_resolved


def parse_duration(text: str) -> float:
    """Seconds in a Go-like duration ("168h", "1h30m", "2s", "7d"); no sign, at least one unit."""
    s = text.strip()
    if not s or _DURATION.sub("", s):
        raise ValueError(f"not a duration (use s, m, h, d, e.g. 168h): {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(s))


def _int(text: str, *, minimum: int) -> int:
    s = text.strip()
    if not re.fullmatch(r"\d+", s):
        raise ValueError(f"not a whole number: {text!r}")
    value = int(s)
    if value < minimum:
        raise ValueError(f"must be >= {minimum}, got {value}")
    return value


def parse_policy(data: Mapping[str, str] | None) -> Policy:
    """The policy in `data` (absent keys: defaults). Raises PolicyError naming every bad key."""
    data = data or {}
    kw: dict[str, Any] = {}
    problems: list[str] = []

    def take(key: str, field: str, parse: Any) -> None:
        if key not in data:
            return
        try:
            kw[field] = parse(str(data[key]))
        except ValueError as exc:
            problems.append(f"{key}: {exc}")

    def positive_duration(text: str) -> float:
        value = parse_duration(text)
        if value <= 0:
            raise ValueError(f"must be > 0, got {text!r}")
        return value

    def mode(text: str) -> str:
        if text.strip() not in (STANDARD, COMPLIANCE):
            raise ValueError(f"must be {STANDARD} or {COMPLIANCE}, got {text!r}")
        return text.strip()

    take("ttlAfterResolved", "ttl_after_resolved", positive_duration)
    take("retentionMode", "retention_mode", mode)
    take("complianceRetention", "compliance_retention", positive_duration)
    take("batchSize", "batch_size", lambda t: _int(t, minimum=1))
    take("cleanupInterval", "cleanup_interval", positive_duration)
    take("maxEventsPerNode", "max_events_per_node", lambda t: _int(t, minimum=0))
    take("maxTotalEvents", "max_total_events", lambda t: _int(t, minimum=0))
    if problems:
        raise PolicyError(problems)
    return Policy(**kw)


@dataclasses.dataclass(frozen=True)
class Item:
    """What selection needs of one HealthEvent. `finished_at`: resolvedAt, else creationTimestamp."""

    name: str
    uid: str
    node: str
    terminal: bool
    finished_at: _dt.datetime


def item_from_obj(obj: Mapping[str, Any]) -> Item:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    stamp = status.get("resolvedAt") or meta.get("creationTimestamp")
    return Item(name=str(meta["name"]), uid=str(meta.get("uid") or ""),
                node=str((obj.get("spec") or {}).get("nodeName") or ""),
                terminal=(status.get("phase") or Phase.NEW.value) in _TERMINAL,
                finished_at=parse_time(stamp) if stamp else _dt.datetime.min.replace(tzinfo=_dt.timezone.utc))


@dataclasses.dataclass(frozen=True)
class Deletion:
    name: str
    uid: str
    reason: str  # Expired | NodeBound | TotalBound


@dataclasses.dataclass(frozen=True)
class Plan:
    """Deletions oldest first; `open_over` describes bounds only open events exceed (never deleted)."""

    deletions: tuple[Deletion, ...]
    open_over: tuple[str, ...] = ()


def _oldest_first(items: Iterable[Item]) -> list[Item]:
    return sorted(items, key=lambda i: (i.finished_at, i.name))


def plan_cleanup(items: Iterable[Item], policy: Policy, now: _dt.datetime) -> Plan:
    """Expired finished events first, then the per-node and total bounds; at most batch_size in all.

    Only Resolved/Cancelled events are ever chosen. A bound that stays exceeded after every finished
    event would be gone is reported in `open_over`, however many the batch allowed this pass.
    """
    all_items = list(items)
    budget = policy.batch_size
    chosen: list[Deletion] = []
    gone: set[str] = set()
    open_over: list[str] = []
    finished = _oldest_first(i for i in all_items if i.terminal)

    def take(item: Item, reason: str) -> None:
        chosen.append(Deletion(item.name, item.uid, reason))
        gone.add(item.name)

    horizon = now - _dt.timedelta(seconds=policy.retention)
    for item in finished:
        if item.finished_at > horizon or len(chosen) >= budget:
            break
        take(item, "Expired")

    if policy.max_events_per_node:
        per_node = Counter(i.node for i in all_items if i.name not in gone)
        candidates: dict[str, list[Item]] = defaultdict(list)
        for item in finished:
            if item.name not in gone:
                candidates[item.node].append(item)
        for node in sorted(per_node):
            excess = per_node[node] - policy.max_events_per_node
            if excess <= 0:
                continue
            if excess > len(candidates[node]):
                open_over.append(f"node {node}: {per_node[node]} events, {per_node[node] - len(candidates[node])} "
                                 f"open, bound maxEventsPerNode={policy.max_events_per_node}")
            for item in candidates[node][:excess]:
                if len(chosen) >= budget:
                    break
                take(item, "NodeBound")

    if policy.max_total_events:
        remaining = [i for i in all_items if i.name not in gone]
        excess = len(remaining) - policy.max_total_events
        if excess > 0:
            candidates_total = [i for i in finished if i.name not in gone]
            if excess > len(candidates_total):
                open_over.append(f"{len(remaining)} events, {len(remaining) - len(candidates_total)} open, "
                                 f"bound maxTotalEvents={policy.max_total_events}")
            for item in candidates_total[:excess]:
                if len(chosen) >= budget:
                    break
                take(item, "TotalBound")

    return Plan(tuple(chosen), tuple(open_over))
