"""Kubernetes Events on the objects we act on (`kubectl describe` shows them), on a best-effort lane.

An Event is a courtesy: it must never hold up a stage, and a burst of a thousand faults must not turn
into a thousand Event writes queued in front of the cordons. So `event()` only queues; senders on
their own client lane (own rate budget, own threads) write them, and under pressure:

* repeats of the same (object, reason, message) are aggregated like client-go does: one Event whose
  `count` and `lastTimestamp` move, whether the repeat is still queued (no request at all) or was
  sent already (one patch, no read first: the count sent last is remembered);
* a full queue drops the newest Normal Event (a Warning pushes out the oldest queued Normal one
  instead), counted in `dropped`, never blocking the caller.

Without a running `run()` (a standalone recorder), `event()` sends at once.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import socket
from typing import Any

import anyio

from nvsentinel.k8s import AlreadyExists, AsyncKube, KubeError, KubeNotFound
from nvsentinel.k8s.resources import EVENTS
from nvsentinel.policy.healthevent import format_time, utcnow

logger = logging.getLogger(__name__)

__all__ = ["EventRecorder", "QUEUE_SIZE", "SENDERS"]

#: Events waiting to be sent, at most; past it Normal Events are dropped.
QUEUE_SIZE = 1000
#: Concurrent Event writes.
SENDERS = 4
#: Events whose last sent count is remembered (a repeat patches the count without a read).
REMEMBERED = 4096


@dataclasses.dataclass
class _Queued:
    body: dict[str, Any]
    count: int = 1


class EventRecorder:
    def __init__(self, kube: AsyncKube, component: str, *, host: str | None = None,
                 default_namespace: str = "default", queue_size: int = QUEUE_SIZE, senders: int = SENDERS) -> None:
        self.kube = kube
        self.component = component
        self.host = host or socket.gethostname()
        self.default_namespace = default_namespace
        self.queue_size = queue_size
        self.senders = senders
        self.recorded = 0
        self.dropped = 0
        self.aggregated = 0
        self._queue: collections.OrderedDict[tuple[str, str], _Queued] = collections.OrderedDict()
        self._sent: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self._running = False
        self._in_flight = 0
        self._wakeup: anyio.Event | None = None
        self._idle: anyio.Event | None = None

    def __len__(self) -> int:
        """Events queued, not yet sent."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """Senders are up: `event()` queues (else it sends at once)."""
        return self._running

    @property
    def sending(self) -> int:
        """Events being written now."""
        return self._in_flight

    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event about `obj`; queued (or sent at once without a runner); never raises for the server."""
        key, body = self._build(obj, type_, reason, message)
        if not self._running:
            await self._send(key, body, 1)
            return
        queued = self._queue.get(key)
        if queued is not None:
            queued.count += 1
            queued.body["lastTimestamp"] = body["lastTimestamp"]
            self.aggregated += 1
            return
        if len(self._queue) >= self.queue_size and not self._make_room(type_):
            self.dropped += 1
            logger.debug("event dropped: queue full", extra={"kv": {"reason": reason, "object": key[1]}})
            return
        self._queue[key] = _Queued(body)
        if self._wakeup is not None:
            self._wakeup.set()

    def _make_room(self, type_: str) -> bool:
        """A Warning may push out the oldest queued Normal Event; a Normal one is dropped itself."""
        if type_ != "Warning":
            return False
        for key, queued in self._queue.items():
            if queued.body["type"] == "Normal":
                del self._queue[key]
                self.dropped += 1
                return True
        return False

    def _build(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> tuple[tuple[str, str], dict]:
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
        return (ns, name), body

    # ---- sending ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Send queued Events until cancelled (the Manager runs it)."""
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self.senders):
                    tg.start_soon(self._sender)
        finally:
            self._running = False

    async def _sender(self) -> None:
        while True:
            if not self._queue:
                if self._in_flight == 0 and self._idle is not None:
                    self._idle.set()
                    self._idle = None
                self._wakeup = self._wakeup or anyio.Event()
                await self._wakeup.wait()
                self._wakeup = None
                continue
            key, queued = self._queue.popitem(last=False)
            self._in_flight += 1
            try:
                await self._send(key, queued.body, queued.count)
            finally:
                self._in_flight -= 1

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued Event was sent (bounded); whether it got there."""
        with anyio.move_on_after(timeout):
            while self._running and (self._queue or self._in_flight):
                self._idle = self._idle or anyio.Event()
                idle = self._idle
                if self._wakeup is not None:
                    self._wakeup.set()
                await idle.wait()
            return True
        return False

    async def _send(self, key: tuple[str, str], body: dict[str, Any], count: int) -> None:
        ns, name = key
        try:
            sent = self._sent.get(key)
            try:
                if sent is None:
                    body["count"] = count
                    await self.kube.create(EVENTS, body, ns)
                    total = count
                else:
                    total = sent + count
                    await self.kube.patch(EVENTS, name, {"count": total, "lastTimestamp": body["lastTimestamp"]}, ns)
            except AlreadyExists:  # sent by an earlier process: read its count once
                current = await self.kube.get(EVENTS, name, ns)
                total = int(current.get("count") or 1) + count
                await self.kube.patch(EVENTS, name, {"count": total, "lastTimestamp": body["lastTimestamp"]}, ns)
            except KubeNotFound:
                if sent is None:
                    raise
                self._sent.pop(key, None)  # expired on the server since: a fresh one
                body["count"] = count
                await self.kube.create(EVENTS, body, ns)
                total = count
            self._remember(key, total)
            self.recorded += 1
        except KubeError as exc:
            logger.warning("event not recorded", extra={"kv": {"reason": body.get("reason"), "object": name,
                                                                "error": str(exc)[:200]}})

    def _remember(self, key: tuple[str, str], count: int) -> None:
        self._sent[key] = count
        self._sent.move_to_end(key)
        while len(self._sent) > REMEMBERED:
            self._sent.popitem(last=False)
