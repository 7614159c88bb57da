"""`nvsentinel kmsg-monitor`: flags and wiring only; the monitor lives in nvsentinel.kmsg."""
from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Sequence

from nvsentinel.kmsg.config import ENV_PREFIX, KmsgMonitorSettings
from nvsentinel.daemons import load_settings
from nvsentinel.settings import add_arguments

logger = logging.getLogger(__name__)


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, KmsgMonitorSettings, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel kmsg-monitor") -> int:
    settings = load_settings(KmsgMonitorSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    from nvsentinel.client import DeviceApiClient
    from nvsentinel.kmsg.monitor import KmsgMonitor, SourceError

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nvsentinel.daemons.kmsg_monitor",
                                     description="Follow the kernel log and report GPU XIDs to the Device API.")
    add_parser_arguments(parser)
    return run(parser.parse_args(argv), prog=parser.prog)
