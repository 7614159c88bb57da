"""Settings of the remediation agent: flags > REMEDIATION_AGENT_* environment > defaults.

The Kubernetes connection flags (`--kubeconfig`, `--context`, `--request-timeout`) are the CLI's
shared ones (`nvsentinel.k8s.connect`), added by the daemon next to these.
"""
from __future__ import annotations

import dataclasses
import os

from nvsentinel.node.identity import check_node_daemon
from nvsentinel.service.settings import setting

__all__ = ["ENV_PREFIX", "RemediationAgentSettings", "effective_node_name"]

ENV_PREFIX = "REMEDIATION_AGENT_"


def effective_node_name(configured: str) -> str:
    """`--node-name`, else $NODE_NAME (the downward API in a DaemonSet); no hostname fallback.

    The agent acts on the events of exactly one node: guessing the node from the hostname could
    reset GPUs for the wrong node's events, so a missing name is a start-up error.
    """
    return (configured or os.environ.get("NODE_NAME") or "").strip()


@dataclasses.dataclass(frozen=True)
class RemediationAgentSettings:
    address: str = setting(
        "", help="Device API address (unix:///path or host:port); empty: $NVSENTINEL_DEVICE_API, the "
        "default unix socket if present, else 127.0.0.1:50051"
    )
    node_name: str = setting("", help="this node's Kubernetes name (required); empty: $NODE_NAME")
    resync_period: float = setting(
        30.0, help="seconds between full reconciles without any change seen (repairs a lost write or "
        "watch event); a resync reads only the local caches, so it costs no API call when all is in place"
    )
    backoff_max: float = setting(
        30.0, help="seconds: the longest wait between retries after a Kubernetes or Device API failure "
        "(100 ms doubling up to this, with jitter)"
    )
    healthevents_server: str = setting(
        "", help="read this node's HealthEvents through nvsentinel's node view at this https URL (the chart's "
        "<prefix>-admission Service), which holds a node's credential to its own node's events; empty: read them "
        "from the API server (needs list/watch on every node's events)", metavar="URL")
    healthevents_ca_file: str = setting("", help="PEM CA bundle that signed the node view's certificate",
                                        metavar="PATH")
    health_port: int = setting(8084, help="HTTP port for /healthz, /livez and /readyz; 0: off")
    metrics_port: int = setting(0, help="HTTP port for Prometheus /metrics; 0: off")
    http_bind_address: str = setting("127.0.0.1", help="address the HTTP ports bind (0.0.0.0 in a pod, for probes)")
    log_format: str = setting("plain", help="plain, full or json")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")

    def validate(self) -> None:
        if not 0.1 <= self.resync_period <= 86400:
            raise ValueError(f"--resync-period must be 0.1..86400 seconds, got {self.resync_period}")
        if not 0.1 <= self.backoff_max <= 3600:
            raise ValueError(f"--backoff-max must be 0.1..3600 seconds, got {self.backoff_max}")
        check_node_daemon(self.health_port, self.metrics_port, self.node_name, self.log_format, self.log_level)
        if self.healthevents_server and not self.healthevents_server.startswith("https://"):
            raise ValueError(f"--healthevents-server must be an https:// URL, got {self.healthevents_server[:100]!r}")
        if self.healthevents_server and not self.healthevents_ca_file:
            raise ValueError("--healthevents-server needs --healthevents-ca-file (the node view's CA)")
