"""The publisher's half of the drain's GPU scope: a fatal GPU event records which pods held its GPUs.

The worker calls `PodMapper.map` between judging a GPU and queueing its events. A read is one kubelet
`List` (`nvsentinel.node.podresources`) bounded by `--pod-resources-timeout`, so the worker waits at most
that long; whatever goes wrong becomes `podMapping.error` and the event is published all the same (the drain
stage then takes the whole node and says why). A kubelet can only delay an event, never stop one.

One answer, or one failure, serves every event the worker judges in one pass (`new_pass`): when all of a
node's GPUs fall off the bus together, a stuck kubelet costs one timeout per pass (the updates that arrive
while a read waits make up the next pass), not one per GPU.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from collections.abc import Callable
from typing import Any, Final

from nvsentinel.node.podresources import PodResourcesError, PodResourcesReader, pods_holding
from nvsentinel.node.publisher.logic import mapped_gpus, with_pod_mapping
from nvsentinel.policy.healthevent import HealthEvent, PodMapping, utcnow
from nvsentinel.service.sanitize import printable

__all__ = ["PodMapper", "RESULTS"]

logger = logging.getLogger(__name__)

RESULTS: Final = ("ok", "error")


@dataclasses.dataclass(frozen=True, slots=True)
class _Read:
    read_at: _dt.datetime
    answer: Any = None  # ListPodResourcesResponse
    error: str = ""


class PodMapper:
    """Adds `spec.podMapping` to the fatal GPU events the worker is about to queue. Called by one thread."""

    def __init__(self, reader: PodResourcesReader, *, count: Callable[[str], None] = lambda result: None) -> None:
        self.reader = reader
        self._count = count
        self._last: _Read | None = None

    def new_pass(self) -> None:
        """The worker starts judging a new batch of updates: the next event reads afresh."""
        self._last = None

    def map(self, event: HealthEvent) -> HealthEvent:
        """`event` with its pod mapping when it is a fatal GPU event; any other event unchanged."""
        gpus = mapped_gpus(event)
        if not gpus:
            return event
        mapping = self._mapping(gpus)
        self._count("error" if mapping.error else "ok")
        kv: dict[str, Any] = {"healthevent": event.name, "gpus": ",".join(gpus),
                              "resource": mapping.resource_name}
        if mapping.error:
            logger.warning("pod mapping not read: the drain will take the whole node", extra={"kv": {
                **kv, "error": mapping.error}})
        else:
            logger.info("pod mapping read", extra={"kv": {
                **kv, "pods": ",".join(f"{p.namespace}/{p.name}" for p in mapping.pods[:20]),
                "count": len(mapping.pods)}})
        return with_pod_mapping(event, mapping)

    def _mapping(self, gpus: tuple[str, ...]) -> PodMapping:
        resource = self.reader.resource_name
        read = self._read()
        if read.error:
            return PodMapping(resource, (), read.error, read.read_at)
        try:
            pods = pods_holding(read.answer, gpus, resource)
        except PodResourcesError as exc:
            return PodMapping(resource, (), exc.reason, read.read_at)
        return PodMapping(resource, pods, "", read.read_at)

    def _read(self) -> _Read:
        if self._last is not None:
            return self._last
        try:
            answer, error = self.reader.list(), ""
        except PodResourcesError as exc:
            answer, error = None, exc.reason
        except Exception as exc:  # noqa: BLE001 - a bug here must cost the mapping, never the event
            logger.exception("pod mapping read failed unexpectedly")
            answer, error = None, printable(f"internal error: {type(exc).__name__}", 200)
        self._last = _Read(utcnow(), answer, error)
        return self._last
