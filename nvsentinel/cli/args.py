"""What several commands share: the Device API address flags, the HealthEvent kind's names, and
how a missing HealthEvent (or a missing CRD) is worded."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvsentinel.k8s import KubeNotFound

__all__ = ["HEALTHEVENT_ALIASES", "add_address", "healthevent_not_found"]

HEALTHEVENT_ALIASES = ("healthevent", "he", "hevt")


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Device API: unix:///path or host:port (default: $NVSENTINEL_DEVICE_API, else "
        "unix:///var/run/device-api/device.sock if present, else 127.0.0.1:50051)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")


def healthevent_not_found(exc: KubeNotFound, name: str | None) -> str:
    from nvsentinel.policy.healthevent import API_VERSION, PLURAL
    from nvsentinel.service.sanitize import printable

    # a missing object answers a Status naming it; a missing resource type answers a bare 404
    if name is not None and (exc.body.get("details") or {}).get("name") == name:
        return f'healthevent "{printable(name, 253)}" not found'
    return f"the server has no {PLURAL} ({API_VERSION}): is the HealthEvent CRD installed?"
