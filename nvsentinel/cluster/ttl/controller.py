"""The TTL reconciler: one key ("cleanup"), run every cleanupInterval, deleting what `policy` chose.

The policy is re-read from the informer's copy of the ConfigMap on every pass (and a change enqueues
a pass at once); a bad policy is logged and announced once per ConfigMap version, and the last good
one stays in force. Deletes carry the uid precondition, so an event deleted and re-created under
the same name between the cache read and the delete is never the one removed.
"""
from __future__ import annotations

import logging
from typing import Any

from nvsentinel.cluster import caches
from nvsentinel.cluster.ttl.config import TTLConfig
from nvsentinel.k8s import KubeConflict, KubeNotFound
from nvsentinel.k8s.resources import CONFIGMAPS, HEALTHEVENTS
from nvsentinel.k8s.runtime.controller import ControllerContext, Result
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.policy import ttl as pol
from nvsentinel.policy.healthevent import Phase

logger = logging.getLogger(__name__)

__all__ = ["TTLController", "ACTIONS", "KEY"]

ACTIONS = ("delete", "dry-run-delete")
KEY = "cleanup"
_PHASES = frozenset(str(p) for p in Phase)


class TTLController:
    """The `ttl` stage of the chain (SPEC §7)."""

    name = "ttl"

    def __init__(self, config: TTLConfig | None = None) -> None:
        self.config = config or TTLConfig()
        self.policy = pol.Policy()
        self._policy_rv: str | None = None          # ConfigMap version the policy was last read from
        self._open_over: tuple[str, ...] = ()       # last warning about open events over a bound
        self._dry_run_seen: set[str] = set()        # dry-run counts each event once, not every pass
        self._phases: dict[str, str] = {}           # event → its phase, as counted in healthevents{phase}
        self._events: Informer
        self._configmaps: Informer

    def setup(self, ctx: ControllerContext) -> None:
        cfg = self.config
        ctx.metrics.declare_actions(ACTIONS)
        self._g_events = ctx.metrics.gauge("events_total", "HealthEvents in the TTL controller's cache")
        self._g_phases = ctx.metrics.gauge("healthevents", "HealthEvents in the TTL controller's cache, by phase",
                                           ["phase"])
        for phase in Phase:
            self._g_phases.labels(phase=str(phase)).set(0)
        self._events = caches.healthevents(ctx, cfg.event_selector, by_node=False)
        self._configmaps = ctx.informer(CONFIGMAPS, namespace=ctx.namespace,
                                        field_selector=f"metadata.name={cfg.policy_configmap}")

        def on_event(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            self._g_events.set(len(self._events))
            self._count_phase(etype, obj)

        def on_policy(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            if etype != "SYNC":
                ctx.queue.add(KEY)  # a new interval or TTL applies now, not after the old interval

        self._events.add_handler(on_event)
        self._configmaps.add_handler(on_policy)
        ctx.queue.add(KEY)  # the first pass, as soon as this replica leads

    def _count_phase(self, etype: str, obj: dict[str, Any]) -> None:
        """Keep healthevents{phase} in step with the cache, one change at a time (no pass over the cache)."""
        name = obj["metadata"]["name"]
        was = self._phases.pop(name, None)
        if was is not None:
            self._g_phases.labels(phase=was).dec()
        if etype == "DELETED":
            return
        phase = str((obj.get("status") or {}).get("phase") or Phase.NEW)
        if phase in _PHASES:
            self._phases[name] = phase
            self._g_phases.labels(phase=phase).inc()

    async def reconcile(self, key: str, ctx: ControllerContext) -> Result | None:
        if key != KEY:
            return None
        await self._load_policy(ctx)
        policy = self.policy
        self._g_events.set(len(self._events))
        items = []
        for obj in self._events.list():
            try:
                items.append(pol.item_from_obj(obj))
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("HealthEvent unreadable; skipped by TTL", extra={"kv": {
                    "healthevent": (obj.get("metadata") or {}).get("name"), "error": str(exc)[:200]}})
        plan = pol.plan_cleanup(items, policy, ctx.now())
        deleted = 0
        for d in plan.deletions:
            if await self._delete(d, ctx):
                deleted += 1
        if plan.deletions:
            logger.info("ttl pass" if not ctx.dry_run else "dry-run: ttl pass", extra={"kv": {
                "deleted": deleted, "chosen": len(plan.deletions), "cached": len(items),
                "retention_s": policy.retention, "dry_run": ctx.dry_run}})
        await self._warn_open_over(plan.open_over, ctx)
        return Result(requeue_after=policy.cleanup_interval)

    async def _delete(self, d: pol.Deletion, ctx: ControllerContext) -> bool:
        kv = {"healthevent": d.name, "reason": d.reason}
        if ctx.dry_run:
            if d.name not in self._dry_run_seen:
                self._dry_run_seen.add(d.name)
                ctx.metrics.actions.labels(action="dry-run-delete").inc()
                logger.info("dry-run: healthevent would be deleted", extra={"kv": kv})
            return False
        try:
            await ctx.kube.delete(HEALTHEVENTS, d.name, uid=d.uid or None)
        except KubeNotFound:
            return False  # already gone
        except KubeConflict:
            logger.info("healthevent replaced since read; not deleted", extra={"kv": kv})
            return False
        ctx.metrics.actions.labels(action="delete").inc()
        logger.info("healthevent deleted", extra={"kv": kv})
        return True

    async def _warn_open_over(self, open_over: tuple[str, ...], ctx: ControllerContext) -> None:
        if open_over == self._open_over:
            return  # said once per change, not every pass
        self._open_over = open_over
        if not open_over:
            return
        message = "open HealthEvents exceed the retention bound; none deleted: " + "; ".join(open_over)
        logger.warning("open events over retention bound", extra={"kv": {"detail": "; ".join(open_over)}})
        cm = self._configmaps.get(self.config.policy_configmap, ctx.namespace)
        if cm is not None:
            await ctx.recorder.event(cm, "Warning", "OpenEventsOverBound", message)

    async def _load_policy(self, ctx: ControllerContext) -> None:
        cm = self._configmaps.get(self.config.policy_configmap, ctx.namespace)
        rv = None if cm is None else str(cm["metadata"].get("resourceVersion"))
        if rv == self._policy_rv:
            return
        self._policy_rv = rv
        if cm is None:
            self.policy = pol.Policy()
            logger.info("policy ConfigMap absent; default retention", extra={"kv": {
                "configmap": self.config.policy_configmap, "namespace": ctx.namespace}})
            return
        try:
            new = pol.parse_policy(cm.get("data"))
        except pol.PolicyError as exc:
            logger.warning("policy ConfigMap invalid; keeping the last good policy", extra={"kv": {
                "configmap": self.config.policy_configmap, "error": str(exc)[:500]}})
            await ctx.recorder.event(cm, "Warning", "InvalidPolicy",
                                     f"kept the last good retention policy: {exc}")
            return
        if new != self.policy:
            logger.info("policy loaded", extra={"kv": {
                "ttl_s": new.ttl_after_resolved, "mode": new.retention_mode, "compliance_s": new.compliance_retention,
                "batch": new.batch_size, "interval_s": new.cleanup_interval,
                "max_per_node": new.max_events_per_node, "max_total": new.max_total_events}})
        self.policy = new
