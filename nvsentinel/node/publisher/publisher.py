"""The publisher at run time: Device API informer → `logic.observe` → Kubernetes creates.

Threads (the NVML provider and the kernel-log monitor are thread-based too):

* the informer's thread calls `on_add`/`on_update`/`on_delete`; they only hand the GPU over;
* one worker applies the per-GPU debounce and `logic.observe`, and queues the events;
* a few senders create the events (`create` only: a 409 AlreadyExists means "already published").
  A GPU's events are sent one at a time in order; a failing GPU never holds up another.
  ServerUnavailable, TooManyRequests, Forbidden (and any other failure but Invalid) are retried
  with exponential backoff (100 ms → 30 s); Invalid is a bug, logged with the body and dropped.

`stop()` stops the informer, publishes what the debounce still holds, and gives the senders a few
seconds to drain the queue; what is left is logged loudly.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from nvsentinel._proto import gpu_pb2
from nvsentinel.k8s.errors import AlreadyExists, Forbidden, Invalid, KubeError, KubeNotFound, ServerUnavailable, TooManyRequests
from nvsentinel.k8s.resources import HEALTHEVENTS
from nvsentinel.node.publisher.config import DEFAULT_CONDITIONS
from nvsentinel.node.publisher.logic import (
    NVSWITCH_CLASS, Context, Debouncer, GpuView, Pending, PendingQueue, backoff_delay, observe,
)
from nvsentinel.node.publisher.podmapping import RESULTS as MAPPING_RESULTS
from nvsentinel.node.publisher.podmapping import PodMapper
from nvsentinel.policy.healthevent import HealthEvent, utcnow
from nvsentinel.service.http import HttpEndpoint, ThreadedHttp, probe_routes
from nvsentinel.xid import Catalog, default_catalog

if TYPE_CHECKING:
    from nvsentinel.node.podresources import PodResourcesReader

__all__ = ["Publisher", "PublisherMetrics", "PublisherHttp", "DEFAULT_MAX_PENDING", "DEFAULT_SENDERS"]

logger = logging.getLogger(__name__)

#: 1024 GPUs (the Device API's cap) each with a fault and a recovery waiting fit twice over;
#: only an API server outage fills it, and then a healthy event is the one to lose.
DEFAULT_MAX_PENDING: Final = 4096
#: Parallel creates: a node publishes a burst only when many GPUs fail at once (GPU_IS_LOST marks
#: all of them); 4 keeps that burst short without hammering the API server.
DEFAULT_SENDERS: Final = 4
FAILURE_REASONS: Final = ("unavailable", "throttled", "forbidden", "invalid", "not_found", "other")
#: Node-level (NVSwitch) event names remembered as queued, so the other GPUs' copies of one switch
#: fault are not sent again (they would only get 409s); old names are forgotten first.
NODE_EVENT_MEMORY: Final = 256


class PublisherMetrics:
    """`nvsentinel_publisher_*`; one registry per publisher (tests run several in one process)."""

    def __init__(self, pending: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.published = Counter("nvsentinel_publisher_events_published", "HealthEvents created, by kind",
                                 ["kind"], registry=r)
        self.dedup = Counter("nvsentinel_publisher_dedup", "creates answered AlreadyExists (already published)",
                             registry=r)
        self.failures = Counter("nvsentinel_publisher_create_failures", "failed creates, by reason", ["reason"],
                                registry=r)
        self.dropped = Counter("nvsentinel_publisher_events_dropped", "events given up (invalid, queue bound)",
                               ["kind"], registry=r)
        self.pending = Gauge("nvsentinel_publisher_pending", "events waiting to be created", registry=r)
        self.pending.set_function(pending)
        self.pod_mapping_reads = Counter(
            "nvsentinel_publisher_pod_mapping_reads",
            "fatal GPU events' pod mappings from the kubelet's PodResources API, by result", ["result"], registry=r)
        for result in MAPPING_RESULTS:
            self.pod_mapping_reads.labels(result)
        for kind in ("fatal", "healthy"):
            self.published.labels(kind)
            self.dropped.labels(kind)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)

    def scrape(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


def _kind(item: Pending) -> str:
    return "fatal" if item.fatal else "healthy"


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ServerUnavailable):
        return "unavailable"
    if isinstance(exc, TooManyRequests):
        return "throttled"
    if isinstance(exc, Forbidden):
        return "forbidden"
    if isinstance(exc, KubeNotFound):
        return "not_found"  # the CRD is not installed (yet): retried until it is
    return "other"


class Publisher:
    """GPU conditions of this node → HealthEvents. Thread-safe handlers; `start()`, `stop()`."""

    def __init__(
        self,
        kube: Any,
        *,
        node_name: str,
        conditions: Iterable[str] = DEFAULT_CONDITIONS,
        debounce: float = 5.0,
        catalog: Catalog | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        senders: int = DEFAULT_SENDERS,
        backoff_initial: float = 0.1,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        pod_resources: PodResourcesReader | None = None,
    ) -> None:
        """`pod_resources`: record in each fatal GPU event which pods held its GPUs (docs/publisher.md)."""
        if senders < 1:
            raise ValueError("senders must be >= 1")
        self.kube = kube
        self.node_name = node_name
        watched = tuple(dict.fromkeys(conditions))
        self.ctx = Context(node_name=node_name, catalog=catalog or default_catalog(), watched=watched)
        self.backoff = (backoff_initial, backoff_max)
        self._clock = clock
        self._cv = threading.Condition()
        self._inbox: deque[gpu_pb2.Gpu] = deque()  # every update, in order: the debounce coalesces
        self._queue = PendingQueue(max_pending)
        self._debouncer: Debouncer[str, gpu_pb2.Gpu] = Debouncer(debounce)
        self._views: dict[str, GpuView] = {}
        self._node_events: OrderedDict[str, None] = OrderedDict()
        self._stopping = False
        self._halt = False
        self._worker_done = False
        self._busy = 0  # items being sent
        self._judging = 0  # GPUs taken from the inbox, not yet judged
        self._last_ok = True
        self._n_senders = senders
        self._threads: list[threading.Thread] = []
        self._informer: Any = None
        self.metrics = PublisherMetrics(lambda: len(self._queue))
        self._mapper = None if pod_resources is None else PodMapper(
            pod_resources, count=lambda result: self.metrics.pod_mapping_reads.labels(result).inc())

    # ---- lifecycle ----

    def start(self, client: Any = None, *, resync_period: float = 300.0) -> Publisher:
        """Start the worker and senders; with a Device API `client`, also the GPU informer."""
        if self._threads:
            raise RuntimeError("publisher already started")
        self._threads.append(threading.Thread(target=self._work, name="publisher-worker", daemon=True))
        for i in range(self._n_senders):
            self._threads.append(threading.Thread(target=self._send_loop, name=f"publisher-sender-{i}", daemon=True))
        for t in self._threads:
            t.start()
        if client is not None:
            from nvsentinel.node.informer import GpuInformer

            self._informer = GpuInformer(client, on_add=self.on_add, on_update=self.on_update,
                                         on_delete=self.on_delete, resync_period=resync_period)
            self._informer.start()
        return self

    def stop(self, flush_timeout: float = 5.0) -> list[Pending]:
        """Stop watching, publish what is held back, and drain for up to `flush_timeout` seconds.

        Returns the events that could not be created in time (also logged as an error).
        """
        if self._informer is not None:
            self._informer.stop()
        deadline = self._clock() + flush_timeout
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._threads:
            self._threads[0].join(max(0.0, deadline - self._clock()))
        with self._cv:
            self._queue.expedite(self._clock())
            self._cv.notify_all()
            while (len(self._queue) or self._inbox or self._judging) and self._clock() < deadline:
                self._cv.wait(max(0.0, deadline - self._clock()))
            self._halt = True
            left = self._queue.items()
            self._cv.notify_all()
        for t in self._threads[1:]:
            t.join(max(0.1, deadline - self._clock()))
        if left:
            logger.error("stopping with unpublished health events", extra={"kv": {
                "count": len(left), "names": ",".join(p.event.name for p in left[:20])}})
        return left

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- informer handlers (any thread) ----

    def on_add(self, gpu: gpu_pb2.Gpu) -> None:
        self._submit(gpu)

    def on_update(self, old: gpu_pb2.Gpu, new: gpu_pb2.Gpu) -> None:
        self._submit(new)

    def on_delete(self, gpu: gpu_pb2.Gpu) -> None:
        # The view is kept: after a Device API server restart the GPU comes back and its open
        # faults must not be published again.
        logger.debug("gpu deleted from the device api", extra={"kv": {"gpu": gpu.metadata.name}})

    def _submit(self, gpu: gpu_pb2.Gpu) -> None:
        with self._cv:
            self._inbox.append(gpu)
            self._cv.notify_all()

    # ---- state for probes and tests ----

    @property
    def synced(self) -> bool:
        return self._informer is None or self._informer.has_synced

    @property
    def ready(self) -> bool:
        """Informer synced, and the last create succeeded or nothing is waiting."""
        with self._cv:
            return self.synced and (self._last_ok or len(self._queue) == 0)

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._queue)

    def idle(self) -> bool:
        """Nothing received, held back, queued or being sent."""
        with self._cv:
            return not (self._inbox or self._judging or len(self._debouncer) or len(self._queue) or self._busy)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.005)
        return self.idle()

    def view(self, gpu_name: str) -> GpuView | None:
        with self._cv:
            return self._views.get(gpu_name)

    # ---- the worker: debounce + observe ----

    def _work(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._inbox and not self._stopping:
                        deadline = self._debouncer.next_deadline()
                        if deadline is not None and deadline <= self._clock():
                            break
                        self._cv.wait(None if deadline is None else deadline - self._clock())
                    inbox, self._inbox = self._inbox, deque()
                    stopping = self._stopping
                    self._judging = 1
                if self._mapper is not None:
                    self._mapper.new_pass()  # one kubelet read serves this batch: a burst costs one timeout
                for gpu in inbox:  # one at a time: a publish opens the window for the next update
                    name, now = gpu.metadata.name, self._clock()
                    with self._cv:
                        go = self._debouncer.offer(name, gpu, now)
                    if go:
                        self._process(name, gpu, now)
                with self._cv:
                    now = self._clock()
                    todo = self._debouncer.due(now)
                    if stopping:
                        todo += self._debouncer.drain()
                for name, gpu in todo:
                    self._process(name, gpu, now)
                with self._cv:
                    self._judging = 0
                    self._cv.notify_all()
                if stopping:
                    return
        finally:
            with self._cv:
                self._worker_done = True
                self._cv.notify_all()

    def _process(self, name: str, gpu: gpu_pb2.Gpu, now: float) -> None:
        try:
            view, events = observe(self._views.get(name), gpu, utcnow(), self.ctx)
        except Exception:  # noqa: BLE001 - one odd GPU object must not stop the publisher
            logger.exception("cannot judge gpu", extra={"kv": {"gpu": name}})
            return
        if self._mapper is not None:  # outside the lock: a read may take up to its timeout
            events = [self._mapper.map(e) for e in events]
        with self._cv:
            self._views[name] = view
            events = [e for e in events if self._first_copy(e, name)]
            if not events:
                return
            self._debouncer.published(name, now)
            for event in events:
                logger.info("health event queued", extra={"kv": {
                    "healthevent": event.name, "gpu": name, "fatal": event.spec.is_fatal,
                    "healthy": event.spec.is_healthy, "reason": event.spec.metadata.get("reason", ""),
                    "source": event.spec.source}})
                for lost in self._queue.push(name, event):
                    self.metrics.dropped.labels(_kind(lost)).inc()
                    logger.error("pending queue full: dropped the oldest healthy event", extra={"kv": {
                        "healthevent": lost.event.name, "gpu": lost.gpu, "limit": self._queue.limit}})
                if len(self._queue) > self._queue.limit:
                    logger.error("pending queue over its bound: fatal events are never dropped", extra={"kv": {
                        "pending": len(self._queue), "limit": self._queue.limit}})
            self._cv.notify_all()

    def _first_copy(self, event: HealthEvent, gpu: str) -> bool:
        """False for a node-level event another GPU of this node already queued (same name)."""
        if event.spec.component_class != NVSWITCH_CLASS:
            return True
        if event.name in self._node_events:
            logger.debug("node-level health event already queued", extra={"kv": {
                "healthevent": event.name, "gpu": gpu}})
            return False
        self._node_events[event.name] = None
        while len(self._node_events) > NODE_EVENT_MEMORY:
            self._node_events.popitem(last=False)
        return True

    # ---- the senders ----

    def _next(self) -> Pending | None:
        with self._cv:
            while True:
                if self._halt:
                    return None
                item = self._queue.pop_ready(self._clock())
                if item is not None:
                    self._busy += 1
                    return item
                if self._stopping and self._worker_done and not len(self._queue):
                    return None
                nxt = self._queue.next_ready_at()
                self._cv.wait(None if nxt is None else max(0.0, nxt - self._clock()))

    def _send_loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            retry_in, ok = self._send(item)
            with self._cv:  # one step: /readyz and the pending gauge never disagree about this create
                self._busy -= 1
                self._last_ok = ok
                if retry_in is None:
                    self._queue.finish(item)
                else:
                    self._queue.retry(item, self._clock() + retry_in)
                self._cv.notify_all()

    def _send(self, item: Pending) -> tuple[float | None, bool]:
        """Create one event: (None when done with it, else seconds until the next try; whether it went well)."""
        event = item.event
        kv = {"healthevent": event.name, "gpu": item.gpu, "attempt": item.attempts + 1}
        try:
            self.kube.create(HEALTHEVENTS, event.create_body())
        except AlreadyExists:
            self.metrics.dedup.inc()
            logger.info("health event already published", extra={"kv": kv})
            return None, True
        except Invalid as exc:
            self.metrics.failures.labels("invalid").inc()
            self.metrics.dropped.labels(_kind(item)).inc()
            logger.error("health event rejected as invalid: dropped (a bug, not a transient)", extra={"kv": {
                **kv, "error": str(exc), "body": json.dumps(event.create_body(), sort_keys=True)}})
            return None, False
        except Exception as exc:  # noqa: BLE001 - anything else may pass: retry, never lose it
            reason = _failure_reason(exc) if isinstance(exc, KubeError) else "other"
            self.metrics.failures.labels(reason).inc()
            # jitter: the nodes that failed together (an API server outage) do not retry together
            delay = backoff_delay(item.attempts + 1, *self.backoff) * (0.8 + 0.4 * random.random())
            retry_after = getattr(exc, "retry_after", None)
            if retry_after:
                delay = min(max(delay, float(retry_after)), self.backoff[1])
            log = logger.warning if isinstance(exc, KubeError) else logger.exception
            log("health event create failed: retrying", extra={"kv": {
                **kv, "reason": reason, "error": str(exc), "retry_in_s": round(delay, 3)}})
            return delay, False
        self.metrics.published.labels(_kind(item)).inc()
        logger.info("health event published", extra={"kv": {
            **kv, "fatal": event.spec.is_fatal, "healthy": event.spec.is_healthy,
            "error_codes": ",".join(event.spec.error_codes),
            "action": str(event.spec.recommended_action)}})
        return None, True


class PublisherHttp(ThreadedHttp):
    """/healthz, /livez, /readyz on the health port and /metrics on the metrics port (0: off)."""

    def __init__(self, host: str, health_port: int, metrics_port: int, ready: Callable[[], bool],
                 metrics: PublisherMetrics) -> None:
        endpoints = []
        if health_port:
            endpoints.append(HttpEndpoint(host, health_port, probe_routes(ready)))
        if metrics_port:
            endpoints.append(HttpEndpoint(host, metrics_port, {"/metrics": metrics.scrape}))
        super().__init__(endpoints, name="publisher-http")
