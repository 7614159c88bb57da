"""`nvsentinel kmsg-monitor`: flags and wiring only; the monitor lives in nvsentinel.node.kmsg."""
from __future__ import annotations

import argparse
import logging
import sys
import signal

from nvsentinel.node.kmsg.config import ENV_PREFIX, KmsgMonitorSettings
from nvsentinel.service.entrypoint import Entrypoint
from nvsentinel.service.settings import add_arguments, load_settings

logger = logging.getLogger(__name__)

NAME = "kmsg-monitor"
HELP = "follow /dev/kmsg (or a log file) and write GPUs' KmsgHealthy condition to the Device API"
DESCRIPTION = "The kernel-log monitor. Flags > KMSG_MONITOR_* environment > defaults."


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, KmsgMonitorSettings, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel kmsg-monitor") -> int:
    settings = load_settings(KmsgMonitorSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    from nvsentinel.node.client import DeviceApiClient
    from nvsentinel.node.kmsg.monitor import KmsgMonitor, SourceError

    try:
        client = DeviceApiClient(settings.address or None, timeout=5.0)
    except ValueError as exc:
        logger.error("cannot start", extra={"kv": {"error": str(exc)}})
        return 1
    try:
        try:
            monitor = KmsgMonitor(
                client, settings.source, settings.state_file,
                dedup_window=settings.dedup_window, ignored_xids=settings.ignored_xids,
                poll_interval=settings.poll_interval, node_name=settings.node_name,
            )
        except SourceError as exc:
            logger.error("cannot start", extra={"kv": {"error": str(exc)}})
            return 1
        logger.info("kmsg monitor started", extra={"kv": {
            "source": settings.source, "state_file": settings.state_file, "address": client.address,
            "node": settings.node_name, "dedup_window": settings.dedup_window,
            "ignored_xids": ",".join(map(str, settings.ignored_xids))}})

        def _stop(signum: int, _frame: object) -> None:
            monitor.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            monitor.run()
        finally:
            monitor.close()
        return 0
    finally:
        client.close()


ENTRYPOINT = Entrypoint(NAME, HELP, DESCRIPTION, add_parser_arguments, run)
register, main = ENTRYPOINT.register, ENTRYPOINT.main

if __name__ == "__main__":
    sys.exit(main())
