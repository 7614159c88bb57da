"""`nvsentinel demo`: see the whole system work on this machine, no cluster or GPU needed."""
from __future__ import annotations

import argparse
import signal
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole system here (fake GPUs, a local control plane) through scripted faults",
        description="Bring up the node side (device API server, fake NVML with 8 GPUs, NVML provider, kernel-log "
        "monitor, publisher, remediation agent) and the cluster side (a local kube-apiserver built once and cached, "
        "3 GPU nodes, workload pods, the controllers), inject a scripted fault sequence and show a live timeline "
        "and a summary. Ctrl-C stops everything and removes every file it made.")
    parser.add_argument("--no-cluster", action="store_true",
                        help="only the node side: faults end as GPU conditions in the Device API")
    parser.add_argument("--kubeconfig", default=None,
                        help="use this real cluster instead of the local one (dry-run unless --live; needs the "
                        "chart's CRD and --node)")
    parser.add_argument("--node", default=None, help="with --kubeconfig: the Node the demo's events name")
    parser.add_argument("--live", action="store_true",
                        help="with --kubeconfig: let the controllers really cordon, drain and remediate --node")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="multiplies the demo's own pauses (the PDB hold, the reboot); 0.2 for a quick run")
    parser.set_defaults(func=run)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up exactly like Ctrl-C


def run(args: argparse.Namespace) -> int:
    from nvsentinel.devtools.demo.runner import Demo, DemoError

    if args.kubeconfig and not args.node:
        print("error: --kubeconfig needs --node (a Node of that cluster for the demo's events)", file=sys.stderr)
        return 2
    if (args.node or args.live) and not args.kubeconfig:
        print("error: --node and --live apply to --kubeconfig only", file=sys.stderr)
        return 2
    if args.no_cluster and args.kubeconfig:
        print("error: --no-cluster and --kubeconfig exclude each other", file=sys.stderr)
        return 2
    if not 0 < args.pace <= 10:
        print(f"error: --pace must be in (0, 10], got {args.pace}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    demo = Demo(cluster=not args.no_cluster, kubeconfig=args.kubeconfig, node=args.node, live=args.live,
                pace=args.pace)
    try:
        return demo.run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopped every process and removed the demo's files", file=sys.stderr)
        return 130
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
