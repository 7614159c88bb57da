"""The `nvsentinel` command: one entry point, one subcommand per module in nvsentinel.commands.

Each command module exposes `register(subparsers) -> None` and sets `func(args) -> int` on its parser;
this file only assembles them, configures logging and turns typed errors into exit codes.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from nvsentinel import __version__
from nvsentinel.logs import configure_logging

logger = logging.getLogger(__name__)

#: Subcommand modules under nvsentinel.commands, in --help order. Later issues append here.
COMMAND_MODULES: tuple[str, ...] = ("bench", "xid", "device-api-server", "get", "describe", "watch", "nvml", "nvml-provider", "kmsg-monitor", "publisher", "remediation-agent", "controllers", "breaker", "demo", "status")


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
        try:
            module = importlib.import_module(f"nvsentinel.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name != f"nvsentinel.commands.{name.replace('-', '_')}":
                raise
            continue  # a command whose issue has not landed yet
        module.register(sub)
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
