"""`nvsentinel nvml`: drive the fake libnvidia-ml (tests and demos only; see docs/fake-nvml.md).

    nvsentinel nvml inject --gpu GPU (--xid N | --ecc dbe|sbe | --lose | --recover | --reset
                                      | --recovery-action NAME|N | --hang SECONDS
                                      | --replace [--new-uuid UUID] [--new-serial SERIAL])
                           [--control PATH]
    nvsentinel nvml library-path

`inject` appends one command to the fake's control file; every process running the fake with that
file applies it at its next NVML call. GPU is an index, a GPU-... UUID, or `all`. The file defaults
to $NVSENTINEL_FAKE_NVML_CONTROL, else a per-user file in the temp directory (the same default
`nvsentinel.devtools.fake_nvml.load()` uses). Exit status: 0 written, 1 the file could not be written,
2 usage error. `library-path` prints the built fake library's path (exit 1 if it was not built).
"""
from __future__ import annotations

import argparse
import sys

from nvsentinel.devtools import fake_nvml

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "nvml",
        help="drive the fake libnvidia-ml used by tests and the demo (inject XID, ECC, GPU lost, hangs, ...)",
        description="Drive nvsentinel's fake libnvidia-ml (tests and demos only).",
    )
    sub = parser.add_subparsers(dest="nvml_command", metavar="SUBCOMMAND")

    inject = sub.add_parser(
        "inject",
        help="inject a fault into the fake GPUs of every process using the control file",
        description=(
            "Append one fault command to the fake NVML's control file. Processes running the fake "
            "apply it at their next NVML call (an event wait looks every 5 ms)."
        ),
    )
    inject.add_argument("--gpu", required=True, metavar="GPU", help="GPU index, GPU-... UUID, or 'all'")
    what = inject.add_mutually_exclusive_group(required=True)
    what.add_argument("--xid", type=int, metavar="N", help="an XID critical error event with this XID")
    what.add_argument("--ecc", choices=("dbe", "sbe"), help="a double-bit (dbe) or single-bit (sbe) ECC event")
    what.add_argument("--lose", action="store_true", help="the GPU falls off the bus (GPU_IS_LOST)")
    what.add_argument("--recover", action="store_true", help="a lost GPU is reachable again")
    what.add_argument(
        "--reset",
        action="store_true",
        help="reset the GPU: reachable again, recovery action NONE, undelivered events dropped",
    )
    what.add_argument(
        "--recovery-action",
        metavar="NAME|N",
        help="set the GPU's recovery action (field 230, and its event): "
        f"{', '.join(fake_nvml.RECOVERY_ACTIONS)} (any case), or a number 0..4294967295",
    )
    what.add_argument(
        "--hang",
        type=float,
        metavar="SECONDS",
        help="calls on the GPU block for SECONDS (a decimal number, 0..3600; 0 ends a hang)",
    )
    what.add_argument(
        "--replace",
        action="store_true",
        help="swap the board: new UUID and serial (derived unless --new-uuid/--new-serial), same slot",
    )
    inject.add_argument("--new-uuid", metavar="UUID", help="with --replace: the new board's GPU-... UUID")
    inject.add_argument("--new-serial", metavar="SERIAL", help="with --replace: the new board's serial")
    inject.add_argument(
        "--control",
        metavar="PATH",
        # named, not computed: finding the temp directory probes it, and --help or --version must work on a
        # read-only root with no /tmp
        help=f"control file (default: ${fake_nvml.CONTROL_ENV}, else <temp dir>/nvsentinel-fake-nvml-<uid>.ctl)",
    )
    inject.set_defaults(func=_inject)

    path = sub.add_parser("library-path", help="print the path of the built fake libnvidia-ml")
    path.set_defaults(func=_library_path)

    def _usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)


def _gpu(text: str) -> fake_nvml.Gpu:
    return int(text) if text.isdigit() else text


def _recovery_action(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _inject(args: argparse.Namespace) -> int:
    injector = fake_nvml.FaultInjector(args.control)
    if (args.new_uuid is not None or args.new_serial is not None) and not args.replace:
        print("nvsentinel nvml inject: --new-uuid and --new-serial go with --replace", file=sys.stderr)
        return 2
    try:
        gpu = _gpu(args.gpu)
        if args.xid is not None:
            command = injector.inject_xid(gpu, args.xid)
        elif args.ecc:
            command = injector.inject_ecc(gpu, double_bit=args.ecc == "dbe")
        elif args.lose:
            command = injector.lose(gpu)
        elif args.recover:
            command = injector.recover(gpu)
        elif args.recovery_action is not None:
            command = injector.recovery_action(gpu, _recovery_action(args.recovery_action))
        elif args.hang is not None:
            command = injector.hang(gpu, args.hang)
        elif args.replace:
            command = injector.replace(gpu, uuid=args.new_uuid, serial=args.new_serial)
        else:
            command = injector.reset(gpu)
    except ValueError as exc:
        print(f"nvsentinel nvml inject: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nvsentinel nvml inject: {injector.control}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{command} -> {injector.control}")
    return 0


def _library_path(args: argparse.Namespace) -> int:
    try:
        print(fake_nvml.library_path())
    except FileNotFoundError as exc:
        print(f"nvsentinel nvml library-path: {exc}", file=sys.stderr)
        return 1
    return 0
