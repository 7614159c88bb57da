"""Settings of `nvsentinel exporter`: flags > EXPORTER_* environment > defaults."""
from __future__ import annotations

import dataclasses
import os
import urllib.parse

from nvsentinel.service.settings import check_lease_timing, check_logging, check_ports, setting

ENV_PREFIX = "EXPORTER_"
DEFAULT_LEASE = "nvsentinel-exporter"
DEFAULT_CHECKPOINT = "nvsentinel-exporter-checkpoint"


@dataclasses.dataclass(frozen=True)
class ExporterSettings:
    sink: str = setting("", help="the CloudEvents sink: an http:// or https:// URL that takes HTTP binary-mode "
                        "POSTs (required)", metavar="URL")
    cluster_name: str = setting("default", help="this cluster's name: the CloudEvent source "
                                "/clusters/<name>/healthevents and data.cluster", metavar="NAME")
    kubeconfig: str = setting("", help="kubeconfig path (empty: $KUBECONFIG, ~/.kube/config, else in-cluster)",
                              metavar="PATH")
    context: str = setting("", help="kubeconfig context (empty: the current one)")
    namespace: str = setting(os.environ.get("POD_NAMESPACE", "nvsentinel"),
                             help="the exporter's namespace: its Lease and checkpoint ConfigMap", metavar="NS")
    checkpoint_configmap: str = setting(DEFAULT_CHECKPOINT, help="the ConfigMap that remembers the last phase "
                                        "sent per event (`<release>-exporter-checkpoint`)", metavar="NAME")
    checkpoint_interval: float = setting(1.0, help="seconds between checkpoint writes (at most; only when "
                                         "something was sent): what a crash can send again")
    concurrency: int = setting(16, help="sends in flight at once (different events; one event's phases go in "
                               "order) and keep-alive connections to the sink")
    retry_backoff: float = setting(0.2, help="seconds before the first retry of a failed send (doubles, jittered)")
    max_retry_backoff: float = setting(30.0, help="the longest wait between retries of one send")
    poison_retries: int = setting(3, help="retries of a send the sink refuses with a 4xx other than 408/429, "
                                  "before it is dropped (counted in dropped_total{reason=rejected})")
    timeout: float = setting(10.0, help="seconds one send may take (connect + response)")
    ca_file: str = setting("", help="CA bundle for an https sink (empty: the system's)", metavar="PATH")
    event_selector: str = setting("", help="label selector on the HealthEvents to export (empty: all)",
                                  metavar="SELECTOR")
    leader_elect: bool = setting(True, help="export only while holding the Lease (run 2 replicas for failover)")
    lease_name: str = setting(DEFAULT_LEASE, help="the leader-election Lease", metavar="NAME")
    lease_duration: float = setting(15.0, help="seconds a standby waits before taking an unrenewed lease")
    renew_deadline: float = setting(10.0, help="seconds the leader keeps trying to renew before it steps down")
    retry_period: float = setting(2.0, help="seconds between lease acquire/renew attempts")
    identity: str = setting("", help="leader-election identity (empty: $POD_NAME or the hostname + a random suffix)")
    resync_period: float = setting(300.0, help="seconds between full re-checks of every cached HealthEvent")
    health_port: int = setting(8081, help="HTTP /healthz /livez /readyz port (0: off)")
    metrics_port: int = setting(9090, help="Prometheus /metrics port (0: off)")
    bind_address: str = setting("127.0.0.1", help="address the health and metrics ports listen on (0.0.0.0 "
                                "in a pod)")
    log_format: str = setting("plain", help="plain, full or json")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")

    def validate(self) -> None:
        url = urllib.parse.urlsplit(self.sink)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"--sink must be an http:// or https:// URL, got {self.sink!r}" if self.sink
                             else "--sink is required (an http:// or https:// URL)")
        try:
            url.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"--sink has a bad port: {self.sink!r}") from None
        if not self.cluster_name or "/" in self.cluster_name:
            raise ValueError(f"--cluster-name must be non-empty and without '/', got {self.cluster_name!r}")
        if not self.namespace or not self.checkpoint_configmap or not self.lease_name:
            raise ValueError("--namespace, --checkpoint-configmap and --lease-name must not be empty")
        if not 1 <= self.concurrency <= 256:
            raise ValueError(f"--concurrency must be 1..256, got {self.concurrency}")
        if not 0.05 <= self.checkpoint_interval <= 60:
            raise ValueError(f"--checkpoint-interval must be 0.05..60 seconds, got {self.checkpoint_interval}")
        if not 0 < self.retry_backoff <= self.max_retry_backoff <= 3600:
            raise ValueError("need 0 < --retry-backoff <= --max-retry-backoff <= 3600, got "
                             f"{self.retry_backoff}, {self.max_retry_backoff}")
        if not 0 <= self.poison_retries <= 100:
            raise ValueError(f"--poison-retries must be 0..100, got {self.poison_retries}")
        if not 0 < self.timeout <= 600:
            raise ValueError(f"--timeout must be in (0, 600] seconds, got {self.timeout}")
        if self.leader_elect:
            check_lease_timing(self.retry_period, self.renew_deadline, self.lease_duration)
        if self.resync_period < 1:
            raise ValueError(f"--resync-period must be >= 1 second, got {self.resync_period}")
        check_ports(health_port=self.health_port, metrics_port=self.metrics_port)
        check_logging(self.log_format, self.log_level)
