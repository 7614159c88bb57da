"""`nvsentinel nvml-provider`: flags and wiring only; the provider lives in nvsentinel.node.nvml."""
from __future__ import annotations

import argparse
import logging
import sys

from nvsentinel.node.nvml.config import ENV_PREFIX, NvmlProviderSettings
from nvsentinel.service.entrypoint import Entrypoint, on_stop_signal
from nvsentinel.service.settings import add_arguments, load_settings

logger = logging.getLogger(__name__)

NAME = "nvml-provider"
HELP = ("watch GPUs through NVML, write their NvmlHealthy condition to the Device API, and "
        "answer GPU reset requests (the gpu-reset handshake)")
DESCRIPTION = "The NVML provider. Flags > NVML_PROVIDER_* environment > defaults."


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, NvmlProviderSettings, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel nvml-provider") -> int:
    settings = load_settings(NvmlProviderSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    from nvsentinel.node.client import DeviceApiClient
    from nvsentinel.node.nvml.health import HealthServer
    from nvsentinel.node.nvml.library import NvmlLibraryError, NvmlLoader
    from nvsentinel.node.nvml.metrics import NvmlMetrics
    from nvsentinel.node.nvml.provider import NvmlInitError, NvmlProvider
    from nvsentinel.xid import load_catalog

    if settings.fake_nvml:  # tests and demos only: the one place this daemon reaches into devtools
        from nvsentinel.devtools.fake_nvml import nvml_loader

        loader = nvml_loader(settings.fake_nvml_topology, settings.fake_nvml_control, settings.nvml_reset_command)
    else:
        loader = NvmlLoader.real(settings.nvml_driver_root, settings.nvml_reset_command)
    try:
        catalog = load_catalog(settings.xid_overrides or None)
    except Exception as exc:  # noqa: BLE001 - override file errors come in many types
        logger.error("cannot start", extra={"kv": {"error": f"--xid-overrides: {type(exc).__name__}: {exc}"}})
        return 1
    try:
        library = loader.load()
        client = DeviceApiClient(settings.address or None, timeout=5.0)
    except (NvmlLibraryError, ValueError) as exc:
        logger.error("cannot start", extra={"kv": {"error": str(exc)}})
        return 1
    metrics = NvmlMetrics()
    provider = NvmlProvider(
        client,
        wait_timeout_ms=settings.wait_timeout_ms,
        ignored_xids=settings.nvml_ignored_xids,
        catalog=catalog,
        node_name=settings.node_name,
        resetter=loader.resetter(),
        health_poll_interval=settings.health_poll_interval,
        call_timeout=settings.nvml_call_timeout,
        metrics=metrics,
    )
    health = HealthServer(settings.http_bind_address, settings.health_port, lambda: provider.ready,
                          settings.metrics_port, metrics)
    try:
        health.start()
    except OSError as exc:
        logger.error("cannot start", extra={"kv": {
            "error": f"--health-port {settings.health_port}/--metrics-port {settings.metrics_port}: {exc}"}})
        client.close()
        return 1
    logger.info("health endpoint listening", extra={"kv": {
        "address": settings.http_bind_address, "health_port": health.port, "metrics_port": health.metrics_port}})
    try:
        try:
            provider.init_nvml()
        except NvmlInitError as exc:
            logger.error("cannot start", extra={"kv": {"error": loader.init_failure(library, exc), "library": library}})
            return 1
        logger.info("nvml provider started", extra={"kv": {
            "library": library, "address": client.address, "node": settings.node_name,
            "wait_timeout_ms": settings.wait_timeout_ms, "health_poll_interval": settings.health_poll_interval,
            "nvml_call_timeout": settings.nvml_call_timeout, "xid_overrides": settings.xid_overrides,
            "ignored_xids": ",".join(map(str, settings.nvml_ignored_xids))}})

        on_stop_signal(provider.stop)
        provider.run()
        return 0
    finally:
        provider.shutdown_nvml()
        client.close()
        health.stop()


ENTRYPOINT = Entrypoint(NAME, HELP, DESCRIPTION, add_parser_arguments, run)
register, main = ENTRYPOINT.register, ENTRYPOINT.main

if __name__ == "__main__":
    sys.exit(main())
