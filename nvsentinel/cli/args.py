"""What several commands share: the Device API address flags, the HealthEvent kind's names, how a
missing HealthEvent (or a missing CRD) is worded, and the write of an operator's decision
(`approve`, `reject`)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvsentinel.k8s import Kube, KubeNotFound

__all__ = ["HEALTHEVENT_ALIASES", "add_address", "healthevent_not_found", "add_decision_arguments", "whoami",
           "run_decision"]

HEALTHEVENT_ALIASES = ("healthevent", "he", "hevt")


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Device API: unix:///path or host:port (default: $NVSENTINEL_DEVICE_API, else "
        "unix:///var/run/device-api/device.sock if present, else 127.0.0.1:50051)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")


def healthevent_not_found(exc: KubeNotFound, name: str | None) -> str:
    from nvsentinel.policy.healthevent import API_VERSION, PLURAL
    from nvsentinel.service.sanitize import printable

    # a missing object answers a Status naming it; a missing resource type answers a bare 404
    if name is not None and (exc.body.get("details") or {}).get("name") == name:
        return f'healthevent "{printable(name, 253)}" not found'
    return f"the server has no {PLURAL} ({API_VERSION}): is the HealthEvent CRD installed?"


# ---- approve / reject: one HealthEvent's operator decision ------------------------------------------------

_CONFLICT_RETRIES = 5


def add_decision_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """`nvsentinel approve|reject NAME [--reason TEXT] [--force]` and the cluster flags."""
    from nvsentinel.k8s.connect import add_kube_arguments

    parser.add_argument("name", help="the HealthEvent's name")
    parser.add_argument("--reason", default="", help=f"why you {verb} it (shown in its status and Events)")
    parser.add_argument("--force", action="store_true",
                        help=f"{verb} an event already decided the other way")
    add_kube_arguments(parser)


def whoami(kube: Kube) -> str:
    """The Kubernetes user of this kubeconfig when the server says (SelfSubjectReview, 1.27+), else the login name."""
    import getpass

    from nvsentinel.k8s import KubeError

    for version in ("v1", "v1beta1"):
        try:
            out = kube.request("POST", f"/apis/authentication.k8s.io/{version}/selfsubjectreviews",
                               body={"apiVersion": f"authentication.k8s.io/{version}", "kind": "SelfSubjectReview"})
        except KubeError:
            continue
        user = str(((out.get("status") or {}).get("userInfo") or {}).get("username") or "")
        if user:
            return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "an operator"


def run_decision(args: argparse.Namespace, decision: str) -> int:
    """Check, write the decision's annotations with the event's resourceVersion (again on a 409), record a
    Kubernetes Event on the HealthEvent, and say what happens next. Refusals: one line, exit 1."""
    import sys

    from nvsentinel.cli.views import approval
    from nvsentinel.k8s import KubeConflict
    from nvsentinel.k8s.connect import with_kube
    from nvsentinel.k8s.resources import HEALTHEVENTS

    def body(kube: Kube) -> int:
        who = whoami(kube)
        for _ in range(_CONFLICT_RETRIES):
            obj = kube.get(HEALTHEVENTS, args.name)
            verdict = approval.check(obj, decision, force=args.force)
            if verdict.refusal:
                print(f"error: {verdict.refusal}", file=sys.stderr)
                return 1
            patch = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"],
                                  "annotations": approval.annotations(decision, who, args.reason)}}
            try:
                written = kube.patch(HEALTHEVENTS, args.name, patch)
            except KubeConflict:
                continue  # a controller wrote meanwhile: read and judge again
            if verdict.warning:
                print(f"warning: {verdict.warning}", file=sys.stderr)
            _record(kube, written, decision, who, args.reason)
            print(approval.next_step(written, decision))
            return 0
        print(f"error: healthevent {args.name} kept changing; try again", file=sys.stderr)
        return 1

    return with_kube(args, body, not_found=lambda exc: healthevent_not_found(exc, args.name))


def _record(kube: Kube, obj: dict, decision: str, who: str, reason: str) -> None:
    """A Normal Event `Approved`/`Rejected` on the HealthEvent (best effort: the annotations are the record)."""
    import anyio

    from nvsentinel.cli.views.approval import DECISIONS, EVENT_REASONS
    from nvsentinel.k8s import AsyncKube
    from nvsentinel.k8s.runtime.recorder import EventRecorder

    message = f"{decision} by {who} with `nvsentinel {DECISIONS[decision]}`" + (f": {reason}" if reason else "")
    recorder = EventRecorder(AsyncKube(kube, threads=1), "nvsentinel-cli")
    anyio.run(recorder.event, obj, "Normal", EVENT_REASONS[decision], message)
