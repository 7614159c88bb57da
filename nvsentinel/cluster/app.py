"""`nvsentinel controllers` as a library call: build the Manager from settings and run it.

Health: /healthz and /livez 200 while the process runs; /readyz 200 once the informers synced
(a standby is ready too: it is serving its purpose). /metrics on its own port.
"""
from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

from nvsentinel.cluster.registry import build_reconcilers
from nvsentinel.cluster.settings import ControllersSettings
from nvsentinel.k8s import AsyncKube, Kube
from nvsentinel.k8s.runtime.leader import LeaderElectionConfig, default_identity
from nvsentinel.k8s.runtime.manager import Manager
from nvsentinel.service.http import serve_until_signalled

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
    await serve_until_signalled(
        "controllers", mgr.run, mgr.stop, bind_address=settings.bind_address, health_port=settings.health_port,
        metrics_port=settings.metrics_port, ready=lambda: mgr.ready, registry=mgr.registry, kv={
            "controllers": ",".join(settings.controllers), "namespace": settings.namespace,
            "dry_run": settings.dry_run, "leader_elect": settings.leader_elect, "server": kube.host,
            "workers": settings.workers, "kube_flow_control": settings.kube_flow_control,
            "kube_qps": settings.kube_qps, "kube_max_qps": settings.kube_max_qps})
    return 0
