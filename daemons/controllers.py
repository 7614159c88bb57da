"""`nvsentinel controllers`: flags and wiring only; the chain lives in nvsentinel.cluster."""
from __future__ import annotations

import argparse
import logging
import sys

from nvsentinel.cluster.registry import CONTROLLER_CONFIGS
from nvsentinel.cluster.settings import ENV_PREFIX, ControllersSettings
from nvsentinel.service.entrypoint import Entrypoint
from nvsentinel.service.settings import SettingsError, add_arguments, load_settings, resolve

logger = logging.getLogger(__name__)

NAME = "controllers"
HELP = "run the remediation controller chain against a cluster (quarantine, ...)"
DESCRIPTION = "The controller chain (SPEC §7). Flags > CONTROLLERS_* environment > defaults."


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, ControllersSettings, ENV_PREFIX)
    for cls in CONTROLLER_CONFIGS.values():
        add_arguments(parser.add_argument_group(cls.__name__), cls, ENV_PREFIX)


def run(args: argparse.Namespace, prog: str = "nvsentinel controllers") -> int:
    settings = load_settings(ControllersSettings, args, prefix=ENV_PREFIX, prog=prog)
    if settings is None:
        return 2
    try:
        configs = {name: resolve(cls, args, prefix=ENV_PREFIX) for name, cls in CONTROLLER_CONFIGS.items()}
    except SettingsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    import anyio

    from nvsentinel.cluster import app
    from nvsentinel.k8s import Kube

    try:
        kube = Kube.connect(settings.kubeconfig or None, settings.context or None, flow_control=settings.flow_control())
    except Exception as exc:  # noqa: BLE001 - any config-loading failure is a start-up error
        logger.error("cannot start: no usable Kubernetes configuration", extra={"kv": {"error": str(exc)[:300]}})
        return 1
    try:
        return anyio.run(app.run, settings, configs, kube)
    finally:
        kube.close()


ENTRYPOINT = Entrypoint(NAME, HELP, DESCRIPTION, add_parser_arguments, run)
register, main = ENTRYPOINT.register, ENTRYPOINT.main

if __name__ == "__main__":
    sys.exit(main())
