"""What every cluster-side CLI command shares: the connection flags and one error → message map."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvsentinel.k8s import Kube, KubeNotFound

__all__ = ["add_kube_arguments", "with_kube", "one_line"]


def add_kube_arguments(parser: argparse.ArgumentParser) -> None:
    """The cluster connection flags."""
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: its current-context)")
    parser.add_argument("--request-timeout", type=float, default=30.0,
                        help="seconds per API request (default 30)")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def with_kube(args: argparse.Namespace, body: Callable[[Kube], int], *,
              not_found: Callable[[KubeNotFound], str] | None = None) -> int:
    """Connect with the command's flags, run `body`, and turn every failure into one line + exit 1.

    `not_found` words a 404 for the command (which object, or which missing CRD).
    """
    from nvsentinel.k8s import Forbidden, Kube, KubeError, KubeNotFound, ServerUnavailable

    try:
        kube = Kube.connect(args.kubeconfig, args.context, timeout=args.request_timeout)
    except FileNotFoundError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the client raises its own ConfigException for a bad kubeconfig
        print(f"error: cannot load kubeconfig: {one_line(exc)}", file=sys.stderr)
        return 1
    try:
        return int(body(kube))
    except KubeNotFound as exc:
        print(f"error: {not_found(exc) if not_found else one_line(exc)}", file=sys.stderr)
        return 1
    except ServerUnavailable as exc:
        print(f"error: cannot reach the Kubernetes API server at {kube.host}: {one_line(exc)}", file=sys.stderr)
        return 1
    except Forbidden as exc:
        print(f"error: forbidden: {one_line(exc)}", file=sys.stderr)
        return 1
    except KubeError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        kube.close()
