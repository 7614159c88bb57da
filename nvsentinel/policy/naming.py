"""How node-side HealthEvents are named and labelled: deterministic, DNS-safe, bounded.

The publisher and the remediation agent both create HealthEvents; they name them the same way so a
restarted writer re-creates the same object (409) instead of a duplicate, and label them the same
way so the controllers and `nvsentinel get` select them alike. Pure: no I/O, no clock reads.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import re
from typing import Final

from nvsentinel.policy.healthevent import LABEL_COMPONENT_CLASS, LABEL_IS_FATAL, LABEL_NODE, LABEL_SOURCE

__all__ = [
    "COMPONENT_CLASS", "NVSWITCH_CLASS", "NVSWITCH_PART", "MAX_NAME", "MAX_LABEL", "gpu_short", "event_name",
    "node_event_name", "label_value", "event_labels",
]

COMPONENT_CLASS: Final = "GPU"
NVSWITCH_CLASS: Final = "NVSwitch"
"""componentClass of a node-level NVSwitch event (an SXid: the whole NVLink fabric, not one GPU)."""
NVSWITCH_PART: Final = "nvswitch"
"""What stands in a node-level NVSwitch event's name where a GPU event has `<gpu8>` (never 8 hex digits)."""
MAX_NAME: Final = 253
MAX_LABEL: Final = 63
_NOT_NAME = re.compile(r"[^a-z0-9.-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
_HEX8 = re.compile(r"[0-9a-f]{8}")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


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
    return _name(node, gpu_short(uuid), uuid, identity, when)


def node_event_name(node: str, part: str, identity: str, when: _dt.datetime) -> str:
    """`<node>.<part>.<identity>.<unix seconds>`: an event about the node, not one GPU (`part`
    `nvswitch`). Every GPU that reports the same fault at the same time computes the same name, so
    their copies collapse into one object (409)."""
    return _name(node, part, part, identity, when)


def _name(node: str, part: str, key: str, identity: str, when: _dt.datetime) -> str:
    seconds = str(math.floor((when - _EPOCH).total_seconds()))
    tail = [*_dns_labels(part), *(_dns_labels(identity) or ["x"]), seconds]
    head = _dns_labels(node) or ["node"]
    name = ".".join(head + tail)
    if len(name) <= MAX_NAME:
        return name
    digest = _hash(node, key, identity, seconds)[:10]
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


def event_labels(node: str, *, fatal: bool, source: str, component_class: str = COMPONENT_CLASS) -> dict[str, str]:
    """The labels every node-side HealthEvent carries (node, component class, fatality, source)."""
    return {
        LABEL_NODE: label_value(node),
        LABEL_COMPONENT_CLASS: label_value(component_class),
        LABEL_IS_FATAL: "true" if fatal else "false",
        LABEL_SOURCE: label_value(source),
    }
