"""`nvsentinel device-api-server`: flags and wiring only; the server lives in nvsentinel.node.api."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from nvsentinel.node.api.config import ENV_PREFIX, DeviceApiSettings
from nvsentinel.service.entrypoint import Entrypoint
from nvsentinel.service.settings import add_arguments, config_error, load_settings

logger = logging.getLogger(__name__)

NAME = "device-api-server"
HELP = "serve the node-local Device API (gRPC) over a unix socket (TCP only when asked)"
DESCRIPTION = "Serve the node-local Device API. Flags > DEVICE_API_* environment > defaults."


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, DeviceApiSettings, ENV_PREFIX)


def _embedded_nvml(settings: DeviceApiSettings) -> Callable[[str], Any] | None:
    """`--enable-nvml-provider`: the NVML provider as the server's companion (nvsentinel.node.nvml.embedded)."""
    if not settings.enable_nvml_provider:
        return None
    from nvsentinel.node.nvml.embedded import EmbeddedNvmlProvider
    from nvsentinel.node.nvml.library import NvmlLoader

    if settings.fake_nvml:  # tests and demos only: the one place this daemon reaches into devtools
        from nvsentinel.devtools.fake_nvml import nvml_loader

        loader = nvml_loader(settings.fake_nvml_topology, settings.fake_nvml_control, settings.nvml_reset_command)
    else:
        loader = NvmlLoader.real(settings.nvml_driver_root, settings.nvml_reset_command)
    return lambda address: EmbeddedNvmlProvider(
        address, loader, ignored_xids=settings.nvml_ignored_xids, node_name=settings.node_name,
        xid_overrides=settings.xid_overrides, health_poll_interval=settings.nvml_health_poll_interval,
        nvml_call_timeout=settings.nvml_call_timeout)


def run(args: argparse.Namespace, prog: str = "nvsentinel device-api-server") -> int:
    settings = load_settings(DeviceApiSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    from nvsentinel.node.api.server import BindError, DeviceApiServer

    try:
        asyncio.run(DeviceApiServer(settings, companion=_embedded_nvml(settings)).run())
    except BindError as exc:  # a flag names a busy port or a socket another server holds
        return config_error(prog, str(exc))
    except (OSError, RuntimeError) as exc:
        logger.error("cannot start", extra={"kv": {"error": str(exc)}})
        return 1
    return 0


ENTRYPOINT = Entrypoint(NAME, HELP, DESCRIPTION, add_parser_arguments, run)
register, main = ENTRYPOINT.register, ENTRYPOINT.main

if __name__ == "__main__":
    sys.exit(main())
