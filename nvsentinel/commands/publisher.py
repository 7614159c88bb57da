"""`nvsentinel publisher`: the same daemon as `python -m nvsentinel.daemons.publisher`."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.daemons import publisher as daemon

    parser = subparsers.add_parser(
        "publisher",
        help="turn this node's GPU conditions (Device API) into HealthEvent objects in Kubernetes",
        description="The HealthEvent publisher. Flags > PUBLISHER_* environment > defaults.",
    )
    daemon.add_parser_arguments(parser)
    parser.set_defaults(func=lambda args: daemon.run(args))
