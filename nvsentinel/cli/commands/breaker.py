"""`nvsentinel breaker status|reset`: read or reset the quarantine circuit breaker (its ConfigMap).

`reset` writes state Closed and resetAt=now: cordons made before it stop counting, and the
quarantine controller (watching the ConfigMap) resumes with held events at once.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from nvsentinel.k8s.connect import add_kube_arguments, with_kube

if TYPE_CHECKING:
    from nvsentinel.k8s import Kube

_CONFLICT_RETRIES = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.cluster.quarantine.config import BREAKER_CONFIGMAP

    parser = subparsers.add_parser("breaker", help="show or reset the quarantine circuit breaker")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    status = verbs.add_parser("status", help="state, nodes cordoned in the window, and the limit")
    reset = verbs.add_parser("reset", help="close the breaker; cordons made before now stop counting")
    for p in (status, reset):
        add_kube_arguments(p)
        p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "nvsentinel"),
                       help="the controllers' namespace (default: $POD_NAMESPACE, else nvsentinel)")
        p.add_argument("--name", default=BREAKER_CONFIGMAP, help=f"the breaker ConfigMap (default {BREAKER_CONFIGMAP})")
    status.add_argument("--breaker-percent", type=float, default=None,
                        help="override the policy the controller stored with its last trip (default 10)")
    status.add_argument("--breaker-max-nodes", type=int, default=None, help="likewise (default 50)")
    status.add_argument("--breaker-window", type=float, default=None, help="likewise, seconds (default 600)")
    status.add_argument("--node-selector", default="", help="the controller's --node-selector, if it has one")
    status.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")
    status.set_defaults(func=run_status)
    reset.add_argument("--reason", default="", help="why (stored in the ConfigMap)")
    reset.set_defaults(func=run_reset)


def _read(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    from nvsentinel.k8s import KubeNotFound
    from nvsentinel.k8s.resources import CONFIGMAPS

    try:
        return kube.get(CONFIGMAPS, name, namespace)
    except KubeNotFound:
        return None


def run_status(args: argparse.Namespace) -> int:
    from nvsentinel.policy.breaker import BreakerPolicy, BreakerState
    from nvsentinel.cluster.quarantine.logic import breaker_report
    from nvsentinel.policy.healthevent import utcnow
    from nvsentinel.k8s.resources import NODES

    def body(kube: Kube) -> int:
        cm = _read(kube, args.namespace, args.name)
        data = (cm or {}).get("data") or {}

        def pick(flag: Any, key: str, kind: type, default: Any) -> Any:
            if flag is not None:
                return flag
            try:
                return kind(data[key])
            except (KeyError, ValueError):
                return default

        policy = BreakerPolicy(pick(args.breaker_percent, "percent", float, 10.0),
                               pick(args.breaker_max_nodes, "maxNodes", int, 50),
                               pick(args.breaker_window, "windowSeconds", float, 600.0))
        nodes, _ = kube.list(NODES, label_selector=args.node_selector or None)
        report = breaker_report(BreakerState.from_data(data), nodes, policy, utcnow())
        report["configMap"] = f"{args.namespace}/{args.name}" + ("" if cm else " (absent: never tripped)")
        if args.output == "json":
            print(json.dumps(report, indent=2))
            return 0
        stored = "" if report["storedState"] == report["state"] else f" (stored: {report['storedState']}; " \
            "the window since the trip has passed)"
        lines = [
            f"state:      {report['state']}{stored}",
            f"trippedAt:  {report['trippedAt'] or '-'}",
            f"resetAt:    {report['resetAt'] or '-'}",
            f"reason:     {report['reason'] or '-'}",
            f"cordoned:   {report['cordoned']} nodes by nvsentinel in the last {policy.window:g}s"
            + (" (since the reset)" if report["resetAt"] else ""),
            f"limit:      {report['limit']} ({policy.describe(report['gpuNodes'])})",
            f"configMap:  {report['configMap']}",
        ]
        print("\n".join(lines))
        return 0

    return with_kube(args, body)


def run_reset(args: argparse.Namespace) -> int:
    from nvsentinel.policy.breaker import CLOSED, BreakerState
    from nvsentinel.policy.healthevent import format_time, utcnow
    from nvsentinel.k8s import AlreadyExists, KubeConflict
    from nvsentinel.k8s.resources import CONFIGMAPS

    def body(kube: Kube) -> int:
        for _ in range(_CONFLICT_RETRIES):
            now = utcnow()
            reason = f"reset by {_who()} with `nvsentinel breaker reset`" + (f": {args.reason}" if args.reason else "")
            cm = _read(kube, args.namespace, args.name)
            before = BreakerState.from_data((cm or {}).get("data"))
            after = BreakerState(state=CLOSED, tripped_at=before.tripped_at, reason=reason, reset_at=now)
            try:
                if cm is None:
                    kube.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                             "metadata": {"name": args.name, "namespace": args.namespace,
                                                          "labels": {"app.kubernetes.io/managed-by": "nvsentinel"}},
                                             "data": after.to_data()}, args.namespace)
                else:
                    rv = cm["metadata"]["resourceVersion"]  # a controller write in between → 409 → read again
                    kube.patch(CONFIGMAPS, args.name, {"metadata": {"resourceVersion": rv}, "data": after.to_data()},
                               args.namespace)
            except (AlreadyExists, KubeConflict):
                continue  # the controller wrote meanwhile: read again
            print(f"circuit breaker {args.namespace}/{args.name} reset at {format_time(now)} (was {before.state}); "
                  "cordons made before this time no longer count")
            return 0
        print(f"error: {args.namespace}/{args.name} kept changing; try again", file=sys.stderr)
        return 1

    return with_kube(args, body)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "an operator"
