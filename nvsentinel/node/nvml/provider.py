"""The NVML provider loop: pynvml events → conditions.decide → the Device API, merged by type.

The main thread waits for NVML events (timeout `wait_timeout_ms`), applies them to the in-memory
view, and pushes changed GPUs to the server. The server may come and go: writes retry with backoff
forever, and a server restart (NotFound, a missing GPU, or a new store epoch) re-registers every
GPU and re-sends the whole view (the server is in-memory by design).

Health as a level: a health thread reads every GPU's recovery action (field 230) every
`health_poll_interval` seconds (and at once on a recovery-action event); the first read happens in
`init_nvml`, before the first write, so a fault from while the provider was down is reported at
start. Every NVML call on a GPU runs on that GPU's worker thread under `call_timeout`
(`calls.GpuCaller`): the health thread watches the deadlines, marks a GPU whose call is overdue
Unknown (`NvmlUnresponsive`) and writes it at once; event waits and status writes never wait on a
GPU's call, and a hung GPU gets no new call until its hung one returns.

GPU resets (the handshake in docs/conditions.md) run beside it: an informer on the Device API
spots `ResetRequested` conditions, and a worker thread resets, re-verifies and answers, so a
request never waits for an NVML wait to end. The lock serialises the view and every status write
between the two; while a GPU is being reset, and until its answer is written, the main thread
holds back that GPU's events, so the recovery reaches the server before anything that followed it.
"""
from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import dataclasses
import logging
import threading
import time
from collections.abc import Collection
from typing import Any

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2
from nvsentinel.node.nvml import fields, handshake
from nvsentinel.node.nvml.calls import Call, CallBusy, CallTimeout, GpuCaller, NvmlCallError
from nvsentinel.node.nvml.metrics import HEALTH_VALUES, NvmlMetrics
from nvsentinel.node.nvml.reset import DEFAULT_RESET_COMMAND, Resetter, ResetError, make_resetter
from nvsentinel.node.nvml_settings import DEFAULT_HEALTH_POLL_INTERVAL, DEFAULT_NVML_CALL_TIMEOUT
from nvsentinel.policy import conditions
from nvsentinel.xid import Catalog, default_catalog

__all__ = ["GpuInfo", "NvmlProvider", "NvmlInitError"]

logger = logging.getLogger(__name__)

#: Seconds between checks that the server still holds our GPUs (epoch / listing).
RESYNC_INTERVAL = 1.0
SERVER_BACKOFF = (0.1, 5.0)
LOST_BACKOFF = (0.05, 2.0)
#: Seconds between the reset informer's re-checks of every GPU (a safety net; watch events drive it).
RESET_RESYNC = 30.0
#: Seconds to wait for the reset worker at stop (a reset command may still be running: left behind).
RESET_JOIN_TIMEOUT = 5.0
#: The health read's call names (the probe reads the recovery action, or only the UUID on an old driver).
FIELD_CALL = "nvmlDeviceGetFieldValues"
UUID_CALL = "nvmlDeviceGetUUID"

_DEFAULT: Any = object()


class NvmlInitError(RuntimeError):
    """NVML could not be initialised or enumerated (clear message; the daemon exits 1)."""


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    memory_total: int
    serial: str = ""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _addr(handle: Any) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


class NvmlProvider:
    def __init__(
        self,
        client: Any,
        *,
        wait_timeout_ms: int = 5000,
        ignored_xids: Collection[int] = (),
        catalog: Catalog | None = None,
        node_name: str = "",
        reset_command: str = DEFAULT_RESET_COMMAND,
        resetter: Resetter | None = _DEFAULT,
        health_poll_interval: float = DEFAULT_HEALTH_POLL_INTERVAL,
        call_timeout: float = DEFAULT_NVML_CALL_TIMEOUT,
        metrics: NvmlMetrics | None = None,
    ) -> None:
        """`reset_command`: the `--nvml-reset-command` template ("" disables resets). `resetter`
        overrides it (None: disabled); a daemon's `--fake-nvml` wiring passes the fake's.
        `catalog`: the XID catalog with the site's overrides (`--xid-overrides`)."""
        import pynvml

        self._nvml = pynvml
        self.client = client
        self.wait_timeout_ms = wait_timeout_ms
        self.ignored_xids = frozenset(ignored_xids)
        self.catalog = catalog if catalog is not None else default_catalog()
        self.node_name = node_name
        self.stop_event = threading.Event()
        self.gpus: list[GpuInfo] = []
        self.views: dict[str, conditions.GpuView] = {}
        self._by_handle: dict[int, GpuInfo] = {}
        self._handles: dict[int, Any] = {}
        self._event_set: Any = None
        self._dirty: set[str] = set()
        self._registered = False
        self._epoch: str | None = None
        self._next_resync = 0.0
        self._server_ok: bool | None = None
        self._server_backoff = SERVER_BACKOFF[0]
        self._next_server_try = 0.0
        self._lost = False
        self._lost_backoff = LOST_BACKOFF[0]
        self._initialised = False
        self.driver_version = "unknown"
        self._still_lost: list[int] = []
        # --- the gpu-reset handshake (guarded by _lock, as are views and _dirty) ---
        self.resetter: Resetter | None = make_resetter(reset_command) if resetter is _DEFAULT else resetter
        self._lock = threading.RLock()
        self.acks: dict[str, handshake.Ack] = {}
        """Our last `GpuReset` answer per GPU: re-sent with the view, and the memory of what was answered."""
        self._resetting: set[str] = set()
        self._unwritten: set[str] = set()
        self._deferred: dict[str, list[conditions.Event]] = {}
        self.reset_counts: collections.Counter[str] = collections.Counter()
        """Answers given, by outcome: verified, failed."""
        self._informer: Any = None
        self._reset_thread: threading.Thread | None = None
        self._queue: dict[str, None] = {}  # an ordered set of GPU UUIDs to look at
        self._queue_cv = threading.Condition()
        # --- health as a level, and deadlines ---
        self.metrics = metrics if metrics is not None else NvmlMetrics()
        self.health_poll_interval = health_poll_interval
        self.call_timeout = call_timeout
        self._callers: dict[int, GpuCaller] = {}
        self._recovery_supported: dict[int, bool] = {}
        self._unsupported_logged = False
        self._wake = threading.Condition()  # guards _poll_wanted and _woken; taken after _lock, never before
        self._poll_wanted: set[int] = set()
        self._woken = False
        self._polling: dict[int, Call] = {}  # the health thread's own
        self._health_thread: threading.Thread | None = None

    # --- NVML -----------------------------------------------------------------------------------

    def init_nvml(self) -> None:
        """Initialise NVML, enumerate and register every GPU for events, and read each one's health
        once (so the first write already says what NVML says now)."""
        N = self._nvml
        try:
            N.nvmlInit()
            self._initialised = True
            count = N.nvmlDeviceGetCount()
            wanted = (N.nvmlEventTypeXidCriticalError | N.nvmlEventTypeDoubleBitEccError
                      | N.nvmlEventTypeSingleBitEccError | N.nvmlEventTypeGpuUnavailableError
                      | getattr(N, "nvmlEventTypeGpuRecoveryAction", 0))
            self._event_set = N.nvmlEventSetCreate()
            for i in range(count):
                self._enumerate(i, wanted)
        except N.NVMLError as exc:
            raise NvmlInitError(f"NVML initialisation failed: {type(exc).__name__}: {exc}") from None
        except NvmlCallError as exc:
            raise NvmlInitError(f"NVML initialisation failed: {exc}") from None
        try:
            driver = _text(N.nvmlSystemGetDriverVersion())
        except N.NVMLError:
            driver = "unknown"
        self.driver_version = driver
        logger.info("nvml ready", extra={"kv": {"gpus": len(self.gpus), "driver": driver,
                                                "node": self.node_name}})
        self._first_health_read()

    def _enumerate(self, i: int, wanted: int) -> None:
        """GPU `i`'s identity and event registration, each call under the deadline."""
        N = self._nvml
        call = self._caller(i).call
        h = call("nvmlDeviceGetHandleByIndex", N.nvmlDeviceGetHandleByIndex, i)
        info = GpuInfo(
            index=i,
            uuid=_text(call("nvmlDeviceGetUUID", N.nvmlDeviceGetUUID, h)),
            name=_text(call("nvmlDeviceGetName", N.nvmlDeviceGetName, h)),
            pci_bus_id=_text(call("nvmlDeviceGetPciInfo", N.nvmlDeviceGetPciInfo, h).busId),
            memory_total=int(call("nvmlDeviceGetMemoryInfo", N.nvmlDeviceGetMemoryInfo, h).total),
            serial=self._serial(i, h),
        )
        mask = call("nvmlDeviceGetSupportedEventTypes", N.nvmlDeviceGetSupportedEventTypes, h) & wanted
        if mask:
            call("nvmlDeviceRegisterEvents", N.nvmlDeviceRegisterEvents, h, mask, self._event_set)
        self.gpus.append(info)
        self._handles[i] = h
        self._by_handle[_addr(h)] = info
        self._set_view(info, conditions.GpuView())
        self._dirty.add(info.uuid)
        logger.info("gpu found", extra={"kv": {
            "index": i, "uuid": info.uuid, "name": info.name, "pci_bus_id": info.pci_bus_id,
            "serial": info.serial, "memory_bytes": info.memory_total, "events": hex(mask)}})

    def _serial(self, i: int, handle: Any) -> str:
        N = self._nvml
        try:
            return self._caller(i).call("nvmlDeviceGetSerial", fields.read_serial, N, handle)
        except N.NVMLError as exc:  # a spec field, not health: never fatal
            logger.warning("cannot read the gpu serial", extra={"kv": {"gpu": i, "error": f"{type(exc).__name__}: {exc}"}})
            return ""

    def shutdown_nvml(self) -> None:
        N = self._nvml
        if self._event_set is not None:
            try:
                N.nvmlEventSetFree(self._event_set)
            except N.NVMLError:
                pass
            self._event_set = None
        if self._initialised:
            try:
                N.nvmlShutdown()
            except N.NVMLError:
                pass
            self._initialised = False

    def _apply(self, info: GpuInfo, event: conditions.Event) -> None:
        if info.uuid in self._resetting or info.uuid in self._unwritten:
            # after the reset's answer is written: the server keeps states, not a history
            self._deferred.setdefault(info.uuid, []).append(event)
            logger.info("nvml event held until the gpu reset answer is written", extra={"kv": {
                "gpu": info.index, "uuid": info.uuid, "event": type(event).__name__}})
            return
        old = self.views[info.uuid]
        decision = conditions.decide(old, event, catalog=self.catalog, ignored_xids=self.ignored_xids)
        self._set_view(info, decision.view)
        kv = {"gpu": info.index, "uuid": info.uuid, "event": type(event).__name__,
              "note": decision.note}
        if isinstance(event, conditions.Xid):
            kv["xid"] = event.xid
        if decision.changed:
            status, reason, _ = decision.view.condition()
            kv.update(condition=conditions.CONDITION_TYPE, status=status, reason=reason,
                      action=str(decision.view.action))
            logger.warning("gpu condition changed", extra={"kv": kv})
            self._dirty.add(info.uuid)
        else:
            logger.debug("nvml event", extra={"kv": kv})

    def _handle_event(self, ev: Any) -> None:
        N = self._nvml
        info = self._by_handle.get(_addr(ev.device))
        if info is None:
            logger.warning("nvml event for an unknown device", extra={"kv": {"type": hex(ev.eventType)}})
            return
        etype = ev.eventType
        if etype & N.nvmlEventTypeXidCriticalError:
            self.metrics.events.labels("xid").inc()
            self._apply(info, conditions.Xid(int(ev.eventData)))
        if etype & N.nvmlEventTypeDoubleBitEccError:
            self.metrics.events.labels("ecc_double_bit").inc()
            self._apply(info, conditions.DoubleBitEcc())
        if etype & N.nvmlEventTypeSingleBitEccError:
            self.metrics.events.labels("ecc_single_bit").inc()
            self._apply(info, conditions.SingleBitEcc())
        if etype & N.nvmlEventTypeGpuUnavailableError:
            self.metrics.events.labels("gpu_unavailable").inc()
            self._apply(info, conditions.Lost("NVML GPU-unavailable event"))
        if etype & getattr(N, "nvmlEventTypeGpuRecoveryAction", 0):
            # the value is read back (the level is what counts), at once, by the health thread
            self.metrics.events.labels("recovery_action").inc()
            logger.info("nvml recovery action event", extra={"kv": {
                "gpu": info.index, "uuid": info.uuid, "value": int(ev.eventData)}})
            self._request_poll(info.index)

    def _on_lost(self) -> None:
        with self._lock:
            if not self._lost:
                self._lost = True
                logger.error("nvml wait: GPU is lost; marking every GPU unhealthy", extra={"kv": {}})
                for info in self.gpus:
                    self._apply(info, conditions.Lost())
        # back off (without the lock): a lost GPU keeps every wait failing at once
        self.stop_event.wait(self._lost_backoff)
        self._lost_backoff = min(self._lost_backoff * 2, LOST_BACKOFF[1])

    def _unreachable(self) -> list[int]:
        """The GPUs that do not answer as themselves (UUID by index): checked on their workers, all
        at once, waited for one deadline at most, never under the lock. A GPU with a call still
        outstanding counts as not answering (checked next turn); an overdue check is the health
        thread's to report."""
        N = self._nvml
        issued = {info.index: self._caller(info.index).submit("nvmlDeviceGetUUID", self._uuid_by_index, info.index)
                  for info in self.gpus}
        still_lost = []
        for info in self.gpus:
            call = issued[info.index]
            try:
                if call is None:
                    raise CallBusy("nvmlDeviceGetUUID", info.index, "an earlier call")
                if _text(call.future.result(max(0.0, call.deadline - time.monotonic()))) != info.uuid:
                    raise N.NVMLError(N.NVML_ERROR_UNKNOWN)
            except (N.NVMLError, NvmlCallError, concurrent.futures.TimeoutError):
                still_lost.append(info.index)
        return still_lost

    def _reverify(self, still_lost: list[int]) -> None:
        """The waits stopped failing: once every GPU answers again (`_unreachable`), declare it recovered."""
        if still_lost:
            if still_lost != self._still_lost:  # one line per state change, not per wait
                logger.warning("re-verification: GPUs still unreachable", extra={"kv": {"gpus": still_lost}})
            self._still_lost = still_lost
            return
        self._still_lost = []
        self._lost = False
        self._lost_backoff = LOST_BACKOFF[0]
        logger.info("nvml waits succeed again: every GPU re-verified", extra={"kv": {}})
        for info in self.gpus:
            self._apply(info, conditions.Recovered())

    def step(self) -> None:
        """One wait for NVML events (bounded by the wait timeout and the next server retry)."""
        N = self._nvml
        with self._lock:
            timeout_ms = self.wait_timeout_ms
            if self._dirty or not self._registered:
                timeout_ms = max(1, min(timeout_ms, int((self._next_server_try - time.monotonic()) * 1000)))
            if self._lost:
                # a wait that stops failing is the recovery signal: a quiet GPU that came back must
                # not sit out a whole wait timeout (or until its next event) before it is re-verified
                timeout_ms = max(1, min(timeout_ms, int(self._lost_backoff * 1000)))
        try:  # never under the lock: a reset request must not wait for this
            ev = N.nvmlEventSetWait(self._event_set, timeout_ms)
        except N.NVMLError_Timeout:
            ev = None
        except N.NVMLError_GpuIsLost:
            self._on_lost()
            return
        except N.NVMLError as exc:
            logger.error("nvml wait failed", extra={"kv": {"error": f"{type(exc).__name__}: {exc}"}})
            self.stop_event.wait(1.0)
            return
        with self._lock:
            lost = self._lost
        still_lost = self._unreachable() if lost else []
        with self._lock:
            if self._lost and lost:
                self._reverify(still_lost)
                if not self._lost and ev is not None:
                    # The Device API holds the merged state, not a history: written together with
                    # this event, the recovery would never be seen (a publisher would see GpuLost →
                    # Xid79, the fault still open, and publish neither the healthy event nor the
                    # new fault).
                    self.sync()
            if ev is not None:
                self._handle_event(ev)

    # --- Device API -----------------------------------------------------------------------------

    def _register_all(self) -> None:
        for info in self.gpus:
            spec = gpu_pb2.GpuSpec(uuid=info.uuid, pci_bus_id=info.pci_bus_id, serial=info.serial)
            gpu = gpu_pb2.Gpu(metadata=gpu_pb2.ObjectMeta(name=info.uuid), spec=spec)
            _, created = self.client.create_gpu(gpu)
            if created:
                logger.info("gpu registered", extra={"kv": {"gpu": info.index, "uuid": info.uuid}})
        self._registered = True
        self._dirty.update(self.views)

    def _push(self, uuid: str) -> None:
        view = self.views[uuid]
        ack = self.acks.get(uuid)
        for _ in range(16):
            current = self.client.get_gpu(uuid)
            now = time.time()
            # the answer first: merge_status must see our GpuReset as it will be, not a stale
            # ResetFailed that would keep recommended_action up (rule 8)
            base = current.status if ack is None else handshake.merge_ack(current.status, ack)
            status = conditions.merge_status(base, view, int(now), int((now % 1) * 1e9))
            if status == current.status:
                return
            try:
                self.client.update_gpu_status(uuid, status, current.resource_version)
                self.metrics.condition_writes.labels(view.condition()[0]).inc()
                return
            except errors.Conflict:
                continue  # another provider wrote in between: merge again over its write
        raise errors.Unavailable(f"{uuid}: gave up after 16 conflicting writes; will retry")

    def _written(self, uuid: str) -> None:
        """`uuid`'s status is on the server: release the events held behind its reset answer."""
        self._dirty.discard(uuid)
        if uuid in self._unwritten:
            self._unwritten.discard(uuid)
            info = self._gpu(uuid)
            for event in self._deferred.pop(uuid, []):
                if info is not None:
                    self._apply(info, event)  # may dirty it again: the next sync writes that

    def sync(self) -> None:
        """Bring the server in line with the view; on failure back off (retried forever)."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        now = time.monotonic()
        if now < self._next_server_try:
            return
        if self._registered and not self._dirty and now < self._next_resync:
            return
        try:
            if not self._registered or now >= self._next_resync:
                self._check_server()
                self._next_resync = now + RESYNC_INTERVAL
            for uuid in sorted(self._dirty):
                try:
                    self._push(uuid)
                except errors.NotFound:
                    logger.warning("gpu missing on the server; re-registering", extra={"kv": {"uuid": uuid}})
                    self._register_all()
                    self._push(uuid)
                self._written(uuid)
        except errors.NvsentinelError as exc:
            if self._server_ok is not False:
                logger.warning("device api unreachable; retrying with backoff",
                               extra={"kv": {"address": getattr(self.client, "address", ""), "error": str(exc)}})
            self._server_ok = False
            self._next_server_try = time.monotonic() + self._server_backoff
            self._server_backoff = min(self._server_backoff * 2, SERVER_BACKOFF[1])
            return
        if self._server_ok is not True:
            logger.info("device api in sync", extra={"kv": {
                "address": getattr(self.client, "address", ""), "gpus": len(self.gpus), "epoch": self._epoch}})
        self._server_ok = True
        self._server_backoff = SERVER_BACKOFF[0]

    def _check_server(self) -> None:
        try:
            _, items = self.client.list_gpus()
            epoch = self.client.server_epoch
        except errors.Unavailable:
            # a fresh server is not ready (reads refused) until a GPU exists; writes pass
            items, epoch = None, None
        if items is not None and self._registered and epoch == self._epoch:
            names = {g.metadata.name for g in items}
            if all(info.uuid in names for info in self.gpus):
                return
        if self._registered:
            logger.warning("device api restarted or lost our GPUs; re-registering and re-sending",
                           extra={"kv": {"old_epoch": self._epoch, "epoch": epoch}})
        self._register_all()
        if epoch is None:
            self.client.list_gpus()
            epoch = self.client.server_epoch
        self._epoch = epoch

    # --- the gpu-reset handshake ------------------------------------------------------------------

    def _gpu(self, uuid: str) -> GpuInfo | None:
        for info in self.gpus:
            if info.uuid == uuid:
                return info
        return None

    def start_reset_watch(self) -> None:
        """Watch our GPUs on the Device API for reset requests (an informer: it relists and
        resumes across server restarts) and start the worker that answers them."""
        from nvsentinel.node.informer import GpuInformer

        if self._reset_thread is not None:
            return
        self._reset_thread = threading.Thread(target=self._reset_loop, name="nvml-gpu-reset", daemon=True)
        self._reset_thread.start()
        self._informer = GpuInformer(self.client, on_add=self._seen, on_update=lambda _old, new: self._seen(new),
                                     resync_period=RESET_RESYNC, backoff_max=1.0)
        self._informer.start()
        logger.info("gpu reset requests watched", extra={"kv": {
            "resetter": self.resetter.description if self.resetter is not None else "disabled"}})

    def stop_reset_watch(self) -> None:
        if self._informer is not None:
            self._informer.stop()
            self._informer = None
        if self._reset_thread is not None:
            self.stop_event.set()
            with self._queue_cv:
                self._queue_cv.notify_all()
            self._reset_thread.join(RESET_JOIN_TIMEOUT)
            if self._reset_thread.is_alive():
                logger.warning("gpu reset worker still busy at stop; leaving it", extra={"kv": {}})
            self._reset_thread = None

    def _seen(self, gpu: gpu_pb2.Gpu) -> None:
        """Informer handler (its thread): queue a GPU of ours that asks for a reset."""
        uuid = gpu.metadata.name
        if self._gpu(uuid) is None:
            return
        with self._lock:
            if uuid not in self.acks:
                # an earlier provider's answer: ours to re-send after a server restart, and to
                # remember so its request is not answered twice
                ack = handshake.ack_of(gpu.status)
                if ack is not None:
                    self.acks[uuid] = ack
            pending = handshake.pending_request(gpu.status, self.acks.get(uuid))
        if pending is not None:
            with self._queue_cv:
                self._queue[uuid] = None
                self._queue_cv.notify()

    def _reset_loop(self) -> None:
        while True:
            with self._queue_cv:
                while not self._queue and not self.stop_event.is_set():
                    self._queue_cv.wait()
                if self.stop_event.is_set():
                    return
                uuid = next(iter(self._queue))
                del self._queue[uuid]
            try:
                self._check_request(uuid)
            except Exception:  # noqa: BLE001 - logged; the next request must still be served
                logger.exception("gpu reset handling failed", extra={"kv": {"uuid": uuid}})

    def _check_request(self, uuid: str) -> None:
        """Answer `uuid`'s request if it is still there and still unanswered (the informer's cache
        is the latest the watch delivered)."""
        informer = self._informer
        gpu = informer.get(uuid) if informer is not None else None
        info = self._gpu(uuid)
        if gpu is None or info is None:
            return
        with self._lock:
            request = handshake.pending_request(gpu.status, self.acks.get(uuid))
        if request is not None:
            self.answer(info, request)

    def answer(self, info: GpuInfo, request: str) -> handshake.Ack:
        """Reset the GPU, re-verify it, and write the answer (with the healthy view) in one write."""
        kv: dict[str, Any] = {"gpu": info.index, "uuid": info.uuid, "request": request}
        logger.warning("gpu reset requested", extra={"kv": {
            **kv, "resetter": self.resetter.description if self.resetter is not None else "disabled"}})
        t0 = time.monotonic()
        with self._lock:
            self._resetting.add(info.uuid)  # from now on, this GPU's events wait for the answer
        error: str | None = None
        level: int | None = None
        try:
            if self.resetter is None:
                error = handshake.DISABLED
            else:
                self.resetter.reset(info.index, info.uuid)
                level = self._verify(info)
        except ResetError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure is an answer, never a silent stall
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            now = time.time()
            if error is None:
                view = conditions.decide(self.views[info.uuid], conditions.Reset(request), catalog=self.catalog,
                                         ignored_xids=self.ignored_xids).view
                if level is not None:  # the level as read after the reset: one still set stays False
                    view = conditions.decide(view, conditions.RecoveryAction(level)).view
                    self.metrics.recovery_action.labels(str(info.index), info.uuid).set(level)
                self._set_view(info, view)
                ack = handshake.verified(request, now)
            else:
                ack = handshake.failed(request, error, now)
            self.acks[info.uuid] = ack
            self._resetting.discard(info.uuid)
            self._unwritten.add(info.uuid)
            self._dirty.add(info.uuid)
            self.reset_counts["verified" if error is None else "failed"] += 1
            try:
                self._push(info.uuid)  # ONE write: NvmlHealthy and GpuReset together
                self._written(info.uuid)
                if info.uuid in self._dirty:  # an event held during the reset: its own, later write
                    self._push(info.uuid)
                    self._written(info.uuid)
            except errors.NvsentinelError as exc:
                # the main loop's sync retries (re-registering if the server restarted)
                logger.warning("gpu reset answer not written yet; retrying", extra={"kv": {**kv, "error": str(exc)}})
        kv["seconds"] = round(time.monotonic() - t0, 3)
        if error is None:
            logger.warning("gpu reset verified", extra={"kv": kv})
        else:
            logger.error("gpu reset failed", extra={"kv": {**kv, "error": error}})
        return ack

    def _verify(self, info: GpuInfo) -> int | None:
        """The reset GPU answers again as itself: same UUID and name by index, memory readable.
        Returns its recovery action as read now (None where the driver does not report it)."""
        N = self._nvml
        call = self._caller(info.index).call
        try:
            h = call("nvmlDeviceGetHandleByIndex", N.nvmlDeviceGetHandleByIndex, info.index)
            uuid = _text(call("nvmlDeviceGetUUID", N.nvmlDeviceGetUUID, h))
            name = _text(call("nvmlDeviceGetName", N.nvmlDeviceGetName, h))
            call("nvmlDeviceGetMemoryInfo", N.nvmlDeviceGetMemoryInfo, h)
        except N.NVMLError as exc:
            raise ResetError(f"re-verification failed: {type(exc).__name__}: {exc}") from None
        except NvmlCallError as exc:
            raise ResetError(f"re-verification failed: {exc}") from None
        if uuid != info.uuid:
            raise ResetError(f"re-verification failed: index {info.index} now answers {uuid}")
        if name != info.name:
            raise ResetError(f"re-verification failed: index {info.index} now answers name {name!r}")
        if not self._recovery_supported.get(info.index, True):
            return None
        try:
            return call(FIELD_CALL, fields.read_recovery_action, N, h)
        except NvmlCallError as exc:
            raise ResetError(f"re-verification failed: {exc}") from None
        except (N.NVMLError, fields.FunctionMissing) as exc:
            if fields.not_supported(N, exc):
                return None
            raise ResetError(f"re-verification failed: recovery action: {type(exc).__name__}: {exc}") from None

    # --- health as a level, and deadlines (docs/conditions.md, "Recovery action", "A hung driver") ---

    def _caller(self, index: int) -> GpuCaller:
        caller = self._callers.get(index)
        if caller is None:
            caller = self._callers.setdefault(index, GpuCaller(index, self.call_timeout, on_done=self._call_done,
                                                               observe=self._observe_call))
        return caller

    def _observe_call(self, name: str, seconds: float) -> None:
        self.metrics.call_seconds.labels(name).observe(seconds)

    def _call_done(self, call: Call) -> None:
        """Worker thread, after every call: wake the health thread; a hung call that returned asks
        for a fresh one (only a fresh success makes the GPU readable again)."""
        if call.expired:
            logger.warning("overdue nvml call returned", extra={"kv": {
                "gpu": call.gpu, "call": call.name, "seconds": round(time.monotonic() - call.issued, 3)}})
        with self._wake:
            if call.expired:
                self._poll_wanted.add(call.gpu)
            self._woken = True
            self._wake.notify_all()

    def _request_poll(self, index: int) -> None:
        with self._wake:
            self._poll_wanted.add(index)
            self._woken = True
            self._wake.notify_all()

    def _uuid_by_index(self, index: int) -> Any:
        N = self._nvml
        return N.nvmlDeviceGetUUID(N.nvmlDeviceGetHandleByIndex(index))

    def _set_view(self, info: GpuInfo, view: conditions.GpuView) -> None:
        self.views[info.uuid] = view
        self.metrics.gpu_health.labels(str(info.index), info.uuid).set(HEALTH_VALUES[view.condition()[0]])

    def _start_probe(self, info: GpuInfo) -> Call | None:
        """Issue the GPU's health read (None: a call is outstanding on it): the recovery action, or
        on a driver without it only the UUID (a liveness check, so a hang is still seen)."""
        N = self._nvml
        handle = self._handles.get(info.index)
        caller = self._caller(info.index)
        if handle is None:
            return caller.submit(UUID_CALL, self._uuid_by_index, info.index)
        if self._recovery_supported.get(info.index, True):
            return caller.submit(FIELD_CALL, fields.read_recovery_action, N, handle)
        return caller.submit(UUID_CALL, N.nvmlDeviceGetUUID, handle)

    def _finish_probe(self, info: GpuInfo, call: Call) -> None:
        """Apply a finished health read (a late answer of an overdue one is not: a fresh read follows)."""
        if call.expired:
            return
        N = self._nvml
        exc = call.future.exception()
        with self._lock:
            if info.uuid in self._resetting or info.uuid in self._unwritten:
                return  # the reset's answer reads the level itself
            events: list[conditions.Event] = [conditions.Responsive()]
            if exc is None:
                if call.name == FIELD_CALL:
                    value = int(call.future.result())
                    self._set_supported(info, True)
                    self.metrics.recovery_action.labels(str(info.index), info.uuid).set(value)
                    events.append(conditions.RecoveryAction(value))
            elif call.name == FIELD_CALL and fields.not_supported(N, exc):
                self._set_supported(info, False)
            elif isinstance(exc, N.NVMLError_GpuIsLost):
                pass  # NVML answered; a lost GPU is the event wait's to report (and to see come back)
            else:
                events = [conditions.Unresponsive(
                    f"{call.name} on GPU {info.index} failed: {type(exc).__name__}: {exc}")]
                log = logger.warning if self.views[info.uuid].unknown is None else logger.debug  # once per streak
                log("nvml health read failed", extra={"kv": {
                    "gpu": info.index, "uuid": info.uuid, "call": call.name, "error": f"{type(exc).__name__}: {exc}"}})
            for event in events:
                self._apply(info, event)

    def _set_supported(self, info: GpuInfo, supported: bool) -> None:
        if self._recovery_supported.get(info.index) == supported:
            return
        self._recovery_supported[info.index] = supported
        self.metrics.recovery_action_supported.labels(str(info.index)).set(1 if supported else 0)
        if not supported and not self._unsupported_logged:
            self._unsupported_logged = True
            logger.warning("the driver does not report the gpu recovery action; health from nvml events only",
                           extra={"kv": {"gpu": info.index, "uuid": info.uuid,
                                         "driver": self.driver_version}})

    def _on_timeout(self, info: GpuInfo, call: Call) -> None:
        """`call` is past its deadline (reported once): the GPU is Unknown until a fresh call succeeds."""
        self.metrics.call_timeouts.labels(call.name, str(info.index)).inc()
        detail = str(CallTimeout(call.name, info.index, self.call_timeout))
        logger.error("nvml call past its deadline; gpu unresponsive", extra={"kv": {
            "gpu": info.index, "uuid": info.uuid, "call": call.name, "timeout": self.call_timeout}})
        with self._lock:
            self._apply(info, conditions.Unresponsive(detail))

    def _check_deadlines(self, now: float) -> None:
        for info in self.gpus:
            caller = self._callers.get(info.index)
            call = caller.overdue(now) if caller is not None else None
            if call is not None and caller is not None and caller.expire(call):
                self._on_timeout(info, call)

    def _first_health_read(self) -> None:
        """Every GPU's health, read in parallel and waited for one deadline at most (before any write)."""
        issued = [(info, self._start_probe(info)) for info in self.gpus]
        for info, call in issued:
            if call is None:
                continue
            try:
                call.future.result(max(0.0, call.deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                pass
            except BaseException:  # noqa: BLE001 - the read's error is applied below
                pass
        self._check_deadlines(time.monotonic())
        for info, call in issued:
            if call is not None and call.future.done():
                self._finish_probe(info, call)

    def _health_turn(self, now: float) -> None:
        """One turn of the health thread: deadlines, finished reads, new reads, then write at once."""
        self._check_deadlines(now)
        by_index = {info.index: info for info in self.gpus}
        for index, call in list(self._polling.items()):
            if call.expired or call.future.done():
                del self._polling[index]
                self._finish_probe(by_index[index], call)
        with self._wake:
            wanted = sorted(self._poll_wanted)
        for index in wanted:
            if index in self._polling or index not in by_index:
                continue
            call = self._start_probe(by_index[index])
            if call is not None:  # else a call is outstanding: read when it is done (it wakes us)
                self._polling[index] = call
                with self._wake:
                    self._poll_wanted.discard(index)
        with self._lock:
            if self._dirty and self._registered:
                self.sync()

    def _health_loop(self) -> None:
        next_poll = time.monotonic() + self.health_poll_interval
        while not self.stop_event.is_set():
            now = time.monotonic()
            if now >= next_poll:
                with self._wake:
                    self._poll_wanted.update(info.index for info in self.gpus)
                next_poll = now + self.health_poll_interval
            try:
                self._health_turn(now)
            except Exception:  # noqa: BLE001 - logged; the next turn must still come
                logger.exception("nvml health turn failed", extra={"kv": {}})
            wake_at = next_poll
            for caller in list(self._callers.values()):
                call = caller.outstanding
                if call is not None and not call.expired:
                    wake_at = min(wake_at, call.deadline)
            with self._wake:
                if not self._woken and not self.stop_event.is_set():
                    self._wake.wait(max(0.0, wake_at - time.monotonic()))
                self._woken = False

    def start_health(self) -> None:
        """Start the health thread (recovery-action polls and call deadlines)."""
        if self._health_thread is None:
            self._health_thread = threading.Thread(target=self._health_loop, name="nvml-health", daemon=True)
            self._health_thread.start()

    def stop_health(self) -> None:
        self.stop_event.set()
        with self._wake:
            self._woken = True
            self._wake.notify_all()
        if self._health_thread is not None:
            self._health_thread.join(RESET_JOIN_TIMEOUT)
            self._health_thread = None
        for caller in self._callers.values():
            caller.close()

    # --- run ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Until `stop_event` is set: sync, wait for NVML events, repeat; answer reset requests."""
        self.start_health()
        try:
            while not self.stop_event.is_set():
                self.sync()
                if self._reset_thread is None and self._registered:
                    # once our GPUs exist: a fresh server refuses reads (the informer's list) until then
                    self.start_reset_watch()
                self.step()
        finally:
            logger.info("nvml provider stopping", extra={"kv": {}})
            self.stop_reset_watch()
            self.stop_health()

    def stop(self) -> None:
        """Safe from any thread: only sets the event (the loops notice it)."""
        self.stop_event.set()

    @property
    def ready(self) -> bool:
        """NVML is initialised and the server holds every GPU, as of the last sync."""
        return self._initialised and self._registered and self._server_ok is True and not self.stop_event.is_set()
