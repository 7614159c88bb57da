"""The Event recorder's best-effort lane: it never blocks the caller, aggregates repeats, drops under
pressure (Normal first), and sends a repeat as one patch. (On the real API server: tests/k8s/test_runtime.py.)"""
from __future__ import annotations

from typing import Any

import anyio
import pytest

from nvsentinel.k8s import AlreadyExists
from nvsentinel.k8s.runtime.recorder import EventRecorder

pytestmark = pytest.mark.anyio

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1", "uid": "u-1", "resourceVersion": "3"}}


class SlowServer:
    """Answers Event writes after `gate` opens, keeping what it stored (as the API server would)."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.calls: list[tuple[str, str, Any]] = []
        self.stored: dict[str, dict[str, Any]] = {}

    async def create(self, res: Any, body: dict[str, Any], ns: str | None = None) -> dict[str, Any]:
        await self.gate.wait()
        self.calls.append(("create", body["metadata"]["name"], body["count"]))
        if body["metadata"]["name"] in self.stored:
            raise AlreadyExists("exists", status=409, reason="AlreadyExists")
        self.stored[body["metadata"]["name"]] = dict(body)
        return body

    async def patch(self, res: Any, name: str, patch: dict[str, Any], ns: str | None = None) -> dict[str, Any]:
        await self.gate.wait()
        self.calls.append(("patch", name, patch["count"]))
        self.stored[name].update(patch)
        return self.stored[name]

    async def get(self, res: Any, name: str, ns: str | None = None) -> dict[str, Any]:
        self.calls.append(("get", name, None))
        return self.stored[name]


async def until(pred) -> None:
    """Yield to the event loop until `pred()` holds (bounded generously: a busy machine is slow)."""
    with anyio.fail_after(30):
        while not pred():
            await anyio.sleep(0.001)


async def test_queued_events_never_block_and_repeats_aggregate() -> None:
    server = SlowServer()
    rec = EventRecorder(server, "test", host="h", senders=1)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(rec.run)
        await until(lambda: rec.running)
        with anyio.fail_after(10):  # the server is stuck: recording must not wait for it
            for _ in range(5):
                await rec.event(NODE, "Normal", "Cordoned", "cordoned node gpu-1")
            await rec.event(NODE, "Normal", "Drained", "drained")
        server.gate.set()
        assert await rec.flush(timeout=5)
        # a repeat of something sent: one patch, no read
        await rec.event(NODE, "Normal", "Cordoned", "cordoned node gpu-1")
        assert await rec.flush(timeout=5)
        tg.cancel_scope.cancel()
    creates = [c for c in server.calls if c[0] == "create"]
    assert len(creates) == 2, server.calls
    assert sorted(c[2] for c in creates) == [1, 5]  # the four repeats rode on the queued one
    assert server.calls[-1][0] == "patch" and server.calls[-1][2] == 6
    assert not [c for c in server.calls if c[0] == "get"]
    assert (rec.recorded, rec.aggregated, rec.dropped) == (3, 4, 0)


async def test_a_full_queue_drops_normal_events_first() -> None:
    server = SlowServer()
    rec = EventRecorder(server, "test", host="h", queue_size=3, senders=1)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(rec.run)
        await until(lambda: rec.running)
        await rec.event(NODE, "Normal", "A", "a")      # taken by the sender, stuck on the server
        await until(lambda: rec.sending == 1)
        for reason in ("B", "C", "D"):
            await rec.event(NODE, "Normal", reason, reason.lower())
        await rec.event(NODE, "Normal", "E", "e")      # full: this Normal one is dropped
        await rec.event(NODE, "Warning", "W", "w")     # full: pushes out the oldest queued Normal (B)
        assert len(rec) == 3 and rec.dropped == 2
        server.gate.set()
        assert await rec.flush(timeout=5)
        tg.cancel_scope.cancel()
    assert sorted(server.stored[n]["reason"] for n in server.stored) == ["A", "C", "D", "W"]


async def test_without_a_runner_an_event_is_sent_at_once_and_bad_types_are_refused() -> None:
    server = SlowServer()
    server.gate.set()
    rec = EventRecorder(server, "test", host="h")  # type: ignore[arg-type]
    await rec.event(NODE, "Warning", "X", "y")
    assert [c[0] for c in server.calls] == ["create"] and rec.recorded == 1
    with pytest.raises(ValueError):
        await rec.event(NODE, "Bad", "X", "y")


def test_informer_relists_are_read_from_the_informers_at_scrape_time() -> None:
    """`nvsentinel_controllers_informer_relists_total{resource}` sums the informers' own relist counts, so it moves
    with every relist (it was declared and never incremented)."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from nvsentinel.k8s.runtime.metrics import _InformerCollector

    informers = [SimpleNamespace(resource=SimpleNamespace(plural="nodes"), relists=1),
                 SimpleNamespace(resource=SimpleNamespace(plural="healthevents"), relists=1),
                 SimpleNamespace(resource=SimpleNamespace(plural="healthevents"), relists=2)]
    registry = CollectorRegistry()
    registry.register(_InformerCollector(lambda: informers))
    value = registry.get_sample_value
    assert value("nvsentinel_controllers_informer_relists_total", {"resource": "healthevents"}) == 3
    informers[0].relists = 4  # a 410 Gone, three times
    assert value("nvsentinel_controllers_informer_relists_total", {"resource": "nodes"}) == 4
