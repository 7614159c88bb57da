"""`nvsentinel kmsg-monitor`: flags and wiring only; the monitor lives in nvsentinel.node.kmsg."""
from __future__ import annotations

import argparse
import logging
import sys

from nvsentinel.node.kmsg.config import ENV_PREFIX, KmsgMonitorSettings, check_state_file_writable
from nvsentinel.service.entrypoint import Entrypoint, on_stop_signal
from nvsentinel.service.settings import add_arguments, load_settings

logger = logging.getLogger(__name__)

NAME = "kmsg-monitor"
HELP = "follow the kernel log (syslog(2), /dev/kmsg or a log file) and write GPUs' KmsgHealthy condition to the Device API"
DESCRIPTION = "The kernel-log monitor. Flags > KMSG_MONITOR_* environment > defaults."


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, KmsgMonitorSettings, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel kmsg-monitor") -> int:
    settings = load_settings(KmsgMonitorSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    try:
        check_state_file_writable(settings.state_file, settings.source)
    except ValueError as exc:  # a setting that cannot work on this node: the same one line as a bad flag
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    from nvsentinel.node.catalog import OverridesError, site_catalog
    from nvsentinel.node.client import DeviceApiClient
    from nvsentinel.node.kmsg.metrics import KmsgHttp, KmsgMetrics
    from nvsentinel.node.kmsg.monitor import KmsgMonitor, SourceError

    try:
        catalog = site_catalog(settings.xid_overrides)
    except OverridesError as exc:
        logger.error("cannot start", extra={"kv": {"error": str(exc)}})
        return 1
    try:
        client = DeviceApiClient(settings.address or None, timeout=5.0)
    except ValueError as exc:
        logger.error("cannot start", extra={"kv": {"error": str(exc)}})
        return 1
    metrics = KmsgMetrics()
    http = KmsgHttp(settings.http_bind_address, settings.metrics_port, metrics)
    try:
        try:
            monitor = KmsgMonitor(
                client, settings.source, settings.state_file,
                dedup_window=settings.dedup_window, ignored_xids=settings.ignored_xids,
                poll_interval=settings.interval, node_name=settings.node_name,
                max_line_bytes=settings.max_line_bytes, metrics=metrics, catalog=catalog,
            )
        except SourceError as exc:
            logger.error("cannot start", extra={"kv": {"error": str(exc)}})
            return 1
        try:
            http.start()
        except OSError as exc:
            logger.error("cannot start", extra={"kv": {"error": f"--metrics-port {settings.metrics_port}: {exc}"}})
            monitor.close()
            return 1
        logger.info("kmsg monitor started", extra={"kv": {
            "source": settings.source, "state_file": settings.state_file, "address": client.address,
            "node": settings.node_name, "dedup_window": settings.dedup_window,
            "ignored_xids": ",".join(map(str, settings.ignored_xids)), "max_line_bytes": settings.max_line_bytes,
            "interval": settings.interval, "xid_overrides": settings.xid_overrides,
            "metrics_port": settings.metrics_port}})

        on_stop_signal(monitor.stop)
        try:
            monitor.run()
        finally:
            monitor.close()
        return 0
    finally:
        http.stop()
        client.close()


ENTRYPOINT = Entrypoint(NAME, HELP, DESCRIPTION, add_parser_arguments, run)
register, main = ENTRYPOINT.register, ENTRYPOINT.main

if __name__ == "__main__":
    sys.exit(main())
