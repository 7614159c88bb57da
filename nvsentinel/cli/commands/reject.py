"""`nvsentinel reject NAME`: close a HealthEvent without remediating it.

Writes the annotation `nvsentinel.nvidia.com/approval: rejected` (with who and why); the resolution controller
cancels the event (`Resolved False Rejected`) and releases its node once no other fault holds it. An event whose
remediation is under way (Remediating) is refused (docs/remediation.md#hand-off).
"""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.cli.args import add_decision_arguments

    parser = subparsers.add_parser("reject", help="close a HealthEvent without remediating it")
    add_decision_arguments(parser, "reject")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nvsentinel.cli.args import run_decision
    from nvsentinel.policy.handoff import REJECTED

    return run_decision(args, REJECTED)
