"""What the exporter sends, decided from a HealthEvent alone: pure, no I/O, no clock.

One CloudEvent per phase an event enters. Phases only move forward along the chain (SPEC §7), so a
phase never repeats and `<uid>.<phase>` is a stable id a sink de-duplicates by. What a status
proves after the exporter was away (`proven_phases`): New always; Quarantined, Drained and
Remediated when their condition says True; Draining and Remediating (transient, their conditions
are overwritten by the next phase) only while the event is still in them; the current phase always.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import email.utils
import enum
import json
from collections.abc import Mapping
from typing import Any

from nvsentinel.policy.healthevent import Condition, ConditionType, HealthEvent, Phase
from nvsentinel.service.sanitize import printable

__all__ = [
    "PHASE_RANK", "Transition", "Verdict", "backoff_delay", "classify", "cloudevent_attributes", "decode_checkpoint",
    "encode_checkpoint", "event_id", "event_source", "event_type", "pending_transitions", "proven_phases",
    "retry_after_seconds", "transition_data",
]

#: Where each phase sits on the chain; Resolved and Cancelled are both the end.
PHASE_RANK: Mapping[Phase, int] = {
    Phase.NEW: 0, Phase.QUARANTINED: 1, Phase.DRAINING: 2, Phase.DRAINED: 3, Phase.REMEDIATING: 4,
    Phase.REMEDIATED: 5, Phase.RESOLVED: 6, Phase.CANCELLED: 6,
}
#: The condition whose reason and message say why the event entered the phase.
_DECIDING: Mapping[Phase, tuple[str, ...]] = {
    Phase.NEW: (ConditionType.DETECTED,), Phase.QUARANTINED: (ConditionType.NODE_QUARANTINED,),
    Phase.DRAINING: (ConditionType.PODS_DRAINED,), Phase.DRAINED: (ConditionType.PODS_DRAINED,),
    Phase.REMEDIATING: (ConditionType.REMEDIATED,), Phase.REMEDIATED: (ConditionType.REMEDIATED,),
    Phase.RESOLVED: (ConditionType.RESOLVED,),
    Phase.CANCELLED: (ConditionType.RESOLVED, ConditionType.NODE_QUARANTINED),
}
TYPE_PREFIX = "com.nvidia.nvsentinel.healthevent."
MAX_TEXT = 1024        # characters of one message or reason
MAX_PODS = 64          # pods listed in one CloudEvent (the rest counted)
MAX_ITEMS = 32         # GPUs, PCI slots, error codes
DATA_CONTENT_TYPE = "application/json"


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """One phase an event entered, ready to send: its id, when, and the CloudEvent's data."""

    uid: str
    name: str
    phase: Phase
    time: _dt.datetime
    data: Mapping[str, Any]

    @property
    def id(self) -> str:
        return event_id(self.uid, self.phase)

    @property
    def rank(self) -> int:
        return PHASE_RANK[self.phase]


def event_id(uid: str, phase: Phase | str) -> str:
    return f"{uid}.{phase}"


def event_type(phase: Phase | str) -> str:
    return TYPE_PREFIX + str(phase).lower()


def event_source(cluster: str) -> str:
    return f"/clusters/{cluster}/healthevents"


def _clean(text: object, limit: int = MAX_TEXT) -> str:
    return printable(text, limit) if text else ""


def _condition(event: HealthEvent, phase: Phase) -> Condition | None:
    for t in _DECIDING[phase]:
        c = event.status.condition(t)
        if c is not None:
            return c
    return None


def _created(event: HealthEvent) -> _dt.datetime:
    return event.creation_timestamp or event.spec.detected_at


def _latest(event: HealthEvent) -> _dt.datetime:
    times = [c.last_transition_time for c in event.status.conditions]
    return max(times) if times else _created(event)


def _current_time(event: HealthEvent) -> _dt.datetime:
    """When the event entered the phase it is in now, from the status."""
    st = event.status
    phase = st.phase
    if phase is Phase.REMEDIATING and st.last_remediation_time is not None:
        return st.last_remediation_time  # Remediated=False may predate it (held in Drained before)
    if phase in (Phase.RESOLVED, Phase.CANCELLED):
        cond = st.condition(ConditionType.RESOLVED)
        if phase is Phase.RESOLVED and cond is not None and cond.status == "True":
            return cond.last_transition_time
        return st.resolved_at or _latest(event)
    if phase is Phase.NEW:
        return _created(event)
    cond = _condition(event, phase)
    return cond.last_transition_time if cond is not None else _latest(event)


def proven_phases(event: HealthEvent) -> list[tuple[Phase, _dt.datetime]]:
    """Every phase the event's status proves it entered, in chain order, with when."""
    st = event.status
    current = st.phase
    rank = PHASE_RANK[current]
    out = [(Phase.NEW, _created(event))]
    for phase, ctype in ((Phase.QUARANTINED, ConditionType.NODE_QUARANTINED), (Phase.DRAINED, ConditionType.PODS_DRAINED),
                         (Phase.REMEDIATED, ConditionType.REMEDIATED)):
        cond = st.condition(ctype)
        if PHASE_RANK[phase] < rank and cond is not None and cond.status == "True":
            out.append((phase, cond.last_transition_time))
    if current is not Phase.NEW:
        out.append((current, _current_time(event)))
    return out


def transition_data(event: HealthEvent, phase: Phase, cluster: str) -> dict[str, Any]:
    """The CloudEvent's data for `phase`: bounded, every free text made printable."""
    spec, st = event.spec, event.status
    cond = _condition(event, phase)
    codes = [_clean(c, 64) for c in spec.error_codes[:MAX_ITEMS]]
    xids = [int(c) for c in codes if c.isascii() and c.isdigit()] if "xid" in spec.check_name.lower() else []
    if st.drain is not None and st.drain.pods:
        pods, pods_from = st.drain.pods, "drain"
    elif spec.pod_mapping is not None and spec.pod_mapping.pods:
        pods, pods_from = spec.pod_mapping.pods, "podMapping"
    else:
        pods, pods_from = (), ""
    data: dict[str, Any] = {
        "cluster": _clean(cluster, 253), "healthEvent": event.name, "uid": event.uid, "phase": str(phase),
        "node": _clean(spec.node_name, 253), "source": _clean(spec.source, 253), "checkName": _clean(spec.check_name, 253),
        "componentClass": _clean(spec.component_class, 64), "isFatal": spec.is_fatal, "isHealthy": spec.is_healthy,
        "gpus": [_clean(g, 128) for g in event.gpu_uuids[:MAX_ITEMS]], "pciSlots": list(event.pci_slots[:MAX_ITEMS]),
        "errorCodes": codes, "xids": xids, "recommendedAction": str(spec.recommended_action),
        "message": _clean(spec.message), "detectedAt": _iso(spec.detected_at),
        "remediationMode": _clean(st.remediation_mode, 32),
        "reason": _clean(cond.reason, 256) if cond is not None else "",
        "conditionMessage": _clean(cond.message) if cond is not None else "",
        "pods": [{"namespace": _clean(p.namespace, 63), "name": _clean(p.name, 253)} for p in pods[:MAX_PODS]],
        "podsFrom": pods_from, "podsOmitted": max(0, len(pods) - MAX_PODS),
    }
    return data


def _iso(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


def pending_transitions(event: HealthEvent, after_rank: int, cluster: str) -> list[Transition]:
    """The transitions still to send for `event`, given that everything up to `after_rank` (-1: nothing)
    was sent or queued. A status that moved backwards (hand-edited) proves nothing new: none."""
    return [Transition(event.uid, event.name, phase, when, transition_data(event, phase, cluster))
            for phase, when in proven_phases(event) if PHASE_RANK[phase] > after_rank]


def cloudevent_attributes(tr: Transition, cluster: str) -> dict[str, Any]:
    """The context attributes of `tr`'s CloudEvent (binary mode carries them as ce-* headers)."""
    return {"specversion": "1.0", "id": tr.id, "type": event_type(tr.phase), "source": event_source(cluster),
            "subject": tr.name, "time": tr.time, "datacontenttype": DATA_CONTENT_TYPE}


# ---- delivery ---------------------------------------------------------------------------------------------

class Verdict(enum.Enum):
    OK = "ok"          # 2xx: delivered
    RETRY = "retry"    # connection failure, timeout, 408, 429, 5xx, 3xx: the sink may take it later
    POISON = "poison"  # any other 4xx: the sink refuses this event; retried a few times, then dropped


def classify(status: int | None) -> tuple[Verdict, str]:
    """A response status (None: no response) → what to do, and the failure reason for the metrics."""
    if status is None:
        return Verdict.RETRY, "connection"
    if 200 <= status < 300:
        return Verdict.OK, ""
    if status in (408, 429):
        return Verdict.RETRY, f"http_{status}"
    if 400 <= status < 500:
        return Verdict.POISON, "http_4xx"
    if status >= 500:
        return Verdict.RETRY, "http_5xx"
    return Verdict.RETRY, "http_other"


def backoff_delay(attempt: int, initial: float, cap: float, jitter: float) -> float:
    """Exponential backoff with jitter: attempt 0 → about `initial`, doubling up to `cap`;
    `jitter` in [0, 1) spreads it over [½, 1] of the step so retries of many events do not align."""
    step = min(cap, initial * (2 ** min(attempt, 30)))
    return step * (0.5 + jitter / 2)


def retry_after_seconds(value: str | None, now: _dt.datetime) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from `now`; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


# ---- checkpoint -------------------------------------------------------------------------------------------

def encode_checkpoint(exported: Mapping[str, Phase]) -> str:
    """{event uid: last phase sent} as compact JSON (sorted: the same state writes the same bytes)."""
    return json.dumps({uid: str(p) for uid, p in sorted(exported.items())}, separators=(",", ":"))


def decode_checkpoint(text: str | None) -> dict[str, Phase]:
    """The checkpoint back; an unreadable one (or entry) is skipped: its events are sent again, never lost."""
    try:
        raw = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, Phase] = {}
    for uid, phase in raw.items():
        try:
            out[str(uid)] = Phase(phase)
        except ValueError:
            continue
    return out
