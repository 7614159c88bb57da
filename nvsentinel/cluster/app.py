"""`nvsentinel controllers` as a library call: build the Manager from settings and run it.

Health: /healthz and /livez 200 while the process runs; /readyz 200 once the informers synced
(a standby is ready too: it is serving its purpose). /metrics on its own port.
"""
from __future__ import annotations

import logging
import signal
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from nvsentinel.cluster.registry import build_reconcilers
from nvsentinel.cluster.settings import ControllersSettings
from nvsentinel.k8s import AsyncKube, Kube
from nvsentinel.k8s.runtime.leader import LeaderElectionConfig, default_identity
from nvsentinel.k8s.runtime.manager import Manager
from nvsentinel.service.http import HttpEndpoint, probe_routes

logger = logging.getLogger(__name__)

__all__ = ["build_manager", "run"]


def build_manager(settings: ControllersSettings, configs: dict[str, Any], kube: Kube,
                  registry: CollectorRegistry | None = None) -> Manager:
    le = None
    if settings.leader_elect:
        le = LeaderElectionConfig(
            namespace=settings.namespace, name=settings.lease_name, identity=settings.identity or default_identity(),
            lease_duration=settings.lease_duration, renew_deadline=settings.renew_deadline,
            retry_period=settings.retry_period)
    return Manager(AsyncKube(kube), build_reconcilers(settings, configs), namespace=settings.namespace,
                   dry_run=settings.dry_run, workers=settings.workers, leader_election=le, registry=registry,
                   resync_period=settings.resync_period, shutdown_timeout=settings.shutdown_timeout)


async def run(settings: ControllersSettings, configs: dict[str, Any], kube: Kube) -> int:
    mgr = build_manager(settings, configs, kube)

    def _metrics() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(mgr.registry)

    endpoints = []
    if settings.health_port:
        endpoints.append(HttpEndpoint(settings.bind_address, settings.health_port,
                                      probe_routes(lambda: mgr.ready)))
    if settings.metrics_port:
        endpoints.append(HttpEndpoint(settings.bind_address, settings.metrics_port, {"/metrics": _metrics}))
    for ep in endpoints:
        await ep.start()
    logger.info("controllers started", extra={"kv": {
        "controllers": ",".join(settings.controllers), "namespace": settings.namespace, "dry_run": settings.dry_run,
        "leader_elect": settings.leader_elect, "server": kube.host, "workers": settings.workers,
        "kube_flow_control": settings.kube_flow_control, "kube_qps": settings.kube_qps,
        "kube_max_qps": settings.kube_max_qps,
        "health_port": endpoints[0].port if settings.health_port else 0,
        "metrics_port": endpoints[-1].port if settings.metrics_port else 0}})
    try:
        async with anyio.create_task_group() as tg:
            async def _signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for signum in sigs:
                        logger.info("signal received; shutting down", extra={"kv": {"signal": signum}})
                        mgr.stop()
                        return

            tg.start_soon(_signals)
            await mgr.run()
            tg.cancel_scope.cancel()
    finally:
        for ep in endpoints:
            await ep.stop()
    logger.info("controllers stopped")
    return 0
