"""What a reconciler sees: its context (client, caches, queue, recorder, metrics) and its result.

Reconcilers are level-triggered: given a key they read the current state from the informers,
decide, act idempotently and return. Running one any number of times converges to the same state.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from nvsentinel.k8s import AsyncKube
from nvsentinel.k8s.resources import Resource
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.k8s.runtime.metrics import ControllerMetrics
from nvsentinel.k8s.runtime.recorder import EventRecorder
from nvsentinel.k8s.runtime.workqueue import WorkQueue
from nvsentinel.policy.healthevent import HealthEvent

__all__ = ["Result", "ControllerContext", "Reconciler", "read_event"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Result:
    """`requeue_after`: look at this key again in that many seconds (a level-triggered re-check)."""

    requeue_after: float | None = None


class ControllerContext:
    """One per controller; built by the Manager."""

    def __init__(self, name: str, *, kube: AsyncKube, queue: WorkQueue, recorder: EventRecorder,
                 metrics: ControllerMetrics, dry_run: bool, namespace: str,
                 informer_factory: Callable[..., Informer],
                 observe_write: Callable[[Resource, dict[str, Any], str | None], None] | None = None,
                 clock: Callable[[], _dt.datetime] | None = None) -> None:
        self.name = name
        self.kube = kube
        self.queue = queue
        self.recorder = recorder
        self.metrics = metrics
        self.dry_run = dry_run
        self.namespace = namespace
        self._informer_factory = informer_factory
        self._observe_write = observe_write
        self._clock = clock or (lambda: _dt.datetime.now(_dt.timezone.utc))

    def informer(self, resource: Resource, **selectors: Any) -> Informer:
        """The shared informer for `resource` (+ selectors), created on first use, run by the Manager."""
        return self._informer_factory(resource, **selectors)

    def observe_write(self, resource: Resource, written: dict[str, Any], base_rv: str | None) -> None:
        """Our write of `resource` made from version `base_rv` (None: a create) returned `written`: the
        shared caches take it now, so this and every other stage act on it without waiting for the watch."""
        if self._observe_write is not None:
            self._observe_write(resource, written, base_rv)

    def now(self) -> _dt.datetime:
        return self._clock()


class Reconciler(Protocol):
    name: str

    def setup(self, ctx: ControllerContext) -> None:
        """Register informer handlers that enqueue keys."""

    async def reconcile(self, key: str, ctx: ControllerContext) -> Result | None:
        """Bring `key` to its desired state. Raise to retry with backoff."""


def read_event(obj: Mapping[str, Any], ctx: ControllerContext) -> HealthEvent | None:
    """The HealthEvent in a cached object, or None, counted and logged, when it cannot be read.

    The CRD's schema should make that impossible, and a retry would read the same bytes, so the
    caller skips it (no requeue).
    """
    try:
        return HealthEvent.from_dict(obj)
    except (KeyError, TypeError, ValueError) as exc:
        ctx.metrics.failures.labels(reason="InvalidHealthEvent").inc()
        logger.warning("HealthEvent unreadable; skipped", extra={"kv": {
            "controller": ctx.name, "healthevent": (obj.get("metadata") or {}).get("name"),
            "error": str(exc)[:200]}})
        return None
