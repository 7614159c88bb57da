"""`nvsentinel kmsg-monitor`: the same daemon as `python -m nvsentinel.daemons.kmsg_monitor`."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.daemons import kmsg_monitor as daemon

    parser = subparsers.add_parser(
        "kmsg-monitor",
        help="follow /dev/kmsg (or a log file) and write GPUs' KmsgHealthy condition to the Device API",
        description="The kernel-log monitor. Flags > KMSG_MONITOR_* environment > defaults.",
    )
    daemon.add_parser_arguments(parser)
    parser.set_defaults(func=lambda args: daemon.run(args))
