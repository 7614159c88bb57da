"""Per-GPU drain scope: when only the pods on the faulty GPUs need to leave, and when the node may stay schedulable.

With `--drain-scope gpu` an event's drain evicts only the pods its pod mapping (`spec.podMapping`, read from the
kubelet's PodResources API by the node's publisher) names on the event's GPUs, and only those bound to the event's
node (the drain stage intersects with its own pod cache: a node's credential cannot name another node's pods). It
falls back to the whole node, saying why, whenever that is not known to be enough: no GPU named, a remediation that
acts on the whole node (a reboot takes every GPU's pods with it), or no readable mapping.

The node stays schedulable (tainted PreferNoSchedule instead of cordoned) only where the kubelet already advertises
fewer allocatable GPUs than it has: the device plugin has withdrawn the bad one, so no new pod can be given it.
Otherwise the node is cordoned as in the node scope, and still only the faulty GPUs' pods are evicted.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from nvsentinel.policy.handoff import STRATEGY_ANNOTATION
from nvsentinel.policy.healthevent import DrainScope, HealthEvent, PodRef
from nvsentinel.xid import Action

__all__ = ["DrainScope", "GpuScope", "Fallback", "NODE_WIDE_ACTIONS", "NODE_WIDE_STRATEGIES", "gpu_scope", "refusal",
           "leaves_node_schedulable", "parse_quantity_int"]

#: Recommended actions whose remediation takes the whole node down: the node's every pod must go first.
NODE_WIDE_ACTIONS = frozenset({Action.RESTART_VM, Action.RESTART_BM, Action.REPLACE_VM})
#: Strategy annotation values that act on the whole node.
NODE_WIDE_STRATEGIES = frozenset({"reboot", "terminate"})
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


@dataclasses.dataclass(frozen=True, slots=True)
class GpuScope:
    """The drain of one event, GPU-scoped: its GPUs and the pods the mapping names on them."""

    gpus: tuple[str, ...]
    pods: tuple[PodRef, ...]
    resource_name: str = DEFAULT_GPU_RESOURCE


class Fallback(enum.StrEnum):
    """Why a GPU-scoped drain takes the whole node: the `fallback` label of the drain's scope metric (bounded)."""

    NONE = "none"                          # no fallback: the scope asked for is the scope drained
    NO_GPU = "no-gpu"                      # the event names no GPU
    NODE_WIDE_ACTION = "node-wide-action"  # its remediation (reboot, replace) takes every GPU's pods anyway
    NO_MAPPING = "no-mapping"              # the publisher recorded no pod mapping
    MAPPING_ERROR = "mapping-error"        # the publisher could not read the mapping


def refusal(event: HealthEvent) -> tuple[Fallback, str]:
    """Why the GPU scope cannot apply to `event` (kind, and the words for the status), or (NONE, "")."""
    if not event.gpu_uuids:
        return Fallback.NO_GPU, "the event names no GPU"
    named = (event.annotations.get(STRATEGY_ANNOTATION) or "").strip().lower()
    if named in NODE_WIDE_STRATEGIES:
        return Fallback.NODE_WIDE_ACTION, f"remediation strategy {named} acts on the whole node"
    if not named and event.spec.recommended_action in NODE_WIDE_ACTIONS:
        return Fallback.NODE_WIDE_ACTION, f"recommended action {event.spec.recommended_action} acts on the whole node"
    mapping = event.spec.pod_mapping
    if mapping is None:
        return Fallback.NO_MAPPING, "the event records no pod mapping (the publisher reads the kubelet's " \
                                    "PodResources API only with --pod-resources-socket)"
    if mapping.error:
        return Fallback.MAPPING_ERROR, f"the pod mapping could not be read: {mapping.error[:200]}"
    return Fallback.NONE, ""


def gpu_scope(event: HealthEvent, scope: str) -> tuple[GpuScope | None, str]:
    """(the GPU scope, "") when it applies to `event`; (None, why not) when the drain must take the whole node
    ("" as the reason when the configured scope is the node's)."""
    if scope != DrainScope.GPU:
        return None, ""
    kind, why = refusal(event)
    if kind is not Fallback.NONE:
        return None, why
    mapping = event.spec.pod_mapping
    assert mapping is not None
    wanted = set(event.gpu_uuids)
    pods = tuple(p for p in mapping.pods if wanted & set(p.devices))
    return GpuScope(event.gpu_uuids, pods, mapping.resource_name or DEFAULT_GPU_RESOURCE), ""


def parse_quantity_int(raw: Any) -> int | None:
    """A whole-number resource quantity ("8"); None for anything else (GPUs are counted in whole devices)."""
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return None


def leaves_node_schedulable(node: Mapping[str, Any], resource: str = DEFAULT_GPU_RESOURCE) -> bool:
    """Whether the node may stay schedulable: its allocatable GPUs are fewer than its capacity (the device plugin
    withdrew the bad GPU), so the scheduler cannot hand the faulty GPU to a new pod."""
    status = node.get("status") or {}
    capacity = parse_quantity_int((status.get("capacity") or {}).get(resource))
    allocatable = parse_quantity_int((status.get("allocatable") or {}).get(resource))
    return capacity is not None and allocatable is not None and 0 <= allocatable < capacity
