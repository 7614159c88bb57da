"""`nvsentinel device-api-server`: the same daemon as `python -m nvsentinel.daemons.device_api_server`."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.daemons import device_api_server as daemon

    parser = subparsers.add_parser(
        "device-api-server",
        help="serve the node-local Device API (gRPC) over a unix socket and loopback TCP",
        description="Serve the node-local Device API. Flags > DEVICE_API_* environment > defaults.",
    )
    daemon.add_parser_arguments(parser)
    parser.set_defaults(func=lambda args: daemon.run(args))
