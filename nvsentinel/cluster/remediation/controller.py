"""The remediation reconciler: key = HealthEvent name; Drained → Remediating → Remediated.

Level-triggered: the reboot Jobs (fixed names per attempt, labelled, owned by the event) and the
events' own status are the whole record, read from informers. The status patch carries the
resourceVersion it was computed from (a 409 raises and the runtime retries on fresh caches) and is
written before the action it announces, so a crash in between makes the rerun repeat the action, which
is idempotent: a Job create answers 409, a Node delete carries a UID precondition.
"""
from __future__ import annotations

import datetime as _dt
import logging
from typing import Any

from nvsentinel.cluster import caches
from nvsentinel.cluster.indexes import BY_EVENT, BY_NODE, job_event
from nvsentinel.cluster.remediation import logic
from nvsentinel.cluster.remediation.config import RemediationConfig
from nvsentinel.k8s import AlreadyExists, Forbidden, Invalid, KubeNotFound
from nvsentinel.k8s.resources import JOBS, NODES
from nvsentinel.k8s.runtime.controller import ControllerContext, Result, read_event
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.k8s.runtime.metrics import DETECTION_BUCKETS
from nvsentinel.k8s.runtime.status import write_outcome
from nvsentinel.policy.evidence import age, is_stale
from nvsentinel.policy.healthevent import HealthEvent, Phase

logger = logging.getLogger(__name__)

__all__ = ["RemediationController", "ACTIONS"]

#: Every value of the actions_total{action} label, pre-initialised to 0 so dashboards see them.
ACTIONS = ("reboot", "reboot-succeeded", "reboot-failed", "terminate", "gpu-reset-requested",
           "gpu-reset-verified", "manual", "none", "escalate", "remediation-failed", "remediated-with",
           "stale-evidence", "fault-cleared", "awaiting-approval", "dry-run")
_LIVE = frozenset({Phase.DRAINED, Phase.REMEDIATING})


class RemediationController:
    """The `remediation` stage of the chain (SPEC §7)."""

    name = "remediation"

    def __init__(self, config: RemediationConfig | None = None) -> None:
        self.config = config or RemediationConfig()
        self._events: Informer
        self._jobs: Informer
        self._nodes: Informer
        self._running: set[str] = set()

    # ---- wiring -----------------------------------------------------------------------------------
    def setup(self, ctx: ControllerContext) -> None:
        cfg = self.config
        ctx.metrics.declare_actions(ACTIONS)
        self._g_running = ctx.metrics.gauge("in_progress", "HealthEvents in phase Remediating")
        self._g_running.set(0)
        self._h_remediated = ctx.metrics.histogram(
            "time_to_remediate_seconds", "Seconds from a fault's detection to its event's phase Remediated (once per "
            "event)", buckets=DETECTION_BUCKETS)
        self._events = caches.healthevents(ctx, cfg.event_selector)
        self._nodes = caches.nodes(ctx, cfg.node_selector)
        self._jobs = ctx.informer(JOBS, namespace=cfg.namespace,
                                  label_selector=",".join(f"{k}={v}" for k, v in logic.JOB_LABELS.items()))
        self._jobs.add_index(BY_EVENT, job_event)

        def on_event(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            name = obj["metadata"]["name"]
            if etype == "DELETED":
                self._set_running(name, False)
                return
            spec = obj.get("spec") or {}
            if spec.get("isHealthy"):
                # a healthy event may be the verification a gpu-reset waits for
                for ev in self._events.by_index(BY_NODE, str(spec.get("nodeName") or "")):
                    if (ev.get("status") or {}).get("phase") == Phase.REMEDIATING:
                        ctx.queue.add(ev["metadata"]["name"])
                return
            if ((obj.get("status") or {}).get("phase") or Phase.NEW) in _LIVE:
                ctx.queue.add(name)
            # a fault that changes may be what another event of the node waits for (a remediation ending, fresh
            # evidence): judge those again now, not at the next poll
            for ev in self._events.by_index(BY_NODE, str(spec.get("nodeName") or "")):
                status = ev.get("status") or {}
                if ev["metadata"]["name"] != name and status.get("phase") == Phase.DRAINED and any(
                        c.get("type") == logic.CONDITION and c.get("reason") in logic.WAITING_REASONS
                        for c in status.get("conditions") or ()):
                    ctx.queue.add(ev["metadata"]["name"])

        def on_job(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            event = job_event(obj)
            if event:
                ctx.queue.add(event)

        self._events.add_handler(on_event)
        self._jobs.add_handler(on_job)

    def _set_running(self, key: str, running: bool) -> None:
        if running:
            self._running.add(key)
        else:
            self._running.discard(key)
        self._g_running.set(len(self._running))

    # ---- reconcile --------------------------------------------------------------------------------
    async def reconcile(self, key: str, ctx: ControllerContext) -> Result | None:
        obj = self._events.get(key)
        if obj is None:
            self._set_running(key, False)
            return None
        event = read_event(obj, ctx)
        if event is None:
            return None
        rule = logic.triage(event)
        self._set_running(key, event.status.phase is Phase.REMEDIATING)
        if rule is logic.Triage.IGNORE:
            return None
        node = self._nodes.get(event.spec.node_name)
        if self.config.node_selector and node is None and rule is logic.Triage.START:
            return None  # not a node this instance remediates (or gone: nothing to start on)
        now = ctx.now()
        outcome = await self._decide(event, rule, node, ctx, now)
        await self._record(event, obj, outcome, ctx, now)
        await self._act(event, outcome, node, ctx)
        self._set_running(key, outcome.phase is Phase.REMEDIATING)
        return Result(requeue_after=outcome.requeue_after) if outcome.requeue_after is not None else None

    def _node_events(self, node: str) -> list[HealthEvent]:
        out = []
        for obj in self._events.by_index(BY_NODE, node):
            try:
                out.append(HealthEvent.from_dict(obj))
            except (KeyError, TypeError, ValueError):
                continue  # counted by the reconcile that owns it
        return out

    async def _decide(self, event: HealthEvent, rule: logic.Triage, node: dict[str, Any] | None,
                      ctx: ControllerContext, now: _dt.datetime) -> logic.RemediationOutcome:
        cfg = self.config
        strategy, why = logic.choose_strategy(event)
        if rule is logic.Triage.FOLLOW:
            if strategy is logic.Strategy.GPU_RESET:
                return logic.gpu_reset_progress(event, self._node_events(event.spec.node_name), now, cfg)
            return logic.reboot_progress(event, self._attempts(event), now, cfg)
        if ctx.dry_run:
            return logic.dry_run_outcome(event, strategy, why)
        if strategy in logic.ACTING:
            waited = self._one_remediation(event, strategy, now)
            if waited is not None:
                return waited
        if strategy in logic.ACTING and cfg.escalation_threshold > 0:
            prior = logic.prior_remediations(event, self._node_events(event.spec.node_name), now,
                                             cfg.escalation_window)
            if len(prior) >= cfg.escalation_threshold:
                return logic.escalated_outcome(event, prior, cfg)
        if strategy in logic.ACTING:
            if logic.awaits_approval(event):
                return logic.awaiting_approval_outcome(event, strategy, why)
            return logic.approved_outcome(event, await self._start(event, strategy, node, ctx, now))
        return logic.held_outcome(event, strategy, why)

    async def _start(self, event: HealthEvent, strategy: logic.Strategy, node: dict[str, Any] | None,
                     ctx: ControllerContext, now: _dt.datetime) -> logic.RemediationOutcome:
        """The first step of an acting strategy (reboot, terminate, gpu-reset)."""
        if strategy is logic.Strategy.REBOOT:
            return logic.reboot_progress(event, self._attempts(event), now, self.config)
        if strategy is logic.Strategy.TERMINATE:
            if node is None:
                try:
                    node = await ctx.kube.get(NODES, event.spec.node_name)
                except KubeNotFound:
                    node = None
            return logic.terminate_outcome(event, node)
        return logic.gpu_reset_request_outcome(event)

    def _one_remediation(self, event: HealthEvent, strategy: logic.Strategy,
                         now: _dt.datetime) -> logic.RemediationOutcome | None:
        """One fault, one remediation: nothing for a fault that already cleared, wait for a contending one, count
        one that already fixed this fault, and never act on stale evidence alone (--max-event-age). None: go ahead."""
        cfg = self.config
        others = self._node_events(event.spec.node_name)
        cleared = logic.cleared_by(event, others)
        if cleared is not None:
            return logic.cleared_outcome(event, cleared, cfg)
        running = logic.remediation_in_progress(event, strategy, others, now=now, cfg=cfg)
        if running is not None:
            return logic.in_progress_outcome(event, running, cfg)
        by = logic.covered_by(event, strategy, others)
        if by is not None:
            return logic.covered_outcome(event, by)
        if is_stale(event, now, cfg.max_event_age) and not logic.stale_approved(event):
            return logic.stale_outcome(event, logic.fresh_evidence(event, others, now, cfg.max_event_age), now, cfg)
        return None

    def _attempts(self, event: HealthEvent) -> dict[int, dict[str, Any]]:
        return logic.attempts_of(event.name, self._jobs.by_index(BY_EVENT, event.name))  # type: ignore[return-value]

    # ---- actions ----------------------------------------------------------------------------------
    async def _act(self, event: HealthEvent, outcome: logic.RemediationOutcome, node: dict[str, Any] | None,
                   ctx: ControllerContext) -> None:
        if outcome.create_job is not None:
            body = logic.job_body(event, outcome.create_job, self.config)
            try:
                created = await ctx.kube.create(JOBS, body, self.config.namespace)
                ctx.observe_write(JOBS, created, None)  # the next reconcile sees this attempt, not none
            except AlreadyExists:
                return  # this attempt exists: never a second reboot
            except (Invalid, Forbidden) as exc:
                # a policy (PodSecurity, --allow-privileged) or RBAC refusal: say so, retry with backoff
                ctx.metrics.failures.labels(reason="RebootJobRefused").inc()
                await ctx.recorder.event(event.to_dict(), "Warning", "RebootJobRefused",
                                         f"the API server refused reboot Job {body['metadata']['name']}: "
                                         f"{str(exc)[:300]}")
                raise
            ctx.metrics.actions.labels(action="reboot").inc()
            logger.info("reboot job created", extra={"kv": {
                "healthevent": event.name, "node": event.spec.node_name, "attempt": outcome.create_job,
                "job": f"{self.config.namespace}/{body['metadata']['name']}"}})
            # on the Node, where operators look (the status says it on the HealthEvent)
            await ctx.recorder.event(node if node is not None else event.to_dict(), "Normal", outcome.reason,
                                     f"{outcome.message} (HealthEvent {event.name})")
        if outcome.delete_node and node is not None:
            try:
                await ctx.kube.delete(NODES, event.spec.node_name, uid=node["metadata"].get("uid"))
            except KubeNotFound:
                return
            logger.warning("node deleted for replacement", extra={"kv": {
                "healthevent": event.name, "node": event.spec.node_name,
                "provider_id": (node.get("spec") or {}).get("providerID")}})
            await ctx.recorder.event(node, "Warning", "NodeTerminated", outcome.message)

    # ---- status -----------------------------------------------------------------------------------
    async def _record(self, event: HealthEvent, obj: dict[str, Any], outcome: logic.RemediationOutcome,
                      ctx: ControllerContext, now: _dt.datetime) -> None:
        # a Job creation is announced once the Job exists; a message-only refresh ("created" → "running",
        # a backoff's countdown) is not worth a write of its own: the next decision carries it
        status = logic.apply_outcome(event, outcome, now)
        written = await write_outcome(ctx, event, status, outcome, obj=obj,
                                      action="dry-run" if ctx.dry_run else None, quiet=outcome.create_job is not None,
                                      refresh=False)
        if written.decided and event.status.phase is not Phase.REMEDIATED and status.phase is Phase.REMEDIATED:
            self._h_remediated.observe(max(age(event, now).total_seconds(), 0.0))
        if written.decided and outcome.warning and outcome.phase is Phase.DRAINED:
            node = self._nodes.get(event.spec.node_name)
            if node is not None:  # a human is needed: say so where operators look first
                await ctx.recorder.event(node, "Warning", outcome.reason, outcome.message)
