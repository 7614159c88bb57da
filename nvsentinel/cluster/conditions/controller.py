"""The conditions reconciler: key = node name; brings the Node's conditions of our types to what its events say.

Level-triggered and idempotent: the desired conditions are computed from the HealthEvent and Node caches, and a
strategic merge patch of nodes/status carrying only our condition types is sent when they differ (no
resourceVersion: the list is merged by `type`, so a concurrent writer of another condition is never overwritten,
and no stale read can undo theirs). The written Node goes into the shared cache at once (`observe_write`), so the
next reconcile sees our write and sends nothing.
"""
from __future__ import annotations

import logging
from typing import Any

from nvsentinel.cluster import caches
from nvsentinel.cluster.conditions import logic
from nvsentinel.cluster.conditions.config import NodeConditionsConfig
from nvsentinel.cluster.indexes import BY_NODE
from nvsentinel.k8s import KubeNotFound
from nvsentinel.k8s.resources import NODES
from nvsentinel.k8s.runtime.controller import ControllerContext, Result, read_event
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.policy.healthevent import HealthEvent

logger = logging.getLogger(__name__)

__all__ = ["NodeConditionsController", "ACTIONS"]

#: Every value of the actions_total{action} label, pre-initialised to 0 so dashboards see them.
ACTIONS = ("set-false", "set-true", "update", "mirror-false", "mirror-true", "mirror-update")


class NodeConditionsController:
    """The `conditions` stage of the chain (docs/integrations.md)."""

    name = "conditions"

    def __init__(self, config: NodeConditionsConfig | None = None) -> None:
        self.config = config or NodeConditionsConfig()
        self._events: Informer
        self._nodes: Informer
        self._unhealthy: set[str] = set()
        self._dry: dict[str, str] = {}  # node → resourceVersion a dry-run patch was announced for
        self._sent: dict[str, tuple[tuple[str, ...], ...]] = {}  # node → the conditions our last write set

    # ---- wiring -----------------------------------------------------------------------------------
    def setup(self, ctx: ControllerContext) -> None:
        cfg = self.config
        ctx.metrics.declare_actions(ACTIONS)
        self._gauge = ctx.metrics.gauge("unhealthy_nodes", f"Nodes whose {logic.CONDITION_TYPE} condition is False")
        self._events = caches.healthevents(ctx, cfg.event_selector)
        self._nodes = caches.nodes(ctx, cfg.node_selector)

        def on_event(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            node = (obj.get("spec") or {}).get("nodeName")
            if node:
                ctx.queue.add(str(node))

        def on_node(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            name = obj["metadata"]["name"]
            if etype == "DELETED":
                self._forget(name)
                return
            ctx.queue.add(name)  # another writer may have touched the conditions; a no-op when not

        self._events.add_handler(on_event)
        self._nodes.add_handler(on_node)

    def _forget(self, node: str) -> None:
        self._dry.pop(node, None)
        self._sent.pop(node, None)
        self._unhealthy.discard(node)
        self._gauge.set(len(self._unhealthy))

    # ---- reconcile --------------------------------------------------------------------------------
    async def reconcile(self, key: str, ctx: ControllerContext) -> Result | None:
        node = self._nodes.get(key)
        if node is None:
            self._forget(key)
            return None
        events = self._node_events(key, ctx)
        plan = logic.plan(node, events, self.config.node_condition_mirror, ctx.now())
        if plan.patch is not None and _signature(plan) == self._sent.get(key):
            # what our last write set, missing from the cache: another writer's patch (the quarantine's cordon)
            # overtook ours there. Read the Node itself before writing (and counting) the same thing twice.
            try:
                node = await ctx.kube.get(NODES, key)
            except KubeNotFound:
                self._forget(key)
                return None
            plan = logic.plan(node, events, self.config.node_condition_mirror, ctx.now())
        if plan.patch is None:
            self._track(key, plan.unhealthy)
            return None
        rv = str((node.get("metadata") or {}).get("resourceVersion") or "")
        if ctx.dry_run:
            if self._dry.get(key) != rv:
                self._dry[key] = rv
                logger.info("dry-run: node conditions would be written", extra={"kv": {
                    "node": key, "actions": ",".join(plan.actions)}})
            return None
        try:
            written = await ctx.kube.patch(NODES, key, plan.patch, subresource="status", kind="strategic")
        except KubeNotFound:
            self._forget(key)
            return None  # deleted meanwhile: nothing to describe
        ctx.observe_write(NODES, written, rv)
        self._sent[key] = _signature(plan)
        for action in plan.actions:
            ctx.metrics.actions.labels(action=action).inc()
        self._track(key, plan.unhealthy)
        conds = plan.patch["status"]["conditions"]
        logger.info("node conditions written", extra={"kv": {
            "node": key, "actions": ",".join(plan.actions),
            "conditions": ",".join(f"{c['type']}={c['status']}/{c['reason']}" for c in conds)}})
        if any(a in ("set-false", "set-true") for a in plan.actions):
            ours = next(c for c in conds if c["type"] == logic.CONDITION_TYPE)
            await ctx.recorder.event(node, "Normal" if ours["status"] == "True" else "Warning",
                                     f"{logic.CONDITION_TYPE}{ours['status']}", ours["message"])
        return None

    def _track(self, node: str, unhealthy: bool) -> None:
        if unhealthy:
            self._unhealthy.add(node)
        else:
            self._unhealthy.discard(node)
        self._gauge.set(len(self._unhealthy))

    def _node_events(self, node: str, ctx: ControllerContext) -> list[HealthEvent]:
        out = []
        for obj in self._events.by_index(BY_NODE, node):
            event = read_event(obj, ctx)
            if event is not None:
                out.append(event)
        return out


def _signature(plan: logic.NodePlan) -> tuple[tuple[str, ...], ...]:
    """The conditions a plan sets, without their times."""
    conds = (plan.patch or {}).get("status", {}).get("conditions", ())
    return tuple((c["type"], c["status"], c["reason"], c["message"]) for c in conds)
