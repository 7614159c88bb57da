"""The remediation agent's decisions, with no I/O and no clock reads: HealthEvents + GPUs → writes.

Everything here is a function of its inputs (this node's HealthEvents as model objects, the GPUs
as the Device API returns them, the time passed in), so it is unit-tested without a cluster or a
Device API server. The handshake it implements is docs/remediation.md (steps 2 and 4, and the
verification after a reboot):

* `reset_requests(events, node)` → per GPU UUID, the HealthEvents that ask for a reset, in order;
* `request_for(gpu, names)` → the one the GPU's `ResetRequested` condition should name (the first
  the provider has not answered), or None;
* `merge_request(status, name, now)` → the GPU status with only `ResetRequested` set or removed
  (docs/conditions.md rule 2), or None when nothing changes;
* `verifications(events, gpus, node)` → the healthy HealthEvents that prove a remediation worked;
* `plan(events, gpus, node, now)` → all of the above for one reconcile.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from nvsentinel._proto import gpu_pb2
from nvsentinel.policy import conditions
from nvsentinel.policy.healthevent import (
    ENTITY_GPU, ENTITY_GPU_SERIAL, ENTITY_PCI, ConditionType, Entity, HealthEvent, HealthEventSpec, Phase, pci_slot,
)
from nvsentinel.policy.naming import COMPONENT_CLASS, event_labels, event_name
from nvsentinel.xid import Action

__all__ = [
    "RESET_REQUESTED", "REQUEST_REASON", "GPU_RESET", "NVML_HEALTHY", "GPU_RESET_REQUESTED", "SOURCE", "AGENT",
    "CHECK_NAME", "VERIFIED_IDENTITY", "VERIFIED_REASON", "Plan", "requests_reset", "reset_requests",
    "answered", "request_for", "merge_request", "transition_time", "verified_at", "verification_event",
    "gpus_of", "verifications", "plan",
]

#: The agent's own GPU condition type (the only one it ever writes, docs/conditions.md rule 1).
RESET_REQUESTED: Final = conditions.RESET_REQUESTED
REQUEST_REASON: Final = conditions.REASON_RESET_REQUESTED
#: The NVML provider's answer: its message starts with `<HealthEvent name>:`.
GPU_RESET: Final = conditions.GPU_RESET
NVML_HEALTHY: Final = conditions.NVML_HEALTHY
#: The reason of a HealthEvent's `Remediated` condition that asks the node for a GPU reset.
GPU_RESET_REQUESTED: Final = "GpuResetRequested"
SOURCE: Final = "remediation-agent"
AGENT: Final = "nvsentinel-remediation-agent"
CHECK_NAME: Final = conditions.CHECK_OTHER
VERIFIED_IDENTITY: Final = "verified"
VERIFIED_REASON: Final = "VerifiedAfterRemediation"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_FAR_FUTURE = _dt.datetime.max.replace(tzinfo=_dt.timezone.utc)


# ---- step 2: which HealthEvents ask for a reset ----

def _mine(event: HealthEvent, node: str) -> bool:
    # the label selector matches label_value(node), which may be cut and hashed; nodeName is exact
    return event.spec.node_name == node


def requests_reset(event: HealthEvent) -> bool:
    """Remediating, with a `Remediated` condition whose reason is GpuResetRequested (handshake step 1)."""
    if event.status.phase != Phase.REMEDIATING:
        return False
    cond = event.status.condition(ConditionType.REMEDIATED)
    return cond is not None and cond.reason == GPU_RESET_REQUESTED


def reset_requests(events: Iterable[HealthEvent], node: str) -> dict[str, list[str]]:
    """GPU UUID → names of this node's HealthEvents asking for its reset, oldest request first.

    Order: lastRemediationTime (unset last), then name, so every reconcile picks the same one when
    several events name the same GPU (a GPU holds one `ResetRequested` at a time).
    """
    asking = sorted((e for e in events if _mine(e, node) and requests_reset(e)),
                    key=lambda e: (e.status.last_remediation_time or _FAR_FUTURE, e.name))
    out: dict[str, list[str]] = {}
    for e in asking:
        for uuid in dict.fromkeys(e.gpu_uuids):
            out.setdefault(uuid, []).append(e.name)
    return out


def answered(gpu: gpu_pb2.Gpu, event: str) -> bool:
    """The provider answered `event` on this GPU: a `GpuReset` condition (success or failure) whose
    message starts with `<event>:` (handshake steps 3 and 4)."""
    prefix = event + ":"
    return any(c.type == GPU_RESET and c.message.startswith(prefix) for c in gpu.status.conditions)


def request_for(gpu: gpu_pb2.Gpu, names: Sequence[str]) -> str | None:
    """The HealthEvent the GPU's `ResetRequested` should name: the first not yet answered, else None."""
    for name in names:
        if not answered(gpu, name):
            return name
    return None


def _set_time(ts: object, when: _dt.datetime) -> None:
    delta = when.astimezone(_dt.timezone.utc) - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    ts.seconds, ts.nanos = seconds, delta.microseconds * 1000  # type: ignore[attr-defined]


def merge_request(status: gpu_pb2.GpuStatus, name: str | None, now: _dt.datetime) -> gpu_pb2.GpuStatus | None:
    """`status` with only `ResetRequested` changed: naming `name`, or removed when `name` is None.

    Other condition types and `recommended_action` are kept as they are; the condition keeps its
    position and duplicates of it are dropped (docs/conditions.md rule 2). The transition time is
    kept while the same request stands and is `now` for a new one. None: nothing to write.
    """
    mine = [c for c in status.conditions if c.type == RESET_REQUESTED]
    if name is None and not mine:
        return None
    if (name is not None and len(mine) == 1 and mine[0].status == "True" and mine[0].reason == REQUEST_REASON
            and mine[0].message == name):
        return None
    out = gpu_pb2.GpuStatus()
    out.CopyFrom(status)
    del out.conditions[:]
    placed = False
    for c in status.conditions:
        if c.type != RESET_REQUESTED:
            out.conditions.add().CopyFrom(c)
        elif name is not None and not placed:
            new = out.conditions.add()
            new.type, new.status, new.reason, new.message = RESET_REQUESTED, "True", REQUEST_REASON, name
            if c.status == "True" and c.message == name:
                new.last_transition_time.CopyFrom(c.last_transition_time)
            else:
                _set_time(new.last_transition_time, now)
            placed = True
    if name is not None and not placed:
        new = out.conditions.add()
        new.type, new.status, new.reason, new.message = RESET_REQUESTED, "True", REQUEST_REASON, name
        _set_time(new.last_transition_time, now)
    return out


# ---- verification after a remediation ----

def transition_time(cond: gpu_pb2.Condition) -> _dt.datetime | None:
    """A condition's last_transition_time (UTC), or None when the provider left it unset."""
    ts = cond.last_transition_time
    if not ts.seconds and not ts.nanos:
        return None
    return _EPOCH + _dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def verified_at(gpu: gpu_pb2.Gpu, since: _dt.datetime) -> _dt.datetime | None:
    """When the GPU was verified healthy at or after `since` (truncated to whole seconds), or None.

    Verified: no condition of any type is False, and `NvmlHealthy` is True with a transition time
    at or after `since`; an unset time proves nothing.
    """
    if any(c.status == "False" for c in gpu.status.conditions):
        return None
    nvml = next((c for c in gpu.status.conditions if c.type == NVML_HEALTHY), None)
    if nvml is None or nvml.status != "True":
        return None
    when = transition_time(nvml)
    if when is None or when < since.astimezone(_dt.timezone.utc).replace(microsecond=0):
        return None
    return when


def _labels(node: str) -> dict[str, str]:
    """The publisher's four labels, so selectors and controllers treat both alike."""
    return event_labels(node, fatal=False, source=SOURCE)


def verification_event(node: str, uuid: str, remediated: HealthEvent, when: _dt.datetime, *, pci_bus_id: str = "",
                       serial: str = "", replaced: tuple[str, str] | None = None) -> HealthEvent:
    """The healthy HealthEvent saying GPU `uuid` was verified healthy at `when` after `remediated`.

    It names the GPU's PCI slot and serial when the Device API knows them (the slot is what survives a board
    swap). `replaced`: (old UUIDs, old serials) of the GPU the event named in that slot, when the board there
    now has another UUID; the message says so.
    """
    entities = [Entity(ENTITY_GPU, uuid)]
    if pci_bus_id:
        entities.append(Entity(ENTITY_PCI, pci_bus_id))
    if serial:
        entities.append(Entity(ENTITY_GPU_SERIAL, serial))
    message = f"GPU {uuid} verified healthy after remediation of HealthEvent {remediated.name}"
    metadata = {"remediatedEvent": remediated.name, "reason": VERIFIED_REASON}
    if replaced is not None:
        old_uuid, old_serial = replaced
        message += (f"; the GPU at PCI {pci_slot(pci_bus_id) or pci_bus_id} was replaced: UUID {old_uuid or '?'} → "
                    f"{uuid}, serial {old_serial or '?'} → {serial or '?'}")
        metadata["replacedUuid"] = old_uuid
    spec = HealthEventSpec(
        source=SOURCE,
        agent=AGENT,
        node_name=node,
        component_class=COMPONENT_CLASS,
        check_name=CHECK_NAME,
        is_fatal=False,
        is_healthy=True,
        detected_at=when,
        message=message,
        recommended_action=Action.NONE,
        error_codes=tuple(remediated.spec.error_codes),
        entities_impacted=tuple(entities),
        metadata=metadata,
    )
    return HealthEvent(name=event_name(node, uuid, VERIFIED_IDENTITY, when), spec=spec, labels=_labels(node))


def _serials(event: HealthEvent) -> tuple[str, ...]:
    return tuple(e.value for e in event.spec.entities_impacted if e.type == ENTITY_GPU_SERIAL)


def gpus_of(event: HealthEvent, gpus: Sequence[gpu_pb2.Gpu]) -> list[tuple[gpu_pb2.Gpu, tuple[str, str] | None]]:
    """The Device API's GPUs the event is about, each with (old UUIDs, old serials) when it was found only by
    its PCI slot (the board there was replaced: a new UUID), else None.

    By UUID first, else by the event's PCI slot (canonical `pci_slot`), on this node's Device API only; never a
    GPU in another slot. An event naming neither is about every GPU of the node.
    """
    if not event.gpu_uuids and not event.pci_slots:
        return [(g, None) for g in sorted(gpus, key=lambda g: g.metadata.name)]
    by_uuid = {g.metadata.name: g for g in gpus}
    out: dict[str, tuple[gpu_pb2.Gpu, tuple[str, str] | None]] = {}
    for uuid in event.gpu_uuids:
        if uuid in by_uuid:
            out.setdefault(uuid, (by_uuid[uuid], None))
    found_slots = {pci_slot(g.spec.pci_bus_id) for g, _ in out.values()}
    missing = [u for u in event.gpu_uuids if u not in by_uuid]
    for slot in event.pci_slots:
        if slot in found_slots:
            continue
        for g in sorted(gpus, key=lambda g: g.metadata.name):
            if pci_slot(g.spec.pci_bus_id) == slot and g.metadata.name not in out:
                out[g.metadata.name] = (g, (", ".join(missing), ", ".join(_serials(event))))
    return list(out.values())


def verifications(events: Iterable[HealthEvent], gpus: Iterable[gpu_pb2.Gpu], node: str) -> list[HealthEvent]:
    """One healthy event per GPU verified after the remediation of a `Remediated` event of this node.

    A GPU of the event (`gpus_of`: by UUID, else by the event's PCI slot; all GPUs of the node when it names
    none) that the Device API has, verified healthy since the event's lastRemediationTime (`verified_at`). The
    name depends on the GPU and the verification time only, so two events remediated together give one event
    per GPU (the first by name wins its metadata), and a name already among `events` is not proposed again.
    """
    evs = sorted((e for e in events if _mine(e, node)), key=lambda e: e.name)
    existing = {e.name for e in evs}
    gpu_list = list(gpus)
    out: dict[str, HealthEvent] = {}
    for e in evs:
        since = e.status.last_remediation_time
        if e.status.phase != Phase.REMEDIATED or since is None:
            continue
        for gpu, replaced in gpus_of(e, gpu_list):
            when = verified_at(gpu, since)
            if when is None:
                continue
            h = verification_event(node, gpu.metadata.name, e, when, pci_bus_id=gpu.spec.pci_bus_id,
                                   serial=gpu.spec.serial, replaced=replaced)
            if h.name not in existing and h.name not in out:
                out[h.name] = h
    return list(out.values())


# ---- one reconcile ----

@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What one reconcile must write."""

    requests: Mapping[str, Sequence[str]]
    """GPU name → the HealthEvents asking for its reset, in order (re-judged on a fresh read)."""
    ensure: Mapping[str, str]
    """GPU name → the HealthEvent its `ResetRequested` must name (a write is due)."""
    remove: frozenset[str]
    """GPUs whose `ResetRequested` must go (answered, or its HealthEvent moved on or is gone)."""
    create: tuple[HealthEvent, ...]
    """Verified healthy events to create (409 AlreadyExists: already done)."""

    @property
    def touch(self) -> list[str]:
        """The GPUs to write, in a stable order."""
        return sorted({*self.ensure, *self.remove})


def plan(events: Iterable[HealthEvent], gpus: Iterable[gpu_pb2.Gpu], node: str, now: _dt.datetime) -> Plan:
    """Everything one reconcile writes, judged on the given view of this node's events and GPUs."""
    evs = list(events)
    gpu_list = list(gpus)
    requests = reset_requests(evs, node)
    ensure: dict[str, str] = {}
    remove: set[str] = set()
    for gpu in gpu_list:
        name = gpu.metadata.name
        want = request_for(gpu, requests.get(name, ()))
        if merge_request(gpu.status, want, now) is None:
            continue
        if want is None:
            remove.add(name)
        else:
            ensure[name] = want
    return Plan(requests={k: tuple(v) for k, v in requests.items()}, ensure=ensure, remove=frozenset(remove),
                create=tuple(verifications(evs, gpu_list, node)))
