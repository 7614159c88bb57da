"""Kubernetes Events on the objects we act on (`kubectl describe` shows them).

Repeats of the same (object, reason, message) within an Event's lifetime are aggregated like
client-go does: one Event whose `count` and `lastTimestamp` move, so a held event requeued every
few seconds does not flood etcd. Recording never fails the caller: an Event is a courtesy.
"""
from __future__ import annotations

import hashlib
import logging
import socket
from typing import Any

from nvsentinel.k8s import AlreadyExists, AsyncKube, KubeError, KubeNotFound
from nvsentinel.k8s.resources import EVENTS
from nvsentinel.policy.healthevent import format_time, utcnow

logger = logging.getLogger(__name__)

__all__ = ["EventRecorder"]


class EventRecorder:
    def __init__(self, kube: AsyncKube, component: str, *, host: str | None = None,
                 default_namespace: str = "default") -> None:
        self.kube = kube
        self.component = component
        self.host = host or socket.gethostname()
        self.default_namespace = default_namespace
        self.recorded = 0

    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        if type_ not in ("Normal", "Warning"):
            raise ValueError(f"event type must be Normal or Warning, got {type_!r}")
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or self.default_namespace  # cluster-scoped objects: "default"
        digest = hashlib.sha256(f"{meta.get('uid')}|{reason}|{message}".encode()).hexdigest()[:12]
        name = f"{meta.get('name', 'unknown')[:200]}.{digest}"
        now = format_time(utcnow().replace(microsecond=0))
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""), "name": meta.get("name", ""),
                "uid": meta.get("uid", ""), "resourceVersion": meta.get("resourceVersion", ""),
                **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
            },
            "reason": reason, "message": message[:1024], "type": type_, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component, "reportingInstance": self.host,
        }
        try:
            try:
                await self.kube.create(EVENTS, body, ns)
            except AlreadyExists:
                current = await self.kube.get(EVENTS, name, ns)
                await self.kube.patch(EVENTS, name, {"count": int(current.get("count") or 1) + 1,
                                                     "lastTimestamp": now}, ns)
            self.recorded += 1
        except (KubeNotFound, KubeError) as exc:
            logger.warning("event not recorded", extra={"kv": {"reason": reason, "object": meta.get("name"),
                                                                "error": str(exc)[:200]}})
