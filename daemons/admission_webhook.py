"""`nvsentinel admission-webhook`: flags and wiring only; the rules live in nvsentinel.policy.admission."""
from __future__ import annotations

import argparse
import logging
import sys

from nvsentinel.cluster.admission.config import ENV_PREFIX, AdmissionSettings
from nvsentinel.service.entrypoint import Entrypoint, stop_requested
from nvsentinel.service.settings import add_arguments, load_settings

logger = logging.getLogger(__name__)

NAME = "admission-webhook"
HELP = ("serve the admission webhook and the node view that hold node credentials to their own node "
        "(docs/security.md)")
DESCRIPTION = ("The admission webhook for API servers without ValidatingAdmissionPolicy. "
               "Flags > ADMISSION_* environment > defaults.")


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, AdmissionSettings, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel admission-webhook") -> int:
    settings = load_settings(AdmissionSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    from nvsentinel.cluster.admission.identity import NodeResolver
    from nvsentinel.cluster.admission.nodeview import NodeView
    from nvsentinel.cluster.admission.server import AdmissionServer
    from nvsentinel.cluster.remediation.config import RemediationConfig
    from nvsentinel.k8s import Kube
    from nvsentinel.service.http import HttpEndpoint, ThreadedHttp, probe_routes

    defaults = RemediationConfig()
    rules = settings.rules(defaults.reboot_image, tuple(defaults.reboot_argv))
    try:
        kube = Kube.connect(settings.kubeconfig or None, settings.context or None, timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - any config-loading failure is a start-up error
        logger.error("cannot start: no usable Kubernetes configuration", extra={"kv": {"error": str(exc)[:300]}})
        return 1
    try:
        resolver = NodeResolver(kube)
        server = AdmissionServer(settings.bind_address, settings.port, settings.tls_cert_file, settings.tls_key_file,
                                 rules, resolver, nodeview=NodeView(kube, resolver, rules.node_identities))
    except (OSError, ValueError) as exc:
        print(f"{prog}: error: cannot serve on {settings.bind_address}:{settings.port}: {exc}", file=sys.stderr)
        kube.close()
        return 2
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    routes = probe_routes(lambda: True)
    routes["/metrics"] = lambda: (200, CONTENT_TYPE_LATEST, generate_latest(server.metrics.registry))
    http = ThreadedHttp([HttpEndpoint(settings.bind_address, settings.health_port, routes)]
                        if settings.health_port else [], name="admission-http")
    done = stop_requested()
    try:
        http.start()
    except OSError as exc:
        print(f"{prog}: error: --health-port {settings.health_port}: {exc}", file=sys.stderr)
        server.stop()
        kube.close()
        return 2
    server.start()
    logger.info("admission webhook serving", extra={"kv": {
        "address": f"{settings.bind_address}:{server.port}", "node_identities": len(rules.node_identities),
        "node_writers": len(rules.node_writers), "breaker_writer": rules.breaker_writer or "-",
        "job_creator": rules.job_creator or "-"}})
    try:
        done.wait()
    finally:
        server.stop()
        http.stop()
        kube.close()
    logger.info("admission webhook stopped")
    return 0


ENTRYPOINT = Entrypoint(NAME, HELP, DESCRIPTION, add_parser_arguments, run)
register, main = ENTRYPOINT.register, ENTRYPOINT.main

if __name__ == "__main__":
    sys.exit(main())
