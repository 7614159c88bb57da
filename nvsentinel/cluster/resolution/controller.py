"""The resolution reconciler: key = node name; resolves the node's answered events, then releases the node.

It also closes what an operator rejected (`nvsentinel reject`: Cancelled, `Rejected`) and the events handed to an
external repairer whose Node was replaced (another UID under its name: `NodeReplaced`) or deleted (`NodeDeleted`).

Level-triggered and idempotent: status patches and the Node patch each carry the resourceVersion they
were computed from (a 409 raises, the runtime retries on fresh caches). Events are resolved before the
Node is touched, so a crash in between leaves them Resolved and the rerun only releases the Node.

The Node is never released on the strength of a stale event cache alone: every event the ownership
annotation names that the cache lacks is read from the server first (a fault created a moment ago
must keep its node cordoned).
"""
from __future__ import annotations

import logging
from typing import Any

from nvsentinel.cluster import caches
from nvsentinel.cluster.indexes import BY_NODE
from nvsentinel.cluster.ownership import ownership_of
from nvsentinel.cluster.resolution import logic
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.k8s import KubeNotFound
from nvsentinel.k8s.resources import HEALTHEVENTS, NODES
from nvsentinel.k8s.runtime.controller import ControllerContext, Result, read_event
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.k8s.runtime.metrics import DETECTION_BUCKETS
from nvsentinel.k8s.runtime.status import write_status
from nvsentinel.policy.evidence import age
from nvsentinel.policy.healthevent import ConditionType, HealthEvent, HealthEventStatus, Phase

logger = logging.getLogger(__name__)

__all__ = ["ResolutionController", "ACTIONS"]

#: Every value of the actions_total{action} label, pre-initialised to 0 so dashboards see them.
ACTIONS = ("resolve", "uncordon", "remove-taint", "operator-uncordon", "cancel-node-gone", "cancel-rejected",
           "resolve-node-replaced", "resolve-node-deleted", "dry-run-resolve", "dry-run-uncordon",
           "dry-run-remove-taint", "dry-run-cancel-node-gone", "dry-run-cancel-rejected")
#: The Resolved condition's reasons this stage writes: the `reason` of time_to_resolve_seconds, each declared at 0.
RESOLVED_REASONS = ("HealthyEventReceived", "NodeTerminated", logic.NODE_REPLACED, logic.NODE_DELETED)


class ResolutionController:
    """The `resolution` stage of the chain (SPEC §7)."""

    name = "resolution"

    def __init__(self, config: ResolutionConfig | None = None) -> None:
        self.config = config or ResolutionConfig()
        self._events: Informer
        self._nodes: Informer
        self._dry_released: dict[str, str] = {}  # node → resourceVersion a dry-run release was announced for

    # ---- wiring -----------------------------------------------------------------------------------
    def setup(self, ctx: ControllerContext) -> None:
        cfg = self.config
        ctx.metrics.declare_actions(ACTIONS)
        self._h_resolved = ctx.metrics.histogram(
            "time_to_resolve_seconds", "Seconds from a fault's detection to its event's phase Resolved (once per "
            "event), by the Resolved condition's reason", ["reason"], buckets=DETECTION_BUCKETS)
        for reason in RESOLVED_REASONS:
            self._h_resolved.labels(reason=reason)
        self._events = caches.healthevents(ctx, cfg.event_selector)
        self._nodes = caches.nodes(ctx, cfg.node_selector)

        def on_event(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            node = (obj.get("spec") or {}).get("nodeName")
            if node:
                ctx.queue.add(str(node))

        def on_node(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            if etype == "DELETED":
                self._dry_released.pop(obj["metadata"]["name"], None)
            ctx.queue.add(obj["metadata"]["name"])  # deleted too: a terminated node's events resolve

        self._events.add_handler(on_event)
        self._nodes.add_handler(on_node)

    # ---- reconcile --------------------------------------------------------------------------------
    async def reconcile(self, key: str, ctx: ControllerContext) -> Result | None:
        now = ctx.now()
        events = self._node_events(key, ctx)
        cfg = self.config
        closed = await self._reject(key, events, ctx, now)
        resolutions = logic.plan_resolutions(events, skew=cfg.skew, nodewide=cfg.resolve_nodewide_healthy)
        for res in resolutions:
            await self._write(res.fatal, logic.resolved_status(res, now, dry_run=ctx.dry_run), ctx,
                              action="dry-run-resolve" if ctx.dry_run else "resolve")
        closed |= {r.fatal.name for r in resolutions}

        node = self._nodes.get(key)
        if node is None:
            return await self._node_gone(key, [e for e in events if e.name not in closed], ctx, now)
        uid = str(node["metadata"].get("uid") or "")
        closed |= await self._replaced(key, [e for e in events if e.name not in closed], uid, ctx, now)
        open_fatal = [e for e in events if logic.is_open_fatal(e) and e.name not in closed]
        try:
            own = ownership_of(node)
        except ValueError:
            own = None
        if own is None:
            return None
        known = {e.name for e in events}
        for name in own.events:  # named by the quarantine stage but not (yet) in our cache
            if name in known:
                continue
            try:
                ev = HealthEvent.from_dict(await ctx.kube.get(HEALTHEVENTS, name))
            except KubeNotFound:
                continue  # deleted (TTL, operator): it holds nothing any more
            if logic.is_open_fatal(ev) and not logic.is_rejected(ev) and not any(
                    logic.answers(r.healthy, ev, skew=cfg.skew, nodewide=cfg.resolve_nodewide_healthy)
                    for r in resolutions):
                open_fatal.append(ev)

        if logic.operator_uncordoned(node, len(open_fatal)):
            changed = False
            for ev in open_fatal:
                if ev.name in known:
                    changed |= await self._write(ev, logic.operator_uncordon_status(ev, key, now), ctx,
                                                 action="operator-uncordon")
            if changed:
                logger.info("node uncordoned by an operator; not fought", extra={"kv": {
                    "node": key, "open": ",".join(e.name for e in open_fatal)}})
                await ctx.recorder.event(node, "Normal", "UncordonedByOperator",
                                         f"node {key} uncordoned by an operator with {len(open_fatal)} unresolved "
                                         f"fatal HealthEvent(s); {logic.ACTOR} leaves it schedulable")
            return None

        release = logic.plan_release(node, len(open_fatal), self.config)
        if release is None:
            return None
        rv = str(node["metadata"].get("resourceVersion"))
        if ctx.dry_run and self._dry_released.get(key) == rv:
            return None  # announced already for this very Node state
        written = await ctx.kube.patch(NODES, key, release.patch, dry_run=ctx.dry_run)
        if not ctx.dry_run:
            ctx.observe_write(NODES, written, rv)
        if ctx.dry_run:
            self._dry_released[key] = rv
        action = ("dry-run-" if ctx.dry_run else "") + release.action
        reason = ("DryRun" if ctx.dry_run else "") + release.reason
        message = ("dry-run: would have: " if ctx.dry_run else "") + release.message
        ctx.metrics.actions.labels(action=action).inc()
        logger.info("node released", extra={"kv": {"node": key, "reason": reason, "dry_run": ctx.dry_run}})
        await ctx.recorder.event(node, "Normal", reason, message)
        return None

    async def _node_gone(self, node: str, events: list[HealthEvent], ctx: ControllerContext,
                         now: Any) -> Result | None:
        """The Node is not in our cache. Once the server confirms it is gone (404), events remediated by deleting
        it resolve (`NodeTerminated`), events handed off resolve at once (`NodeDeleted`: they were quarantined, so
        their Node existed), and every other open event is cancelled (`NodeGone`) after the grace; otherwise every
        stage would requeue them forever. Comes back when the oldest waiting one's grace ends."""
        terminated = [e for e in events if logic.node_terminated(e)]
        external = [e for e in events if logic.handed_off(e)]
        grace = self.config.node_gone_grace
        gone = logic.node_gone_events(events, now, grace)
        closing = {e.name for e in gone}
        waiting = [e for e in events if not e.status.phase.terminal and not logic.node_terminated(e)
                   and not logic.handed_off(e) and e.name not in closing]
        later = None
        if waiting:
            first = min((e.creation_timestamp or e.spec.detected_at) for e in waiting)
            later = Result(requeue_after=max(grace - (now - first).total_seconds(), 0.0) + 0.5)
        if not terminated and not gone and not external:
            return later  # nothing to close yet: no request until the grace ends
        try:
            current = await ctx.kube.get(NODES, node)
        except KubeNotFound:
            current = None
        if current is not None:
            # our cache is behind (or a selector hides it): not gone, but maybe another Node under the same name
            await self._replaced(node, external, str((current.get("metadata") or {}).get("uid") or ""), ctx, now)
            return None
        for ev in external:
            if await self._write(ev, logic.deleted_status(ev, now, dry_run=ctx.dry_run), ctx,
                                 action="dry-run-resolve" if ctx.dry_run else "resolve-node-deleted"):
                logger.info("handed-off healthevent resolved: node deleted", extra={"kv": {
                    "node": node, "healthevent": ev.name}})
        for ev in terminated:
            await self._write(ev, logic.terminated_status(ev, now), ctx,
                              action="dry-run-resolve" if ctx.dry_run else "resolve")
        for ev in gone:
            if await self._write(ev, logic.node_gone_status(ev, now, dry_run=ctx.dry_run), ctx,
                                 action="dry-run-cancel-node-gone" if ctx.dry_run else "cancel-node-gone"):
                logger.info("healthevent cancelled: node gone", extra={"kv": {
                    "node": node, "healthevent": ev.name, "phase": str(ev.status.phase), "dry_run": ctx.dry_run}})
        return later

    async def _reject(self, node: str, events: list[HealthEvent], ctx: ControllerContext, now: Any) -> set[str]:
        """Close the events an operator rejected (Cancelled, `Rejected`); their names."""
        closed = set()
        for ev in logic.rejected_events(events):
            if await self._write(ev, logic.rejected_status(ev, now, dry_run=ctx.dry_run), ctx,
                                 action="dry-run-cancel-rejected" if ctx.dry_run else "cancel-rejected"):
                logger.info("healthevent rejected by an operator", extra={"kv": {
                    "node": node, "healthevent": ev.name, "phase": str(ev.status.phase), "dry_run": ctx.dry_run}})
            closed.add(ev.name)  # dry-run too: as a resolution, it counts as closed for the would-be release
        return closed

    async def _replaced(self, node: str, events: list[HealthEvent], uid: str, ctx: ControllerContext,
                        now: Any) -> set[str]:
        """Resolve the handed-off events quarantined on another Node object than the one now named `node`
        (`NodeReplaced`); their names. The new Node carries none of our marks: nothing is released on it."""
        closed = set()
        for ev in logic.replaced_events(events, uid):
            if await self._write(ev, logic.replaced_status(ev, uid, now, dry_run=ctx.dry_run), ctx,
                                 action="dry-run-resolve" if ctx.dry_run else "resolve-node-replaced"):
                logger.info("handed-off healthevent resolved: node replaced", extra={"kv": {
                    "node": node, "healthevent": ev.name, "old_uid": ev.status.node_uid, "new_uid": uid,
                    "dry_run": ctx.dry_run}})
            closed.add(ev.name)
        return closed

    def _node_events(self, node: str, ctx: ControllerContext) -> list[HealthEvent]:
        out = []
        for obj in self._events.by_index(BY_NODE, node):
            event = read_event(obj, ctx)
            if event is not None:
                out.append(event)
        return out

    async def _write(self, event: HealthEvent, status: HealthEventStatus, ctx: ControllerContext, *,
                     action: str) -> bool:
        """Write the status; whether it was a new decision (counted and announced once)."""
        decided = (await write_status(ctx, event, status, action=action)).decided
        if decided and event.status.phase is not Phase.RESOLVED and status.phase is Phase.RESOLVED:
            cond = status.condition(ConditionType.RESOLVED)
            self._h_resolved.labels(reason=cond.reason if cond else "").observe(
                max(age(event, ctx.now(), self.config.skew).total_seconds(), 0.0))
        return decided
