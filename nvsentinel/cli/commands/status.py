"""`nvsentinel status`: one screen saying what nvsentinel is doing right now.

Three reads (Nodes, HealthEvents, the breaker ConfigMap), summarized by `nvsentinel.cli.views.status`. The
selectors are the controllers' own flags: pass the same ones to see the fleet as they see it.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from nvsentinel.k8s.connect import add_kube_arguments, with_kube

if TYPE_CHECKING:
    from nvsentinel.k8s import Kube


def register(subparsers: argparse._SubParsersAction) -> None:
    from nvsentinel.cluster.quarantine.config import BREAKER_CONFIGMAP, TAINT_KEY

    p = subparsers.add_parser("status", help="one screen: nodes, the circuit breaker, open HealthEvents and "
                              "the ones that need a human")
    add_kube_arguments(p)
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "nvsentinel"),
                   help="the controllers' namespace, where the breaker ConfigMap is (default: $POD_NAMESPACE, "
                   "else nvsentinel)")
    p.add_argument("--breaker-configmap", default=BREAKER_CONFIGMAP, metavar="NAME",
                   help=f"the breaker ConfigMap (default {BREAKER_CONFIGMAP})")
    p.add_argument("--node-selector", default="", metavar="SELECTOR",
                   help="the controllers' --node-selector: only these nodes count as the fleet (default: all)")
    p.add_argument("--event-selector", default="", metavar="SELECTOR",
                   help="the controllers' --event-selector: only these HealthEvents (default: all)")
    p.add_argument("--taint-key", default=TAINT_KEY, help=f"the controllers' --taint-key (default {TAINT_KEY})")
    p.add_argument("--breaker-percent", type=float, default=None,
                   help="override the policy the controller stored with its last trip (default 10)")
    p.add_argument("--breaker-max-nodes", type=int, default=None, help="likewise (default 50)")
    p.add_argument("--breaker-window", type=float, default=None, help="likewise, seconds (default 600)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   help="output format (default: table; json is for scripts, see docs/operations.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nvsentinel.cli.views import status
    from nvsentinel.cli.args import healthevent_not_found
    from nvsentinel.policy.healthevent import utcnow
    from nvsentinel.k8s import KubeNotFound
    from nvsentinel.k8s.resources import CONFIGMAPS, HEALTHEVENTS, NODES

    def body(kube: Kube) -> int:
        nodes, _ = kube.list(NODES, label_selector=args.node_selector or None)
        events, _ = kube.list(HEALTHEVENTS, label_selector=args.event_selector or None)
        try:
            cm = kube.get(CONFIGMAPS, args.breaker_configmap, args.namespace)
        except KubeNotFound:
            cm = None  # written on the first trip or reset only
        policy = status.breaker_policy((cm or {}).get("data"), percent=args.breaker_percent,
                                       max_nodes=args.breaker_max_nodes, window=args.breaker_window)
        summary = status.summarize(nodes, events, cm, now=utcnow(),
                                   configmap_ref=f"{args.namespace}/{args.breaker_configmap}",
                                   node_selector=args.node_selector, event_selector=args.event_selector,
                                   taint_key=args.taint_key, policy=policy)
        print(json.dumps(status.to_json(summary), indent=2) if args.output == "json" else status.render(summary))
        return 0

    # a 404 on a list is the HealthEvent type missing (the ConfigMap's own 404 is handled above)
    return with_kube(args, body, not_found=lambda exc: healthevent_not_found(exc, None))
