"""`nvsentinel nvml-provider`: the same daemon as `python -m nvsentinel.daemons.nvml_provider`."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.daemons import nvml_provider as daemon

    parser = subparsers.add_parser(
        "nvml-provider",
        help="watch GPUs through NVML, write their NvmlHealthy condition to the Device API, and "
        "answer GPU reset requests (the gpu-reset handshake)",
        description="The NVML provider. Flags > NVML_PROVIDER_* environment > defaults.",
    )
    daemon.add_parser_arguments(parser)
    parser.set_defaults(func=lambda args: daemon.run(args))
