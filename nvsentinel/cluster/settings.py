"""Settings of `nvsentinel controllers`: flags > CONTROLLERS_* environment > defaults.

Each controller's own settings (e.g. `QuarantineConfig`) are separate dataclasses under the same
prefix, so one command line carries them all.
"""
from __future__ import annotations

import dataclasses
import os

from nvsentinel.cluster.registry import STAGE_NAMES
from nvsentinel.k8s.kube import FLOW_CONTROL_MODES, FlowControl
from nvsentinel.k8s.runtime.leader import DEFAULT_LEASE_NAME
from nvsentinel.service.settings import check_lease_timing, check_logging, check_ports, setting

ENV_PREFIX = "CONTROLLERS_"
#: Controllers this build knows, in chain order (the stage registry's).
KNOWN_CONTROLLERS: tuple[str, ...] = STAGE_NAMES


@dataclasses.dataclass(frozen=True)
class ControllersSettings:
    kubeconfig: str = setting("", help="kubeconfig path (empty: $KUBECONFIG, ~/.kube/config, else in-cluster)",
                              metavar="PATH")
    context: str = setting("", help="kubeconfig context (empty: the current one)")
    namespace: str = setting(os.environ.get("POD_NAMESPACE", "nvsentinel"),
                             help="the controllers' namespace: Lease, breaker ConfigMap", metavar="NS")
    controllers: tuple[str, ...] = setting(KNOWN_CONTROLLERS, help="comma-separated controllers to run",
                                           metavar="NAMES")
    policy_configmap: str = setting("nvsentinel-policy", help="the TTL policy ConfigMap (`<release>-policy`) in "
                                    "--namespace; missing: the defaults (docs/ttl.md)", metavar="NAME")
    dry_run: bool = setting(False, help="decide and record every decision in the HealthEvent status, change "
                            "no Node or Pod")
    workers: int = setting(16, help="concurrent reconciles per controller (I/O-bound: each waits on the API "
                           "server; the breaker serializes only its own decision)")
    leader_elect: bool = setting(True, help="run only while holding the Lease (run 2 replicas for failover)")
    lease_name: str = setting(DEFAULT_LEASE_NAME, help="the leader-election Lease", metavar="NAME")
    lease_duration: float = setting(15.0, help="seconds a standby waits before taking an unrenewed lease")
    renew_deadline: float = setting(10.0, help="seconds the leader keeps trying to renew before it steps down")
    retry_period: float = setting(2.0, help="seconds between lease acquire/renew attempts")
    identity: str = setting("", help="leader-election identity (empty: $POD_NAME or the hostname + a random suffix)")
    kube_flow_control: str = setting("auto", help="who limits the request rate: auto (the server once it shows API "
                                     "Priority and Fairness, else the client), client (--kube-qps/--kube-burst "
                                     "always) or server (only --kube-max-qps)", metavar="MODE")
    kube_qps: float = setting(50.0, help="requests/s per controller on a server without API Priority and Fairness "
                              "(token bucket; 0 = unlimited); client-go's default of 5 capped upstream's evictions")
    kube_burst: int = setting(100, help="burst above --kube-qps")
    kube_max_qps: float = setting(500.0, help="ceiling in requests/s per controller where the server does API "
                                  "Priority and Fairness (it queues, and answers 429 + Retry-After, which is "
                                  "honoured); 0 = none")
    resync_period: float = setting(300.0, help="seconds between full level-triggered re-checks of every object")
    health_port: int = setting(8081, help="HTTP /healthz /livez /readyz port (0: off)")
    metrics_port: int = setting(9090, help="Prometheus /metrics port (0: off)")
    bind_address: str = setting("127.0.0.1", help="address the health and metrics ports listen on (0.0.0.0 "
                                "in a pod)")
    shutdown_timeout: float = setting(10.0, help="seconds running reconciles get to finish on SIGTERM")
    log_format: str = setting("plain", help="plain, full or json")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")

    def validate(self) -> None:
        unknown = [c for c in self.controllers if c not in KNOWN_CONTROLLERS]
        if unknown or not self.controllers:
            raise ValueError(f"--controllers: unknown {','.join(unknown) or '(none given)'}; "
                             f"known: {','.join(KNOWN_CONTROLLERS)}")
        if not self.namespace:
            raise ValueError("--namespace must not be empty")
        if not self.policy_configmap:
            raise ValueError("--policy-configmap must not be empty")
        if not 1 <= self.workers <= 256:
            raise ValueError(f"--workers must be 1..256, got {self.workers}")
        if self.leader_elect:
            check_lease_timing(self.retry_period, self.renew_deadline, self.lease_duration)
        if self.kube_qps < 0 or self.kube_burst < 1 or self.kube_max_qps < 0:
            raise ValueError("--kube-qps and --kube-max-qps must be >= 0 and --kube-burst >= 1")
        if self.kube_flow_control not in FLOW_CONTROL_MODES:
            raise ValueError(f"--kube-flow-control must be one of {', '.join(FLOW_CONTROL_MODES)}, "
                             f"got {self.kube_flow_control!r}")
        if self.resync_period < 1:
            raise ValueError(f"--resync-period must be >= 1 second, got {self.resync_period}")
        check_ports(health_port=self.health_port, metrics_port=self.metrics_port)
        if self.shutdown_timeout < 0:
            raise ValueError("--shutdown-timeout must be >= 0")
        check_logging(self.log_format, self.log_level)

    def flow_control(self) -> FlowControl:
        return FlowControl(self.kube_flow_control, self.kube_qps, self.kube_burst, self.kube_max_qps)
