"""Settings of the NVML provider: flags > NVML_PROVIDER_* environment > defaults."""
from __future__ import annotations

import dataclasses
import socket

from nvsentinel.node.nvml_settings import (
    DEFAULT_HEALTH_POLL_INTERVAL, DEFAULT_NVML_CALL_TIMEOUT, DEFAULT_RESET_COMMAND, check_nvml_settings,
)
from nvsentinel.service.settings import XID_OVERRIDES_ENV, check_logging, check_ports, setting

ENV_PREFIX = "NVML_PROVIDER_"
DEFAULT_DRIVER_ROOT = "/run/nvidia/driver"


@dataclasses.dataclass(frozen=True)
class NvmlProviderSettings:
    address: str = setting(
        "", help="Device API address (unix:///path or host:port); empty: $NVSENTINEL_DEVICE_API, the "
        "default unix socket if present, else 127.0.0.1:50051"
    )
    nvml_driver_root: str = setting(DEFAULT_DRIVER_ROOT, help="where the NVIDIA driver (libnvidia-ml) is mounted")
    nvml_ignored_xids: tuple[int, ...] = setting((), help="comma-separated XIDs to ignore", metavar="XIDS")
    fake_nvml: bool = setting(False, help="use nvsentinel's FAKE libnvidia-ml (tests and demos only)")
    fake_nvml_topology: str = setting("", help="fake NVML topology JSON file (empty: built-in 8x H100)")
    fake_nvml_control: str = setting("", help="fake NVML control file (empty: the fake's default)")
    health_port: int = setting(
        8082, help="HTTP port for /healthz (alive) and /readyz (NVML up, every GPU registered); 0: any free port"
    )
    http_bind_address: str = setting(
        "127.0.0.1", help="address the health and metrics ports bind (0.0.0.0 in a pod, for probes and scrapes)"
    )
    metrics_port: int = setting(0, help="HTTP port for Prometheus /metrics (nvsentinel_nvml_*); 0: off")
    wait_timeout_ms: int = setting(5000, help="milliseconds per nvmlEventSetWait")
    health_poll_interval: float = setting(
        DEFAULT_HEALTH_POLL_INTERVAL, help="seconds between reads of every GPU's NVML recovery action (health "
        "as a level; at once on a recovery-action event too)"
    )
    nvml_call_timeout: float = setting(
        DEFAULT_NVML_CALL_TIMEOUT, help="seconds an NVML call on a GPU may take; past it the GPU's condition is "
        "Unknown (NvmlUnresponsive) until a fresh call succeeds"
    )
    xid_overrides: str = setting(
        "", help="XID site override file (JSON, docs/xid.md) applied to the provider's decisions", metavar="PATH",
        env=XID_OVERRIDES_ENV,
    )
    nvml_reset_command: str = setting(
        DEFAULT_RESET_COMMAND,
        help="command that resets one GPU when the remediation agent asks ({uuid} and {index} are "
        "replaced; with --fake-nvml the default resets the fake GPU); empty: resets disabled, every "
        "request is answered ResetFailed",
    )
    log_format: str = setting("plain", help="plain, full or json")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")
    node_name: str = setting(socket.gethostname(), help="this node's name, for logs")

    def validate(self) -> None:
        if not 1 <= self.wait_timeout_ms <= 600_000:
            raise ValueError(f"--wait-timeout-ms must be 1..600000, got {self.wait_timeout_ms}")
        check_ports(health_port=self.health_port, metrics_port=self.metrics_port)
        check_logging(self.log_format, self.log_level)
        check_nvml_settings(self.nvml_ignored_xids, self.nvml_reset_command, fake=self.fake_nvml,
                            fake_topology=self.fake_nvml_topology, fake_control=self.fake_nvml_control,
                            health_poll_interval=self.health_poll_interval,
                            nvml_call_timeout=self.nvml_call_timeout)
