"""The NVML provider loop: pynvml events → conditions.decide → the Device API, merged by type.

The main thread waits for NVML events (timeout `wait_timeout_ms`), applies them to the in-memory
view, and pushes changed GPUs to the server. The server may come and go: writes retry with backoff
forever, and a server restart (NotFound, a missing GPU, or a new store epoch) re-registers every
GPU and re-sends the whole view (the server is in-memory by design).

GPU resets (the handshake in docs/conditions.md) run beside it: an informer on the Device API
spots `ResetRequested` conditions, and a worker thread resets, re-verifies and answers, so a
request never waits for an NVML wait to end. The lock serialises the view and every status write
between the two; while a GPU is being reset, and until its answer is written, the main thread
holds back that GPU's events, so the recovery reaches the server before anything that followed it.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import logging
import threading
import time
from collections.abc import Collection
from typing import Any

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2
from nvsentinel.node.nvml import handshake
from nvsentinel.node.nvml.reset import DEFAULT_RESET_COMMAND, Resetter, ResetError, make_resetter
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
    ) -> None:
        """`reset_command`: the `--nvml-reset-command` template ("" disables resets). `resetter`
        overrides it (None: disabled); a daemon's `--fake-nvml` wiring passes the fake's."""
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
        self._handles: list[Any] = []
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

    # --- NVML -----------------------------------------------------------------------------------

    def init_nvml(self) -> None:
        N = self._nvml
        try:
            N.nvmlInit()
            self._initialised = True
            count = N.nvmlDeviceGetCount()
            wanted = (N.nvmlEventTypeXidCriticalError | N.nvmlEventTypeDoubleBitEccError
                      | N.nvmlEventTypeSingleBitEccError | N.nvmlEventTypeGpuUnavailableError)
            self._event_set = N.nvmlEventSetCreate()
            for i in range(count):
                h = N.nvmlDeviceGetHandleByIndex(i)
                info = GpuInfo(
                    index=i,
                    uuid=_text(N.nvmlDeviceGetUUID(h)),
                    name=_text(N.nvmlDeviceGetName(h)),
                    pci_bus_id=_text(N.nvmlDeviceGetPciInfo(h).busId),
                    memory_total=int(N.nvmlDeviceGetMemoryInfo(h).total),
                )
                mask = N.nvmlDeviceGetSupportedEventTypes(h) & wanted
                if mask:
                    N.nvmlDeviceRegisterEvents(h, mask, self._event_set)
                self.gpus.append(info)
                self._handles.append(h)
                self._by_handle[_addr(h)] = info
                self.views[info.uuid] = conditions.GpuView()
                self._dirty.add(info.uuid)
                logger.info("gpu found", extra={"kv": {
                    "index": i, "uuid": info.uuid, "name": info.name, "pci_bus_id": info.pci_bus_id,
                    "memory_bytes": info.memory_total, "events": hex(mask)}})
        except N.NVMLError as exc:
            raise NvmlInitError(f"NVML initialisation failed: {type(exc).__name__}: {exc}") from None
        try:
            driver = _text(N.nvmlSystemGetDriverVersion())
        except N.NVMLError:
            driver = "unknown"
        logger.info("nvml ready", extra={"kv": {"gpus": len(self.gpus), "driver": driver,
                                                "node": self.node_name}})

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
        self.views[info.uuid] = decision.view
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
            self._apply(info, conditions.Xid(int(ev.eventData)))
        if etype & N.nvmlEventTypeDoubleBitEccError:
            self._apply(info, conditions.DoubleBitEcc())
        if etype & N.nvmlEventTypeSingleBitEccError:
            self._apply(info, conditions.SingleBitEcc())
        if etype & N.nvmlEventTypeGpuUnavailableError:
            self._apply(info, conditions.Lost("NVML GPU-unavailable event"))

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

    def _reverify(self) -> None:
        """The waits stopped failing: check every GPU answers again, then declare it recovered."""
        N = self._nvml
        still_lost = []
        for info in self.gpus:
            try:
                h = N.nvmlDeviceGetHandleByIndex(info.index)
                if _text(N.nvmlDeviceGetUUID(h)) != info.uuid:
                    raise N.NVMLError(N.NVML_ERROR_UNKNOWN)
            except N.NVMLError:
                still_lost.append(info.index)
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
            if self._lost:
                self._reverify()
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
            gpu = gpu_pb2.Gpu(metadata=gpu_pb2.ObjectMeta(name=info.uuid), spec=gpu_pb2.GpuSpec(uuid=info.uuid))
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
        try:
            if self.resetter is None:
                error = handshake.DISABLED
            else:
                self.resetter.reset(info.index, info.uuid)
                self._verify(info)
        except ResetError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure is an answer, never a silent stall
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            now = time.time()
            if error is None:
                decision = conditions.decide(self.views[info.uuid], conditions.Reset(request), catalog=self.catalog,
                                        ignored_xids=self.ignored_xids)
                self.views[info.uuid] = decision.view
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

    def _verify(self, info: GpuInfo) -> None:
        """The reset GPU answers again as itself: same UUID and name by index, memory readable."""
        N = self._nvml
        try:
            h = N.nvmlDeviceGetHandleByIndex(info.index)
            uuid = _text(N.nvmlDeviceGetUUID(h))
            name = _text(N.nvmlDeviceGetName(h))
            N.nvmlDeviceGetMemoryInfo(h)
        except N.NVMLError as exc:
            raise ResetError(f"re-verification failed: {type(exc).__name__}: {exc}") from None
        if uuid != info.uuid:
            raise ResetError(f"re-verification failed: index {info.index} now answers {uuid}")
        if name != info.name:
            raise ResetError(f"re-verification failed: index {info.index} now answers name {name!r}")

    # --- run ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Until `stop_event` is set: sync, wait for NVML events, repeat; answer reset requests."""
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

    def stop(self) -> None:
        """Safe from a signal handler: only sets the event (the loops notice it)."""
        self.stop_event.set()

    @property
    def ready(self) -> bool:
        """NVML is initialised and the server holds every GPU, as of the last sync."""
        return self._initialised and self._registered and self._server_ok is True and not self.stop_event.is_set()
