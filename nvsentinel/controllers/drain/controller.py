"""The drain reconciler: evicts a quarantined node's pods through the Eviction API and waits for them.

Key = HealthEvent name. Pods are listed fresh per reconcile (field selector spec.nodeName), so a pod
just evicted is seen terminating and not evicted again; a pods informer only wakes the node's
draining events when their pods change. The status patch carries the resourceVersion it was computed
from (a 409 raises, the runtime retries). The drain's start snapshot (key → UID) lives in memory; a
new leader takes it afresh from the pods still there, which only narrows it to pods not yet gone.
"""
from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping
from typing import Any

from nvsentinel.controllers.drain import logic
from nvsentinel.controllers.drain.config import DrainConfig
from nvsentinel.controllers.runtime.controller import ControllerContext, Result
from nvsentinel.controllers.runtime.informer import Informer
from nvsentinel.healthevent.model import HealthEvent, Phase
from nvsentinel.k8s import KubeNotFound, TooManyRequests
from nvsentinel.k8s.resources import HEALTHEVENTS, NODES, PODS

logger = logging.getLogger(__name__)

__all__ = ["DrainController", "ACTIONS"]

#: Every value of the actions_total{action} label, pre-initialised to 0 so dashboards see them.
ACTIONS = ("evict", "evict-blocked", "drained", "force-delete", "skip")
_OPEN = frozenset({Phase.QUARANTINED, Phase.DRAINING})


class DrainController:
    """The `drain` stage of the chain (SPEC §7)."""

    name = "drain"

    def __init__(self, config: DrainConfig | None = None) -> None:
        self.config = config or DrainConfig()
        self._snapshots: dict[str, dict[logic.PodKey, str]] = {}   # event → pods to see gone
        self._pending: dict[str, int] = {}                         # event → pods left (gauge)
        self._events: Informer
        self._nodes: Informer | None = None

    # ---- wiring -----------------------------------------------------------------------------------
    def setup(self, ctx: ControllerContext) -> None:
        cfg = self.config
        for action in ACTIONS:
            ctx.metrics.actions.labels(action=action)
        self._g_pending = ctx.metrics.gauge("pods_pending", "Pods still to leave nodes being drained")
        ev_sel = {"label_selector": cfg.event_selector} if cfg.event_selector else {}
        self._events = ctx.informer(HEALTHEVENTS, **ev_sel)
        if cfg.node_selector:
            self._nodes = ctx.informer(NODES, label_selector=cfg.node_selector)
        pods = ctx.informer(PODS)

        def on_event(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            name = obj["metadata"]["name"]
            if etype == "DELETED":
                self._forget(name)
                return
            if ((obj.get("status") or {}).get("phase") or Phase.NEW) in _OPEN:
                ctx.queue.add(name)

        def on_pod(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            node = (obj.get("spec") or {}).get("nodeName")
            if not node:
                return
            for ev in self._events.list():
                if (ev.get("spec") or {}).get("nodeName") == node and \
                        (ev.get("status") or {}).get("phase") == Phase.DRAINING:
                    ctx.queue.add(ev["metadata"]["name"])

        self._events.add_handler(on_event)
        pods.add_handler(on_pod)

    def _forget(self, key: str) -> None:
        self._snapshots.pop(key, None)
        if self._pending.pop(key, None) is not None:
            self._g_pending.set(sum(self._pending.values()))

    def _set_pending(self, key: str, n: int) -> None:
        self._pending[key] = n
        self._g_pending.set(sum(self._pending.values()))

    # ---- reconcile --------------------------------------------------------------------------------
    async def reconcile(self, key: str, ctx: ControllerContext) -> Result | None:
        obj = self._events.get(key)
        if obj is None:
            self._forget(key)
            return None
        try:
            event = HealthEvent.from_dict(obj)
        except (KeyError, TypeError, ValueError) as exc:
            ctx.metrics.failures.labels(reason="InvalidHealthEvent").inc()
            logger.warning("HealthEvent unreadable; not retried", extra={"kv": {
                "healthevent": key, "error": str(exc)[:200]}})
            return None
        rule = logic.triage(event)
        if rule is logic.Triage.IGNORE:
            self._forget(key)
            return None
        if self._nodes is not None and self._nodes.get(event.spec.node_name) is None:
            return None  # not a node this instance drains
        now = ctx.now()
        if rule is logic.Triage.SKIP:
            self._forget(key)
            outcome = logic.skip_outcome(event)
        else:
            outcome = await self._drain(event, ctx, now)
        await self._record(event, obj, outcome, ctx, now)
        return Result(requeue_after=outcome.requeue_after) if outcome.requeue_after is not None else None

    async def _drain(self, event: HealthEvent, ctx: ControllerContext, now: _dt.datetime) -> logic.Outcome:
        cfg = self.config
        node = event.spec.node_name
        pods, _ = await ctx.kube.list(PODS, field_selector=f"spec.nodeName={node}")
        if ctx.dry_run:
            return logic.dry_run_outcome(event, len(logic.snapshot(pods, cfg.skip_namespaces)))
        snap = self._snapshots.get(event.name)
        if snap is None:
            snap = self._snapshots[event.name] = logic.snapshot(pods, cfg.skip_namespaces)
        left = logic.pending(snap, pods)
        if not left:
            self._forget(event.name)
            return logic.drained_outcome(event, len(snap))
        self._set_pending(event.name, len(left))
        if logic.timed_out(logic.draining_since(event), now, cfg):
            if not cfg.drain_force_delete:
                return logic.timeout_outcome(event, left, cfg)
            await self._force_delete(event, left, ctx)
            return logic.draining_outcome(event, left, {}, cfg)
        blocked: dict[logic.PodKey, str] = {}
        for pod in logic.to_evict(left):
            ns, name = logic.key_of(pod)
            try:
                await ctx.kube.create(PODS, logic.eviction_body(pod, cfg.drain_grace_period), ns,
                                      subresource_of=name, subresource="eviction")
            except TooManyRequests as exc:
                blocked[(ns, name)] = logic.blocked_reason(str(exc), exc.body)
                ctx.metrics.actions.labels(action="evict-blocked").inc()
                continue
            except KubeNotFound:
                continue  # already gone
            ctx.metrics.actions.labels(action="evict").inc()
            logger.info("pod evicted", extra={"kv": {"pod": f"{ns}/{name}", "node": node,
                                                     "healthevent": event.name}})
        if blocked:
            logger.info("eviction blocked", extra={"kv": {"node": node, "healthevent": event.name,
                                                          "pods": ",".join("/".join(k) for k in sorted(blocked))}})
        return logic.draining_outcome(event, left, blocked, cfg)

    async def _force_delete(self, event: HealthEvent, left: list[Mapping[str, Any]], ctx: ControllerContext) -> None:
        """Past the timeout with --drain-force-delete: grace 0, with a UID precondition (never a replacement)."""
        for pod in left:
            ns, name = logic.key_of(pod)
            try:
                await ctx.kube.delete(PODS, name, ns, grace_period_seconds=0, uid=pod["metadata"]["uid"])
            except KubeNotFound:
                continue
            ctx.metrics.actions.labels(action="force-delete").inc()
            logger.warning("pod force-deleted after drain timeout", extra={"kv": {
                "pod": f"{ns}/{name}", "node": event.spec.node_name, "healthevent": event.name}})

    # ---- status -----------------------------------------------------------------------------------
    async def _record(self, event: HealthEvent, obj: dict[str, Any], outcome: logic.Outcome,
                      ctx: ControllerContext, now: _dt.datetime) -> None:
        status = logic.apply_outcome(event, outcome, now)
        if status.to_dict() == event.status.to_dict():
            return
        await ctx.kube.patch(HEALTHEVENTS, event.name, {
            "metadata": {"resourceVersion": event.resource_version}, "status": status.to_dict()},
            subresource="status")
        if logic.same_decision(event.status, status):
            return
        if outcome.action:
            ctx.metrics.actions.labels(action=outcome.action).inc()
        logger.info("healthevent drain decided", extra={"kv": {
            "healthevent": event.name, "node": event.spec.node_name, "phase": str(status.phase),
            "reason": outcome.reason, "dry_run": ctx.dry_run}})
        await ctx.recorder.event(obj, "Warning" if outcome.warning else "Normal", outcome.reason, outcome.message)
