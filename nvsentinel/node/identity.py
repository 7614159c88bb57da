"""Who this node is: the node daemons' shared identity checks (publisher, remediation agent)."""
from __future__ import annotations

import re

from nvsentinel.service.settings import check_logging, check_ports

__all__ = ["check_node_name", "check_node_daemon"]

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_node_name(name: str) -> None:
    """Kubernetes Node names are DNS-1123 subdomains; anything else is a typo, not a node."""
    if not name or len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError(f"--node-name: {name!r} is not a Kubernetes node name (a lowercase DNS-1123 subdomain)")


def check_node_daemon(health_port: int, metrics_port: int, node_name: str, log_format: str, log_level: str) -> None:
    """The settings every node daemon with Kubernetes access shares (publisher, remediation agent)."""
    check_ports(health_port=health_port, metrics_port=metrics_port)
    if health_port and health_port == metrics_port:
        raise ValueError("--health-port and --metrics-port must differ")
    if node_name:
        check_node_name(node_name)
    check_logging(log_format, log_level)
