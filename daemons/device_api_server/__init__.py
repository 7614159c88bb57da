"""`nvsentinel device-api-server`: flags and wiring only; the server lives in nvsentinel.api."""
from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from nvsentinel.api.config import ENV_PREFIX, DeviceApiSettings
from nvsentinel.daemons import load_settings
from nvsentinel.settings import add_arguments

logger = logging.getLogger(__name__)


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, DeviceApiSettings, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel device-api-server") -> int:
    settings = load_settings(DeviceApiSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    from nvsentinel.api.server import DeviceApiServer

    try:
        asyncio.run(DeviceApiServer(settings).run())
    except (OSError, RuntimeError) as exc:
        logger.error("cannot start", extra={"kv": {"error": str(exc)}})
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nvsentinel.daemons.device_api_server",
                                     description="Serve the node-local Device API (gRPC).")
    add_parser_arguments(parser)
    return run(parser.parse_args(argv), prog=parser.prog)
