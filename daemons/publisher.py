"""`nvsentinel publisher`: flags and wiring only; the publisher lives in nvsentinel.node.publisher."""
from __future__ import annotations

import argparse
import logging
import sys

from nvsentinel.node.identity import check_node_name
from nvsentinel.node.publisher.config import ENV_PREFIX, PublisherSettings, effective_node_name
from nvsentinel.service.entrypoint import Entrypoint, stop_requested
from nvsentinel.service.settings import add_arguments, load_settings

logger = logging.getLogger(__name__)

NAME = "publisher"
HELP = "turn this node's GPU conditions (Device API) into HealthEvent objects in Kubernetes"
DESCRIPTION = "The HealthEvent publisher. Flags > PUBLISHER_* environment > defaults."

#: Seconds SIGTERM waits for held-back and queued events before exiting (a pod's grace is 30 s).
FLUSH_TIMEOUT = 5.0


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, PublisherSettings, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel publisher") -> int:
    settings = load_settings(PublisherSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    node = effective_node_name(settings.node_name)
    try:
        check_node_name(node)
    except ValueError as exc:
        print(f"{prog}: error: {exc} (set --node-name or $NODE_NAME)", file=sys.stderr)
        return 2
    from nvsentinel.node.catalog import OverridesError, site_catalog
    from nvsentinel.node.client import DeviceApiClient
    from nvsentinel.k8s import Kube
    from nvsentinel.node.publisher.publisher import Publisher, PublisherHttp

    try:
        catalog = site_catalog(settings.xid_overrides)
    except OverridesError as exc:
        logger.error("cannot start", extra={"kv": {"error": str(exc)}})
        return 1
    try:
        kube = Kube.connect(settings.kubeconfig or None, settings.context or None,
                            qps=settings.kube_qps, burst=settings.kube_burst, timeout=10.0)
    except Exception as exc:  # noqa: BLE001 - kubeconfig errors come in many types
        logger.error("cannot start", extra={"kv": {"error": f"{type(exc).__name__}: {exc}"}})
        return 1
    try:
        client = DeviceApiClient(settings.address or None, timeout=5.0)
    except ValueError as exc:
        logger.error("cannot start", extra={"kv": {"error": str(exc)}})
        kube.close()
        return 1
    pod_resources = None
    if settings.pod_resources_socket:
        from nvsentinel.node.podresources import PodResourcesReader

        pod_resources = PodResourcesReader(settings.pod_resources_socket, timeout=settings.pod_resources_timeout,
                                           resource_name=settings.pod_resources_resource)
    publisher = Publisher(kube, node_name=node, conditions=settings.conditions, debounce=settings.debounce,
                          catalog=catalog, pod_resources=pod_resources)
    http = PublisherHttp(settings.http_bind_address, settings.health_port, settings.metrics_port,
                         lambda: publisher.ready, publisher.metrics)
    try:
        http.start()
    except OSError as exc:
        logger.error("cannot start", extra={"kv": {"error": f"--health-port/--metrics-port: {exc}"}})
        client.close()
        kube.close()
        return 1
    done = stop_requested()
    try:
        publisher.start(client)
        logger.info("publisher started", extra={"kv": {
            "node": node, "address": client.address, "kube": kube.host, "debounce": settings.debounce,
            "conditions": ",".join(publisher.ctx.watched), "health_port": settings.health_port,
            "metrics_port": settings.metrics_port, "pod_resources_socket": settings.pod_resources_socket or "off"}})
        while not done.wait(3600):
            pass
        logger.info("stopping: flushing pending health events", extra={"kv": {"pending": publisher.pending}})
        publisher.stop(FLUSH_TIMEOUT)
        return 0  # what is left was logged; a restart re-derives every open fault from the Device API
    finally:
        http.stop()
        client.close()
        kube.close()


ENTRYPOINT = Entrypoint(NAME, HELP, DESCRIPTION, add_parser_arguments, run)
register, main = ENTRYPOINT.register, ENTRYPOINT.main

if __name__ == "__main__":
    sys.exit(main())
