"""The drain reconciler: evicts a quarantined node's pods through the Eviction API and waits for them.

Key = HealthEvent name. The node's pods come from the pods informer's cache, indexed by node; the
server is asked (one list) only when the cache cannot prove it has seen every pod bound before the
drain began. A list with a `spec.nodeName` field selector is a quorum read that makes a 1.20 API
server decode every pod of the cluster (21 ms of its CPU per list at 1 000 pods, a p50 of 2.6 s at
10 000), so it is the exception: the drain's snapshot grows from the cache until the pods watch has
passed the event's resourceVersion at drain start (written after the cordon), and the drain's own
evictions move that watch on. Only a node with no pod in the cache, on a pods watch that did not move,
costs the list. The cache is one watch's consistent timeline, so a pod of the snapshot that is absent
from it really was deleted: the cache can lag, never run ahead, and a lag only delays `Drained`. Pods
this drain evicted are remembered (UID), so one whose deletionTimestamp the cache has not shown yet is
not evicted again. A node's evictions run concurrently, at most `EVICT_CONCURRENCY` in flight over
all nodes.

The scope (`--drain-scope`, `logic.Scope`) is decided when the drain starts and kept with its snapshot; it only
ever widens (a strategy annotation added later that reboots the node turns a GPU-scoped drain into the node's).
GPU-scoped, the snapshot takes only the node's pods the event's mapping names: the intersection happens here,
with the pods indexed under the node, so a mapping naming another node's pod cannot reach it. The drain is
recorded in `status.drain` (scope, GPUs, pods, fallback reason) with each status write, and counted once, when
the event leaves Quarantined, in `scope_total{scope,fallback}`.

The status patch carries the resourceVersion it was computed from (a 409 raises, the runtime
retries), and its answer goes into the shared cache at once (`write_status`). The drain's snapshot
(key → UID) lives in memory; a new leader takes it afresh from the pods still there, which only
narrows it to pods not yet gone.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import anyio
from prometheus_client import Counter

from nvsentinel.cluster import caches
from nvsentinel.cluster.drain import logic
from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.k8s import KubeNotFound, TooManyRequests
from nvsentinel.k8s.resources import PODS
from nvsentinel.k8s.runtime.controller import ControllerContext, Result, read_event
from nvsentinel.k8s.runtime.informer import Informer, resource_version_int
from nvsentinel.k8s.runtime.metrics import DETECTION_BUCKETS
from nvsentinel.k8s.runtime.status import write_outcome
from nvsentinel.policy.evidence import age
from nvsentinel.policy.healthevent import DrainRecord, HealthEvent, Phase

logger = logging.getLogger(__name__)

__all__ = ["DrainController", "ACTIONS", "EVICT_CONCURRENCY", "PROGRESS_INTERVAL"]

#: Every value of the actions_total{action} label, pre-initialised to 0 so dashboards see them.
ACTIONS = ("evict", "evict-blocked", "drained", "force-delete", "skip")
_OPEN = frozenset({Phase.QUARANTINED, Phase.DRAINING})
#: Evictions in flight at once, over all nodes: a node's evictions run side by side, but they must
#: leave the drain's client lane (32 threads at 16 workers) room for its status writes. 16 against 8:
#: a 1 000-node burst Drained 2.6 s sooner (p50) on the 2-core bench machine, whose API server is the
#: bottleneck from there on (bench/RESULTS.md).
EVICT_CONCURRENCY = 16
#: Seconds between two progress-only status writes of one event (the pods-left count moved, nothing
#: was decided): every pod change wakes the event, and a write per change doubled the drain's patches;
#: at 1 s a 1 000-node burst still wrote 0.6 extra patches per node.
PROGRESS_INTERVAL = 5.0


class DrainController:
    """The `drain` stage of the chain (SPEC §7)."""

    name = "drain"

    def __init__(self, config: DrainConfig | None = None) -> None:
        self.config = config or DrainConfig()
        self._snapshots: dict[str, dict[logic.PodKey, dict[str, Any]]] = {}  # event → pods to see gone
        self._scopes: dict[str, logic.Scope] = {}                  # event → its drain's scope, from the start
        self._tracking: dict[str, str] = {}                        # event → node whose deletions it needs
        self._gone: defaultdict[str, set[str]] = defaultdict(set)  # tracked node → pod UIDs seen deleted
        self._pending: dict[str, int] = {}                         # event → pods left (gauge)
        self._evicted: dict[str, set[str]] = {}                    # event → pod UIDs this drain evicted
        self._start_rv: dict[str, int | None] = {}                 # event → its RV when the drain began
        self._complete: set[str] = set()                           # events whose snapshot holds every pod
        self._patched_at: dict[str, float] = {}                    # event → monotonic time of the last write
        self._evict_limiter: anyio.CapacityLimiter | None = None   # made on the event loop, at first use
        self._by_node: defaultdict[str, dict[logic.PodKey, dict[str, Any]]] = defaultdict(dict)  # pods cache index
        self._draining: defaultdict[str, set[str]] = defaultdict(set)  # node → names of its Draining events
        self._events: Informer
        self._pods: Informer
        self._nodes: Informer | None = None

    # ---- wiring -----------------------------------------------------------------------------------
    def setup(self, ctx: ControllerContext) -> None:
        cfg = self.config
        ctx.metrics.declare_actions(ACTIONS)
        self._g_pending = ctx.metrics.gauge("pods_pending", "Pods still to leave nodes being drained")
        self._h_drained = ctx.metrics.histogram(
            "time_to_drain_seconds", "Seconds from a fault's detection to its event's phase Drained (once per event)",
            buckets=DETECTION_BUCKETS)
        self._c_scope = Counter(f"{ctx.metrics.prefix}_scope_total", "Drains started, by the scope drained and why a "
                                "GPU scope fell back to the node", ["scope", "fallback"], registry=ctx.metrics.registry)
        for scope, fallback in logic.SCOPE_LABELS:
            self._c_scope.labels(scope=str(scope), fallback=str(fallback))
        self._events = caches.healthevents(ctx, cfg.event_selector, by_node=False)
        if cfg.node_selector:
            self._nodes = caches.nodes(ctx, cfg.node_selector)
        pods = self._pods = ctx.informer(PODS, transform=logic.slim_pod)

        def on_event(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            name = obj["metadata"]["name"]
            self._index_event(etype, obj, old)
            if etype == "DELETED":
                self._forget(name)
                return
            if ((obj.get("status") or {}).get("phase") or Phase.NEW) in _OPEN:
                ctx.queue.add(name)

        def on_pod(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            node = (obj.get("spec") or {}).get("nodeName")
            self._index_pod(etype, obj, old, node)
            if not node:
                return
            for name in self._draining.get(node, ()):
                ctx.queue.add(name)

        self._events.add_handler(on_event)
        pods.add_handler(on_pod)

    def _index_event(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Keep `_draining` (node → its Draining events) in step: a pod change wakes only those."""
        name = obj["metadata"]["name"]
        node = (obj.get("spec") or {}).get("nodeName") or ""
        old_node = ((old or {}).get("spec") or {}).get("nodeName") or ""
        for n in {node, old_node}:
            names = self._draining.get(n)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._draining[n]
        if etype != "DELETED" and node and (obj.get("status") or {}).get("phase") == Phase.DRAINING:
            self._draining[node].add(name)

    def _index_pod(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None, node: str | None) -> None:
        """Keep `_by_node` (node → pod key → pod) in step with the pods informer's cache."""
        key = logic.key_of(obj)
        old_node = ((old or {}).get("spec") or {}).get("nodeName")
        if old_node and old_node != node:
            self._drop_indexed(old_node, key)
        if etype == "DELETED":
            if node:
                self._drop_indexed(node, key)
                if node in self._gone:
                    self._gone[node].add(str(obj["metadata"].get("uid", "")))
        elif node:
            self._by_node[node][key] = obj

    def _drop_indexed(self, node: str, key: logic.PodKey) -> None:
        pods = self._by_node.get(node)
        if pods is not None:
            pods.pop(key, None)
            if not pods:
                del self._by_node[node]

    async def _list_pods(self, node: str, ctx: ControllerContext) -> list[dict[str, Any]]:
        pods, _ = await ctx.kube.list(PODS, field_selector=f"spec.nodeName={node}")
        return pods

    def _pods_on(self, node: str) -> list[dict[str, Any]]:
        return list(self._by_node.get(node, {}).values())

    def _track(self, key: str, node: str) -> None:
        """From now on, remember the node's pod deletions (before the start read is even sent)."""
        self._tracking[key] = node
        self._gone.setdefault(node, set())

    def _forget(self, key: str) -> None:
        self._snapshots.pop(key, None)
        self._scopes.pop(key, None)
        node = self._tracking.pop(key, None)
        if node is not None and node not in self._tracking.values():
            self._gone.pop(node, None)
        self._evicted.pop(key, None)
        self._start_rv.pop(key, None)
        self._complete.discard(key)
        self._patched_at.pop(key, None)
        if self._pending.pop(key, None) is not None:
            self._g_pending.set(sum(self._pending.values()))

    def _grow(self, key: str, snap: dict[logic.PodKey, dict[str, Any]], pods: list[dict[str, Any]], *,
              complete: bool = False) -> None:
        """Add the evictable pods (of the drain's scope) not in the snapshot yet; once the pods watch has passed
        the event's version at drain start (or the pods came from the server), the snapshot is complete."""
        fresh = complete
        if not fresh:
            start, seen = self._start_rv.get(key), resource_version_int(self._pods.resource_version)
            fresh = start is not None and seen is not None and seen >= start
        scope = self._scopes.get(key, logic.NODE_SCOPE)
        keep = logic.snapshot(pods, self.config.skip_namespaces, scope.keys)
        for p in pods:
            k = logic.key_of(p)
            if k in keep and k not in snap:
                snap[k] = p
        if fresh:
            self._complete.add(key)

    def _set_pending(self, key: str, n: int) -> None:
        self._pending[key] = n
        self._g_pending.set(sum(self._pending.values()))

    # ---- reconcile --------------------------------------------------------------------------------
    async def reconcile(self, key: str, ctx: ControllerContext) -> Result | None:
        obj = self._events.get(key)
        if obj is None:
            self._forget(key)
            return None
        event = read_event(obj, ctx)
        if event is None:
            return None
        rule = logic.triage(event)
        if rule is logic.Triage.IGNORE:
            self._forget(key)
            return None
        if self._nodes is not None and self._nodes.get(event.spec.node_name) is None:
            return None  # not a node this instance drains
        now = ctx.now()
        scope: logic.Scope | None = None
        record: DrainRecord | None = None
        if rule is logic.Triage.SKIP:
            self._forget(key)
            outcome = logic.skip_outcome(event)
        else:
            scope, outcome, record = await self._drain(event, ctx, now)
        await self._record(event, obj, outcome, ctx, now, scope=scope, record=record)
        return Result(requeue_after=outcome.requeue_after) if outcome.requeue_after is not None else None

    def _scope(self, event: HealthEvent) -> logic.Scope:
        """The drain's scope: the one it started with, unless the event now needs the whole node."""
        current = logic.scope_of(event, self.config)
        started = self._scopes.get(event.name)
        if started is None or (started.keys is not None and current.keys is None):
            if started is not None:  # widened: the node's other pods join the snapshot, seen from now on
                self._complete.discard(event.name)
                self._start_rv[event.name] = resource_version_int(event.resource_version)
            self._scopes[event.name] = current
            logger.info("drain scope", extra={"kv": {
                "node": event.spec.node_name, "healthevent": event.name, "scope": str(current.scope),
                "fallback": str(current.fallback), "gpus": ",".join(current.gpus[:8]),
                "mapped_pods": len(current.keys) if current.keys is not None else -1, "widened": started is not None}})
            return current
        return started

    async def _drain(self, event: HealthEvent, ctx: ControllerContext, now: _dt.datetime
                     ) -> tuple[logic.Scope, logic.Outcome, DrainRecord | None]:
        """One pass of the drain: its scope, the outcome, and `status.drain` to write with it."""
        cfg = self.config
        node = event.spec.node_name
        if ctx.dry_run:
            scope = logic.scope_of(event, cfg)
            pods = await self._list_pods(node, ctx)
            count = len(logic.snapshot(pods, cfg.skip_namespaces, scope.keys))
            return scope, logic.dry_run_outcome(event, count, scope=scope), None
        snap = self._snapshots.get(event.name)
        if snap is None:
            self._track(event.name, node)  # deletions count from here, before any read of the pods
            self._start_rv[event.name] = resource_version_int(event.resource_version)
            snap = self._snapshots[event.name] = {}
        scope = self._scope(event)
        if event.name not in self._complete:
            self._grow(event.name, snap, self._pods_on(node))
        left = logic.pending_seen(snap, self._pods_on(node), self._gone.get(node, ()))
        if not left and event.name not in self._complete:
            # nothing seen to wait for, and the cache cannot prove it saw every pod: ask the server once
            self._grow(event.name, snap, await self._list_pods(node, ctx), complete=True)
            left = logic.pending_seen(snap, self._pods_on(node), self._gone.get(node, ()))
        record = logic.drain_record(scope, snap, event.status.drain)
        if not left:
            self._forget(event.name)
            others = logic.others_left(self._pods_on(node), cfg.skip_namespaces, scope)
            return scope, logic.drained_outcome(event, len(snap), scope=scope, others=others), record
        self._set_pending(event.name, len(left))
        if logic.timed_out(logic.draining_since(event), now, cfg):
            if not cfg.drain_force_delete:
                return scope, logic.timeout_outcome(event, left, cfg, scope=scope), record
            await self._force_delete(event, left, ctx)
            return scope, logic.draining_outcome(event, left, {}, cfg, scope=scope), record
        evicted = self._evicted.setdefault(event.name, set())
        blocked: dict[logic.PodKey, str] = {}
        if self._evict_limiter is None:
            self._evict_limiter = anyio.CapacityLimiter(EVICT_CONCURRENCY)
        limiter = self._evict_limiter

        async def evict(pod: Mapping[str, Any]) -> None:
            ns, name = logic.key_of(pod)
            async with limiter:
                try:
                    await ctx.kube.create(PODS, logic.eviction_body(pod, cfg.drain_grace_period), ns,
                                          subresource_of=name, subresource="eviction")
                except TooManyRequests as exc:
                    blocked[(ns, name)] = logic.blocked_reason(str(exc), exc.body)
                    ctx.metrics.actions.labels(action="evict-blocked").inc()
                    return
                except KubeNotFound:
                    evicted.add(str(pod["metadata"].get("uid", "")))
                    return  # already gone
            evicted.add(str(pod["metadata"].get("uid", "")))
            ctx.metrics.actions.labels(action="evict").inc()
            logger.info("pod evicted", extra={"kv": {"pod": f"{ns}/{name}", "node": node,
                                                     "healthevent": event.name}})

        async with anyio.create_task_group() as tg:
            for pod in logic.to_evict(left):
                if str(pod["metadata"].get("uid", "")) not in evicted:
                    tg.start_soon(evict, pod)
        if blocked:
            logger.info("eviction blocked", extra={"kv": {"node": node, "healthevent": event.name,
                                                          "pods": ",".join("/".join(k) for k in sorted(blocked))}})
        return scope, logic.draining_outcome(event, left, blocked, cfg, scope=scope), record

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
                      ctx: ControllerContext, now: _dt.datetime, *, scope: logic.Scope | None = None,
                      record: DrainRecord | None = None) -> None:
        # progress (only the message moved) is written at most every PROGRESS_INTERVAL: the next pod
        # change or poll (requeue_after) writes it
        recent = time.monotonic() - self._patched_at.get(event.name, -math.inf) < PROGRESS_INTERVAL
        status = logic.drain_status(event, outcome, now, record)
        written = await write_outcome(ctx, event, status, outcome, obj=obj, refresh=not recent)
        if written.decided and event.status.phase is not Phase.DRAINED and status.phase is Phase.DRAINED:
            self._h_drained.observe(max(age(event, now).total_seconds(), 0.0))
        if written.obj is not None and status.phase is Phase.DRAINING:
            self._patched_at[event.name] = time.monotonic()
        if written.obj is not None and scope is not None and logic.starts_drain(event, status):
            self._c_scope.labels(scope=str(scope.scope), fallback=str(scope.fallback)).inc()
