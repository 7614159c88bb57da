"""`nvsentinel exporter`: flags and wiring only; the exporter lives in nvsentinel.cluster.exporter."""
from __future__ import annotations

import argparse
import logging
import sys

from nvsentinel.cluster.exporter.config import ENV_PREFIX, ExporterSettings
from nvsentinel.service.entrypoint import Entrypoint
from nvsentinel.service.settings import add_arguments, load_settings

logger = logging.getLogger(__name__)

NAME = "exporter"
HELP = "send every HealthEvent phase transition as a CloudEvent to a sink (at-least-once)"
DESCRIPTION = ("The HealthEvent exporter (docs/exporter.md): CloudEvents over HTTP binary mode, in order per "
               "event, checkpointed. Flags > EXPORTER_* environment > defaults.")


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, ExporterSettings, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel exporter") -> int:
    settings = load_settings(ExporterSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    import anyio

    from nvsentinel.cluster.exporter import app
    from nvsentinel.k8s import Kube

    try:
        kube = Kube.connect(settings.kubeconfig or None, settings.context or None)
    except Exception as exc:  # noqa: BLE001 - any config-loading failure is a start-up error
        logger.error("cannot start: no usable Kubernetes configuration", extra={"kv": {"error": str(exc)[:300]}})
        return 1
    try:
        return anyio.run(app.run, settings, kube)
    finally:
        kube.close()


ENTRYPOINT = Entrypoint(NAME, HELP, DESCRIPTION, add_parser_arguments, run)
register, main = ENTRYPOINT.register, ENTRYPOINT.main

if __name__ == "__main__":
    sys.exit(main())
