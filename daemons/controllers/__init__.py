"""`nvsentinel controllers`: flags and wiring only; the chain lives in nvsentinel.controllers."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from nvsentinel.controllers.config import ENV_PREFIX, ControllersSettings
from nvsentinel.controllers.drain.config import DrainConfig
from nvsentinel.controllers.quarantine.config import QuarantineConfig
from nvsentinel.controllers.remediation.config import RemediationConfig
from nvsentinel.daemons import load_settings
from nvsentinel.settings import SettingsError, add_arguments, resolve

logger = logging.getLogger(__name__)

#: Each controller's settings dataclass, resolved from the same flags and environment prefix.
CONTROLLER_CONFIGS: dict[str, type] = {"quarantine": QuarantineConfig, "drain": DrainConfig,
                                       "remediation": RemediationConfig}


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

    from nvsentinel.controllers import app
    from nvsentinel.k8s import Kube

    try:
        kube = Kube.connect(settings.kubeconfig or None, settings.context or None, qps=settings.kube_qps,
                            burst=settings.kube_burst)
    except Exception as exc:  # noqa: BLE001 - any config-loading failure is a start-up error
        logger.error("cannot start: no usable Kubernetes configuration", extra={"kv": {"error": str(exc)[:300]}})
        return 1
    try:
        return anyio.run(app.run, settings, configs, kube)
    finally:
        kube.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nvsentinel.daemons.controllers",
                                     description="Run the nvsentinel controller chain.")
    add_parser_arguments(parser)
    return run(parser.parse_args(argv), prog=parser.prog)
