"""`nvsentinel_kmsg_*` counters and the optional /metrics endpoint of the kernel-log monitor.

The counters say what the monitor decoded (by event kind), what it wrote to the Device API and
what it did NOT decode and why (a dropped line is a fault it may have missed), and how often the
log file moved under it; a gauge says each GPU's KmsgHealthy as the monitor last read or wrote it.
The skip and drop counters are also written into the log line of each occurrence, so they are
visible with the metrics port off.
"""
from __future__ import annotations

from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from nvsentinel.service.http import HttpEndpoint, ThreadedHttp
from nvsentinel.xid import KINDS

__all__ = ["KmsgMetrics", "KmsgHttp", "SKIP_REASONS", "READ_OPS", "DROP_REASONS", "WRITE_STATUSES"]

SKIP_REASONS: Final = ("overlong", "resync", "decoder_error", "handler_error", "crashed")
"""Why a line was not decoded: longer than --max-line-bytes; the rest of a line a saved cursor
pointed into; the decoder or the handler raised on it; the monitor died on it POISON_DEATHS times."""
READ_OPS: Final = ("open", "read")
DROP_REASONS: Final = ("user_space", "malformed", "continuation")
"""Why a kernel log record was dropped before decoding (/dev/kmsg and syslog(2) sources): user
space wrote it (facility other than the kernel's 0; only `GPU reset executed:` lines are taken from
user space), or it had no readable `<N>` / `P,SEQ,...;` prefix."""
WRITE_STATUSES: Final = ("True", "False")
"""The KmsgHealthy status a condition write set (False: a fault; True: a GPU reset healed it)."""


class KmsgMetrics:
    """One registry per monitor (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.lines_skipped = Counter("nvsentinel_kmsg_lines_skipped", "kernel log lines not decoded, by reason",
                                     ["reason"], registry=r)
        self.truncations = Counter("nvsentinel_kmsg_file_truncations",
                                   "times the log file was truncated or rewritten in place (read again from 0)",
                                   registry=r)
        self.rotations = Counter("nvsentinel_kmsg_file_rotations",
                                 "times another file appeared at the --source path (followed from its start)",
                                 registry=r)
        self.read_errors = Counter("nvsentinel_kmsg_read_errors", "failed opens and reads of the source",
                                   ["op"], registry=r)
        self.records_dropped = Counter(
            "nvsentinel_kmsg_records_dropped",
            "kernel log records dropped before decoding: written by user space (facility not 0), or malformed",
            ["reason"], registry=r)
        self.overruns = Counter(
            "nvsentinel_kmsg_ring_overruns",
            "times the kernel's log ring overwrote records before the monitor read them (how many is not known "
            "to syslog(2))", registry=r)
        self.events_decoded = Counter(
            "nvsentinel_kmsg_events_decoded", "events the XID decoder found in the kernel log, by kind "
            "(xid, sxid, fallen_off_bus, pci_mapping, gpu_reset)", ["kind"], registry=r)
        self.condition_writes = Counter(
            "nvsentinel_kmsg_condition_writes",
            "KmsgHealthy condition writes the Device API accepted, by the status written", ["status"], registry=r)
        self.gpu_healthy = Gauge(
            "nvsentinel_kmsg_gpu_healthy",
            "1 when the GPU's KmsgHealthy condition is True or absent, 0 when False (as last read or written)",
            ["gpu"], registry=r)
        for kind in KINDS:
            self.events_decoded.labels(kind)
        for status in WRITE_STATUSES:
            self.condition_writes.labels(status)
        for reason in DROP_REASONS:
            self.records_dropped.labels(reason)
        for reason in SKIP_REASONS:
            self.lines_skipped.labels(reason)
        for op in READ_OPS:
            self.read_errors.labels(op)

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value by its exported name (without `_total`), for logs and tests."""
        return self.registry.get_sample_value(name + "_total", labels or None) or 0.0

    def gpu(self, uuid: str, healthy: bool) -> None:
        """Record a GPU's KmsgHealthy as just read or written."""
        self.gpu_healthy.labels(uuid).set(1 if healthy else 0)

    def scrape(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


class KmsgHttp(ThreadedHttp):
    """/metrics on the metrics port (0: off, nothing is bound)."""

    def __init__(self, host: str, metrics_port: int, metrics: KmsgMetrics) -> None:
        endpoints = [HttpEndpoint(host, metrics_port, {"/metrics": metrics.scrape})] if metrics_port else []
        super().__init__(endpoints, name="kmsg-http")
