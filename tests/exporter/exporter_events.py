"""HealthEvent objects (as the API server returns them) in any phase, for the exporter's tests."""
from __future__ import annotations

import datetime as _dt
from typing import Any

T0 = _dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=_dt.timezone.utc)


def ts(seconds: float) -> str:
    return (T0 + _dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def cond(type_: str, status: str, reason: str, at: float, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message or f"{reason} by test",
            "lastTransitionTime": ts(at), "observedGeneration": 1}


def spec(node: str = "node-a", *, fatal: bool = True, codes: tuple[str, ...] = ("79",), gpu: str = "GPU-0000",
         pods: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {
        "source": "nvsentinel-publisher", "nodeName": node, "componentClass": "GPU", "checkName": "xid-error-check",
        "isFatal": fatal, "isHealthy": not fatal, "recommendedAction": "RESTART_BM" if fatal else "NONE",
        "errorCodes": list(codes), "message": "GPU fell off the bus",
        "entitiesImpacted": [{"type": "GPU", "value": gpu}, {"type": "PCI", "value": "0000:b3:00.0"}],
        "detectedAt": ts(0), "overrides": {"quarantine": {"force": False, "skip": False},
                                           "drain": {"force": False, "skip": False}}, "metadata": {}}
    if pods:
        out["podMapping"] = {"resourceName": "nvidia.com/gpu",
                             "pods": [{"namespace": ns, "name": n, "devices": [gpu]} for ns, n in pods]}
    return out


# the status each phase has when the chain put it there (conditions accumulate)
_CONDS: dict[str, list[dict[str, Any]]] = {
    "New": [],
    "Quarantined": [cond("Detected", "True", "Published", 1), cond("NodeQuarantined", "True", "Cordoned", 1)],
}
_CONDS["Draining"] = _CONDS["Quarantined"] + [cond("PodsDrained", "False", "Draining", 2)]
_CONDS["Drained"] = _CONDS["Quarantined"] + [cond("PodsDrained", "True", "Drained", 3)]
_CONDS["Remediating"] = _CONDS["Drained"] + [cond("Remediated", "False", "RebootJobCreated", 4)]
_CONDS["Remediated"] = _CONDS["Drained"] + [cond("Remediated", "True", "RebootSucceeded", 5)]
_CONDS["Resolved"] = _CONDS["Remediated"] + [cond("Resolved", "True", "HealthyEventReceived", 6)]
_CONDS["Cancelled"] = [cond("Detected", "True", "Published", 1),
                       cond("NodeQuarantined", "False", "SkippedByOverride", 1)]


def status(phase: str, *, mode: str = "nvsentinel") -> dict[str, Any]:
    out: dict[str, Any] = {"phase": phase, "conditions": [dict(c) for c in _CONDS[phase]], "observedGeneration": 1}
    if phase != "New":
        out["remediationMode"] = mode
    if phase in ("Remediating", "Remediated", "Resolved"):
        out["lastRemediationTime"] = ts(4)
    if phase in ("Resolved", "Cancelled"):
        out["resolvedAt"] = ts(6)
    return out


def event(name: str = "he-1", uid: str = "uid-1", phase: str = "New", **kw: Any) -> dict[str, Any]:
    return {"apiVersion": "nvsentinel.nvidia.com/v1alpha1", "kind": "HealthEvent",
            "metadata": {"name": name, "uid": uid, "resourceVersion": "1", "generation": 1,
                         "creationTimestamp": ts(0)},
            "spec": spec(**kw), "status": status(phase)}
