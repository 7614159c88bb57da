"""`nvsentinel controllers`: the same daemon as `python -m nvsentinel.daemons.controllers`."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.daemons import controllers as daemon

    parser = subparsers.add_parser(
        "controllers",
        help="run the remediation controller chain against a cluster (quarantine, ...)",
        description="The controller chain (SPEC §7). Flags > CONTROLLERS_* environment > defaults.",
    )
    daemon.add_parser_arguments(parser)
    parser.set_defaults(func=lambda args: daemon.run(args))
