"""`nvsentinel get gpus|gpu NAME`: read the Device API like kubectl reads the apiserver."""
from __future__ import annotations

import argparse
import sys

from nvsentinel import errors
from nvsentinel.commands._output import FORMATS, print_gpus


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Device API: unix:///path or host:port (default: $NVSENTINEL_DEVICE_API, else "
        "unix:///var/run/device-api/device.sock if present, else 127.0.0.1:50051)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("get", help="show GPUs from the node's Device API")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    many = kinds.add_parser("gpus", help="list every GPU")
    one = kinds.add_parser("gpu", help="show one GPU")
    one.add_argument("name", help="the GPU's NVML UUID (GPU-...)")
    for p in (many, one):
        p.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format (default: table)")
        add_address(p)
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nvsentinel.client import DeviceApiClient

    try:
        with DeviceApiClient(args.address, timeout=args.timeout) as client:
            if args.kind == "gpus":
                rv, gpus = client.list_gpus()
                print_gpus(gpus, args.output, rv)
            else:
                print_gpus([client.get_gpu(args.name)], args.output)
    except (errors.NvsentinelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
