"""The `nvsentinel` command: one entry point, one subcommand per module.

Operator commands live in `nvsentinel.cli.commands`; the daemons are dispatched straight to their
modules in `nvsentinel.daemons`. Each module exposes `register(subparsers) -> None` and sets
`func(args) -> int` on its parser; this file only assembles them, configures logging and turns
typed errors into exit codes.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from nvsentinel import __version__
from nvsentinel.service.logs import configure_logging

logger = logging.getLogger(__name__)

#: Subcommands, in --help order.
COMMAND_MODULES: tuple[str, ...] = ("bench", "xid", "device-api-server", "get", "describe", "watch", "nvml",
                                    "nvml-provider", "kmsg-monitor", "publisher", "remediation-agent", "controllers",
                                    "admission-webhook", "exporter", "breaker", "demo", "status", "approve", "reject")
#: Subcommands that are daemons: their module is `nvsentinel.daemons.<name>`.
DAEMONS: frozenset[str] = frozenset({"device-api-server", "nvml-provider", "kmsg-monitor", "publisher",
                                     "remediation-agent", "controllers", "admission-webhook",
                                     "exporter"})


def module_of(command: str) -> str:
    """The module that registers `command`."""
    package = "nvsentinel.daemons" if command in DAEMONS else "nvsentinel.cli.commands"
    return f"{package}.{command.replace('-', '_')}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvsentinel",
        description="Kubernetes-native GPU health monitoring and automated remediation.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"nvsentinel {__version__}",
    )
    # dests differ from the daemons' own --log-format/--log-level, which they resolve themselves
    parser.add_argument(
        "--log-format",
        dest="global_log_format",
        choices=("plain", "full", "json"),
        default="plain",
        help="log line format (default: plain key=value)",
    )
    parser.add_argument("--log-level", dest="global_log_level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(module_of(name)).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.global_log_format, args.global_log_level)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
