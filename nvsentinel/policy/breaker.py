"""The quarantine circuit breaker: a sliding-window cap on how many nodes nvsentinel cordons.

Pure: no I/O, no clock reads (time is passed in). The controller serializes calls to `evaluate`
and feeds it every node it cordoned (from the Nodes' ownership annotations plus its own cordons the
informer has not shown yet); this module decides and says what to persist. At fleet scale the
controller keeps those cordons in a `CordonLedger`, updated per Node change and sorted by time, so a
decision counts its window in log time instead of reading every Node.

Rules (SPEC §7):
- limit = min(floor(percent × gpu_nodes / 100), max_nodes), at least 1 when there are GPU nodes;
- counted = nodes nvsentinel cordoned with `since` inside (now − window, now] and at or after the
  last operator reset;
- a node already counted may be (re)cordoned: it does not raise the count;
- a new node that would make counted exceed the limit trips the breaker; while tripped nothing new
  is cordoned, until `window` has passed since the trip or an operator resets it;
- `force` bypasses the breaker (the cordon is still counted, it never trips it).
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime as _dt
import math
from collections.abc import Iterator, Mapping

from nvsentinel.policy.healthevent import format_time, parse_time

__all__ = ["CLOSED", "TRIPPED", "BreakerPolicy", "BreakerState", "Verdict", "CordonLedger", "counted_cordons",
           "evaluate"]

CLOSED = "Closed"
TRIPPED = "Tripped"


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerPolicy:
    percent: float = 10.0
    max_nodes: int = 50
    window: float = 600.0
    """seconds"""

    def limit(self, gpu_nodes: int) -> int:
        if gpu_nodes <= 0:
            return 0
        # the epsilon keeps 10 % of 200 at 20 despite 10*200/100 rounding below 20.0 in binary
        by_share = math.floor(self.percent * gpu_nodes / 100 + 1e-9)
        return max(1, min(by_share, self.max_nodes))

    def describe(self, gpu_nodes: int) -> str:
        return f"{self.percent:g}% of {gpu_nodes} GPU nodes, max {self.max_nodes}"


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerState:
    """What the ConfigMap holds: the trip survives restarts and leader changes, and operators can read it."""

    state: str = CLOSED
    tripped_at: _dt.datetime | None = None
    reason: str = ""
    reset_at: _dt.datetime | None = None
    """cordons before this time no longer count (set by `nvsentinel breaker reset`)"""

    @property
    def tripped(self) -> bool:
        return self.state == TRIPPED

    def effective(self, now: _dt.datetime, window: float) -> BreakerState:
        """Tripped state closes by itself once `window` seconds have passed since the trip."""
        if self.tripped and (self.tripped_at is None
                             or now >= self.tripped_at + _dt.timedelta(seconds=window)):
            return dataclasses.replace(self, state=CLOSED, reason=f"window of {window:g}s passed since the trip")
        return self

    def to_data(self) -> dict[str, str]:
        return {
            "state": self.state,
            "trippedAt": format_time(self.tripped_at) if self.tripped_at else "",
            "reason": self.reason,
            "resetAt": format_time(self.reset_at) if self.reset_at else "",
        }

    @classmethod
    def from_data(cls, data: Mapping[str, str] | None) -> BreakerState:
        """Parse the ConfigMap's data; an unreadable field is treated as absent, an unknown state as Closed."""
        data = data or {}

        def when(key: str) -> _dt.datetime | None:
            try:
                return parse_time(data.get(key) or "")
            except ValueError:
                return None

        state = data.get("state", CLOSED)
        return cls(state=TRIPPED if state == TRIPPED else CLOSED, tripped_at=when("trippedAt"),
                   reason=str(data.get("reason", "")), reset_at=when("resetAt"))


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    state: BreakerState
    """the state after this decision (persist it when `changed`)"""
    changed: bool
    tripped_now: bool
    counted: int
    """nodes counted in the window, this one included when allowed and new"""
    limit: int
    gpu_nodes: int
    forced: bool = False
    already_counted: bool = False
    """the node was counted before: allowing it adds nothing"""
    message: str = ""


def _in_window(since: _dt.datetime, now: _dt.datetime, window: float, reset_at: _dt.datetime | None) -> bool:
    return now - _dt.timedelta(seconds=window) < since <= now and (reset_at is None or since >= reset_at)


def counted_cordons(cordons: Mapping[str, _dt.datetime], *, now: _dt.datetime, window: float,
                    reset_at: _dt.datetime | None) -> set[str]:
    """Nodes whose cordon falls in (now − window, now] and not before the last reset."""
    return {node for node, since in cordons.items() if _in_window(since, now, window, reset_at)}


class CordonLedger(Mapping[str, _dt.datetime]):
    """node → when nvsentinel cordoned it, also kept sorted by time: `count` of a window is two bisects."""

    def __init__(self, cordons: Mapping[str, _dt.datetime] | None = None) -> None:
        self._since: dict[str, _dt.datetime] = {}
        self._sorted: list[tuple[_dt.datetime, str]] = []
        for node, since in (cordons or {}).items():
            self.set(node, since)

    def set(self, node: str, since: _dt.datetime | None) -> None:
        """Record (or, since None, forget) the node's cordon."""
        old = self._since.get(node)
        if old == since:
            return
        if old is not None:
            i = bisect.bisect_left(self._sorted, (old, node))
            del self._sorted[i]
            del self._since[node]
        if since is not None:
            self._since[node] = since
            bisect.insort(self._sorted, (since, node))

    def count(self, *, now: _dt.datetime, window: float, reset_at: _dt.datetime | None) -> int:
        """How many cordons fall in (now − window, now] and not before `reset_at`."""
        start = now - _dt.timedelta(seconds=window)
        key = _since_of
        lo = bisect.bisect_left(self._sorted, reset_at, key=key) if reset_at is not None and reset_at > start \
            else bisect.bisect_right(self._sorted, start, key=key)
        return max(0, bisect.bisect_right(self._sorted, now, key=key) - lo)

    def counts(self, node: str, *, now: _dt.datetime, window: float, reset_at: _dt.datetime | None) -> bool:
        since = self._since.get(node)
        return since is not None and _in_window(since, now, window, reset_at)

    def __getitem__(self, node: str) -> _dt.datetime:
        return self._since[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._since)

    def __len__(self) -> int:
        return len(self._since)


def _since_of(entry: tuple[_dt.datetime, str]) -> _dt.datetime:
    return entry[0]


def evaluate(policy: BreakerPolicy, state: BreakerState, *, node: str, cordons: Mapping[str, _dt.datetime],
             gpu_nodes: int, now: _dt.datetime, force: bool = False) -> Verdict:
    """May nvsentinel cordon `node` now? `cordons`: node → when nvsentinel cordoned it (a `CordonLedger`
    is counted in log time; any other mapping is scanned)."""
    current = state.effective(now, policy.window)
    changed = current != state
    if isinstance(cordons, CordonLedger):
        n = cordons.count(now=now, window=policy.window, reset_at=current.reset_at)
        node_counted = cordons.counts(node, now=now, window=policy.window, reset_at=current.reset_at)
    else:
        counted = counted_cordons(cordons, now=now, window=policy.window, reset_at=current.reset_at)
        n, node_counted = len(counted), node in counted
    limit = policy.limit(gpu_nodes)
    share = policy.describe(gpu_nodes)
    if node_counted:
        return Verdict(True, current, changed, False, n, limit, gpu_nodes, already_counted=True,
                       message=f"node already counted ({n}/{limit} in {policy.window:g}s)")
    if force:
        return Verdict(True, current, changed, False, n + 1, limit, gpu_nodes, forced=True,
                       message=f"breaker bypassed by spec.overrides.quarantine.force ({n + 1}/{limit}, {share})")
    if current.tripped:
        return Verdict(False, current, changed, False, n, limit, gpu_nodes, message=(
            f"circuit breaker open since {format_time(current.tripped_at) if current.tripped_at else '?'}: "
            f"{n} nodes cordoned in the last {policy.window:g}s, limit {limit} ({share}); held until the "
            f"window passes or `nvsentinel breaker reset`"))
    if n + 1 > limit:
        reason = (f"cordoning node {node} would make {n + 1} nodes in {policy.window:g}s, "
                  f"over the limit of {limit} ({share})")
        tripped = dataclasses.replace(current, state=TRIPPED, tripped_at=now, reason=reason)
        return Verdict(False, tripped, True, True, n, limit, gpu_nodes, message=(
            f"circuit breaker tripped: {reason}; held until the window passes or `nvsentinel breaker reset`"))
    return Verdict(True, current, changed, False, n + 1, limit, gpu_nodes,
                   message=f"{n + 1}/{limit} nodes in {policy.window:g}s ({share})")
