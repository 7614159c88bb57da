"""`nvsentinel watch gpus`: follow GPU changes as they happen (one line or JSON object per event)."""
from __future__ import annotations

import argparse
import json
import sys

from nvsentinel import errors
from nvsentinel.cli.args import add_address
from nvsentinel.cli.output import gpu_dict, gpu_row


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("watch", help="follow changes from the node's Device API")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    gpus = kinds.add_parser("gpus", help="every GPU change: ADDED for each GPU, then updates")
    gpus.add_argument("-o", "--output", choices=("table", "json"), default="table")
    gpus.add_argument("--since", type=int, default=None, metavar="RV", help="resume after this resource version")
    gpus.add_argument("--bookmarks", action="store_true", help="also print BOOKMARK events")
    add_address(gpus)
    gpus.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nvsentinel.node.client import DeviceApiClient

    try:
        with DeviceApiClient(args.address, timeout=args.timeout) as client:
            for event in client.watch_gpus(since_rv=args.since):
                if event.type == "BOOKMARK" and not args.bookmarks:
                    continue
                if args.output == "json":
                    line = json.dumps({"type": event.type, "resourceVersion": event.resource_version, "object": gpu_dict(event.gpu)})
                elif event.type == "BOOKMARK":
                    line = f"BOOKMARK   rv={event.resource_version}"
                else:
                    name, health, action, rv, conds = gpu_row(event.gpu, wide=False)
                    line = f"{event.type:<10} {name}  {health}  action={action}  rv={rv}  {conds}"
                print(line, flush=True)
    except (errors.NvsentinelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
