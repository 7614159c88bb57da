"""The publisher's decisions, with no I/O and no clock reads: GPU conditions → HealthEvents.

Everything here is a function of its inputs (the previous view of a GPU, the GPU as the Device API
returns it, the time passed in), so it is unit- and property-tested without a cluster:

* `observe(view, gpu, now, ctx)` → (new view, events to publish): fault identity, recovery, naming;
* `event_name` / `label_value` (from `nvsentinel.policy.naming`): deterministic names and labels;
* `Debouncer`: per-GPU coalescing on an injected clock;
* `PendingQueue`: the bounded, per-GPU ordered queue of creates, with its drop policy;
* `backoff_delay` (from `nvsentinel.service.retry`): the retry schedule.

Rules (docs/publisher.md): a fault is a condition *reason* on one GPU, across condition types; it
opens when a watched condition is False (or Unknown: a non-fatal event) with that reason and stays
open (never re-published in this process) until every condition that reported it is True again.
When a recovery leaves the GPU with no open fault, one healthy event closes them all. An NVSwitch
SXid reported on every GPU of the node is one node-level event (componentClass NVSwitch), whose
name every GPU's copy computes alike.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Final, Generic, Hashable, TypeVar

from nvsentinel._proto import gpu_pb2
from nvsentinel.policy.conditions import (
    CHECK_ECC, CHECK_LOST, CHECK_OTHER, CHECK_XID, KMSG_HEALTHY, NVML_HEALTHY, RECOVERY_REASONS, SOURCES,
    UNSPECIFIED_REASON, FaultKind, Reason, ReasonKind, source_of,
)
from nvsentinel.policy.healthevent import (
    ENTITY_GPU, ENTITY_GPU_SERIAL, ENTITY_PCI, Entity, HealthEvent, HealthEventSpec, PodMapping,
)
from nvsentinel.policy.naming import (
    COMPONENT_CLASS, MAX_NAME, NVSWITCH_CLASS, NVSWITCH_PART, event_labels, event_name, gpu_short, label_value,
    node_event_name,
)
from nvsentinel.service.retry import backoff_delay
from nvsentinel.xid import Action, Catalog

__all__ = [
    "AGENT", "COMPONENT_CLASS", "NVSWITCH_CLASS", "UNKNOWN_REASON", "SOURCES", "RECOVERY_REASONS", "CHECK_XID", "CHECK_ECC", "CHECK_LOST",
    "CHECK_OTHER", "MAX_NAME", "Observed", "FaultKind", "Fault", "GpuView", "Context",
    "source_of", "gpu_short", "event_name", "node_event_name", "label_value", "conditions_of", "gpu_entities",
    "fatal_event", "healthy_event", "mapped_gpus", "with_pod_mapping",
    "observe", "Debouncer", "Pending", "PendingQueue", "backoff_delay",
]

AGENT: Final = "nvsentinel-publisher"
HEALTHY_IDENTITY: Final = "healthy"
MAX_ERROR_CODES: Final = 64  # the CRD's maxItems
FAILING: Final = ("False", "Unknown")
"""Condition statuses that open a fault: False (a finding) and Unknown (the provider cannot tell)."""
UNKNOWN_REASON: Final = "Unknown"
"""The fault identity of an Unknown condition written without a reason."""
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


def gpu_entities(gpu: gpu_pb2.Gpu) -> tuple[Entity, ...]:
    """The GPU by UUID, then its PCI slot and board serial where the Device API has them (the slot
    survives a GPU swap, the serial names the board to replace)."""
    out = [Entity(ENTITY_GPU, gpu_uuid(gpu))]
    if gpu.spec.pci_bus_id:
        out.append(Entity(ENTITY_PCI, gpu.spec.pci_bus_id))
    if gpu.spec.serial:
        out.append(Entity(ENTITY_GPU_SERIAL, gpu.spec.serial))
    return tuple(out)


# ---- events ----

@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """What `observe` needs besides the GPU: fixed for the life of a publisher."""

    node_name: str
    catalog: Catalog
    watched: tuple[str, ...] = (NVML_HEALTHY, KMSG_HEALTHY)


def _gpu_action(gpu: gpu_pb2.Gpu) -> Action | None:
    text = gpu.status.recommended_action
    if text in Action.__members__ and text != Action.NONE:
        return Action(text)
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One open fault of a GPU: a reason, when it opened, who reported it."""

    reason: str
    """The condition reason as the Device API carries it: the fault's identity."""
    opened_at: _dt.datetime
    """The earliest last_transition_time of the False conditions that reported it."""
    condition_type: str
    """The condition that reported it first (the event's source)."""
    reporters: frozenset[str]
    """Condition types that reported it False and have not been True since."""
    name: str
    """The HealthEvent published for it."""
    cause: Reason
    """`reason` decoded once, when the fault opened (the condition contract's codec)."""
    status: str = "False"
    """The status of the condition that opened it: an Unknown one publishes a non-fatal event."""

    @property
    def nvswitch(self) -> bool:
        """An NVSwitch fault: one node-level event, not one per GPU."""
        return self.cause.kind is ReasonKind.SXID


def _open(ctx: Context, gpu: gpu_pb2.Gpu, reason: str, cs: Sequence[Observed], order: Mapping[str, int]) -> Fault:
    """The fault `cs` (watched conditions failing with `reason`) open: dated by the earliest False
    one (an Unknown one only when none is False), named by the GPU, or by the node for an NVSwitch."""
    first = min(cs, key=lambda c: (c.status != "False", c.since, order[c.type]))
    cause = Reason.from_wire(reason)
    if cause.kind is ReasonKind.SXID:
        name = node_event_name(ctx.node_name, NVSWITCH_PART, reason, first.since)
    else:
        name = event_name(ctx.node_name, gpu_uuid(gpu), reason, first.since)
    return Fault(reason, first.since, first.type, frozenset(c.type for c in cs), name, cause, first.status)


def fatal_event(gpu: gpu_pb2.Gpu, fault: Fault, cond: Observed, ctx: Context) -> HealthEvent:
    """The event a fault opens (fatal unless the catalog, a site override or an Unknown status says not).

    An NVSwitch fault (`fault.nvswitch`) is one event for the node's NVLink fabric: every GPU reports the
    same SXid at one shared time, so every GPU's copy computes the same name and the create is idempotent.
    It names no GPU: no one GPU is at fault, and a GPU's recovery must not resolve it. The switch
    (nvidia-nvswitchN, its PCI id) is in the message, as the kernel-log monitor wrote it.
    """
    kind = fault.cause.kind_of(ctx.catalog)
    fatal = kind.classification.fatal and fault.status == "False"
    if fault.nvswitch:
        component, entities = NVSWITCH_CLASS, ()
        action = kind.classification.action if fatal else Action.NONE
    else:
        component, entities = COMPONENT_CLASS, gpu_entities(gpu)
        # the GPU's action is what the providers decided (XID 154 takes it from the line); a site
        # override that makes the reason non-fatal here wins, so isFatal and the action never disagree
        action = (_gpu_action(gpu) or kind.classification.action) if fatal else Action.NONE
    source = source_of(cond.type)
    spec = HealthEventSpec(
        source=source,
        agent=AGENT,
        node_name=ctx.node_name,
        component_class=component,
        check_name=kind.check_name,
        is_fatal=fatal,
        is_healthy=False,
        detected_at=fault.opened_at,
        message=cond.message or f"{cond.type}={cond.status} reason={fault.reason}",
        recommended_action=action,
        error_codes=kind.error_codes,
        entities_impacted=entities,
        metadata={"conditionType": cond.type, "reason": fault.reason},
    )
    labels = event_labels(ctx.node_name, fatal=fatal, source=source, component_class=component)
    return HealthEvent(name=fault.name, spec=spec, labels=labels)


def healthy_event(gpu: gpu_pb2.Gpu, trigger: Observed, closed: Sequence[Fault], ctx: Context) -> HealthEvent:
    """The recovery event: named by the True transition, listing the error codes it closes."""
    codes: list[str] = []
    for f in closed:
        for code in f.cause.kind_of(ctx.catalog).error_codes:
            if code not in codes:
                codes.append(code)
    check = closed[0].cause.kind_of(ctx.catalog).check_name if closed else CHECK_OTHER
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
        entities_impacted=gpu_entities(gpu),
        metadata={"conditionType": trigger.type, "reason": trigger.reason},
    )
    name = event_name(ctx.node_name, uuid, HEALTHY_IDENTITY, trigger.since)
    return HealthEvent(name=name, spec=spec, labels=event_labels(ctx.node_name, fatal=False, source=source))


def mapped_gpus(event: HealthEvent) -> tuple[str, ...]:
    """The GPUs whose pods `event` records (spec.podMapping, with --pod-resources-socket): the UUIDs of a
    fatal GPU event; () for a healthy or non-fatal event, and for a node-level (NVSwitch) one, which names
    no GPU: the drain stage takes those to the whole node anyway."""
    spec = event.spec
    if not spec.is_fatal or spec.is_healthy or spec.component_class != COMPONENT_CLASS:
        return ()
    return event.gpu_uuids


def with_pod_mapping(event: HealthEvent, mapping: PodMapping) -> HealthEvent:
    """`event` recording which pods held its GPUs (or why that could not be read)."""
    return dataclasses.replace(event, spec=dataclasses.replace(event.spec, pod_mapping=mapping))


# ---- the view of one GPU ----

@dataclasses.dataclass(frozen=True, slots=True)
class GpuView:
    """What the publisher remembers about one GPU between updates."""

    faults: Mapping[str, Fault] = dataclasses.field(default_factory=dict)
    """Open faults by reason."""
    closed: tuple[Fault, ...] = ()
    """GPU faults closed since the last healthy event (its errorCodes); NVSwitch faults are not
    the GPU's and are never listed."""

    @property
    def healthy(self) -> bool:
        return not self.faults


def _remember_closed(closed: list[Fault], fault: Fault) -> None:
    if fault.nvswitch:
        return  # a GPU's recovery says nothing about the switch: its healthy event does not list it
    closed[:] = [f for f in closed if f.reason != fault.reason] + [fault]
    del closed[:-MAX_ERROR_CODES]


def observe(view: GpuView | None, gpu: gpu_pb2.Gpu, now: _dt.datetime, ctx: Context) -> tuple[GpuView, list[HealthEvent]]:
    """The new view of one GPU and the events to publish, given its previous view (None: first sight).

    * A watched condition True that reported an open fault no longer reports it; a fault nobody
      reports any more is closed. A condition that vanished (a Device API server restart, before
      the providers re-send), or is Unknown, closes nothing.
    * A watched condition False with a reason that is not open opens a fault: one fatal event.
      The same reason from another condition joins the open fault (one event for both). An
      Unknown condition opens a fault the same way, but its event is non-fatal; a False report of
      a reason only Unknown conditions opened re-opens it as a False one (the fatal event).
    * An NVSwitch reason (`SXid<n>`) names the node-level event (`fatal_event`): every GPU's copy
      has the same name. It is never listed in a GPU's healthy event.
    * A recovery that leaves no fault open publishes one healthy event (when it closed a GPU fault),
      named by the latest True transition. On first sight, a GPU with no failing condition and a
      condition True with a recovery reason publishes that healthy event too (idempotent by name).
    """
    first = view is None
    faults = dict(view.faults) if view is not None else {}
    closed = list(view.closed) if view is not None else []
    conds = conditions_of(gpu, ctx.watched, now)
    order = {t: i for i, t in enumerate(ctx.watched)}
    events: list[HealthEvent] = []

    failing: dict[str, list[Observed]] = {}
    for c in conds.values():
        if c.status in FAILING:
            default = UNSPECIFIED_REASON if c.status == "False" else UNKNOWN_REASON
            failing.setdefault(c.reason or default, []).append(c)
    healthy_types = {c.type for c in conds.values() if c.status == "True"}
    recovered = [c for c in conds.values()
                 if c.status == "True" and any(c.type in f.reporters for f in faults.values())]
    for reason, f in list(faults.items()):
        # a reporter that is True again lets go; one failing with this reason holds on (or takes over)
        rest = (f.reporters - healthy_types) | {c.type for c in failing.get(reason, ())}
        if rest:
            if rest != f.reporters:
                faults[reason] = dataclasses.replace(f, reporters=frozenset(rest))
        else:
            del faults[reason]
            _remember_closed(closed, f)
    for reason, cs in failing.items():
        open_ = faults.get(reason)
        if open_ is not None and not (open_.status != "False" and any(c.status == "False" for c in cs)):
            continue
        fault = _open(ctx, gpu, reason, cs, order)
        if open_ is not None:  # an Unknown report became a finding: the fatal event, under its own name
            fault = dataclasses.replace(fault, reporters=fault.reporters | open_.reporters)
        faults[reason] = fault
        events.append(fatal_event(gpu, fault, conds[fault.condition_type], ctx))

    if recovered and not faults and closed:
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
