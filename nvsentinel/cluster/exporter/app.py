"""`nvsentinel exporter` as a library call: watch HealthEvents, and while leading, send each phase
transition to the sink, in order per event, and checkpoint what was sent.

Every replica keeps the informer warm; only the leader sends. Becoming leader reads the checkpoint
and sweeps every cached event (what it proves beyond the checkpointed phase is queued); after that,
each watch event queues what it adds. Health: /healthz and /livez 200 while the process runs,
/readyz 200 once the informer synced. /metrics on its own port.
"""
from __future__ import annotations

import logging
from typing import Any

import anyio
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.exporter.checkpoint import CheckpointStore
from nvsentinel.cluster.exporter.config import ExporterSettings
from nvsentinel.cluster.exporter.dispatcher import Dispatcher, ExporterMetrics
from nvsentinel.cluster.exporter.logic import PHASE_RANK, Transition, pending_transitions
from nvsentinel.cluster.exporter.sender import Sender
from nvsentinel.k8s import AsyncKube, Kube, KubeError
from nvsentinel.k8s.resources import HEALTHEVENTS
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.k8s.runtime.leader import LeaderElectionConfig, LeaderElector, default_identity
from nvsentinel.policy.healthevent import HealthEvent, Phase
from nvsentinel.service.http import serve_until_signalled

logger = logging.getLogger(__name__)

__all__ = ["Exporter", "run"]


class Exporter:
    def __init__(self, settings: ExporterSettings, kube: AsyncKube, sender: Sender,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ExporterMetrics(self.registry)
        self.informer = Informer(kube.lane("informers", threads=8), HEALTHEVENTS, resync_period=settings.resync_period,
                                 **({"label_selector": settings.event_selector} if settings.event_selector else {}))
        self.store = CheckpointStore(kube.lane("checkpoint", threads=2), settings.namespace,
                                     settings.checkpoint_configmap)
        self.elector = None
        if settings.leader_elect:
            self.elector = LeaderElector(kube.lane("leader", threads=2), LeaderElectionConfig(
                namespace=settings.namespace, name=settings.lease_name, identity=settings.identity or default_identity(),
                lease_duration=settings.lease_duration, renew_deadline=settings.renew_deadline,
                retry_period=settings.retry_period), on_change=self._on_leader_change)
        self.dispatcher = Dispatcher(sender.send, self.metrics, concurrency=settings.concurrency,
                                     backoff_initial=settings.retry_backoff, backoff_max=settings.max_retry_backoff,
                                     poison_retries=settings.poison_retries, on_done=self._sent)
        self.exported: dict[str, Phase] = {}   # uid → last phase sent (what the checkpoint holds)
        self._planned: dict[str, int] = {}      # uid → highest rank sent or queued
        self._deleted: set[str] = set()         # gone from the API: drop from the checkpoint once sent
        self._dirty = False
        self._leading = False
        self._stop = anyio.Event()
        self.informer.add_handler(self._on_event)

    @property
    def ready(self) -> bool:
        return self.informer.synced

    def stop(self) -> None:
        self._stop.set()

    def _on_leader_change(self, leading: bool) -> None:
        self.metrics.is_leader.set(1 if leading else 0)

    # -- what to send ------------------------------------------------------------------------------------
    def _on_event(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if not self._leading:
            return
        if etype == "DELETED":
            self._forget(str((obj.get("metadata") or {}).get("uid") or ""))
        else:
            self._observe(obj)

    def _observe(self, obj: dict[str, Any]) -> None:
        try:
            event = HealthEvent.from_dict(obj)
        except (KeyError, TypeError, ValueError) as exc:
            self.metrics.dropped.labels(reason="unreadable").inc()
            logger.warning("HealthEvent unreadable; not exported", extra={"kv": {
                "healthevent": (obj.get("metadata") or {}).get("name"), "error": str(exc)[:200]}})
            return
        if not event.uid:
            return
        after = self._planned.get(event.uid, -1)
        for tr in pending_transitions(event, after, self.settings.cluster_name):
            self._planned[event.uid] = tr.rank
            self.dispatcher.put(tr)

    def _sent(self, tr: Transition) -> None:
        self.exported[tr.uid] = tr.phase
        if tr.uid in self._deleted and not self.dispatcher.pending(tr.uid):
            self._drop(tr.uid)
        self._dirty = True

    def _forget(self, uid: str) -> None:
        """The event was deleted: what is queued for it still goes; then it leaves the checkpoint."""
        if not uid:
            return
        if self.dispatcher.pending(uid):
            self._deleted.add(uid)
        elif uid in self.exported or uid in self._planned:
            self._drop(uid)
            self._dirty = True

    def _drop(self, uid: str) -> None:
        self.exported.pop(uid, None)
        self._planned.pop(uid, None)
        self._deleted.discard(uid)

    # -- leading -----------------------------------------------------------------------------------------
    async def lead(self) -> None:
        """Send until stopped (or leadership is lost: the elector cancels this)."""
        self.exported = await self._load()
        self._planned = {uid: PHASE_RANK[p] for uid, p in self.exported.items()}
        live = {str(o["metadata"].get("uid")) for o in self.informer.list()}
        gone = [uid for uid in self.exported if uid not in live]
        for uid in gone:
            self._drop(uid)
        self._dirty = bool(gone)
        self._leading = True
        for obj in self.informer.list():
            self._observe(obj)
        logger.info("exporter leading", extra={"kv": {
            "events": len(live), "checkpointed": len(self.exported), "pruned": len(gone),
            "queued": len(self.dispatcher)}})
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.dispatcher.run)
                tg.start_soon(self._checkpoint_loop)
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            self._leading = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._save()
            self.dispatcher.clear()
            self._deleted.clear()

    async def _load(self) -> dict[str, Phase]:
        while True:
            try:
                return await self.store.load()
            except KubeError as exc:  # without it, everything would go again: wait for it
                logger.warning("checkpoint unreadable; retrying", extra={"kv": {"error": str(exc)[:200]}})
                await anyio.sleep(1.0)

    async def _checkpoint_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.checkpoint_interval)
            await self._save()

    async def _save(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        snapshot = dict(self.exported)
        try:
            await self.store.save(snapshot)
        except KubeError as exc:
            self._dirty = True
            self.metrics.checkpoint_writes.labels(result="failed").inc()
            logger.warning("checkpoint write failed; will retry", extra={"kv": {"error": str(exc)[:200]}})
            return
        self.metrics.checkpoint_writes.labels(result="ok").inc()
        self.metrics.checkpoint_entries.set(len(snapshot))

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.informer.run)
            await self.informer.wait_synced()
            logger.info("informer synced", extra={"kv": {"healthevents": len(self.informer)}})
            if self.elector is not None:
                await self.elector.run(self.lead)
            else:
                self._on_leader_change(True)
                await self.lead()
            tg.cancel_scope.cancel()


async def run(settings: ExporterSettings, kube: Kube) -> int:
    sender = Sender(settings.sink, settings.cluster_name, connections=settings.concurrency, timeout=settings.timeout,
                    ca_file=settings.ca_file)
    exporter = Exporter(settings, AsyncKube(kube), sender)
    try:
        await serve_until_signalled(
            "exporter", exporter.run, exporter.stop, bind_address=settings.bind_address,
            health_port=settings.health_port, metrics_port=settings.metrics_port, ready=lambda: exporter.ready,
            registry=exporter.registry, kv={
                "sink": settings.sink, "cluster": settings.cluster_name, "namespace": settings.namespace,
                "leader_elect": settings.leader_elect, "concurrency": settings.concurrency, "server": kube.host})
    finally:
        sender.close()
    return 0
