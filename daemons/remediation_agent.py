"""`nvsentinel remediation-agent`: flags and wiring only; the agent lives in nvsentinel.node.remediation_agent."""
from __future__ import annotations

import argparse
import logging
import sys

from nvsentinel.k8s.connect import add_kube_arguments, with_kube
from nvsentinel.node.identity import check_node_name
from nvsentinel.node.remediation_agent.config import ENV_PREFIX, RemediationAgentSettings, effective_node_name
from nvsentinel.service.entrypoint import Entrypoint, stop_requested
from nvsentinel.service.settings import add_arguments, load_settings

logger = logging.getLogger(__name__)

NAME = "remediation-agent"
HELP = ("this node's half of remediation: ask the NVML provider for GPU resets and verify GPUs after a "
        "remediation (HealthEvents ↔ Device API)")
DESCRIPTION = ("The remediation agent. Flags > REMEDIATION_AGENT_* environment > defaults "
               "(the Kubernetes flags: flag, else $KUBECONFIG).")

#: Seconds SIGTERM waits for the threads to end (a pod's grace is 30 s; nothing is queued: a
#: restart re-derives everything from the two APIs).
STOP_TIMEOUT = 10.0


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, RemediationAgentSettings, ENV_PREFIX)
    add_kube_arguments(parser)


def run(args: argparse.Namespace, prog: str = "nvsentinel remediation-agent") -> int:
    settings = load_settings(RemediationAgentSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    node = effective_node_name(settings.node_name)
    try:
        if not node:
            raise ValueError("--node-name is required")
        check_node_name(node)
    except ValueError as exc:
        print(f"{prog}: error: {exc} (set --node-name or $NODE_NAME)", file=sys.stderr)
        return 2
    from nvsentinel.node.client import DeviceApiClient
    from nvsentinel.node.remediation_agent.agent import RemediationAgent, RemediationAgentHttp

    def body(kube: object) -> int:
        try:
            client = DeviceApiClient(settings.address or None, timeout=5.0)
        except ValueError as exc:
            logger.error("cannot start", extra={"kv": {"error": str(exc)}})
            return 1
        reader = kube.via(settings.healthevents_server, settings.healthevents_ca_file) \
            if settings.healthevents_server else None  # type: ignore[attr-defined]
        agent = RemediationAgent(kube, client, node_name=node, resync_period=settings.resync_period,
                                 backoff_max=settings.backoff_max, read_kube=reader)
        http = RemediationAgentHttp(settings.http_bind_address, settings.health_port, settings.metrics_port,
                                    lambda: agent.ready, agent.metrics)
        try:
            http.start()
        except OSError as exc:
            logger.error("cannot start", extra={"kv": {"error": f"--health-port/--metrics-port: {exc}"}})
            client.close()
            return 1
        done = stop_requested()
        try:
            agent.start()
            logger.info("remediation agent started", extra={"kv": {
                "node": node, "address": client.address, "kube": getattr(kube, "host", ""),
                "reads": settings.healthevents_server or "api-server",
                "selector": agent.label_selector, "resync_period": settings.resync_period,
                "health_port": settings.health_port, "metrics_port": settings.metrics_port}})
            while not done.wait(3600):
                pass
            logger.info("stopping", extra={"kv": {"node": node}})
            agent.stop(STOP_TIMEOUT)
            return 0
        finally:
            http.stop()
            client.close()

    return with_kube(args, body)


ENTRYPOINT = Entrypoint(NAME, HELP, DESCRIPTION, add_parser_arguments, run)
register, main = ENTRYPOINT.register, ENTRYPOINT.main

if __name__ == "__main__":
    sys.exit(main())
