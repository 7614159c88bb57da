"""Settings of the device API server (SPEC §4): upstream's flag names, env prefix DEVICE_API_.

Every number has an upper bound as well as a lower one: the values reach gRPC's int32 options, the
C store and sleep loops, where an absurd value (a typo, `inf`, `1e-9`) would crash the daemon or
spin a core instead of stopping it with one line (exit 2).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket

from nvsentinel.node.endpoints import DEFAULT_UNIX_SOCKET
from nvsentinel.node.nvml_settings import (
    DEFAULT_HEALTH_POLL_INTERVAL, DEFAULT_NVML_CALL_TIMEOUT, DEFAULT_RESET_COMMAND, check_nvml_settings,
)
from nvsentinel.service.settings import XID_OVERRIDES_ENV, check_logging, check_range, setting

ENV_PREFIX = "DEVICE_API_"
#: gRPC's message and option values are C ints.
GRPC_INT_MAX = 2**31 - 1
_PORT = re.compile(r"[0-9]{1,5}")


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP literals; a host name is never trusted to stay local."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class DeviceApiSettings:
    grpc_address: str = setting(
        "", help="TCP host:port for gRPC, e.g. 127.0.0.1:50051; empty (the default): no TCP listener. The API is "
        "unauthenticated: a non-loopback address also needs --allow-remote-grpc", metavar="HOST:PORT",
    )
    allow_remote_grpc: bool = setting(
        False, help="let --grpc-address be a non-loopback address (anyone who reaches it can read and write "
        "GPU state); a warning is logged at start",
    )
    unix_socket: str = setting(DEFAULT_UNIX_SOCKET, help="unix socket path for gRPC; empty disables it")
    socket_mode: int = setting(0o660, help="permission bits of the unix socket, in octal (owner and group only)",
                               octal=True, metavar="MODE")
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
    max_watchers_per_peer: int = setting(
        32, help="concurrent watch streams one client may hold (a unix-socket client is its uid and pid; a TCP "
        "client its IP address); RESOURCE_EXHAUSTED beyond")
    max_connections_per_peer: int = setting(
        64, help="unix-socket connections one client process may hold; more are closed at once")
    watch_rate: float = setting(10.0, help="new watch streams per second (token bucket)")
    watch_burst: int = setting(20, help="burst of new watch streams")
    max_recv_bytes: int = setting(
        1024 * 1024, help="largest gRPC request accepted (requests carry one GPU; lists are only sent)"
    )
    max_list_bytes: int = setting(
        16 * 1024 * 1024, help="largest ListGpus response; a bigger list is RESOURCE_EXHAUSTED (nvsentinel's "
        "clients then list through a fresh WatchGpus, which sends one GPU per message)")
    max_list_bytes_in_flight: int = setting(
        32 * 1024 * 1024, help="ListGpus response bytes being sent at once; a list that would pass it is "
        "RESOURCE_EXHAUSTED (retry, or list through a watch)")
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
    nvml_health_poll_interval: float = setting(
        DEFAULT_HEALTH_POLL_INTERVAL, help="seconds between the NVML provider's reads of each GPU's recovery action "
        "(the health level; also the liveness probe of a GPU's NVML calls)"
    )
    nvml_call_timeout: float = setting(
        DEFAULT_NVML_CALL_TIMEOUT, help="seconds an NVML call on one GPU may take before that GPU is reported "
        "Unknown (NvmlUnresponsive); the other GPUs carry on"
    )
    xid_overrides: str = setting(
        "", help="XID site override file (JSON, docs/xid.md) for the NVML provider's classification",
        metavar="PATH", env=XID_OVERRIDES_ENV,
    )

    def validate(self) -> None:
        if not self.grpc_address and not self.unix_socket:
            raise ValueError("--grpc-address and --unix-socket are both empty: nothing to listen on")
        if self.grpc_address:
            host, sep, port = self.grpc_address.rpartition(":")
            if not sep or not host or not _PORT.fullmatch(port) or int(port) > 65535:
                raise ValueError(f"--grpc-address must be host:port, got {self.grpc_address!r}")
            if not is_loopback(host) and not self.allow_remote_grpc:
                raise ValueError(
                    f"--grpc-address {self.grpc_address} is not a loopback address and the Device API is "
                    "unauthenticated; pass --allow-remote-grpc to serve it beyond this host")
        if self.unix_socket and not self.unix_socket.startswith("/"):
            raise ValueError(f"--unix-socket must be an absolute path, got {self.unix_socket!r}")
        if len(self.unix_socket.encode()) > 107:
            raise ValueError(f"--unix-socket must be at most 107 bytes long (a unix socket address), got "
                             f"{len(self.unix_socket.encode())}")
        if not 0 <= self.socket_mode <= 0o777:
            raise ValueError(f"--socket-mode must be permission bits such as 0660, got {self.socket_mode:o}")
        for name in ("health_port", "metrics_port"):
            check_range(_flag(name), getattr(self, name), 0, 65535)
        for name, low, high in (("shutdown_timeout", 0, 3600), ("shutdown_delay", 0, 3600),
                                ("ready_timeout", 0, 86400), ("bookmark_interval", 0.05, 3600),
                                ("keepalive_time", 1, 86400), ("keepalive_timeout", 0.1, 3600),
                                ("watch_rate", 0.001, 1e6)):
            check_range(_flag(name), getattr(self, name), low, high, " seconds" if "rate" not in name else "/s")
        for name, high in (("max_gpus", 16384), ("max_conditions", 4096), ("watch_buffer", 65536),
                           ("max_watchers", 65536), ("max_watchers_per_peer", 65536),
                           ("max_connections_per_peer", 65536), ("watch_burst", 1_000_000),
                           ("max_concurrent_streams", 65536)):
            check_range(_flag(name), getattr(self, name), 1, high)
        check_range("--max-object-bytes", self.max_object_bytes, 64, 16 * 1024 * 1024)
        check_range("--max-recv-bytes", self.max_recv_bytes, self.max_object_bytes + 1024, GRPC_INT_MAX,
                    " (--max-object-bytes + 1024 .. gRPC's limit)")
        check_range("--max-list-bytes", self.max_list_bytes, self.max_object_bytes + 1024, GRPC_INT_MAX - 4096,
                    " (one GPU at least .. gRPC's limit)")
        check_range("--max-list-bytes-in-flight", self.max_list_bytes_in_flight, self.max_list_bytes, 2**40,
                    " (--max-list-bytes at least)")
        check_logging(self.log_format, self.log_level)
        check_nvml_settings(self.nvml_ignored_xids, self.nvml_reset_command, fake=self.fake_nvml,
                            fake_topology=self.fake_nvml_topology, fake_control=self.fake_nvml_control,
                            health_poll_interval=self.nvml_health_poll_interval,
                            nvml_call_timeout=self.nvml_call_timeout, poll_flag="--nvml-health-poll-interval")
        if self.fake_nvml and not self.enable_nvml_provider:
            raise ValueError("--fake-nvml needs --enable-nvml-provider")

    @property
    def remote_grpc(self) -> bool:
        """The TCP listener is reachable from beyond this host (allowed by --allow-remote-grpc)."""
        return bool(self.grpc_address) and not is_loopback(self.grpc_address.rpartition(":")[0])

    @property
    def max_send_bytes(self) -> int:
        """The largest response: a list at its cap (watch events and single GPUs are smaller)."""
        return max(self.max_list_bytes, self.max_object_bytes + 1024) + 1024


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
