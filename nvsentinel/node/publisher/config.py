"""Settings of the HealthEvent publisher: flags > PUBLISHER_* environment > defaults."""
from __future__ import annotations

import dataclasses
import os
import re
import socket

from nvsentinel.node.identity import check_node_daemon
from nvsentinel.node.podresources import DEFAULT_RESOURCE, DEFAULT_TIMEOUT
from nvsentinel.policy.conditions import KMSG_HEALTHY, NVML_HEALTHY
from nvsentinel.service.settings import XID_OVERRIDES_ENV, setting

ENV_PREFIX = "PUBLISHER_"
DEFAULT_CONDITIONS = (NVML_HEALTHY, KMSG_HEALTHY)

_CONDITION_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")
# an extended resource: a DNS subdomain prefix, a slash, a name (Kubernetes' qualified-name rules, loosely)
_RESOURCE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def effective_node_name(configured: str) -> str:
    """`--node-name`, else $NODE_NAME (the downward API in a DaemonSet), else the hostname."""
    return (configured or os.environ.get("NODE_NAME") or socket.gethostname()).strip()


@dataclasses.dataclass(frozen=True)
class PublisherSettings:
    address: str = setting(
        "", help="Device API address (unix:///path or host:port); empty: $NVSENTINEL_DEVICE_API, the "
        "default unix socket if present, else 127.0.0.1:50051"
    )
    kubeconfig: str = setting(
        "", help="kubeconfig file; empty: $KUBECONFIG, ~/.kube/config, else the pod's service account",
        metavar="PATH",
    )
    context: str = setting("", help="kubeconfig context; empty: the current context")
    node_name: str = setting("", help="this node's Kubernetes name; empty: $NODE_NAME, else the hostname")
    debounce: float = setting(
        5.0, help="seconds: after a publish for a GPU, later changes of that GPU within this window are "
        "coalesced and its latest state is published when it ends (the first event is never delayed)"
    )
    conditions: tuple[str, ...] = setting(
        DEFAULT_CONDITIONS, help="comma-separated GPU condition types to watch (docs/conditions.md)",
        metavar="TYPES",
    )
    kube_qps: float = setting(
        20.0, help="Kubernetes requests per second (token bucket; 0: unlimited); a node publishes rarely, "
        "but a whole node failing at once must not flood the API server"
    )
    kube_burst: int = setting(50, help="Kubernetes request burst: 8 GPUs x (fatal + healthy) fit without waiting")
    health_port: int = setting(8083, help="HTTP port for /healthz and /readyz; 0: off")
    metrics_port: int = setting(0, help="HTTP port for Prometheus /metrics; 0: off")
    http_bind_address: str = setting("127.0.0.1", help="address the HTTP ports bind (0.0.0.0 in a pod, for probes)")
    xid_overrides: str = setting(
        "", help="XID site override file (JSON, docs/xid.md); decides isFatal with the catalog", metavar="PATH",
        env=XID_OVERRIDES_ENV,
    )
    pod_resources_socket: str = setting(
        "", help="the kubelet's PodResources unix socket (/var/lib/kubelet/pod-resources/kubelet.sock on a node): "
        "when set, every fatal GPU event records which pods held its GPUs (spec.podMapping, for the drain's GPU "
        "scope); empty: off", metavar="PATH",
    )
    pod_resources_resource: str = setting(
        DEFAULT_RESOURCE, help="the extended resource whose device ids are GPU UUIDs (the NVIDIA device plugin's)",
        metavar="NAME",
    )
    pod_resources_timeout: float = setting(
        DEFAULT_TIMEOUT, help="seconds one PodResources read may take before the event is published with "
        "podMapping.error (the kubelet answers from memory; a stuck one must not hold events up)", metavar="SECONDS",
    )
    log_format: str = setting("plain", help="plain, full or json")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")

    def validate(self) -> None:
        if not 0 <= self.debounce <= 3600:
            raise ValueError(f"--debounce must be 0..3600 seconds, got {self.debounce}")
        if not self.conditions:
            raise ValueError("--conditions must name at least one condition type")
        for cond in self.conditions:
            if not _CONDITION_TYPE.fullmatch(cond):
                raise ValueError(f"--conditions: {cond!r} is not a condition type (letters and digits)")
        if not 0 <= self.kube_qps <= 100_000:
            raise ValueError(f"--kube-qps must be 0..100000, got {self.kube_qps}")
        if not 1 <= self.kube_burst <= 100_000:
            raise ValueError(f"--kube-burst must be 1..100000, got {self.kube_burst}")
        if self.pod_resources_socket:
            if not self.pod_resources_socket.startswith("/"):
                raise ValueError(f"--pod-resources-socket must be an absolute path, got {self.pod_resources_socket!r}")
            if len(self.pod_resources_socket.encode()) > 107:
                raise ValueError("--pod-resources-socket must be at most 107 bytes long (a unix socket address)")
        if not _RESOURCE_NAME.fullmatch(self.pod_resources_resource):
            raise ValueError(f"--pod-resources-resource must be an extended resource name (domain/name), "
                             f"got {self.pod_resources_resource!r}")
        if not 0.05 <= self.pod_resources_timeout <= 30:
            raise ValueError(f"--pod-resources-timeout must be 0.05..30 seconds, got {self.pod_resources_timeout}")
        check_node_daemon(self.health_port, self.metrics_port, self.node_name, self.log_format, self.log_level)
