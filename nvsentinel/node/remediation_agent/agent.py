"""The remediation agent at run time: two informers → one reconcile loop → Device API writes and creates.

Threads:

* the HealthEvent informer (`controllers.runtime.Informer`, anyio) runs its own event loop in a
  thread; it lists and watches this node's events (label `nvsentinel.nvidia.com/node`), relists
  on 410 and backs off on any Kubernetes failure. Its handler keeps a parsed copy of each event;
* the GPU informer (`client.GpuInformer`) lists and watches the Device API, and relists after a
  server restart (a new store epoch);
* one worker reconciles: on every change either informer reports, every `resync_period` seconds,
  and after a failure with exponential backoff (100 ms doubling to `backoff_max`, jittered).

A reconcile judges the cached events and GPUs with `logic.plan`, then writes each GPU whose
`ResetRequested` must change (GetGpu, re-judge on that fresh read, UpdateGpuStatus with its RV,
again on Conflict) and creates the verified healthy events (409 AlreadyExists: already done).
Every failure is logged, counted and retried; none stops the agent.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.lowlevel
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2
from nvsentinel.k8s import AlreadyExists, AsyncKube, Invalid, KubeError
from nvsentinel.k8s.resources import HEALTHEVENTS
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.node.informer import GpuInformer
from nvsentinel.node.remediation_agent.logic import RESET_REQUESTED, answered, merge_request, plan, request_for
from nvsentinel.policy.healthevent import LABEL_NODE, HealthEvent, utcnow
from nvsentinel.policy.naming import label_value
from nvsentinel.service.http import HttpEndpoint, ThreadedHttp, probe_routes
from nvsentinel.service.retry import backoff_delay

__all__ = ["RemediationAgent", "RemediationAgentMetrics", "RemediationAgentHttp", "ERROR_KINDS"]

logger = logging.getLogger(__name__)

#: Where a failure came from (the `kind` label of the errors counter).
ERROR_KINDS: Final = ("kube", "device_api", "internal")
#: Read-merge-write tries on one GPU before the reconcile is retried as a whole (each Conflict
#: means a provider wrote in between; more than a few in a row means something is looping).
WRITE_ATTEMPTS: Final = 5
#: Seconds between checks while an informer has not listed yet (no handler call says so).
SYNC_POLL: Final = 0.1


class RemediationAgentMetrics:
    """`nvsentinel_remediation_agent_*`; one registry per agent (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests_written = Counter(
            "nvsentinel_remediation_agent_reset_requests_written", "ResetRequested conditions written on a GPU",
            registry=r)
        self.requests_removed = Counter(
            "nvsentinel_remediation_agent_reset_requests_removed",
            "ResetRequested conditions removed (answered, or the HealthEvent moved on)", registry=r)
        self.verifications_created = Counter(
            "nvsentinel_remediation_agent_verifications_created", "verified healthy HealthEvents created",
            registry=r)
        self.verifications_existing = Counter(
            "nvsentinel_remediation_agent_verifications_existing",
            "verified healthy HealthEvent creates answered AlreadyExists (already done)", registry=r)
        self.errors = Counter("nvsentinel_remediation_agent_errors", "failed calls, by where they failed",
                              ["kind"], registry=r)
        self.reconciles = Counter("nvsentinel_remediation_agent_reconciles", "reconciles, by result",
                                  ["result"], registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        for result in ("ok", "retry"):
            self.reconciles.labels(result)

    def scrape(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


class RemediationAgent:
    """This node's half of the gpu-reset handshake and the verification after a remediation.

    `start()` needs a Kube (sync; the HealthEvent informer wraps it in AsyncKube) and a Device API
    client; `stop()` ends every thread it started.
    """

    def __init__(
        self,
        kube: Any,
        client: Any,
        *,
        node_name: str,
        resync_period: float = 30.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 30.0,
        watch_timeout: int = 240,
        clock: Callable[[], float] = time.monotonic,
        read_kube: Any = None,
    ) -> None:
        if resync_period <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("resync_period and backoff_initial must be > 0, backoff_max >= backoff_initial")
        self.kube = kube
        self.client = client
        self.node_name = node_name
        self.resync_period = resync_period
        self.backoff = (backoff_initial, backoff_max)
        self.label_selector = f"{LABEL_NODE}={label_value(node_name)}"
        self.metrics = RemediationAgentMetrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._events: dict[str, HealthEvent] = {}
        self._created: set[str] = set()  # verified events known to exist (created or 409)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_ok = True
        #: This node's HealthEvents (list + watch by label, relist on 410); runs on its own event loop. Read
        #: through `read_kube` (the node view: this node's events only) where given; creates go to `kube`.
        self.healthevents = Informer(AsyncKube(read_kube or kube), HEALTHEVENTS, label_selector=self.label_selector,
                                     resync_period=resync_period, watch_timeout=watch_timeout,
                                     backoff_max=min(backoff_max, 10.0))
        self.healthevents.add_handler(self.on_healthevent)
        #: This node's GPUs (list + watch the Device API, relist after a server restart).
        self.gpus = GpuInformer(client, on_add=self.on_gpu, on_update=self.on_gpu, on_delete=self.on_gpu,
                                resync_period=resync_period, backoff_max=min(backoff_max, 5.0))
        self._loop_ready = threading.Event()
        self._loop_token: Any = None
        self._scope: anyio.CancelScope | None = None
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ----

    def start(self) -> RemediationAgent:
        if self._threads:
            raise RuntimeError("remediation agent already started")
        self._threads = [
            threading.Thread(target=self._run_informer_loop, name="remediation-agent-informer", daemon=True),
            threading.Thread(target=self._work, name="remediation-agent-worker", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.gpus.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both informers and the worker (a reconcile in flight finishes first)."""
        self._stop.set()
        self._wake.set()
        self.gpus.stop(timeout)
        if self._loop_ready.wait(timeout if self._threads else 0) and self._scope is not None:
            try:
                anyio.from_thread.run_sync(self._scope.cancel, token=self._loop_token)
            except RuntimeError:
                pass  # its event loop has already ended
        for t in self._threads:
            t.join(timeout)

    def __enter__(self) -> RemediationAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- state for probes and tests ----

    @property
    def synced(self) -> bool:
        return self.healthevents.synced and self.gpus.has_synced

    @property
    def ready(self) -> bool:
        """Both informers listed, and the last reconcile finished without a failure."""
        return self.synced and self._last_ok

    def events(self) -> list[HealthEvent]:
        with self._lock:
            return list(self._events.values())

    # ---- the HealthEvent informer (its own event loop, in a thread) ----

    def _run_informer_loop(self) -> None:
        try:
            anyio.run(self._informer_main)
        except Exception:  # noqa: BLE001 - logged; the worker then never sees the informer synced
            logger.exception("healthevent informer loop ended")

    async def _informer_main(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            self._loop_token = anyio.lowlevel.current_token()
            self._loop_ready.set()
            if self._stop.is_set():
                scope.cancel()
            delay = self.backoff[0]
            while True:
                try:
                    await self.healthevents.run()  # retries Kubernetes failures itself
                except Exception:  # noqa: BLE001 - an unexpected bug: log, pause, run it again
                    logger.exception("healthevent informer failed: restarting", extra={"kv": {
                        "retry_in_s": round(delay, 2)}})
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.backoff[1])

    def on_healthevent(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        if etype == "DELETED":
            with self._lock:
                self._events.pop(name, None)
        else:
            try:
                event = HealthEvent.from_dict(obj)
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("ignoring a malformed healthevent", extra={"kv": {"healthevent": name, "error": str(exc)}})
                with self._lock:
                    self._events.pop(name, None)
            else:
                with self._lock:
                    self._events[name] = event
        self._wake.set()

    def on_gpu(self, *gpus: gpu_pb2.Gpu) -> None:
        self._wake.set()

    # ---- the worker ----

    def _work(self) -> None:
        attempt = 0
        next_at = 0.0  # the first reconcile runs as soon as both informers have listed
        while not self._stop.is_set():
            woken = self._wake.wait(max(0.0, next_at - self._clock()))
            if self._stop.is_set():
                return
            if not self.synced:
                self._wake.clear()
                next_at = self._clock() + SYNC_POLL
                continue
            if not woken and self._clock() < next_at:
                continue
            self._wake.clear()
            try:
                ok = self.reconcile()
            except Exception:  # noqa: BLE001 - a bug in a reconcile must not stop the agent
                logger.exception("reconcile failed")
                self.metrics.errors.labels("internal").inc()
                ok = False
            self._last_ok = ok
            self.metrics.reconciles.labels("ok" if ok else "retry").inc()
            if ok:
                attempt = 0
                next_at = self._clock() + self.resync_period
            else:
                attempt += 1
                # jitter: the nodes that failed together (an API server outage) do not retry together
                delay = backoff_delay(attempt, *self.backoff) * (0.8 + 0.4 * random.random())
                next_at = self._clock() + delay
                logger.info("reconcile incomplete: retrying", extra={"kv": {
                    "attempt": attempt, "retry_in_s": round(delay, 3)}})

    def reconcile(self) -> bool:
        """One pass over the cached events and GPUs; True when every write and create went through."""
        p = plan(self.events(), self.gpus.list(), self.node_name, utcnow())
        ok = True
        for name in p.touch:
            try:
                ok = self._write_request(name, p.requests.get(name, ())) and ok
            except errors.NvsentinelError as exc:
                ok = False
                self.metrics.errors.labels("device_api").inc()
                logger.warning("device api write failed: retrying", extra={"kv": {"gpu": name, "error": str(exc)}})
                if isinstance(exc, errors.Unavailable):
                    break  # the server is down: the other GPUs would fail the same way
        proposed = {h.name for h in p.create}
        self._created &= proposed  # forget what is no longer proposed: the set stays small
        for h in p.create:
            if h.name in self._created:
                continue
            try:
                ok = self._create(h) and ok
            except KubeError as exc:
                ok = False
                self.metrics.errors.labels("kube").inc()
                logger.warning("verified healthevent create failed: retrying", extra={"kv": {
                    "healthevent": h.name, "error": str(exc), "reason": type(exc).__name__}})
        return ok

    def _write_request(self, gpu_name: str, requested: Sequence[str]) -> bool:
        """Set or remove the GPU's ResetRequested by the condition contract (re-judged on a fresh read)."""
        for _ in range(WRITE_ATTEMPTS):
            try:
                gpu = self.client.get_gpu(gpu_name)
            except errors.NotFound:
                return True  # gone from the Device API: nothing to write (it is re-judged if it returns)
            want = request_for(gpu, requested)
            new = merge_request(gpu.status, want, utcnow())
            if new is None:
                return True
            old = next((c.message for c in gpu.status.conditions if c.type == RESET_REQUESTED), "")
            try:
                self.client.update_gpu_status(gpu_name, new, gpu.resource_version)
            except errors.Conflict:
                continue  # a provider wrote in between: read and merge again
            except errors.NotFound:
                return True
            if want is None:
                self.metrics.requests_removed.inc()
                logger.info("reset request removed", extra={"kv": {
                    "gpu": gpu_name, "healthevent": old,
                    "why": "answered" if old and answered(gpu, old) else "withdrawn"}})
            else:
                self.metrics.requests_written.inc()
                logger.info("reset requested", extra={"kv": {"gpu": gpu_name, "healthevent": want,
                                                             "replaces": old or "-"}})
            return True
        self.metrics.errors.labels("device_api").inc()
        logger.warning("device api write kept conflicting: retrying later", extra={"kv": {
            "gpu": gpu_name, "attempts": WRITE_ATTEMPTS}})
        return False

    def _create(self, event: HealthEvent) -> bool:
        kv = {"healthevent": event.name, "gpu": ",".join(event.gpu_uuids),
              "remediated_event": event.spec.metadata.get("remediatedEvent", "")}
        try:
            self.kube.create(HEALTHEVENTS, event.create_body())
        except AlreadyExists:
            self._created.add(event.name)
            self.metrics.verifications_existing.inc()
            logger.info("verified healthevent already exists", extra={"kv": kv})
            return True
        except Invalid as exc:
            # a bug, not a transient: retrying the same body cannot succeed
            self._created.add(event.name)
            self.metrics.errors.labels("kube").inc()
            logger.error("verified healthevent rejected as invalid: dropped", extra={"kv": {**kv, "error": str(exc)}})
            return True
        self._created.add(event.name)
        self.metrics.verifications_created.inc()
        logger.info("verified healthevent created", extra={"kv": {
            **kv, "detected_at": event.spec.detected_at.isoformat()}})
        return True


class RemediationAgentHttp(ThreadedHttp):
    """/healthz, /livez, /readyz on the health port and /metrics on the metrics port (0: off)."""

    def __init__(self, host: str, health_port: int, metrics_port: int, ready: Callable[[], bool],
                 metrics: RemediationAgentMetrics) -> None:
        endpoints = []
        if health_port:
            endpoints.append(HttpEndpoint(host, health_port, probe_routes(ready)))
        if metrics_port:
            endpoints.append(HttpEndpoint(host, metrics_port, {"/metrics": metrics.scrape}))
        super().__init__(endpoints, name="remediation-agent-http")
