"""Settings of the device API server (SPEC §4): upstream's flag names, env prefix DEVICE_API_."""
from __future__ import annotations

import dataclasses
import socket

from nvsentinel.node.endpoints import DEFAULT_GRPC_ADDRESS, DEFAULT_UNIX_SOCKET
from nvsentinel.node.nvml_settings import DEFAULT_RESET_COMMAND, check_nvml_settings
from nvsentinel.service.settings import check_logging, setting

ENV_PREFIX = "DEVICE_API_"


@dataclasses.dataclass(frozen=True)
class DeviceApiSettings:
    grpc_address: str = setting(
        DEFAULT_GRPC_ADDRESS,
        help="TCP host:port for gRPC; empty disables it. The API is unauthenticated: loopback by default",
    )
    unix_socket: str = setting(DEFAULT_UNIX_SOCKET, help="unix socket path for gRPC; empty disables it")
    socket_mode: int = setting(0o660, help="permission bits of the unix socket (owner and group only)")
    health_port: int = setting(8081, help="HTTP port for /healthz /livez /readyz (0: any free port)")
    metrics_port: int = setting(9090, help="HTTP port for Prometheus /metrics (0: any free port)")
    http_bind_address: str = setting(
        "127.0.0.1", help="address the health and metrics ports bind (0.0.0.0 in a pod, for probes)"
    )
    shutdown_timeout: float = setting(30.0, help="seconds to drain RPCs and watch streams on SIGTERM")
    shutdown_delay: float = setting(
        5.0, help="seconds between turning not-ready and stopping, so consumers notice first"
    )
    ready_timeout: float = setting(
        30.0, help="seconds after start after which the server is ready even with no GPU (GPU-less nodes)"
    )
    bookmark_interval: float = setting(10.0, help="seconds between BOOKMARK offers to idle watchers")
    log_format: str = setting("plain", help="plain, full or json")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")
    node_name: str = setting(socket.gethostname(), help="this node's name, for logs and metrics")
    max_gpus: int = setting(1024, help="GPUs the cache holds at most (RESOURCE_EXHAUSTED beyond)")
    max_object_bytes: int = setting(64 * 1024, help="bytes per GPU object at most (INVALID_ARGUMENT beyond)")
    max_conditions: int = setting(32, help="conditions per GPU at most; the newest are kept")
    watch_buffer: int = setting(
        256, help="events a watcher may lag before it is evicted; also the resume window"
    )
    max_watchers: int = setting(256, help="concurrent watch streams at most")
    watch_rate: float = setting(10.0, help="new watch streams per second (token bucket)")
    watch_burst: int = setting(20, help="burst of new watch streams")
    max_recv_bytes: int = setting(
        1024 * 1024, help="largest gRPC request accepted (requests carry one GPU; lists are only sent)"
    )
    max_concurrent_streams: int = setting(512, help="HTTP/2 streams per connection at most")
    keepalive_time: float = setting(30.0, help="seconds between server keepalive pings on idle connections")
    keepalive_timeout: float = setting(10.0, help="seconds to wait for a keepalive ack before closing")
    enable_nvml_provider: bool = setting(False, help="run the NVML provider inside this process")
    nvml_driver_root: str = setting("/run/nvidia/driver", help="where the NVIDIA driver (libnvidia-ml) is mounted")
    nvml_ignored_xids: tuple[int, ...] = setting((), help="comma-separated XIDs the NVML provider ignores", metavar="XIDS")
    nvml_reset_command: str = setting(
        DEFAULT_RESET_COMMAND, help="embedded NVML provider: the command that resets one GPU ({uuid}, {index} "
        "replaced) when the remediation agent asks (docs/remediation.md); empty: resets disabled", metavar="CMD")
    fake_nvml: bool = setting(
        False, help="embedded NVML provider: use nvsentinel's FAKE libnvidia-ml (tests and demos only)"
    )
    fake_nvml_topology: str = setting("", help="fake NVML topology JSON file (empty: built-in 8x H100)")
    fake_nvml_control: str = setting("", help="fake NVML control file (empty: the fake's default)")

    def validate(self) -> None:
        if not self.grpc_address and not self.unix_socket:
            raise ValueError("--grpc-address and --unix-socket are both empty: nothing to listen on")
        if self.grpc_address:
            host, sep, port = self.grpc_address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"--grpc-address must be host:port, got {self.grpc_address!r}")
        if self.unix_socket and not self.unix_socket.startswith("/"):
            raise ValueError(f"--unix-socket must be an absolute path, got {self.unix_socket!r}")
        if not 0 <= self.socket_mode <= 0o777:
            raise ValueError(f"--socket-mode must be permission bits (e.g. 0o660), got {self.socket_mode!r}")
        for name in ("health_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be 0..65535, got {port}")
        for name in ("shutdown_timeout", "shutdown_delay", "ready_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("bookmark_interval", "keepalive_time", "keepalive_timeout", "watch_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("max_gpus", "max_conditions", "watch_buffer", "max_watchers", "watch_burst",
                     "max_concurrent_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_object_bytes < 64:
            raise ValueError(f"--max-object-bytes must be >= 64, got {self.max_object_bytes}")
        if self.max_recv_bytes < self.max_object_bytes + 1024:
            raise ValueError("--max-recv-bytes must exceed --max-object-bytes by at least 1024")
        check_logging(self.log_format, self.log_level)
        check_nvml_settings(self.nvml_ignored_xids, self.nvml_reset_command, fake=self.fake_nvml,
                            fake_topology=self.fake_nvml_topology, fake_control=self.fake_nvml_control)
        if self.fake_nvml and not self.enable_nvml_provider:
            raise ValueError("--fake-nvml needs --enable-nvml-provider")

    @property
    def max_send_bytes(self) -> int:
        """A full list (every GPU at its size cap) always fits in one response."""
        return self.max_gpus * (self.max_object_bytes + 16) + 1024
