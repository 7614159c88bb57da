"""`nvsentinel remediation-agent`: the same daemon as `python -m nvsentinel.daemons.remediation_agent`."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.daemons import remediation_agent as daemon

    parser = subparsers.add_parser(
        "remediation-agent",
        help="this node's half of remediation: ask the NVML provider for GPU resets and verify GPUs after a "
        "remediation (HealthEvents ↔ Device API)",
        description="The remediation agent. Flags > REMEDIATION_AGENT_* environment > defaults "
        "(the Kubernetes flags: flag, else $KUBECONFIG).",
    )
    daemon.add_parser_arguments(parser)
    parser.set_defaults(func=lambda args: daemon.run(args))
