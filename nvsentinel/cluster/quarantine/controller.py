"""The quarantine reconciler: reads an event and its Node from the informers, decides, acts, records.

Key = HealthEvent name. Each reconcile is level-triggered and idempotent: the Node patch and the
status patch both carry the resourceVersion they were computed from (a 409 raises, the runtime
retries on fresh caches), and a rerun after a crash between the two finds the Node already as wanted
(its ownership annotation names the event), so it only writes the status. Nothing is done twice and
no cordon is counted twice: the breaker counts nodes, not events.

Breaker decisions are serialized by one lock and cost log time at any fleet size: the cordons the
breaker counts live in a `CordonLedger` kept up to date by the Node informer's handler (with the GPU
node count), plus the cordons this process decided but the Node informer does not show yet
(`_recent`), so concurrent workers cannot overshoot the limit. The Node patch's answer goes into the
shared cache at once (`observe_write`).
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from typing import Any

import anyio

from nvsentinel.cluster import caches
from nvsentinel.cluster.indexes import BY_NODE
from nvsentinel.cluster.quarantine import logic
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.k8s import AlreadyExists, KubeConflict, KubeNotFound
from nvsentinel.k8s.resources import CONFIGMAPS, NODES
from nvsentinel.k8s.runtime.controller import ControllerContext, Result, read_event
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.k8s.runtime.metrics import DETECTION_BUCKETS
from nvsentinel.k8s.runtime.status import write_outcome
from nvsentinel.policy.breaker import BreakerPolicy, BreakerState, CordonLedger, Verdict, evaluate
from nvsentinel.policy.evidence import age
from nvsentinel.policy.healthevent import ConditionType, HealthEvent, Phase, RemediationMode

logger = logging.getLogger(__name__)

__all__ = ["QuarantineController", "ACTIONS"]

#: Every value of the actions_total{action} label, pre-initialised to 0 so dashboards see them.
ACTIONS = ("cordon", "already-cordoned", "add-event", "taint-gpu-scope", "hold", "cancel", "resolve-nonfatal", "dry-run-cordon",
           "dry-run-cancel", "dry-run-resolve-nonfatal")
_OPEN_PHASES = frozenset({Phase.NEW, Phase.QUARANTINED})


class QuarantineController:
    """The `quarantine` stage of the chain (SPEC §7)."""

    name = "quarantine"

    def __init__(self, config: QuarantineConfig | None = None) -> None:
        self.config = config or QuarantineConfig()
        self.policy = BreakerPolicy(self.config.breaker_percent, self.config.breaker_max_nodes,
                                    self.config.breaker_window)
        self._lock: anyio.Lock | None = None
        self._recent: dict[str, _dt.datetime] = {}   # node → when this process decided to cordon it (not seen yet)
        self._ledger = CordonLedger()                 # node → since, of every cordon the breaker counts
        self._annotations: dict[str, str] = {}        # node → ownership annotation text the ledger was read from
        self._gpu_nodes: set[str] = set()
        self._held: set[str] = set()                  # events waiting for the breaker
        self._cordoning = 0                           # allowed new cordons not yet recorded
        self._cordons_done: anyio.Event | None = None
        self._state: BreakerState | None = None       # last known breaker state (None: read the ConfigMap)
        self._state_rv: str | None = None
        self._state_read_at = 0.0                     # time.monotonic() of the last ConfigMap read
        self._read_server = False                     # the next load reads the server, not the informer
        self._events: Informer
        self._nodes: Informer
        self._configmaps: Informer

    # ---- wiring -----------------------------------------------------------------------------------
    def setup(self, ctx: ControllerContext) -> None:
        cfg = self.config
        ctx.metrics.declare_actions(ACTIONS)
        self._g_tripped = ctx.metrics.gauge("breaker_tripped", "1 while the quarantine circuit breaker is open")
        self._g_counted = ctx.metrics.gauge("breaker_cordoned_nodes",
                                            "Nodes nvsentinel cordoned within the breaker window")
        self._g_limit = ctx.metrics.gauge("breaker_limit", "Nodes nvsentinel may cordon within the breaker window")
        self._h_quarantined = ctx.metrics.histogram(
            "time_to_quarantine_seconds", "Seconds from a fault's detection to its event's phase Quarantined (once "
            "per event)", buckets=DETECTION_BUCKETS)
        self._events = caches.healthevents(ctx, cfg.event_selector)
        self._nodes = caches.nodes(ctx, cfg.node_selector)
        self._configmaps = ctx.informer(CONFIGMAPS, namespace=ctx.namespace,
                                        field_selector=f"metadata.name={cfg.breaker_configmap}")

        def on_event(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            name = obj["metadata"]["name"]
            if etype == "DELETED":
                self._held.discard(name)
                return
            phase = (obj.get("status") or {}).get("phase") or Phase.NEW
            if phase in _OPEN_PHASES:
                ctx.queue.add(name)

        def on_node(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            self._track_node(etype, obj)
            if etype != "ADDED":
                return
            node = obj["metadata"]["name"]  # events that waited for this Node (NodeNotFound) go now
            for ev in self._events.by_index(BY_NODE, node):
                if ((ev.get("status") or {}).get("phase") or "New") == Phase.NEW:
                    ctx.queue.add(ev["metadata"]["name"])

        def on_breaker(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            self._state = None  # re-read before the next decision: an operator may have reset it
            stored = BreakerState() if etype == "DELETED" else BreakerState.from_data(obj.get("data"))
            # the gauge is right after a restart too, before any event needs the breaker
            self._g_tripped.set(1 if stored.effective(ctx.now(), self.policy.window).tripped else 0)
            for key in sorted(self._held):
                ctx.queue.add(key)

        self._events.add_handler(on_event)
        self._nodes.add_handler(on_node)
        self._configmaps.add_handler(on_breaker)

    def _track_node(self, etype: str, obj: dict[str, Any]) -> None:
        """Keep the ledger and the GPU node count in step with the Node cache (per change, not per decision)."""
        name = obj["metadata"]["name"]
        if etype == "DELETED":
            self._gpu_nodes.discard(name)
            self._annotations.pop(name, None)
            self._recent.pop(name, None)
            self._ledger.set(name, None)
            return
        if logic.is_gpu_node(obj):
            self._gpu_nodes.add(name)
        else:
            self._gpu_nodes.discard(name)
        text = ((obj.get("metadata") or {}).get("annotations") or {}).get(logic.ANNOTATION) or ""
        if self._annotations.get(name) == text and name not in self._recent:
            return
        self._annotations[name] = text
        try:
            own = logic.ownership_of(obj)
        except ValueError:
            own = None
        if own is not None and own.counted:
            self._recent.pop(name, None)  # the cache shows our cordon now
            self._ledger.set(name, own.since)
        else:
            self._ledger.set(name, self._recent.get(name))

    # ---- reconcile --------------------------------------------------------------------------------
    async def reconcile(self, key: str, ctx: ControllerContext) -> Result | None:
        obj = self._events.get(key)
        if obj is None:
            self._held.discard(key)
            return None
        event = read_event(obj, ctx)
        if event is None:
            return None
        now = ctx.now()
        rule = logic.triage(event)
        if rule is logic.Triage.IGNORE:
            self._held.discard(key)
            return None
        cordoning = False
        mode: RemediationMode | None = None
        try:
            if rule is logic.Triage.CANCEL:
                outcome = logic.cancel_outcome(event, dry_run=ctx.dry_run)
            elif rule is logic.Triage.RESOLVE:
                outcome = logic.resolve_outcome(event, dry_run=ctx.dry_run)
            else:
                outcome, cordoning, mode = await self._quarantine(event, obj, ctx, now)
            if outcome.reason.endswith("CircuitBreakerOpen"):
                self._held.add(key)
                await self._after_cordons()
            else:
                self._held.discard(key)
            await self._record(event, obj, outcome, ctx, now, mode)
        finally:
            if cordoning:
                self._cordon_recorded()
        return Result(requeue_after=outcome.requeue_after) if outcome.requeue_after is not None else None

    def _cordon_recorded(self) -> None:
        self._cordoning -= 1
        if not self._cordoning and self._cordons_done is not None:
            self._cordons_done.set()
            self._cordons_done = None

    async def _after_cordons(self) -> None:
        """Cordon first: a hold's status write waits (bounded) for the cordons the breaker allowed before
        it. In a burst, 950 hold writes otherwise compete with the last of the 50 cordons at the server."""
        with anyio.move_on_after(self.config.hold_requeue):
            while self._cordoning:
                self._cordons_done = self._cordons_done or anyio.Event()
                await self._cordons_done.wait()

    async def _quarantine(self, event: HealthEvent, obj: dict[str, Any], ctx: ControllerContext,
                          now: _dt.datetime) -> tuple[logic.Outcome, bool, RemediationMode | None]:
        """The outcome, whether this is a new cordon the breaker allowed (counted in `_cordoning`
        from the decision on; the caller uncounts it once recorded), and who remediates the node."""
        cfg = self.config
        node_name = event.spec.node_name
        node = self._nodes.get(node_name)
        if node is None:
            return logic.node_missing_outcome(event, cfg, dry_run=ctx.dry_run), False, None
        mode = logic.decide_mode(node, cfg)
        how = {"mode": mode, "gpu_scoped": logic.wants_gpu_scope(event, node, cfg, mode),
               "recommend": logic.recommendation_entry(event)}
        plan = logic.plan_node(node, event.name, now=now, cfg=cfg, **how)
        note = ""
        cordoning = False
        if plan.new_cordon:
            force = event.spec.overrides.quarantine.force
            verdict = await self._breaker(node_name, obj, ctx, now, force)
            if not verdict.allowed:
                return logic.hold_outcome(event, verdict.message, cfg, dry_run=ctx.dry_run), False, None
            self._cordoning += 1
            cordoning = True
            note = verdict.message if verdict.forced else ""
            # the same `since` as the breaker recorded, on this try and on any retry of it
            plan = logic.plan_node(node, event.name, now=self._recent.get(node_name, now), cfg=cfg, **how)
        try:
            if plan.patch is not None:
                written = await ctx.kube.patch(NODES, node_name, plan.patch, dry_run=ctx.dry_run)
                if not ctx.dry_run:
                    ctx.observe_write(NODES, written, str(node["metadata"].get("resourceVersion", "")))
                logger.info("node quarantined" if not ctx.dry_run else "dry-run: node would be quarantined",
                            extra={"kv": {"node": node_name, "healthevent": event.name, "reason": plan.reason,
                                          "events": ",".join(plan.ownership.events), "mode": plan.ownership.mode,
                                          "scope": plan.ownership.scope}})
        except BaseException:
            if cordoning:  # the caller never sees it: uncount here
                self._cordon_recorded()
            raise
        return (logic.quarantined_outcome(event, plan, cfg, dry_run=ctx.dry_run, breaker_note=note), cordoning,
                RemediationMode(plan.ownership.mode))

    # ---- breaker ----------------------------------------------------------------------------------
    async def _breaker(self, node_name: str, event_obj: dict[str, Any], ctx: ControllerContext,
                       now: _dt.datetime, force: bool) -> Verdict:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            state = await self._load_state(ctx)
            horizon = now - _dt.timedelta(seconds=self.policy.window)
            for n in [n for n, t in self._recent.items() if t <= horizon]:
                del self._recent[n]
                self._annotations.pop(n, None)
                cached = self._nodes.get(n)
                if cached is not None:
                    self._track_node("SYNC", cached)
                else:
                    self._ledger.set(n, None)
            verdict = evaluate(self.policy, state, node=node_name, cordons=self._ledger,
                               gpu_nodes=len(self._gpu_nodes), now=now, force=force)
            if verdict.changed:
                await self._save_state(verdict.state, ctx)
            if verdict.allowed and not verdict.already_counted:
                self._recent[node_name] = now
                self._ledger.set(node_name, now)
            self._g_tripped.set(1 if verdict.state.tripped else 0)
            self._g_counted.set(verdict.counted)
            self._g_limit.set(verdict.limit)
            if verdict.tripped_now:
                logger.warning("circuit breaker tripped", extra={"kv": {
                    "node": node_name, "counted": verdict.counted, "limit": verdict.limit,
                    "gpu_nodes": verdict.gpu_nodes, "dry_run": ctx.dry_run}})
                reason = "DryRunCircuitBreakerTripped" if ctx.dry_run else "CircuitBreakerTripped"
                await ctx.recorder.event(event_obj, "Warning", reason, verdict.message)
            elif verdict.changed and not verdict.state.tripped:
                logger.info("circuit breaker closed", extra={"kv": {"reason": verdict.state.reason}})
            return verdict

    async def _load_state(self, ctx: ControllerContext) -> BreakerState:
        """The breaker state: kept, and taken again from the ConfigMap informer when the ConfigMap changed.

        The server is read only while tripped (every --hold-requeue, to see an operator's reset even on a
        stalled watch) and after a write of ours lost a race: a burst's first decision does not wait,
        holding the breaker lock, for a read the synced informer already answers.
        """
        if self._state is None and not self._read_server:
            cm = self._configmaps.get(self.config.breaker_configmap, ctx.namespace)
            self._state = BreakerState.from_data(cm.get("data")) if cm is not None else BreakerState()
            self._state_rv = str(cm["metadata"]["resourceVersion"]) if cm is not None else None
            self._state_read_at = time.monotonic()
        stale = self._state is None or (
            self._state.tripped and time.monotonic() - self._state_read_at >= self.config.hold_requeue)
        if stale and not (ctx.dry_run and self._state is not None):
            self._read_server = False
            try:
                cm = await ctx.kube.get(CONFIGMAPS, self.config.breaker_configmap, ctx.namespace)
                self._state = BreakerState.from_data(cm.get("data"))
                self._state_rv = str(cm["metadata"]["resourceVersion"])
            except KubeNotFound:
                self._state = BreakerState()
                self._state_rv = None
            self._state_read_at = time.monotonic()
        assert self._state is not None
        return self._state

    async def _save_state(self, state: BreakerState, ctx: ControllerContext) -> None:
        """Persist a trip (or a window close) in the ConfigMap; dry-run keeps it in memory only."""
        if ctx.dry_run:
            self._state = state
            return
        data = {**state.to_data(), "percent": f"{self.policy.percent:g}", "maxNodes": str(self.policy.max_nodes),
                "windowSeconds": f"{self.policy.window:g}"}
        name, ns = self.config.breaker_configmap, ctx.namespace
        try:
            if self._state_rv is None:
                out = await ctx.kube.create(CONFIGMAPS, {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": ns,
                                 "labels": {"app.kubernetes.io/managed-by": "nvsentinel"}},
                    "data": data}, ns)
            else:
                out = await ctx.kube.patch(CONFIGMAPS, name, {
                    "metadata": {"resourceVersion": self._state_rv}, "data": data}, ns)
        except (AlreadyExists, KubeConflict, KubeNotFound):
            self._state = None  # someone else wrote it (an operator reset?): decide again on the server's state
            self._read_server = True
            raise
        self._state = state
        self._state_rv = str(out["metadata"]["resourceVersion"])
        self._state_read_at = time.monotonic()

    # ---- status -----------------------------------------------------------------------------------
    async def _record(self, event: HealthEvent, obj: dict[str, Any], outcome: logic.Outcome,
                      ctx: ControllerContext, now: _dt.datetime, mode: RemediationMode | None = None) -> None:
        # the breaker's own Event says CircuitBreakerOpen once per trip; NodeNotFound is in the status
        quiet = outcome.reason.endswith(("CircuitBreakerOpen", "NodeNotFound"))
        # a held event's message moves with the breaker's count: re-written only with a new decision (at
        # 1 000 held events a refresh per hold re-check would be 200 writes/s; `breaker status` is live)
        if mode is not None:
            node = self._nodes.get(event.spec.node_name) or {}
            status = logic.quarantined_status(event, outcome, now, mode=mode,
                                              node_uid=str((node.get("metadata") or {}).get("uid") or ""))
        else:
            status = logic.apply_outcome(event, outcome, now)
        written = await write_outcome(ctx, event, status, outcome, obj=obj,
                                      quiet=quiet, refresh=not outcome.reason.endswith("CircuitBreakerOpen"))
        if written.decided and event.status.phase is not Phase.QUARANTINED and status.phase is Phase.QUARANTINED:
            self._h_quarantined.observe(max(age(event, now).total_seconds(), 0.0))
        if written.decided and not quiet and outcome.condition_type == ConditionType.NODE_QUARANTINED and \
                outcome.phase in (Phase.QUARANTINED, Phase.NEW) and not outcome.reason.endswith("SkippedByOverride"):
            node = self._nodes.get(event.spec.node_name)
            if node is not None:
                await ctx.recorder.event(node, "Normal", outcome.reason,
                                         f"{outcome.message} (HealthEvent {event.name})")

