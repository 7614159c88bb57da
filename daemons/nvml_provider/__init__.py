"""`nvsentinel nvml-provider`: flags and wiring only; the provider lives in nvsentinel.nvml."""
from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Sequence

from nvsentinel.nvml.config import ENV_PREFIX, NvmlProviderSettings
from nvsentinel.daemons import load_settings
from nvsentinel.settings import add_arguments

logger = logging.getLogger(__name__)


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, NvmlProviderSettings, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel nvml-provider") -> int:
    settings = load_settings(NvmlProviderSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    from nvsentinel.client import DeviceApiClient
    from nvsentinel.nvml.health import HealthServer
    from nvsentinel.nvml.library import NvmlLibraryError, load_library
    from nvsentinel.nvml.provider import NvmlInitError, NvmlProvider

    try:
        library = load_library(
            settings.nvml_driver_root,
            fake=settings.fake_nvml,
            fake_topology=settings.fake_nvml_topology,
            fake_control=settings.fake_nvml_control,
        )
        client = DeviceApiClient(settings.address or None, timeout=5.0)
    except (NvmlLibraryError, ValueError) as exc:
        logger.error("cannot start", extra={"kv": {"error": str(exc)}})
        return 1
    provider = NvmlProvider(
        client,
        wait_timeout_ms=settings.wait_timeout_ms,
        ignored_xids=settings.nvml_ignored_xids,
        node_name=settings.node_name,
        reset_command=settings.nvml_reset_command,
    )
    health = HealthServer(settings.http_bind_address, settings.health_port, lambda: provider.ready)
    try:
        health.start()
    except OSError as exc:
        logger.error("cannot start", extra={"kv": {"error": f"--health-port {settings.health_port}: {exc}"}})
        client.close()
        return 1
    logger.info("health endpoint listening", extra={"kv": {
        "address": settings.http_bind_address, "health_port": health.port}})
    try:
        try:
            provider.init_nvml()
        except NvmlInitError as exc:
            hint = ""
            if library == "system-default":
                hint = (f"; no libnvidia-ml.so.1 under --nvml-driver-root {settings.nvml_driver_root!r} "
                        "nor on the system library path (is the NVIDIA driver installed or mounted? "
                        "--fake-nvml selects the fake for tests)")
            logger.error("cannot start", extra={"kv": {"error": f"{exc}{hint}", "library": library}})
            return 1
        logger.info("nvml provider started", extra={"kv": {
            "library": library, "address": client.address, "node": settings.node_name,
            "wait_timeout_ms": settings.wait_timeout_ms,
            "ignored_xids": ",".join(map(str, settings.nvml_ignored_xids))}})

        def _stop(signum: int, _frame: object) -> None:
            provider.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        provider.run()
        return 0
    finally:
        provider.shutdown_nvml()
        client.close()
        health.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nvsentinel.daemons.nvml_provider",
                                     description="Watch GPUs through NVML and report their health to the Device API.")
    add_parser_arguments(parser)
    return run(parser.parse_args(argv), prog=parser.prog)
