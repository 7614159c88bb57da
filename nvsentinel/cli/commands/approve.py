"""`nvsentinel approve NAME`: let the remediation of a HealthEvent in remediation mode approve proceed.

Writes the annotation `nvsentinel.nvidia.com/approval: approved` (with who and why); the remediation controller,
which waits with `Remediated False AwaitingApproval`, starts at once (docs/remediation.md#hand-off).
"""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.cli.args import add_decision_arguments

    parser = subparsers.add_parser("approve", help="let a HealthEvent that awaits approval be remediated")
    add_decision_arguments(parser, "approve")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nvsentinel.cli.args import run_decision
    from nvsentinel.policy.handoff import APPROVED

    return run_decision(args, APPROVED)
