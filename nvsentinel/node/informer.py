"""GpuInformer: list, then watch from the list RV, keep a local cache, call handlers.

The Python counterpart of a client-go informer for the Device API:

* list → cache (handlers see adds/updates/deletes against the previous cache), then watch from
  the list's resource version, so nothing between the two is missed;
* a dropped stream (server restart, network) → back off and resume from the last RV seen;
* Expired (the RV left the server's window, or the server restarted with a fresh store) → relist
  and reconcile the cache, deleting what vanished;
* Evicted (we were too slow) → resume, and relist if that has expired too;
* a stream from a different store incarnation (the server restarted: its RVs start again from 0)
  → relist, never resume;
* every `resync_period` seconds, `on_update(obj, obj)` for every cached GPU (level-triggered
  consumers use it to re-check their work).

Watch handlers run on the informer's thread in event order (resync calls on a second thread); an
exception in a handler is logged and does not stop the informer.
"""
from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2
from nvsentinel.node.client import DeviceApiClient

logger = logging.getLogger(__name__)

Handler = Callable[..., None]


class GpuInformer:
    def __init__(
        self,
        client: DeviceApiClient,
        *,
        on_add: Handler | None = None,
        on_update: Handler | None = None,
        on_delete: Handler | None = None,
        resync_period: float = 300.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        if resync_period <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("resync_period and backoff_initial must be > 0, backoff_max >= backoff_initial")
        self.client = client
        self.on_add, self.on_update, self.on_delete = on_add, on_update, on_delete
        self.resync_period = resync_period
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._cache: dict[str, gpu_pb2.Gpu] = {}
        self._lock = threading.Lock()
        self._rv = 0
        self._epoch = ""
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._resync_thread: threading.Thread | None = None
        self.relists = 0
        self.reconnects = 0

    # ---- lifecycle ----

    def start(self) -> GpuInformer:
        if self._thread is not None:
            raise RuntimeError("informer already started")
        self._thread = threading.Thread(target=self._run, name="gpu-informer", daemon=True)
        self._thread.start()
        self._resync_thread = threading.Thread(target=self._resync_loop, name="gpu-informer-resync", daemon=True)
        self._resync_thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        for t in (self._thread, self._resync_thread):
            if t is not None:
                t.join(timeout)

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """True once the first list is in the cache."""
        return self._synced.wait(timeout)

    def __enter__(self) -> GpuInformer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the cache ----

    def get(self, name: str) -> gpu_pb2.Gpu | None:
        with self._lock:
            return self._cache.get(name)

    def list(self) -> list[gpu_pb2.Gpu]:
        with self._lock:
            return list(self._cache.values())

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    # ---- the loop ----

    def _call(self, handler: Handler | None, *args: Any) -> None:
        if handler is None:
            return
        try:
            handler(*args)
        except Exception:
            logger.exception("informer handler failed")

    def _relist(self) -> None:
        rv, items = self.client.list_gpus()
        self._epoch = self.client.server_epoch
        fresh = {g.metadata.name: g for g in items}
        with self._lock:
            old = self._cache
            self._cache = dict(fresh)
            self._rv = rv
        for name, gpu in fresh.items():
            if name in old:
                if old[name].resource_version != gpu.resource_version:
                    self._call(self.on_update, old[name], gpu)
            else:
                self._call(self.on_add, gpu)
        for name, gpu in old.items():
            if name not in fresh:
                self._call(self.on_delete, gpu)
        self.relists += 1
        self._synced.set()

    def _apply(self, event: Any) -> None:
        gpu = event.gpu
        name = gpu.metadata.name
        with self._lock:
            if event.resource_version > self._rv:
                self._rv = event.resource_version
            if event.type == "BOOKMARK":
                return
            old = self._cache.get(name)
            if event.type == "DELETED":
                self._cache.pop(name, None)
            else:
                self._cache[name] = gpu
        if event.type == "DELETED":
            if old is not None:
                self._call(self.on_delete, gpu)
        elif old is None:
            self._call(self.on_add, gpu)
        elif old.resource_version != gpu.resource_version:
            self._call(self.on_update, old, gpu)

    def _run(self) -> None:
        need_list = True
        delay = self.backoff_initial
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                self._stream = self.client.watch_gpus(since_rv=self._rv)
                if self._stop.is_set():
                    self._stream.cancel()
                if self._stream.epoch != self._epoch:
                    logger.info("server restarted: relisting", extra={"kv": {"rv": self._rv}})
                    self._stream.cancel()
                    need_list = True
                    continue
                for event in self._stream:
                    self._apply(event)
                    delay = self.backoff_initial
                # the server ended the stream cleanly: resume
            except errors.Expired:
                logger.info("watch expired: relisting", extra={"kv": {"rv": self._rv}})
                need_list = True
                continue
            except errors.Evicted:
                logger.warning("watch evicted: resuming", extra={"kv": {"rv": self._rv}})
                continue
            except errors.NvsentinelError as exc:
                if self._stop.is_set():
                    break
                self.reconnects += 1
                logger.info("watch interrupted: retrying", extra={"kv": {"error": str(exc), "retry_in_s": round(delay, 2)}})
                self._stop.wait(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.backoff_max)
            finally:
                self._stream = None

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_period):
            for gpu in self.list():
                self._call(self.on_update, gpu, gpu)
