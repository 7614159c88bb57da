"""Informer: list, then watch from the list's resourceVersion, keep a cache, tell handlers.

client-go's reflector + indexer, for anyio, on dict JSON:

* list (paginated) → replace the cache; handlers see ADDED/MODIFIED for what is new or changed
  and DELETED for what vanished while we were not watching;
* watch from the list RV with bookmarks; the server closes it every `watch_timeout` seconds and
  we resume from the last RV seen (bookmarks keep it fresh on quiet resources);
* 410 Gone (the RV was compacted away), at watch start or as an ERROR event → relist;
* any other failure (API server down, network) → back off (jittered, capped) and resume;
* every `resync_period` seconds, a SYNC call per cached object for level-triggered consumers.

Handlers run on the event loop, synchronously, in event order; one that raises is logged and the
informer goes on.

Indexes (`add_index`, `by_index`): a stage asks "this node's events" or "this event's Jobs" in time
that does not grow with the fleet. Writes (`observe_write`): a stage that patched an object puts the
server's answer in the cache at once (only when the cache still holds the version it patched), so it
and the other stages act on what was just written, not on a cache one watch event behind it (the 409
storms of a stage that re-reads its own stale copy). Until the watch brings that same version (taken
quietly), the older versions it still delivers for the object are skipped: the cache never goes back.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import anyio

from nvsentinel.k8s import AsyncKube, Gone, KubeError
from nvsentinel.k8s.resources import Resource

logger = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any], "dict[str, Any] | None"], None]
IndexFunc = Callable[[dict[str, Any]], "str | None"]

__all__ = ["Informer", "object_key", "resource_version_int", "strip_managed_fields"]


def strip_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The default cache transform (client-go's TransformStripManagedFields): `metadata.managedFields`
    is server-side apply's bookkeeping, often as large as the object, and no stage reads it."""
    meta = obj.get("metadata")
    if meta:
        meta.pop("managedFields", None)
    return obj


def resource_version_int(rv: object) -> int | None:
    """A resourceVersion as an integer, or None. Kubernetes calls RVs opaque; every etcd-backed server
    uses the store's revision, so an order is used only where a fallback exists for a server whose RVs
    are not integers."""
    try:
        return int(str(rv))
    except ValueError:
        return None


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


class Informer:
    def __init__(self, kube: AsyncKube, resource: Resource, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 resync_period: float = 300.0, watch_timeout: int = 240,
                 backoff_initial: float = 0.2, backoff_max: float = 10.0,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.kube = kube
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period = resync_period
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._transform = transform or strip_managed_fields
        self._cache: dict[str, dict[str, Any]] = {}
        self._handlers: list[Handler] = []
        self._ahead: dict[str, str] = {}  # key → the version observe_write put, not yet seen on the watch
        self._index_funcs: dict[str, IndexFunc] = {}
        self._indexes: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # index → value → key → obj
        self._synced = anyio.Event()
        self._rv = ""
        self.relists = 0
        self.watch_restarts = 0

    # -- reads -------------------------------------------------------------------------------------
    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self._cache.get(f"{namespace}/{name}" if namespace else name)

    def list(self) -> list[dict[str, Any]]:
        return list(self._cache.values())

    def __len__(self) -> int:
        return len(self._cache)

    def add_index(self, name: str, fn: IndexFunc) -> None:
        """Keep objects by `fn(obj)` (None: not indexed). One name, one function: stages share it."""
        if name in self._index_funcs:
            if self._index_funcs[name] is not fn:
                raise ValueError(f"index {name!r} of {self.resource.plural} already has another function")
            return
        self._index_funcs[name] = fn
        index: dict[str, dict[str, dict[str, Any]]] = {}
        for key, obj in self._cache.items():
            value = fn(obj)
            if value is not None:
                index.setdefault(value, {})[key] = obj
        self._indexes[name] = index

    def by_index(self, name: str, value: str) -> list[dict[str, Any]]:
        return list(self._indexes[name].get(value, {}).values())

    def observe_write(self, obj: dict[str, Any], base_rv: str | None) -> bool:
        """Our own write returned `obj`, made from version `base_rv` (None: we created it): take it now
        if the cache still holds `base_rv` (or, for a create, nothing under that name); else the watch
        already brought that or a later version. Handlers are told."""
        meta = obj.get("metadata") or {}
        if not meta.get("name") or not meta.get("resourceVersion"):
            return False
        if base_rv is None and not self._selected(obj):
            return False
        key = object_key(obj)
        prev = self._cache.get(key)
        if (prev is not None) if base_rv is None else (prev is None or prev["metadata"].get("resourceVersion") != base_rv):
            return False
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        obj = self._transform(obj)
        self._store(key, obj, prev)
        self._ahead[key] = str(meta["resourceVersion"])
        self._emit("ADDED" if prev is None else "MODIFIED", obj, prev)
        return True

    def _selected(self, obj: dict[str, Any]) -> bool:
        """Whether a created object belongs in this cache (namespace and equality label selectors;
        anything else is left to the watch)."""
        meta = obj.get("metadata") or {}
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        if self.field_selector:
            return False
        labels = meta.get("labels") or {}
        for term in filter(None, (self.label_selector or "").split(",")):
            k, sep, v = term.partition("=")
            if not sep or k.endswith("!") or labels.get(k) != v.lstrip("="):
                return False
        return True

    def _store(self, key: str, obj: dict[str, Any] | None, prev: dict[str, Any] | None) -> None:
        """Put (or, obj None, drop) one object, indexes included."""
        for name, fn in self._index_funcs.items():
            index = self._indexes[name]
            old_value = fn(prev) if prev is not None else None
            new_value = fn(obj) if obj is not None else None
            if old_value is not None and old_value != new_value:
                bucket = index.get(old_value)
                if bucket is not None:
                    bucket.pop(key, None)
                    if not bucket:
                        del index[old_value]
            if new_value is not None:
                index.setdefault(new_value, {})[key] = obj  # type: ignore[assignment]
        if obj is None:
            self._cache.pop(key, None)
        else:
            self._cache[key] = obj

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def resource_version(self) -> str:
        return self._rv

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)
        for obj in list(self._cache.values()):  # a late handler sees the current state
            self._call(handler, "ADDED", obj, None)

    # -- loop --------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._resync_loop)
            await self._list_watch_loop()

    async def _list_watch_loop(self) -> None:
        backoff = self.backoff_initial
        need_list = not self._rv  # a restarted informer resumes from its last RV (410 → relist)
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch_once()
                backoff = self.backoff_initial
            except Gone:
                logger.info("informer relist: resourceVersion expired",
                            extra={"kv": {"resource": self.resource.plural, "rv": self._rv}})
                need_list = True
            except KubeError as exc:
                logger.warning("informer retrying", extra={"kv": {
                    "resource": self.resource.plural, "error": str(exc)[:200], "backoff": round(backoff, 2)}})
                await anyio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.backoff_max)

    async def _relist(self) -> None:
        items, rv = await self.kube.list(self.resource, self.namespace, label_selector=self.label_selector,
                                         field_selector=self.field_selector, transform=self._transform)
        fresh = {object_key(o): o for o in items}
        old = self._cache
        self._ahead.clear()  # the list is newer than anything observed before it
        self._cache = fresh
        for name, fn in self._index_funcs.items():
            index: dict[str, dict[str, dict[str, Any]]] = {}
            for key, obj in fresh.items():
                value = fn(obj)
                if value is not None:
                    index.setdefault(value, {})[key] = obj
            self._indexes[name] = index
        self._rv = rv
        self.relists += 1
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None:
                self._emit("ADDED", obj, None)
            elif prev["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit("MODIFIED", obj, prev)
        for key, prev in old.items():
            if key not in fresh:
                self._emit("DELETED", prev, prev)
        self._synced.set()

    async def _watch_once(self) -> None:
        sync = self.kube.sync
        timeout = int(self.watch_timeout * (0.75 + random.random() / 2))
        stream = await self.kube.run_sync(lambda: sync.watch(
            self.resource, resource_version=self._rv, namespace=self.namespace,
            label_selector=self.label_selector, field_selector=self.field_selector, timeout_seconds=timeout))
        self.watch_restarts += 1
        it = iter(stream)
        done = object()
        try:
            while True:
                item = await self.kube.run_sync(next, it, done, abandon_on_cancel=True)
                if item is done:
                    return
                etype, obj = item  # type: ignore[misc]
                self._apply(etype, obj)
        finally:
            stream.close()

    def _apply(self, etype: str, obj: dict[str, Any]) -> None:
        if etype == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Gone(f"watch: {obj.get('message', '')}", status=410, reason=str(obj.get("reason", "")))
            raise KubeError(f"watch error: {obj}", status=int(code or 0))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self._rv = str(rv)
        if etype == "BOOKMARK":
            return
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        obj = self._transform(obj)
        key = object_key(obj)
        prev = self._cache.get(key)
        ahead = self._ahead.get(key)
        if etype == "DELETED":
            self._ahead.pop(key, None)
            self._store(key, None, prev)
            self._emit("DELETED", obj, prev)
        elif ahead is not None and ahead != rv:
            return  # a version older than the one our own write put in the cache: the watch is catching up
        elif prev is not None and rv and prev["metadata"].get("resourceVersion") == rv:
            self._ahead.pop(key, None)
            self._store(key, obj, prev)  # our own write, taken already by observe_write: nothing new
        else:
            self._store(key, obj, prev)
            self._emit("ADDED" if prev is None else "MODIFIED", obj, prev)

    async def _resync_loop(self) -> None:
        await self._synced.wait()
        while True:
            await anyio.sleep(self.resync_period)
            for obj in list(self._cache.values()):
                self._emit("SYNC", obj, obj)

    def _emit(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        for h in self._handlers:
            self._call(h, etype, obj, old)

    def _call(self, h: Handler, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        try:
            h(etype, obj, old)
        except Exception:  # noqa: BLE001 - a broken handler must not stop the informer
            logger.exception("informer handler failed", extra={"kv": {"resource": self.resource.plural}})
