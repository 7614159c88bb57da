"""Settings of the kernel-log monitor: flags > KMSG_MONITOR_* environment > defaults."""
from __future__ import annotations

import dataclasses
import os
import socket
from typing import Final

from nvsentinel.service.settings import XID_OVERRIDES_ENV, check_logging, check_ports, setting

ENV_PREFIX = "KMSG_MONITOR_"
DEFAULT_SOURCE = "/dev/kmsg"
SYSLOG_SOURCE: Final = "syslog"
"""`--source=syslog`: the kernel's log ring through the syslog(2) system call (no device; the chart's
default). A file of that name is `./syslog`."""
DEFAULT_STATE_FILE = "/var/lib/nvsentinel/kmsg-monitor.json"
DEFAULT_MAX_LINE_BYTES: Final = 65536
"""A kernel line is under 1 KiB (printk's LOG_LINE_MAX); 64 KiB leaves room for any prefix and
for journal records, and is the XID decoder's own line limit."""
MIN_MAX_LINE_BYTES: Final = 4096
MAX_MAX_LINE_BYTES: Final = 16 << 20
PATH_MAX: Final = 4096
"""Linux's limit for a path, the terminating NUL included."""
NAME_MAX: Final = 255
"""Linux's limit for one path component, in bytes."""


@dataclasses.dataclass(frozen=True)
class KmsgMonitorSettings:
    address: str = setting(
        "", help="Device API address (unix:///path or host:port); empty: $NVSENTINEL_DEVICE_API, the "
        "default unix socket if present, else 127.0.0.1:50051"
    )
    source: str = setting(DEFAULT_SOURCE, help="kernel log to follow: 'syslog' (the syslog(2) system call: no "
                          "device, needs CAP_SYSLOG where kernel.dmesg_restrict=1), /dev/kmsg (or another char device), "
                          "a regular file (rotation and truncation are followed) or a FIFO", metavar="syslog|PATH")
    state_file: str = setting(DEFAULT_STATE_FILE, help="JSON cursor file (boot id + sequence or time stamp, or "
                              "inode + offset)", metavar="PATH")
    dedup_window: float = setting(30.0, help="seconds: an XID the NVML provider reported this recently counts once")
    ignored_xids: tuple[int, ...] = setting((), help="comma-separated XIDs to ignore", metavar="XIDS")
    poll_interval: float = setting(0.2, help="seconds between reads when the source has nothing new "
                                   "(/dev/kmsg, files, FIFOs)")
    syslog_interval: float = setting(1.0, help="seconds between syslog(2) reads of the kernel's log ring "
                                     "(--source=syslog; each read copies its newest records)")
    max_line_bytes: int = setting(
        DEFAULT_MAX_LINE_BYTES, help=f"bytes: a longer line (or a partial line that grows past it) is dropped, "
        f"counted and logged, and reading resumes at the next newline ({MIN_MAX_LINE_BYTES}..{MAX_MAX_LINE_BYTES})",
        metavar="BYTES",
    )
    xid_overrides: str = setting(
        "", help="XID site override file (JSON, docs/xid.md): every classification the monitor makes (the "
        "decoder's and the condition it writes) uses it", metavar="PATH", env=XID_OVERRIDES_ENV,
    )
    metrics_port: int = setting(0, help="HTTP port for Prometheus /metrics (nvsentinel_kmsg_*); 0: off")
    http_bind_address: str = setting("127.0.0.1", help="address the metrics port binds (0.0.0.0 in a pod)")
    log_format: str = setting("plain", help="plain, full or json")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")
    node_name: str = setting(socket.gethostname(), help="this node's name, for logs")

    @property
    def interval(self) -> float:
        """Seconds the monitor waits when its source had nothing new."""
        return self.syslog_interval if self.source == SYSLOG_SOURCE else self.poll_interval

    def validate(self) -> None:
        if not self.source:
            raise ValueError("--source must not be empty")
        check_state_file(self.state_file)
        if not 0 <= self.dedup_window <= 3600:
            raise ValueError(f"--dedup-window must be 0..3600 seconds, got {self.dedup_window}")
        if not 0.001 <= self.poll_interval <= 60:
            raise ValueError(f"--poll-interval must be 0.001..60 seconds, got {self.poll_interval}")
        if not 0.01 <= self.syslog_interval <= 60:
            raise ValueError(f"--syslog-interval must be 0.01..60 seconds, got {self.syslog_interval}")
        if not MIN_MAX_LINE_BYTES <= self.max_line_bytes <= MAX_MAX_LINE_BYTES:
            raise ValueError(f"--max-line-bytes must be {MIN_MAX_LINE_BYTES}..{MAX_MAX_LINE_BYTES}, "
                             f"got {self.max_line_bytes}")
        check_ports(metrics_port=self.metrics_port)
        check_logging(self.log_format, self.log_level)
        for xid in self.ignored_xids:
            if not 0 < xid < 1 << 16:
                raise ValueError(f"--ignored-xids: {xid} is not an XID")


def check_state_file(path: str) -> None:
    """The state file path is sane: not empty, no NUL, within Linux's path limits.

    The filesystem is checked at start (`check_state_file_writable`), not here: settings also
    resolve on machines that are not the node (the chart's tests).
    """
    if not path:
        raise ValueError("--state-file must not be empty")
    if "\0" in path:
        raise ValueError("--state-file must not contain a NUL character")
    full = os.path.abspath(path)
    size = len(os.fsencode(full))
    if size >= PATH_MAX:
        raise ValueError(f"--state-file is too long: {size} bytes as an absolute path (the limit is {PATH_MAX - 1})")
    for part in full.split("/"):
        if len(os.fsencode(part)) > NAME_MAX:
            raise ValueError(f"--state-file has a path component of {len(os.fsencode(part))} bytes "
                             f"(the limit is {NAME_MAX}): {part[:32]}...")
    if path.endswith("/"):
        raise ValueError(f"--state-file {path!r} ends with '/'; it must name a file")


def check_state_file_writable(path: str, source: str) -> None:
    """The state file can be written here: not a directory, not the source, and its directory
    exists or can be created (the nearest existing ancestor is a writable directory).

    Checked at start (exit 2 with one line) rather than at the first save, where the monitor could
    only warn and would re-read old lines after every restart. Nothing is created here.
    """
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise ValueError(f"--state-file {path!r} is a directory; it must name a file")
    try:
        same = source != SYSLOG_SOURCE and os.path.exists(full) and os.path.samefile(full, source)
    except OSError:
        same = False
    if same:
        raise ValueError(f"--state-file {path!r} is the --source file; it would overwrite the log")
    parent = os.path.dirname(full)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--state-file {path!r}: {parent!r} is not a directory, so its directory cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--state-file {path!r}: cannot create or write files in {parent!r}")
