"""A "fake kubelet" for the local control plane (tests and `nvsentinel demo`): no kubelet or scheduler runs there.

Registers GPU Nodes, marks their pods Running, completes pod deletions (a bound pod that is deleted
keeps its deletionTimestamp until the kubelet confirms, so we force-delete it with grace 0), and
finishes Jobs with a chosen outcome (no job controller runs here).
"""
from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Mapping

from nvsentinel.k8s import AlreadyExists, Kube, KubeNotFound
from nvsentinel.k8s.resources import JOBS, NODES, PODS


def make_node(kube: Kube, name: str, *, gpus: int = 8, labels: Mapping[str, str] | None = None,
              provider_id: str | None = None, unschedulable: bool = False) -> dict:
    """Create (or return) a Ready Node with `gpus` nvidia.com/gpu capacity."""
    body: dict = {"apiVersion": "v1", "kind": "Node",
                  "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
                  "spec": {"unschedulable": unschedulable}}
    if gpus:
        body["metadata"]["labels"]["nvidia.com/gpu.present"] = "true"
    if provider_id:
        body["spec"]["providerID"] = provider_id
    try:
        kube.create(NODES, body)
    except AlreadyExists:
        pass
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    return kube.patch(NODES, name, {"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake kubelet"}],
    }}, subresource="status")


def make_nodes(kube: Kube, names: Iterable[str], **kw: object) -> list[dict]:
    """Many nodes at once (the breaker tests register hundreds)."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda n: make_node(kube, n, **kw), names))  # type: ignore[arg-type]


def delete_nodes(kube: Kube, names: Iterable[str]) -> None:
    def _one(n: str) -> None:
        try:
            kube.delete(NODES, n)
        except KubeNotFound:
            pass
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(_one, names))


def run_pod(kube: Kube, namespace: str, name: str) -> dict:
    """Mark a bound pod Running and Ready, as its kubelet would."""
    return kube.patch(PODS, name, {"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
    }}, namespace, subresource="status")


def finish_deletions(kube: Kube, namespace: str) -> int:
    """Force-delete pods that carry a deletionTimestamp (the kubelet's confirmation); returns how many."""
    items, _ = kube.list(PODS, namespace)
    n = 0
    for pod in items:
        if pod["metadata"].get("deletionTimestamp"):
            try:
                kube.delete(PODS, pod["metadata"]["name"], namespace, grace_period_seconds=0,
                            uid=pod["metadata"]["uid"])
                n += 1
            except KubeNotFound:
                pass
    return n


def finish_job(kube: Kube, namespace: str, name: str, *, succeeded: bool) -> dict:
    """Set a Job's terminal condition (Complete or Failed), as the job controller would."""
    import datetime as _dt

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cond = "Complete" if succeeded else "Failed"
    status: dict = {"conditions": [{"type": cond, "status": "True", "reason": "FakeKubelet", "lastProbeTime": now,
                                    "lastTransitionTime": now}],
                    "succeeded" if succeeded else "failed": 1, "startTime": now}
    if succeeded:
        status["completionTime"] = now
    return kube.patch(JOBS, name, {"status": status}, namespace, subresource="status")
