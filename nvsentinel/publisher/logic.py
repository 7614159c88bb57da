"""The publisher's decisions, with no I/O and no clock reads: GPU conditions → HealthEvents.

Everything here is a function of its inputs (the previous view of a GPU, the GPU as the Device API
returns it, the time passed in), so it is unit- and property-tested without a cluster:

* `observe(view, gpu, now, ctx)` → (new view, events to publish): fault identity, recovery, naming;
* `event_name` / `label_value`: deterministic DNS-1123 names and label values;
* `Debouncer`: per-GPU coalescing on an injected clock;
* `PendingQueue`: the bounded, per-GPU ordered queue of creates, with its drop policy;
* `backoff_delay`: the retry schedule.

Rules (docs/publisher.md): a fault is a condition *reason* on one GPU, across condition types; it
opens when a watched condition is False with that reason and stays open (never re-published in this
process) until every condition that reported it is True again. When a recovery leaves the GPU with
no open fault, one healthy event closes them all.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Final, Generic, Hashable, TypeVar

from nvsentinel._proto import gpu_pb2
from nvsentinel.catalog import Action, Catalog, Classification
from nvsentinel.healthevent.model import (
    LABEL_COMPONENT_CLASS, LABEL_IS_FATAL, LABEL_NODE, LABEL_SOURCE, Entity, HealthEvent, HealthEventSpec,
)

__all__ = [
    "AGENT", "COMPONENT_CLASS", "SOURCES", "RECOVERY_REASONS", "CHECK_XID", "CHECK_ECC", "CHECK_LOST",
    "CHECK_OTHER", "MAX_NAME", "Observed", "FaultKind", "Fault", "GpuView", "Context", "fault_kind",
    "source_of", "gpu_short", "event_name", "label_value", "conditions_of", "fatal_event", "healthy_event",
    "observe", "Debouncer", "Pending", "PendingQueue", "backoff_delay",
]

AGENT: Final = "nvsentinel-publisher"
COMPONENT_CLASS: Final = "GPU"
#: Who owns each condition type (docs/conditions.md): the event's `source`.
SOURCES: Final[Mapping[str, str]] = {"NvmlHealthy": "nvml-provider", "KmsgHealthy": "kmsg-monitor"}
#: True reasons that say "this GPU recovered" (not the initial NvmlOk): a publisher that starts and
#: finds one publishes the healthy event, so a recovery while it was down is not lost.
RECOVERY_REASONS: Final = frozenset({"Recovered", "GpuReset"})
CHECK_XID: Final = "xid-error-check"
CHECK_ECC: Final = "memory-ecc-check"
CHECK_LOST: Final = "gpu-lost-check"
CHECK_OTHER: Final = "gpu-health-check"
HEALTHY_IDENTITY: Final = "healthy"
#: A False condition without a reason still is a fault; it needs a name.
UNSPECIFIED_REASON: Final = "Unhealthy"
MAX_NAME: Final = 253
MAX_LABEL: Final = 63
MAX_ERROR_CODES: Final = 64  # the CRD's maxItems
_XID_REASON = re.compile(r"Xid(\d{1,10})")
_NOT_NAME = re.compile(r"[^a-z0-9.-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
_HEX8 = re.compile(r"[0-9a-f]{8}")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


# ---- what a GPU says ----

@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    """One watched condition of a GPU as the Device API returned it."""

    type: str
    status: str
    reason: str
    message: str
    since: _dt.datetime
    """last_transition_time (UTC); `now` when a provider left it unset."""


def _time(ts: object, now: _dt.datetime) -> _dt.datetime:
    seconds, nanos = getattr(ts, "seconds", 0), getattr(ts, "nanos", 0)
    if not seconds and not nanos:
        return now
    return _EPOCH + _dt.timedelta(seconds=seconds, microseconds=nanos // 1000)


def conditions_of(gpu: gpu_pb2.Gpu, watched: Sequence[str], now: _dt.datetime) -> dict[str, Observed]:
    """The watched conditions of `gpu` by type (the first one of a duplicated type wins)."""
    out: dict[str, Observed] = {}
    for c in gpu.status.conditions:
        if c.type in watched and c.type not in out:
            out[c.type] = Observed(c.type, c.status, c.reason, c.message, _time(c.last_transition_time, now))
    return out


def gpu_uuid(gpu: gpu_pb2.Gpu) -> str:
    return gpu.spec.uuid or gpu.metadata.name


def source_of(condition_type: str) -> str:
    """The detector that owns a condition type (an unknown type names itself)."""
    return SOURCES.get(condition_type, condition_type)


# ---- what a reason means ----

@dataclasses.dataclass(frozen=True, slots=True)
class FaultKind:
    check_name: str
    error_codes: tuple[str, ...]
    classification: Classification


def fault_kind(reason: str, catalog: Catalog) -> FaultKind:
    """The check, error codes and catalog classification of a condition reason (docs/conditions.md)."""
    m = _XID_REASON.fullmatch(reason)
    if m:
        xid = int(m.group(1))
        return FaultKind(CHECK_XID, (str(xid),), catalog.classify(xid))
    if reason == "EccDoubleBit":
        return FaultKind(CHECK_ECC, ("48",), catalog.classify(48))
    if reason == "GpuLost":
        # fallen off the bus is XID 79; its override key is GPU_FALLEN_OFF_BUS
        return FaultKind(CHECK_LOST, ("79",), catalog.classify(kind="fallen_off_bus"))
    # another provider's reason: a False condition is a fault, but the catalog cannot say what to do
    return FaultKind(CHECK_OTHER, (reason,), Classification(Action.UNKNOWN, True, reason, source="default"))


# ---- names ----

def _hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def gpu_short(uuid: str) -> str:
    """8 hex digits that stand for the GPU in names: the UUID's first group (`GPU-196b7c1a-…` →
    `196b7c1a`), or a hash of the UUID when it has no such group."""
    head, sep, rest = uuid.partition("-")
    body = rest if sep and head.isalpha() else uuid
    first = body[:8].lower()
    return first if _HEX8.fullmatch(first) else _hash(uuid)[:8]


def _dns_labels(text: str) -> list[str]:
    text = _NOT_NAME.sub("-", text.lower())
    return [label.strip("-") for label in text.split(".") if label.strip("-")]


def event_name(node: str, uuid: str, identity: str, when: _dt.datetime) -> str:
    """`<node>.<gpu8>.<identity>.<unix seconds>`: a DNS-1123 subdomain of at most 253 characters.

    Deterministic: the same node, GPU, identity and second give the same name, so a restarted
    publisher re-creates the same object (409) instead of a duplicate. When it must be shortened,
    the node part is cut and a hash of the full identity keeps distinct inputs distinct.
    """
    seconds = str(math.floor((when - _EPOCH).total_seconds()))
    tail = [*_dns_labels(gpu_short(uuid)), *(_dns_labels(identity) or ["x"]), seconds]
    head = _dns_labels(node) or ["node"]
    name = ".".join(head + tail)
    if len(name) <= MAX_NAME:
        return name
    digest = _hash(node, uuid, identity, seconds)[:10]
    tail_text = ".".join(tail)
    room = MAX_NAME - len(tail_text) - len(digest) - 2  # "<head>-<digest>.<tail>"
    if room >= 1:
        cut = ".".join(head)[:room].rstrip("-.")
        return f"{cut}-{digest}.{tail_text}" if cut else f"{digest}.{tail_text}"
    return name[: MAX_NAME - len(digest) - 1].rstrip("-.") + "-" + digest


def label_value(text: str) -> str:
    """A valid label value (≤ 63, alphanumeric at both ends); long values keep a hash suffix."""
    value = _NOT_LABEL.sub("-", text).strip("-_.")
    if len(value) <= MAX_LABEL:
        return value
    return value[: MAX_LABEL - 9].rstrip("-_.") + "-" + _hash(text)[:8]


# ---- events ----

@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """What `observe` needs besides the GPU: fixed for the life of a publisher."""

    node_name: str
    catalog: Catalog
    watched: tuple[str, ...] = ("NvmlHealthy", "KmsgHealthy")


def _labels(node: str, fatal: bool, source: str) -> dict[str, str]:
    return {
        LABEL_NODE: label_value(node),
        LABEL_COMPONENT_CLASS: COMPONENT_CLASS,
        LABEL_IS_FATAL: "true" if fatal else "false",
        LABEL_SOURCE: label_value(source),
    }


def _gpu_action(gpu: gpu_pb2.Gpu) -> Action | None:
    text = gpu.status.recommended_action
    if text in Action.__members__ and text != Action.NONE:
        return Action(text)
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One open fault of a GPU: a reason, when it opened, who reported it."""

    reason: str
    opened_at: _dt.datetime
    """The earliest last_transition_time of the False conditions that reported it."""
    condition_type: str
    """The condition that reported it first (the event's source)."""
    reporters: frozenset[str]
    """Condition types that reported it False and have not been True since."""
    name: str
    """The HealthEvent published for it."""


def fatal_event(gpu: gpu_pb2.Gpu, fault: Fault, cond: Observed, ctx: Context) -> HealthEvent:
    kind = fault_kind(fault.reason, ctx.catalog)
    fatal = kind.classification.fatal
    # the GPU's action is what the providers decided (XID 154 takes it from the line); a site
    # override that makes the reason non-fatal here wins, so isFatal and the action never disagree
    action = (_gpu_action(gpu) or kind.classification.action) if fatal else Action.NONE
    source = source_of(cond.type)
    spec = HealthEventSpec(
        source=source,
        agent=AGENT,
        node_name=ctx.node_name,
        component_class=COMPONENT_CLASS,
        check_name=kind.check_name,
        is_fatal=fatal,
        is_healthy=False,
        detected_at=fault.opened_at,
        message=cond.message or f"{cond.type}=False reason={fault.reason}",
        recommended_action=action,
        error_codes=kind.error_codes,
        entities_impacted=(Entity("GPU", gpu_uuid(gpu)),),
        metadata={"conditionType": cond.type, "reason": fault.reason},
    )
    return HealthEvent(name=fault.name, spec=spec, labels=_labels(ctx.node_name, fatal, source))


def healthy_event(gpu: gpu_pb2.Gpu, trigger: Observed, closed: Sequence[Fault], ctx: Context) -> HealthEvent:
    """The recovery event: named by the True transition, listing the error codes it closes."""
    codes: list[str] = []
    for f in closed:
        for code in fault_kind(f.reason, ctx.catalog).error_codes:
            if code not in codes:
                codes.append(code)
    check = fault_kind(closed[0].reason, ctx.catalog).check_name if closed else CHECK_OTHER
    uuid = gpu_uuid(gpu)
    source = source_of(trigger.type)
    spec = HealthEventSpec(
        source=source,
        agent=AGENT,
        node_name=ctx.node_name,
        component_class=COMPONENT_CLASS,
        check_name=check,
        is_fatal=False,
        is_healthy=True,
        detected_at=trigger.since,
        message=trigger.message or f"{trigger.type}=True reason={trigger.reason}",
        recommended_action=Action.NONE,
        error_codes=tuple(codes[:MAX_ERROR_CODES]),
        entities_impacted=(Entity("GPU", uuid),),
        metadata={"conditionType": trigger.type, "reason": trigger.reason},
    )
    name = event_name(ctx.node_name, uuid, HEALTHY_IDENTITY, trigger.since)
    return HealthEvent(name=name, spec=spec, labels=_labels(ctx.node_name, False, source))


# ---- the view of one GPU ----

@dataclasses.dataclass(frozen=True, slots=True)
class GpuView:
    """What the publisher remembers about one GPU between updates."""

    faults: Mapping[str, Fault] = dataclasses.field(default_factory=dict)
    """Open faults by reason."""
    closed: tuple[Fault, ...] = ()
    """Faults closed since the last healthy event (its errorCodes)."""

    @property
    def healthy(self) -> bool:
        return not self.faults


def _remember_closed(closed: list[Fault], fault: Fault) -> None:
    closed[:] = [f for f in closed if f.reason != fault.reason] + [fault]
    del closed[:-MAX_ERROR_CODES]


def observe(view: GpuView | None, gpu: gpu_pb2.Gpu, now: _dt.datetime, ctx: Context) -> tuple[GpuView, list[HealthEvent]]:
    """The new view of one GPU and the events to publish, given its previous view (None: first sight).

    * A watched condition True that reported an open fault no longer reports it; a fault nobody
      reports any more is closed. A condition that vanished (a Device API server restart, before
      the providers re-send) closes nothing.
    * A watched condition False with a reason that is not open opens a fault: one fatal event.
      The same reason from another condition joins the open fault (one event for both).
    * A recovery that leaves no fault open publishes one healthy event, named by the latest True
      transition. On first sight, a GPU with no False condition and a condition True with a
      recovery reason publishes that healthy event too (idempotent by name).
    """
    first = view is None
    faults = dict(view.faults) if view is not None else {}
    closed = list(view.closed) if view is not None else []
    conds = conditions_of(gpu, ctx.watched, now)
    order = {t: i for i, t in enumerate(ctx.watched)}
    events: list[HealthEvent] = []

    failing: dict[str, list[Observed]] = {}
    for c in conds.values():
        if c.status == "False":
            failing.setdefault(c.reason or UNSPECIFIED_REASON, []).append(c)
    healthy_types = {c.type for c in conds.values() if c.status == "True"}
    recovered = [c for c in conds.values()
                 if c.status == "True" and any(c.type in f.reporters for f in faults.values())]
    for reason, f in list(faults.items()):
        # a reporter that is True again lets go; one False with this reason holds on (or takes over)
        rest = (f.reporters - healthy_types) | {c.type for c in failing.get(reason, ())}
        if rest:
            if rest != f.reporters:
                faults[reason] = dataclasses.replace(f, reporters=frozenset(rest))
        else:
            del faults[reason]
            _remember_closed(closed, f)
    for reason, cs in failing.items():
        if reason in faults:
            continue
        earliest = min(cs, key=lambda c: (c.since, order[c.type]))
        fault = Fault(reason, earliest.since, earliest.type, frozenset(c.type for c in cs),
                      event_name(ctx.node_name, gpu_uuid(gpu), reason, earliest.since))
        faults[reason] = fault
        events.append(fatal_event(gpu, fault, earliest, ctx))

    if recovered and not faults:
        trigger = max(recovered, key=lambda c: (c.since, order[c.type]))
        events.append(healthy_event(gpu, trigger, closed, ctx))
        closed = []
    elif first and not faults:
        back = [c for c in conds.values() if c.status == "True" and c.reason in RECOVERY_REASONS]
        if back:
            trigger = max(back, key=lambda c: (c.since, order[c.type]))
            events.append(healthy_event(gpu, trigger, (), ctx))
    return GpuView(faults, tuple(closed)), events


# ---- debounce ----

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Debouncer(Generic[K, V]):
    """Per-key coalescing: after a publish for a key, values offered within `window` seconds wait,
    and only the latest is handed back when the window ends.

    The first value for a key (or one after a quiet window) is never delayed; nothing offered is
    lost (the latest value is always handed back, by `due` or `drain`); a caller that calls
    `published` after each publish publishes at most once per key per window. Time is passed in.
    """

    def __init__(self, window: float) -> None:
        if window < 0:
            raise ValueError("window must be >= 0")
        self.window = window
        self._until: dict[K, float] = {}
        self._pending: dict[K, V] = {}

    def offer(self, key: K, value: V, now: float) -> bool:
        """True: process `value` now. False: it waits (replacing an older waiting value)."""
        until = self._until.get(key)
        if until is None or now >= until:
            self._pending.pop(key, None)  # superseded by the newer value processed now
            return True
        self._pending[key] = value
        return False

    def published(self, key: K, now: float) -> None:
        """A publish for `key` happened at `now`: open its window."""
        if self.window > 0:
            self._until[key] = now + self.window

    def due(self, now: float) -> list[tuple[K, V]]:
        """The waiting values whose window has ended, in key order of arrival; forgets idle keys."""
        out = [(k, v) for k, v in self._pending.items() if self._until[k] <= now]
        for k, _ in out:
            del self._pending[k]
        for k in [k for k, t in self._until.items() if t <= now and k not in self._pending]:
            del self._until[k]
        return out

    def next_deadline(self) -> float | None:
        """When the next waiting value is due, or None."""
        return min((self._until[k] for k in self._pending), default=None)

    def drain(self) -> list[tuple[K, V]]:
        """Every waiting value, now (shutdown: publish the latest state rather than lose it)."""
        out = list(self._pending.items())
        self._pending.clear()
        return out

    def __len__(self) -> int:
        return len(self._pending)


# ---- retries ----

def backoff_delay(attempt: int, initial: float = 0.1, maximum: float = 30.0) -> float:
    """Seconds before retry `attempt` (1-based): initial, doubling, capped at maximum."""
    if attempt < 1:
        return 0.0
    return min(maximum, initial * 2.0 ** min(attempt - 1, 64))


@dataclasses.dataclass(slots=True, eq=False)
class Pending:
    """One create waiting to be sent."""

    gpu: str
    event: HealthEvent
    seq: int
    attempts: int = 0
    not_before: float = 0.0

    @property
    def fatal(self) -> bool:
        return not self.event.spec.is_healthy


class PendingQueue:
    """Creates waiting to be sent: FIFO per GPU (a GPU's fault is never overtaken by its recovery),
    GPUs independent (a failing GPU never holds up another), bounded.

    At the bound, the oldest healthy event not being sent is dropped; a fatal event is never
    dropped (the queue goes over its bound instead, and says so). Not thread-safe: the runtime
    holds a lock around it. Time is passed in.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._by_gpu: dict[str, list[Pending]] = {}
        self._inflight: set[str] = set()
        self._seq = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def items(self) -> list[Pending]:
        return sorted((p for q in self._by_gpu.values() for p in q), key=lambda p: p.seq)

    def push(self, gpu: str, event: HealthEvent) -> list[Pending]:
        """Queue `event`; returns what was dropped to stay within the bound (maybe the event itself)."""
        self._seq += 1
        item = Pending(gpu, event, self._seq)
        dropped: list[Pending] = []
        if self._size >= self.limit:
            victim = self._oldest_droppable()
            if victim is not None:
                self._remove(victim)
                dropped.append(victim)
            elif not item.fatal:
                return [item]
        self._by_gpu.setdefault(gpu, []).append(item)
        self._size += 1
        return dropped

    def _oldest_droppable(self) -> Pending | None:
        best: Pending | None = None
        for gpu, q in self._by_gpu.items():
            for i, p in enumerate(q):
                if p.fatal or (i == 0 and gpu in self._inflight):
                    continue
                if best is None or p.seq < best.seq:
                    best = p
                break  # later healthy events of this GPU are newer
        return best

    def _remove(self, item: Pending) -> None:
        q = self._by_gpu[item.gpu]
        q.remove(item)
        self._size -= 1
        if not q:
            del self._by_gpu[item.gpu]

    def pop_ready(self, now: float) -> Pending | None:
        """The oldest due head of a GPU that is not being sent; it is then being sent."""
        best: Pending | None = None
        for gpu, q in self._by_gpu.items():
            head = q[0]
            if gpu in self._inflight or head.not_before > now:
                continue
            if best is None or head.seq < best.seq:
                best = head
        if best is not None:
            self._inflight.add(best.gpu)
        return best

    def next_ready_at(self) -> float | None:
        """When the next head that is not being sent becomes due, or None."""
        times = [q[0].not_before for gpu, q in self._by_gpu.items() if gpu not in self._inflight]
        return min(times, default=None)

    def finish(self, item: Pending) -> None:
        """Sent (or given up): remove it and release its GPU."""
        self._inflight.discard(item.gpu)
        if item.gpu in self._by_gpu and item in self._by_gpu[item.gpu]:
            self._remove(item)

    def retry(self, item: Pending, not_before: float) -> None:
        """Failed: keep it at its GPU's head, due again at `not_before`."""
        self._inflight.discard(item.gpu)
        item.attempts += 1
        item.not_before = not_before

    def expedite(self, now: float) -> None:
        """Make every waiting retry due at `now` (shutdown: one last try before giving up)."""
        for q in self._by_gpu.values():
            for p in q:
                p.not_before = min(p.not_before, now)

    def counts(self) -> dict[str, int]:
        fatal = sum(1 for q in self._by_gpu.values() for p in q if p.fatal)
        return {"fatal": fatal, "healthy": self._size - fatal}
