"""Settings of the kernel-log monitor: flags > KMSG_MONITOR_* environment > defaults."""
from __future__ import annotations

import dataclasses
import socket

from nvsentinel.service.settings import check_logging, setting

ENV_PREFIX = "KMSG_MONITOR_"
DEFAULT_SOURCE = "/dev/kmsg"
DEFAULT_STATE_FILE = "/var/lib/nvsentinel/kmsg-monitor.json"


@dataclasses.dataclass(frozen=True)
class KmsgMonitorSettings:
    address: str = setting(
        "", help="Device API address (unix:///path or host:port); empty: $NVSENTINEL_DEVICE_API, the "
        "default unix socket if present, else 127.0.0.1:50051"
    )
    source: str = setting(DEFAULT_SOURCE, help="kernel log to follow: /dev/kmsg (or another char device) or a "
                          "regular file (rotation and truncation are followed)", metavar="PATH")
    state_file: str = setting(DEFAULT_STATE_FILE, help="JSON cursor file (boot id + sequence, or inode + offset)",
                              metavar="PATH")
    dedup_window: float = setting(30.0, help="seconds: an XID the NVML provider reported this recently counts once")
    ignored_xids: tuple[int, ...] = setting((), help="comma-separated XIDs to ignore", metavar="XIDS")
    poll_interval: float = setting(0.2, help="seconds between reads when the source has nothing new")
    log_format: str = setting("plain", help="plain, full or json")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")
    node_name: str = setting(socket.gethostname(), help="this node's name, for logs")

    def validate(self) -> None:
        if not self.source:
            raise ValueError("--source must not be empty")
        if not self.state_file:
            raise ValueError("--state-file must not be empty")
        if not 0 <= self.dedup_window <= 3600:
            raise ValueError(f"--dedup-window must be 0..3600 seconds, got {self.dedup_window}")
        if not 0.001 <= self.poll_interval <= 60:
            raise ValueError(f"--poll-interval must be 0.001..60 seconds, got {self.poll_interval}")
        check_logging(self.log_format, self.log_level)
        for xid in self.ignored_xids:
            if not 0 < xid < 1 << 16:
                raise ValueError(f"--ignored-xids: {xid} is not an XID")
