"""Manager: runs the shared informers, elects a leader, and gives each controller its workers.

Informers run on every replica (a standby keeps warm caches, so a takeover acts at once); only
the leader's workers reconcile. Becoming leader enqueues every cached object (a full level-
triggered sweep), so nothing a previous leader left half-done is forgotten. Shutdown: stop
taking keys, let running reconciles finish (bounded), send the queued Kubernetes Events (bounded),
release the lease.

Every controller talks to the API server on its own client lane (`AsyncKube.lane`: own rate budget,
own threads), as do the informers, the leader elector and the Event recorder: the quarantine stage's
cordons never wait behind the drain's evictions, a lease renewal never waits behind a burst, and an
Event never waits in front of anything.
"""
from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from prometheus_client import CollectorRegistry

from nvsentinel.k8s import AsyncKube, KubeConflict
from nvsentinel.k8s.resources import Resource
from nvsentinel.k8s.runtime.controller import ControllerContext, Reconciler, Result
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.k8s.runtime.leader import LeaderElectionConfig, LeaderElector
from nvsentinel.k8s.runtime.metrics import ControllerMetrics, ManagerMetrics, register_kube_collector
from nvsentinel.k8s.runtime.recorder import EventRecorder
from nvsentinel.k8s.runtime.workqueue import ShutDown, WorkQueue

logger = logging.getLogger(__name__)

__all__ = ["Manager"]


def _freeze_caches() -> None:
    """Move every object alive now (the synced caches, mostly) out of the cyclic collector's sight.

    A full collection walks every tracked object: at 5 000 nodes and 20 000 pods that is hundreds of
    thousands of dicts and lists, a pause of tens of ms in the middle of a cordon. Cached objects are
    JSON trees without cycles, freed by reference counting when replaced, so the collector never had
    work to do on them (CPython's gc.freeze, as large Python services use it after start-up).
    """
    gc.collect()
    gc.freeze()


class Manager:
    def __init__(self, kube: AsyncKube, reconcilers: Sequence[Reconciler], *, namespace: str = "nvsentinel",
                 dry_run: bool = False, workers: int = 4, leader_election: LeaderElectionConfig | None = None,
                 registry: CollectorRegistry | None = None, component: str = "nvsentinel-controllers",
                 resync_period: float = 300.0, shutdown_timeout: float = 10.0) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.kube = kube
        self.namespace = namespace
        self.dry_run = dry_run
        self.workers = workers
        self.registry = registry if registry is not None else CollectorRegistry()
        self.resync_period = resync_period
        self.shutdown_timeout = shutdown_timeout
        self.metrics = ManagerMetrics(self.registry)
        self.recorder = EventRecorder(kube.lane("events", threads=8), component)
        self.informers: dict[tuple[Any, ...], Informer] = {}
        register_kube_collector(self.registry, kube, self.recorder, informers=lambda: list(self.informers.values()))
        self.reconcilers = list(reconcilers)
        self.contexts: dict[str, ControllerContext] = {}
        self.elector = (LeaderElector(kube.lane("leader", threads=2), leader_election,
                                      on_change=self._on_leader_change) if leader_election else None)
        self._ready = anyio.Event()
        self._stop = anyio.Event()
        self._drained = anyio.Event()
        self._leading = False
        for rec in self.reconciles_unique():
            ctx = ControllerContext(
                rec.name, kube=kube.lane(rec.name, threads=max(16, 2 * workers)), queue=WorkQueue(name=rec.name),
                recorder=self.recorder, metrics=ControllerMetrics(rec.name, self.registry), dry_run=dry_run,
                namespace=namespace, informer_factory=self.informer, observe_write=self.observe_write)
            self.contexts[rec.name] = ctx
            rec.setup(ctx)

    def reconciles_unique(self) -> list[Reconciler]:
        names = [r.name for r in self.reconcilers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate controller names: {names}")
        return self.reconcilers

    def informer(self, resource: Resource, *, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 **selectors: Any) -> Informer:
        """The shared informer of `resource` with these selectors and cache transform (made on first use)."""
        key = (resource, tuple(sorted(selectors.items())), transform)
        inf = self.informers.get(key)
        if inf is None:
            inf = Informer(self.kube.lane("informers", threads=64), resource, resync_period=self.resync_period,
                           transform=transform, **selectors)
            self.informers[key] = inf
        return inf

    def observe_write(self, resource: Resource, obj: dict[str, Any], base_rv: str | None) -> None:
        """A controller's write returned `obj`: every informer of `resource` that held `base_rv` takes it."""
        for (res, _, _), inf in self.informers.items():
            if res == resource:
                inf.observe_write(obj, base_rv)

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for inf in self.informers.values():
                tg.start_soon(inf.run)
            tg.start_soon(self.recorder.run)
            tg.start_soon(self._refreeze)
            tg.start_soon(self._main, tg.cancel_scope)
            await self._stop.wait()
            logger.info("controllers stopping")
            for ctx in self.contexts.values():
                ctx.queue.shutdown()
            if self._leading:
                with anyio.move_on_after(self.shutdown_timeout):
                    await self._drained.wait()
                await self.recorder.flush(timeout=2.0)
            tg.cancel_scope.cancel()

    async def _main(self, scope: anyio.CancelScope) -> None:
        for inf in self.informers.values():
            await inf.wait_synced()
        _freeze_caches()
        self._ready.set()
        logger.info("informers synced", extra={"kv": {
            "resources": ",".join(f"{i.resource.plural}={len(i)}" for i in self.informers.values())}})
        try:
            if self.elector:
                await self.elector.run(self._lead)
            else:
                self._on_leader_change(True)
                await self._lead()
        finally:
            self._drained.set()

    async def _refreeze(self) -> None:
        """Keep what the caches took since out of the collector's way too (see `_freeze_caches`)."""
        while True:
            await anyio.sleep(self.resync_period)
            _freeze_caches()

    def _on_leader_change(self, leading: bool) -> None:
        self._leading = leading
        self.metrics.is_leader.set(1 if leading else 0)
        if leading:
            self.metrics.leader_transitions.inc()

    async def _lead(self) -> None:
        # a full sweep: every cached object is looked at by every controller that watches it
        for inf in self.informers.values():
            for obj in inf.list():
                inf._emit("SYNC", obj, obj)
        async with anyio.create_task_group() as tg:
            for rec in self.reconcilers:
                for _ in range(self.workers):
                    tg.start_soon(self._worker, rec, self.contexts[rec.name])

    async def _worker(self, rec: Reconciler, ctx: ControllerContext) -> None:
        q = ctx.queue
        while True:
            try:
                key = await q.get()
            except ShutDown:
                return
            ctx.metrics.queue_depth.set(len(q))
            started = time.perf_counter()
            outcome = "cancelled"
            result: Result | None = None
            try:
                result = await rec.reconcile(key, ctx)
                outcome = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure is retried with backoff
                outcome = "failed"
                reason = "Conflict" if isinstance(exc, KubeConflict) else type(exc).__name__
                ctx.metrics.failures.labels(reason=reason).inc()
                log = logger.info if isinstance(exc, KubeConflict) else logger.warning
                log("reconcile failed; will retry", extra={"kv": {
                    "controller": rec.name, "key": key, "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                    "retries": q.num_requeues(key)}})
            finally:
                ctx.metrics.latency.observe(time.perf_counter() - started)
                ctx.metrics.reconciles.inc()
                q.done(key)
                if outcome == "cancelled":  # shutdown or lost leadership mid-reconcile: look again later
                    q.add(key)
            if outcome == "failed":
                q.add_rate_limited(key)
            else:
                q.forget(key)
                if result is not None and result.requeue_after is not None:
                    q.add_after(key, result.requeue_after)
