"""Builders for the publisher tests: GPU protobufs with conditions, a fake Kubernetes client."""
from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

from nvsentinel._proto import gpu_pb2
from nvsentinel.k8s.errors import AlreadyExists

UUIDS = [
    "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb",
    "GPU-976baef6-3b1f-dc48-2908-168925b1cdbf",
    "GPU-0d1b0f43-1453-595a-d607-8ca6a707ec5e",
]
T0 = 1_700_000_000
NOW = dt.datetime.fromtimestamp(T0 + 1000, dt.timezone.utc)


def cond(type_: str, status: str, reason: str, at: float = T0, message: str = "") -> gpu_pb2.Condition:
    c = gpu_pb2.Condition(type=type_, status=status, reason=reason, message=message or f"{type_} {reason}")
    c.last_transition_time.seconds = int(at)
    c.last_transition_time.nanos = int(round((at - int(at)) * 1e9))
    return c


def make_gpu(uuid: str = UUIDS[0], *conds: gpu_pb2.Condition, action: str = "", rv: int = 1) -> gpu_pb2.Gpu:
    g = gpu_pb2.Gpu(resource_version=rv)
    g.metadata.name = uuid
    g.spec.uuid = uuid
    g.status.conditions.extend(conds)
    g.status.recommended_action = action
    return g


def nvml(status: str, reason: str, at: float = T0, message: str = "") -> gpu_pb2.Condition:
    return cond("NvmlHealthy", status, reason, at, message)


def kmsg(status: str, reason: str, at: float = T0, message: str = "") -> gpu_pb2.Condition:
    return cond("KmsgHealthy", status, reason, at, message)


class FakeKube:
    """Records creates by name like the API server (409 AlreadyExists on a duplicate name).

    `fail` is called before each create with the body and may raise (outages, schema errors).
    """

    def __init__(self, fail: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.calls = 0
        self.fail = fail
        self.lock = threading.Lock()

    def create(self, res: Any, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls += 1
        if self.fail is not None:
            self.fail(body)
        name = body["metadata"]["name"]
        with self.lock:
            if name in self.objects:
                raise AlreadyExists(f"409 AlreadyExists: {name}", status=409, reason="AlreadyExists")
            self.objects[name] = body
            self.order.append(name)
        return body
