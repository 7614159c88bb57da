"""What the stages' shared caches hold: their indexes (one function per name: the informers are
shared too) and the shape of a cached Node.

A stage asks "this node's HealthEvents" or "this event's reboot Jobs" through the indexes, in time
that does not grow with the fleet, instead of scanning every cached object on every event.
"""
from __future__ import annotations

from typing import Any

__all__ = ["BY_NODE", "BY_EVENT", "event_node", "job_event", "slim_node"]

#: HealthEvents by `spec.nodeName`.
BY_NODE = "node"
#: reboot Jobs by the HealthEvent their annotation names.
BY_EVENT = "healthevent"
#: The Job annotation naming its HealthEvent (set by the remediation stage).
JOB_EVENT_ANNOTATION = "nvsentinel.nvidia.com/healthevent"


def event_node(obj: dict[str, Any]) -> str | None:
    return (obj.get("spec") or {}).get("nodeName") or None


def job_event(obj: dict[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(JOB_EVENT_ANNOTATION) or None


#: Node status fields no stage reads that dominate a real Node's size (a GPU node's image list alone
#: is tens of kB); the rest of the Node is kept as the server sent it.
_UNREAD_NODE_STATUS = ("images", "volumesAttached", "volumesInUse")


def slim_node(node: dict[str, Any]) -> dict[str, Any]:
    status = node.get("status")
    if status:
        for key in _UNREAD_NODE_STATUS:
            status.pop(key, None)
    meta = node.get("metadata")
    if meta:
        meta.pop("managedFields", None)
    return node
