"""`nvsentinel get gpus|gpu NAME` (the node's Device API) and `get healthevents [NAME]` (the cluster).

Both read like kubectl reads the apiserver: table, wide, json or yaml; errors are one line and exit 1.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from nvsentinel import errors
from nvsentinel.service.sanitize import printable
from nvsentinel.cli.args import HEALTHEVENT_ALIASES, add_address, healthevent_not_found
from nvsentinel.cli.views.gpus import FORMATS, render_gpus
from nvsentinel.k8s.connect import add_kube_arguments, with_kube

if TYPE_CHECKING:
    from nvsentinel.k8s import Kube


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("get", help="show GPUs (node Device API) or HealthEvents (cluster)")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    many = kinds.add_parser("gpus", help="list every GPU")
    one = kinds.add_parser("gpu", help="show one GPU")
    one.add_argument("name", help="the GPU's NVML UUID (GPU-...)")
    for p in (many, one):
        p.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format (default: table)")
        add_address(p)
        p.set_defaults(func=run)

    he = kinds.add_parser("healthevents", aliases=list(HEALTHEVENT_ALIASES),
                          help="list HealthEvents (open ones unless --all), or show one by name")
    he.add_argument("name", nargs="?", help="one HealthEvent's name")
    he.add_argument("--node", default=None, help="only events for this node (label nvsentinel.nvidia.com/node)")
    he.add_argument("-l", "--selector", default=None, help="label selector, e.g. nvsentinel.nvidia.com/is-fatal=true")
    he.add_argument("--all", action="store_true",
                    help="include Resolved and Cancelled events (hidden by default)")
    he.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format (default: table)")
    add_kube_arguments(he)
    he.set_defaults(func=run_healthevents)


def run(args: argparse.Namespace) -> int:
    from nvsentinel.node.client import DeviceApiClient

    try:
        with DeviceApiClient(args.address, timeout=args.timeout) as client:
            if args.kind == "gpus":
                rv, gpus = client.list_gpus()
                out = render_gpus(gpus, args.output, rv)
            else:
                out = render_gpus([client.get_gpu(args.name)], args.output)
    except (errors.NvsentinelError, ValueError) as exc:
        print(f"error: {printable(exc, 1000)}", file=sys.stderr)
        return 1
    if out:
        print(out)
    else:
        print("No GPUs found.", file=sys.stderr)
    return 0


# ---- HealthEvents ----------------------------------------------------------------------------------
def run_healthevents(args: argparse.Namespace) -> int:
    from nvsentinel.cli.views import display
    from nvsentinel.policy.healthevent import LABEL_NODE, utcnow
    from nvsentinel.k8s.resources import HEALTHEVENTS

    if args.name and (args.node or args.selector or args.all):
        # kubectl's rule too: a name already picks the object
        print("error: --node, --selector and --all cannot be used with a NAME", file=sys.stderr)
        return 1
    selector = ",".join(s for s in (f"{LABEL_NODE}={args.node}" if args.node else None, args.selector) if s) or None

    def body(kube: Kube) -> int:
        if args.name:
            obj = kube.get(HEALTHEVENTS, args.name)
            print(display.render_one(obj, args.output, utcnow()))
            return 0
        items, rv = kube.list(HEALTHEVENTS, label_selector=selector)
        shown = items if args.all else [o for o in items if not display.is_terminal(o)]
        out = display.render_list(shown, args.output, utcnow(), rv)
        if out:
            print(out)
        if not shown and args.output in ("table", "wide"):
            hidden = len(items) - len(shown)
            hint = f" ({hidden} resolved or cancelled hidden; --all shows them)" if hidden else ""
            print(f"No resources found{hint}.", file=sys.stderr)
        return 0

    return with_kube(args, body, not_found=lambda exc: healthevent_not_found(exc, args.name))
