"""Who owns a quarantined Node, in one place: the stages that cordon and release it, and the operator
views, read and write the same record.

The quarantine stage cordons and taints a node and records on it which HealthEvents hold it, since
when, and whether the cordon is ours; the resolution stage removes our taint and uncordons only a
cordon that is ours. Pure: no I/O, no clock reads.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Mapping
from typing import Any

from nvsentinel.policy.healthevent import format_time, parse_time

__all__ = ["ANNOTATION", "TAINT_KEY", "GPU_RESOURCE", "GPU_PRESENT_LABEL", "OWNER_LABEL", "RECOMMENDATION_ANNOTATION",
           "Ownership", "ownership_of", "is_gpu_node", "gpu_node_count", "our_cordons"]

#: Ownership record on the Node: which events hold it in quarantine, since when, and whether the
#: cordon is ours (the resolve stage uncordons only then).
ANNOTATION = "nvsentinel.nvidia.com/quarantine"
#: The taint quarantine puts and resolution removes (both stages' `--taint-key` default).
TAINT_KEY = "nvsentinel.nvidia.com/quarantine"
#: Who remediates the quarantined node: `nvsentinel`, `external` or `approve` (a label, so an external repairer's
#: node selector can pick the nodes handed to it); removed with the quarantine.
OWNER_LABEL = "nvsentinel.nvidia.com/remediation-owner"
#: What nvsentinel recommends for a node it quarantined (JSON: one entry per HealthEvent), for whoever repairs it.
RECOMMENDATION_ANNOTATION = "nvsentinel.nvidia.com/recommendation"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"


@dataclasses.dataclass(frozen=True, slots=True)
class Ownership:
    """The Node annotation's content."""

    events: tuple[str, ...]
    since: _dt.datetime
    cordoned_by_us: bool
    mode: str = "nvsentinel"
    """who remediates (`RemediationMode`): the first event's decision holds for every later one of the node"""
    scope: str = "node"
    """`gpu`: only the faulty GPUs' pods are drained and the node is left schedulable (tainted PreferNoSchedule)"""

    @property
    def counted(self) -> bool:
        """Whether the circuit breaker counts this node: our cordon, or our GPU-scoped quarantine (it evicts too)."""
        return self.cordoned_by_us or self.scope == "gpu"

    def to_json(self) -> str:
        d: dict[str, object] = {"events": list(self.events), "since": format_time(self.since),
                                "cordonedByUs": self.cordoned_by_us}
        if self.mode != "nvsentinel":
            d["mode"] = self.mode
        if self.scope != "node":
            d["scope"] = self.scope
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Ownership:
        """Parse the annotation; raises ValueError when it is not ours to read."""
        try:
            d = json.loads(text)
            events = d["events"]
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                raise ValueError("events must be a list of names")
            by_us = d["cordonedByUs"]
            if not isinstance(by_us, bool):
                raise ValueError("cordonedByUs must be a boolean")
            mode, scope = d.get("mode", "nvsentinel"), d.get("scope", "node")
            if mode not in ("nvsentinel", "external", "approve"):
                raise ValueError("mode must be nvsentinel, external or approve")
            if scope not in ("node", "gpu"):
                raise ValueError("scope must be node or gpu")
            return cls(events=tuple(events), since=parse_time(d["since"]), cordoned_by_us=by_us, mode=mode,
                       scope=scope)
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"bad {ANNOTATION} annotation {text!r}: {exc}") from None


def _meta(node: Mapping[str, Any]) -> Mapping[str, Any]:
    return node.get("metadata") or {}


def ownership_of(node: Mapping[str, Any]) -> Ownership | None:
    """The node's ownership record; None when absent. A malformed one raises ValueError."""
    text = (_meta(node).get("annotations") or {}).get(ANNOTATION)
    return Ownership.from_json(text) if text else None


def is_gpu_node(node: Mapping[str, Any]) -> bool:
    """A GPU node has `nvidia.com/gpu` capacity > 0 or the GPU operator's `nvidia.com/gpu.present=true`."""
    if (_meta(node).get("labels") or {}).get(GPU_PRESENT_LABEL) == "true":
        return True
    raw = ((node.get("status") or {}).get("capacity") or {}).get(GPU_RESOURCE)
    if raw is None:
        return False
    try:
        return int(str(raw)) > 0
    except ValueError:
        try:
            return float(str(raw)) > 0
        except ValueError:
            return False


def gpu_node_count(nodes: list[Mapping[str, Any]]) -> int:
    return sum(1 for n in nodes if is_gpu_node(n))


def our_cordons(nodes: list[Mapping[str, Any]]) -> dict[str, _dt.datetime]:
    """node name → when nvsentinel cordoned it, for nodes whose annotation says the cordon is ours (or the GPU-scoped
    quarantine, which the breaker counts alike)."""
    out: dict[str, _dt.datetime] = {}
    for n in nodes:
        try:
            own = ownership_of(n)
        except ValueError:
            continue
        if own is not None and own.counted:
            out[str(_meta(n)["name"])] = own.since
    return out
