"""What a HealthEvent is evidence of, and since when: the rules resolution and remediation both apply.

Two stages judge events against each other: resolution pairs a healthy event with the faults it answers,
remediation asks whether a fault is still fresh and whether another event's remediation covers it. Stages
never import each other, so the shared rules live here. Pure: no I/O, no clock reads (time is passed in).

A GPU is named by its UUID, which changes when the board is swapped, and by its PCI slot, which does not.
Two events are about the same GPU when they share either, on the same node; never by UUID alone.
"""
from __future__ import annotations

import datetime as _dt

from nvsentinel.policy.healthevent import HealthEvent

__all__ = ["DEFAULT_SKEW", "observed_at", "same_gpu", "age", "is_stale"]

#: How far a node's clock may run ahead of the API server's before its detectedAt stops being believed.
DEFAULT_SKEW = _dt.timedelta(seconds=60)


def observed_at(event: HealthEvent, skew: _dt.timedelta = DEFAULT_SKEW) -> _dt.datetime:
    """When the event happened, as far as anyone can know: its detectedAt, but never later than its creation
    (the API server's clock) plus `skew`. A node whose clock runs ahead, or one that lies (detectedAt 2099),
    would otherwise date a recovery after every later fault and mask it."""
    created = event.creation_timestamp
    if created is None:
        return event.spec.detected_at
    return min(event.spec.detected_at, created + skew)


def same_gpu(a: HealthEvent, b: HealthEvent) -> bool:
    """Same node, and a GPU UUID or a PCI slot (canonical) in common. Events naming no GPU match nothing here:
    whether a node-wide event counts is each rule's own call."""
    if a.spec.node_name != b.spec.node_name:
        return False
    return bool(set(a.gpu_uuids) & set(b.gpu_uuids)) or bool(set(a.pci_slots) & set(b.pci_slots))


def age(event: HealthEvent, now: _dt.datetime, skew: _dt.timedelta = DEFAULT_SKEW) -> _dt.timedelta:
    """How long ago the event was observed (`observed_at`); negative for a date ahead of `now`."""
    return now - observed_at(event, skew)


def is_stale(event: HealthEvent, now: _dt.datetime, max_age: float, skew: _dt.timedelta = DEFAULT_SKEW) -> bool:
    """Observed more than `max_age` seconds before `now`; `max_age` 0 turns the rule off."""
    return max_age > 0 and age(event, now, skew).total_seconds() > max_age
