"""`nvsentinel describe healthevent NAME`: one HealthEvent as kubectl describe shows it, with its Events."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from nvsentinel.cli.args import HEALTHEVENT_ALIASES, healthevent_not_found
from nvsentinel.k8s.connect import add_kube_arguments, with_kube

if TYPE_CHECKING:
    from nvsentinel.k8s import Kube


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("describe", help="show one HealthEvent in detail, with its Kubernetes Events")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    aliases = ["healthevents", *(a for a in HEALTHEVENT_ALIASES if a != "healthevent")]
    he = kinds.add_parser("healthevent", aliases=aliases, help="describe one HealthEvent")
    he.add_argument("name", help="the HealthEvent's name")
    add_kube_arguments(he)
    he.set_defaults(func=run)


def event_selector(name: str, kind: str = "HealthEvent") -> str:
    return f"involvedObject.name={name},involvedObject.kind={kind}"


def related_events(kube: Kube, obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The Events about this HealthEvent, in every namespace (a cluster-scoped object's land in "default"),
    and the Events on its Node that name it (the controllers announce cordon, reboot Job and uncordon there).

    Events left by an earlier object of the same name are dropped by UID, as kubectl does.
    """
    from nvsentinel.k8s.resources import EVENTS

    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    items, _ = kube.list(EVENTS, field_selector=event_selector(name))
    uid = meta.get("uid")
    out = [e for e in items if not uid or (e.get("involvedObject") or {}).get("uid") in (None, "", uid)]
    node = str((obj.get("spec") or {}).get("nodeName") or "")
    if node:
        on_node, _ = kube.list(EVENTS, field_selector=event_selector(node, "Node"))
        out += [e for e in on_node if f"HealthEvent {name})" in str(e.get("message", ""))]
    return out


def run(args: argparse.Namespace) -> int:
    from nvsentinel.cli.views import display
    from nvsentinel.policy.healthevent import utcnow
    from nvsentinel.k8s import Forbidden
    from nvsentinel.k8s.resources import HEALTHEVENTS
    from nvsentinel.service.sanitize import printable

    def body(kube: Kube) -> int:
        obj = kube.get(HEALTHEVENTS, args.name)
        try:
            events = related_events(kube, obj)
        except Forbidden as exc:  # the object is still worth showing without its Events
            print(f"warning: cannot list events: {' '.join(printable(exc, 500).split())}", file=sys.stderr)
            events = []
        print(display.describe(obj, events, utcnow()))
        return 0

    return with_kube(args, body, not_found=lambda exc: healthevent_not_found(exc, args.name))
