"""Typed HealthEvent: the custom resource as frozen dataclasses, with exact JSON round trips.

The API server's JSON (camelCase, RFC 3339 times) is the wire format; these types are what the
publisher builds and what the controllers read. `HealthEvent.from_dict(d).to_dict()` keeps every
field the CRD defines; unknown spec/status fields are not carried (the CRD prunes them anyway).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
from collections.abc import Mapping
from typing import Any

from nvsentinel.xid import Action

__all__ = [
    "GROUP", "VERSION", "API_VERSION", "KIND", "PLURAL", "SINGULAR", "SHORT_NAMES", "LABEL_PREFIX",
    "LABEL_NODE", "LABEL_COMPONENT_CLASS", "LABEL_IS_FATAL", "LABEL_SOURCE",
    "Phase", "ConditionType", "Entity", "OverrideFlags", "Overrides", "Maintenance",
    "HealthEventSpec", "Condition", "HealthEventStatus", "HealthEvent",
    "format_time", "parse_time", "utcnow", "ENTITY_GPU", "ENTITY_PCI", "ENTITY_GPU_SERIAL", "ENTITY_NVSWITCH",
    "pci_slot", "RemediationMode", "DrainScope", "PodRef", "PodMapping", "DrainRecord", "MAX_MAPPED_PODS",
]

GROUP = "nvsentinel.nvidia.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "HealthEvent"
PLURAL = "healthevents"
SINGULAR = "healthevent"
SHORT_NAMES = ("he", "hevt")
LABEL_PREFIX = f"{GROUP}/"
LABEL_NODE = f"{GROUP}/node"
LABEL_COMPONENT_CLASS = f"{GROUP}/component-class"
LABEL_IS_FATAL = f"{GROUP}/is-fatal"
LABEL_SOURCE = f"{GROUP}/source"


class Phase(enum.StrEnum):
    """Where an event is in the controller chain (SPEC §7)."""

    NEW = "New"
    QUARANTINED = "Quarantined"
    DRAINING = "Draining"
    DRAINED = "Drained"
    REMEDIATING = "Remediating"
    REMEDIATED = "Remediated"
    RESOLVED = "Resolved"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Phase.RESOLVED, Phase.CANCELLED)


class RemediationMode(enum.StrEnum):
    """Who remediates a node's fault (docs/integrations.md): one system owns a node at a time."""

    NVSENTINEL = "nvsentinel"   # the whole chain
    EXTERNAL = "external"       # quarantine, say what is recommended, and stop: another system repairs
    APPROVE = "approve"         # the whole chain, but remediation waits in Drained for an operator's approval


class DrainScope(enum.StrEnum):
    """What a drain evicts: every pod of the node, or only the pods on the event's GPUs."""

    NODE = "node"
    GPU = "gpu"


class ConditionType(enum.StrEnum):
    DETECTED = "Detected"
    NODE_QUARANTINED = "NodeQuarantined"
    PODS_DRAINED = "PodsDrained"
    REMEDIATED = "Remediated"
    RESOLVED = "Resolved"


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def format_time(t: _dt.datetime) -> str:
    """RFC 3339 in UTC with a `Z`; microseconds only when non-zero (both parse everywhere)."""
    if t.tzinfo is None:
        raise ValueError("naive datetime: HealthEvent times must be timezone-aware")
    t = t.astimezone(_dt.timezone.utc)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return f"{text}.{t.microsecond:06d}Z" if t.microsecond else f"{text}Z"


def parse_time(s: str) -> _dt.datetime:
    if not isinstance(s, str) or not s:
        raise ValueError(f"not an RFC 3339 time: {s!r}")
    text = s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {s!r}") from None
    if t.tzinfo is None:
        raise ValueError(f"RFC 3339 time without an offset: {s!r}")
    return t.astimezone(_dt.timezone.utc)


def _bool(d: Mapping[str, Any], key: str, default: bool | None = None) -> bool:
    """A JSON boolean; the string "false" must not read as True."""
    v = d.get(key, default) if default is not None else d[key]
    if not isinstance(v, bool):
        raise ValueError(f"{key}: want a boolean, got {v!r}")
    return v


def _enum(cls: Any, value: Any, field: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not one of {', '.join(m.value for m in cls)}") from None


def _opt_time(d: Mapping[str, Any], key: str) -> _dt.datetime | None:
    v = d.get(key)
    return parse_time(v) if v else None


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


#: Entity types: the GPU by UUID, its PCI slot (survives a GPU swap), its board serial, an NVSwitch by PCI id.
ENTITY_GPU = "GPU"
ENTITY_PCI = "PCI"
ENTITY_GPU_SERIAL = "GPU_SERIAL"
ENTITY_NVSWITCH = "NVSWITCH"

_HEXDIGITS = frozenset("0123456789abcdef")


def pci_slot(text: str) -> str:
    """A PCI bus id in one canonical form, `0000:5d:00.0` (NVML writes `00000000:5D:00.0`, the kernel
    `0000:5d:00.0`), so two writers' ids compare equal; "" for anything that is not one."""
    t = text.strip().lower()
    parts = t.split(":")
    if len(parts) == 2:
        parts = ["0000", *parts]
    if len(parts) != 3 or "." not in parts[2]:
        return ""
    domain, bus = parts[0], parts[1]
    dev, _, fn = parts[2].partition(".")
    if len(domain) == 8 and domain[:4] == "0000":
        domain = domain[4:]
    fields = ((domain, 4), (bus, 2), (dev, 2), (fn, 1))
    if any(len(f) != n or not set(f) <= _HEXDIGITS for f, n in fields):
        return ""
    return f"{domain}:{bus}:{dev}.{fn}"


@dataclasses.dataclass(frozen=True, slots=True)
class Entity:
    """Something the event is about: `{type: GPU, value: GPU-<uuid>}`, `{type: PCI, value: ...}`."""

    type: str
    value: str

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Entity:
        return cls(type=str(d["type"]), value=str(d["value"]))


@dataclasses.dataclass(frozen=True, slots=True)
class OverrideFlags:
    force: bool = False
    skip: bool = False

    def to_dict(self) -> dict[str, bool]:
        return {"force": self.force, "skip": self.skip}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> OverrideFlags:
        d = d or {}
        return cls(force=_bool(d, "force", False), skip=_bool(d, "skip", False))


@dataclasses.dataclass(frozen=True, slots=True)
class Overrides:
    """Operator overrides per stage: `skip` cancels the stage, `force` acts despite the guards."""

    quarantine: OverrideFlags = OverrideFlags()
    drain: OverrideFlags = OverrideFlags()

    def to_dict(self) -> dict[str, Any]:
        return {"quarantine": self.quarantine.to_dict(), "drain": self.drain.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Overrides:
        d = d or {}
        return cls(OverrideFlags.from_dict(d.get("quarantine")), OverrideFlags.from_dict(d.get("drain")))


@dataclasses.dataclass(frozen=True, slots=True)
class Maintenance:
    """A cloud provider's scheduled maintenance the event reports (CSP health events)."""

    csp: str = ""
    event_id: str = ""
    maintenance_type: str = ""
    scheduled_start: _dt.datetime | None = None
    scheduled_end: _dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _put(out, "csp", self.csp or None)
        _put(out, "eventId", self.event_id or None)
        _put(out, "maintenanceType", self.maintenance_type or None)
        _put(out, "scheduledStartTime", format_time(self.scheduled_start) if self.scheduled_start else None)
        _put(out, "scheduledEndTime", format_time(self.scheduled_end) if self.scheduled_end else None)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Maintenance:
        return cls(
            csp=str(d.get("csp", "")), event_id=str(d.get("eventId", "")),
            maintenance_type=str(d.get("maintenanceType", "")),
            scheduled_start=_opt_time(d, "scheduledStartTime"), scheduled_end=_opt_time(d, "scheduledEndTime"),
        )


#: The most pods one event's pod mapping may name (the CRD's maxItems): a node's credential writes it.
MAX_MAPPED_PODS = 256


@dataclasses.dataclass(frozen=True, slots=True)
class PodRef:
    """A pod by namespace and name, and the devices of the mapped resource it holds (GPU UUIDs)."""

    namespace: str
    name: str
    devices: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"namespace": self.namespace, "name": self.name}
        if self.devices:
            out["devices"] = list(self.devices)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PodRef:
        return cls(namespace=str(d["namespace"]), name=str(d["name"]),
                   devices=tuple(str(x) for x in d.get("devices") or ()))

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclasses.dataclass(frozen=True, slots=True)
class PodMapping:
    """Which pods held the event's GPUs when it was published, from the kubelet's PodResources API
    (`nvsentinel.node.podresources`). `error` set: the mapping could not be read (the drain falls back to the
    whole node and says why). Absent from the spec: the publisher was not asked to read it."""

    resource_name: str = ""
    pods: tuple[PodRef, ...] = ()
    error: str = ""
    read_at: _dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pods": [p.to_dict() for p in self.pods]}
        _put(out, "resourceName", self.resource_name or None)
        _put(out, "error", self.error or None)
        _put(out, "readAt", format_time(self.read_at) if self.read_at else None)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PodMapping:
        return cls(resource_name=str(d.get("resourceName", "")),
                   pods=tuple(PodRef.from_dict(p) for p in d.get("pods") or ()),
                   error=str(d.get("error", "")), read_at=_opt_time(d, "readAt"))


@dataclasses.dataclass(frozen=True, slots=True)
class HealthEventSpec:
    """What happened: immutable once created."""

    source: str
    node_name: str
    component_class: str
    check_name: str
    is_fatal: bool
    is_healthy: bool
    detected_at: _dt.datetime
    agent: str = ""
    message: str = ""
    recommended_action: Action = Action.NONE
    error_codes: tuple[str, ...] = ()
    entities_impacted: tuple[Entity, ...] = ()
    overrides: Overrides = Overrides()
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    maintenance: Maintenance | None = None
    pod_mapping: PodMapping | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "nodeName": self.node_name,
            "componentClass": self.component_class,
            "checkName": self.check_name,
            "isFatal": self.is_fatal,
            "isHealthy": self.is_healthy,
            "recommendedAction": str(self.recommended_action),
            "errorCodes": list(self.error_codes),
            "entitiesImpacted": [e.to_dict() for e in self.entities_impacted],
            "detectedAt": format_time(self.detected_at),
            "overrides": self.overrides.to_dict(),
            "metadata": dict(self.metadata),
        }
        # optional strings are omitted when empty: kube-apiserver 1.20 decodes "" in a custom
        # resource as null and then rejects it as "must be of type string"
        _put(out, "agent", self.agent or None)
        _put(out, "message", self.message or None)
        _put(out, "maintenance", self.maintenance.to_dict() if self.maintenance else None)
        _put(out, "podMapping", self.pod_mapping.to_dict() if self.pod_mapping else None)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HealthEventSpec:
        return cls(
            source=str(d["source"]),
            agent=str(d.get("agent", "")),
            node_name=str(d["nodeName"]),
            component_class=str(d["componentClass"]),
            check_name=str(d["checkName"]),
            is_fatal=_bool(d, "isFatal"),
            is_healthy=_bool(d, "isHealthy"),
            message=str(d.get("message", "")),
            recommended_action=_enum(Action, d.get("recommendedAction") or "NONE", "spec.recommendedAction"),
            error_codes=tuple(str(c) for c in d.get("errorCodes") or ()),
            entities_impacted=tuple(Entity.from_dict(e) for e in d.get("entitiesImpacted") or ()),
            detected_at=parse_time(d["detectedAt"]),
            overrides=Overrides.from_dict(d.get("overrides")),
            metadata={str(k): str(v) for k, v in (d.get("metadata") or {}).items()},
            maintenance=Maintenance.from_dict(d["maintenance"]) if d.get("maintenance") is not None else None,
            pod_mapping=PodMapping.from_dict(d["podMapping"]) if d.get("podMapping") is not None else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """One recorded decision: which rule (reason), what was done (message), when, for which spec."""

    type: str
    status: str
    reason: str
    message: str
    last_transition_time: _dt.datetime
    observed_generation: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "status": self.status}
        _put(out, "reason", self.reason or None)  # "" would be rejected by 1.20 (see the spec's note)
        _put(out, "message", self.message or None)
        out["lastTransitionTime"] = format_time(self.last_transition_time)
        out["observedGeneration"] = self.observed_generation
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition:
        return cls(
            type=str(d["type"]), status=str(d["status"]), reason=str(d.get("reason", "")),
            message=str(d.get("message", "")), last_transition_time=parse_time(d["lastTransitionTime"]),
            observed_generation=int(d.get("observedGeneration", 0)),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class DrainRecord:
    """What the drain stage evicted: the whole node (`scope` node) or only the pods on the event's GPUs (`gpu`);
    `reason` says why a GPU-scoped drain fell back to the node."""

    scope: str
    gpus: tuple[str, ...] = ()
    pods: tuple[PodRef, ...] = ()
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": str(self.scope), "gpus": list(self.gpus),
                               "pods": [{"namespace": p.namespace, "name": p.name} for p in self.pods]}
        _put(out, "reason", self.reason or None)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DrainRecord:
        return cls(scope=str(d.get("scope", "")), gpus=tuple(str(g) for g in d.get("gpus") or ()),
                   pods=tuple(PodRef.from_dict(p) for p in d.get("pods") or ()), reason=str(d.get("reason", "")))


@dataclasses.dataclass(frozen=True, slots=True)
class HealthEventStatus:
    phase: Phase = Phase.NEW
    conditions: tuple[Condition, ...] = ()
    last_remediation_time: _dt.datetime | None = None
    resolved_at: _dt.datetime | None = None
    observed_generation: int = 0
    remediation_mode: str = ""
    """who remediates (nvsentinel, external, approve): decided once, by the quarantine stage"""
    node_uid: str = ""
    """the UID of the Node quarantined for it: another UID under the same name is a replaced node"""
    drain: DrainRecord | None = None

    def condition(self, type_: str) -> Condition | None:
        for c in self.conditions:
            if c.type == type_:
                return c
        return None

    def with_condition(self, cond: Condition) -> HealthEventStatus:
        """Set one condition by type; the transition time moves only when the status changes."""
        old = self.condition(cond.type)
        if old is not None and old.status == cond.status:
            cond = dataclasses.replace(cond, last_transition_time=old.last_transition_time)
        kept = [c for c in self.conditions if c.type != cond.type]
        pos = next((i for i, c in enumerate(self.conditions) if c.type == cond.type), len(kept))
        kept.insert(pos, cond)
        return dataclasses.replace(self, conditions=tuple(kept))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": str(self.phase),
            "conditions": [c.to_dict() for c in self.conditions],
            "observedGeneration": self.observed_generation,
        }
        _put(out, "lastRemediationTime", format_time(self.last_remediation_time) if self.last_remediation_time else None)
        _put(out, "resolvedAt", format_time(self.resolved_at) if self.resolved_at else None)
        _put(out, "remediationMode", str(self.remediation_mode) or None)
        _put(out, "nodeUID", self.node_uid or None)
        _put(out, "drain", self.drain.to_dict() if self.drain else None)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> HealthEventStatus:
        d = d or {}
        return cls(
            phase=_enum(Phase, d.get("phase") or "New", "status.phase"),
            conditions=tuple(Condition.from_dict(c) for c in d.get("conditions") or ()),
            last_remediation_time=_opt_time(d, "lastRemediationTime"),
            resolved_at=_opt_time(d, "resolvedAt"),
            observed_generation=int(d.get("observedGeneration", 0)),
            remediation_mode=str(d.get("remediationMode", "")),
            node_uid=str(d.get("nodeUID", "")),
            drain=DrainRecord.from_dict(d["drain"]) if d.get("drain") is not None else None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class HealthEvent:
    """A HealthEvent object: metadata the server owns, the spec, the status."""

    name: str
    spec: HealthEventSpec
    status: HealthEventStatus = HealthEventStatus()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    resource_version: str = ""
    uid: str = ""
    generation: int = 0
    creation_timestamp: _dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        if self.uid:
            meta["uid"] = self.uid
        if self.generation:
            meta["generation"] = self.generation
        if self.creation_timestamp:
            meta["creationTimestamp"] = format_time(self.creation_timestamp)
        return {
            "apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
            "spec": self.spec.to_dict(), "status": self.status.to_dict(),
        }

    def create_body(self) -> dict[str, Any]:
        """The body for `create`: the server ignores status on create (status subresource)."""
        body = self.to_dict()
        del body["status"]
        for k in ("resourceVersion", "uid", "generation", "creationTimestamp"):
            body["metadata"].pop(k, None)
        return body

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HealthEvent:
        if d.get("kind", KIND) != KIND:
            raise ValueError(f"not a {KIND}: kind={d.get('kind')!r}")
        meta = d.get("metadata") or {}
        return cls(
            name=str(meta["name"]),
            spec=HealthEventSpec.from_dict(d["spec"]),
            status=HealthEventStatus.from_dict(d.get("status")),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            resource_version=str(meta.get("resourceVersion", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation", 0)),
            creation_timestamp=_opt_time(meta, "creationTimestamp"),
        )

    @property
    def gpu_uuids(self) -> tuple[str, ...]:
        return tuple(e.value for e in self.spec.entities_impacted if e.type == ENTITY_GPU)

    @property
    def pci_slots(self) -> tuple[str, ...]:
        """The PCI slots of the GPUs it names, canonical (`pci_slot`); malformed ids left out."""
        return tuple(s for e in self.spec.entities_impacted if e.type == ENTITY_PCI and (s := pci_slot(e.value)))


