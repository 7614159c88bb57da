"""Per-event FIFO delivery with retries: a later phase of an event never goes before an earlier one,
different events go in parallel.

Each event with something to send has its own queue; an event id sits in the ready stream at most
once, or is in one worker's hands, so one event's transitions go strictly one after another. A
transient failure (no connection, timeout, 408, 429, 5xx) is retried with jittered exponential
backoff, honouring Retry-After, for as long as it takes: nothing is dropped because the sink is down.
A refusal (another 4xx) is retried `poison_retries` times, then dropped and counted.
"""
from __future__ import annotations

import collections
import datetime as _dt
import logging
import random
import time
from collections.abc import Callable

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nvsentinel.cluster.exporter.logic import Transition, Verdict, backoff_delay, classify, retry_after_seconds
from nvsentinel.cluster.exporter.sender import SendResult
from nvsentinel.policy.healthevent import Phase

logger = logging.getLogger(__name__)

__all__ = ["Dispatcher", "ExporterMetrics"]

_P = "nvsentinel_exporter_"


class ExporterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter(_P + "sent_total", "CloudEvents the sink accepted (2xx)", ["phase"], registry=registry)
        self.failures = Counter(_P + "send_failures_total", "Send attempts that failed, by reason (connection, "
                                "http_408, http_429, http_5xx, http_4xx, http_other)", ["reason"], registry=registry)
        self.retries = Counter(_P + "retries_total", "Send attempts that were retries", registry=registry)
        self.dropped = Counter(_P + "dropped_total", "Transitions given up on, by reason (rejected: the sink "
                               "answered 4xx every time; unreadable: the HealthEvent could not be parsed)",
                               ["reason"], registry=registry)
        self.backlog = Gauge(_P + "backlog", "Transitions waiting to be sent (in flight included)", registry=registry)
        self.oldest_unsent_age = Gauge(_P + "oldest_unsent_age_seconds",
                                       "Seconds the oldest unsent transition has waited (0: none)", registry=registry)
        self.latency = Histogram(_P + "send_latency_seconds", "Seconds one send attempt took (request to response)",
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                 registry=registry)
        self.is_leader = Gauge(_P + "is_leader", "1 while this replica holds the exporter Lease", registry=registry)
        self.checkpoint_writes = Counter(_P + "checkpoint_writes_total", "Checkpoint ConfigMap writes, by result",
                                         ["result"], registry=registry)
        self.checkpoint_entries = Gauge(_P + "checkpoint_entries", "Events the checkpoint remembers",
                                        registry=registry)
        for r in ("connection", "http_408", "http_429", "http_5xx", "http_4xx", "http_other"):
            self.failures.labels(reason=r)
        for r in ("rejected", "unreadable"):
            self.dropped.labels(reason=r)
        for r in ("ok", "failed"):
            self.checkpoint_writes.labels(result=r)
        for p in Phase:
            self.sent.labels(phase=str(p))


class Dispatcher:
    def __init__(self, send: Callable[[Transition], SendResult], metrics: ExporterMetrics, *, concurrency: int = 16,
                 backoff_initial: float = 0.2, backoff_max: float = 30.0, poison_retries: int = 3,
                 on_done: Callable[[Transition], None] | None = None) -> None:
        self.send = send
        self.metrics = metrics
        self.concurrency = concurrency
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.poison_retries = poison_retries
        self.on_done = on_done
        self._queues: dict[str, collections.deque[tuple[Transition, float]]] = {}
        self._busy: set[str] = set()          # uids queued in the ready stream or in a worker's hands
        self._ready: collections.deque[str] = collections.deque()
        self._wake: anyio.Event | None = None
        self._count = 0
        self._limiter = anyio.CapacityLimiter(concurrency)
        metrics.oldest_unsent_age.set_function(self.oldest_age)

    # -- queueing (event loop, synchronous) -------------------------------------------------------------
    def put(self, tr: Transition) -> None:
        self._queues.setdefault(tr.uid, collections.deque()).append((tr, time.monotonic()))
        self._count += 1
        self.metrics.backlog.set(self._count)
        if tr.uid not in self._busy:
            self._busy.add(tr.uid)
            self._push(tr.uid)

    def _push(self, uid: str) -> None:
        self._ready.append(uid)
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.set()

    async def _next(self) -> str:
        while not self._ready:
            if self._wake is None:
                self._wake = anyio.Event()
            await self._wake.wait()
        return self._ready.popleft()

    def pending(self, uid: str) -> bool:
        return bool(self._queues.get(uid))

    def __len__(self) -> int:
        return self._count

    def oldest_age(self) -> float:
        now = time.monotonic()
        return max((now - q[0][1] for q in self._queues.values() if q), default=0.0)

    def clear(self) -> None:
        """Forget everything queued (leadership lost: the next leader starts from the checkpoint)."""
        self._queues.clear()
        self._busy.clear()
        self._ready.clear()
        self._count = 0
        self.metrics.backlog.set(0)

    # -- workers ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """`concurrency` workers, until cancelled."""
        async with anyio.create_task_group() as tg:
            for _ in range(self.concurrency):
                tg.start_soon(self._worker)

    async def _worker(self) -> None:
        while True:
            uid = await self._next()
            q = self._queues.get(uid)
            if not q:
                self._busy.discard(uid)
                continue
            tr = q[0][0]
            await self._deliver(tr)
            q = self._queues.get(uid)
            if q and q[0][0] is tr:  # clear() may have run meanwhile
                q.popleft()
                self._count -= 1
                self.metrics.backlog.set(self._count)
                if self.on_done is not None:
                    self.on_done(tr)
            if self._queues.get(uid):
                self._push(uid)
            else:
                self._queues.pop(uid, None)
                self._busy.discard(uid)

    async def _deliver(self, tr: Transition) -> None:
        """Send until the sink takes it, or refuses it `poison_retries` + 1 times."""
        attempt = refusals = 0
        while True:
            if attempt:
                self.metrics.retries.inc()
            result = await anyio.to_thread.run_sync(self.send, tr, limiter=self._limiter)
            self.metrics.latency.observe(result.seconds)
            verdict, reason = classify(result.status)
            if verdict is Verdict.OK:
                self.metrics.sent.labels(phase=str(tr.phase)).inc()
                return
            self.metrics.failures.labels(reason=reason).inc()
            if verdict is Verdict.POISON:
                refusals += 1
                if refusals > self.poison_retries:
                    self.metrics.dropped.labels(reason="rejected").inc()
                    logger.error("sink refused the event; dropped", extra={"kv": {
                        "id": tr.id, "status": result.status, "attempts": attempt + 1}})
                    return
            delay = backoff_delay(attempt, self.backoff_initial, self.backoff_max, random.random())
            hinted = retry_after_seconds(result.retry_after, _dt.datetime.now(_dt.timezone.utc))
            if hinted is not None:
                delay = min(max(delay, hinted), max(self.backoff_max, 1.0) * 10)
            log = logger.warning if attempt in (0, 5) or attempt % 50 == 0 else logger.debug
            log("send failed; will retry", extra={"kv": {
                "id": tr.id, "status": result.status, "reason": reason, "error": result.error,
                "attempt": attempt + 1, "retry_in": round(delay, 3)}})
            attempt += 1
            await anyio.sleep(delay)
