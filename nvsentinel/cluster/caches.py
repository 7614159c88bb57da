"""The informers the stages share, made one way: the same selector, cache shape and indexes.

A process running several stages keeps one cache of each resource only when every stage asks for it
with the same arguments (`Manager.informer` keys on them); making them here keeps it so.
"""
from __future__ import annotations

from nvsentinel.cluster.indexes import BY_NODE, event_node, slim_node
from nvsentinel.k8s.resources import HEALTHEVENTS, NODES
from nvsentinel.k8s.runtime.controller import ControllerContext
from nvsentinel.k8s.runtime.informer import Informer

__all__ = ["healthevents", "nodes"]


def healthevents(ctx: ControllerContext, selector: str, *, by_node: bool = True) -> Informer:
    """The HealthEvents `selector` picks (empty: all), indexed by node unless the stage never asks."""
    inf = ctx.informer(HEALTHEVENTS, **({"label_selector": selector} if selector else {}))
    if by_node:
        inf.add_index(BY_NODE, event_node)
    return inf


def nodes(ctx: ControllerContext, selector: str) -> Informer:
    """The Nodes `selector` picks (empty: all), in the slim shape every stage reads."""
    return ctx.informer(NODES, transform=slim_node, **({"label_selector": selector} if selector else {}))
