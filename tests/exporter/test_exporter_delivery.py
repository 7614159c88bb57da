"""Delivery against a real HTTP sink on loopback: per-event order, retries while the sink is down,
Retry-After, and a refused event dropped after its retries (the dispatcher and sender, no cluster)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import anyio
import pytest
from cesink import CloudEventSink
from exporter_events import event
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.exporter.dispatcher import Dispatcher, ExporterMetrics
from nvsentinel.cluster.exporter.logic import pending_transitions
from nvsentinel.cluster.exporter.sender import Sender
from nvsentinel.policy.healthevent import HealthEvent

DEADLINE = 60.0


@pytest.fixture
def sink() -> Iterator[CloudEventSink]:
    s = CloudEventSink()
    try:
        yield s
    finally:
        s.close()


def transitions(n: int, phase: str = "Resolved") -> list:
    out = []
    for i in range(n):
        out += pending_transitions(HealthEvent.from_dict(event(f"he-{i}", f"uid-{i}", phase)), -1, "c1")
    return out


def deliver(sink: CloudEventSink, trs: list, until: Callable[[], bool], *, during: Callable[[], None] | None = None,
            concurrency: int = 8, **kw: float) -> tuple[Dispatcher, ExporterMetrics, list]:
    metrics = ExporterMetrics(CollectorRegistry())
    sender = Sender(sink.url, "c1", connections=concurrency, timeout=5)
    done: list = []
    d = Dispatcher(sender.send, metrics, concurrency=concurrency, on_done=done.append, **kw)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.run)
            for tr in trs:
                d.put(tr)
            deadline = time.monotonic() + DEADLINE
            while not until():
                if during is not None:
                    during()
                assert time.monotonic() < deadline, f"not done in {DEADLINE} s: {len(sink.ids())} received"
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        sender.close()
    return d, metrics, done


def per_event(ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i in ids:
        uid, _, phase = i.rpartition(".")
        out.setdefault(uid, []).append(phase)
    return out


CHAIN = ["New", "Quarantined", "Drained", "Remediated", "Resolved"]


def test_every_transition_arrives_once_in_order_per_event(sink: CloudEventSink) -> None:
    sink.delay = 0.002
    trs = transitions(40)
    d, metrics, done = deliver(sink, trs, lambda: len(sink.ids()) == len(trs))
    assert sorted(sink.ids()) == sorted(t.id for t in trs)
    assert all(v == CHAIN for v in per_event(sink.ids()).values())
    assert len(done) == len(trs) and len(d) == 0
    first = sink.events()[0]
    h = first["headers"]
    assert h["ce-specversion"] == "1.0" and h["ce-source"] == "/clusters/c1/healthevents"
    assert h["content-type"] == "application/json" and h["ce-type"].startswith("com.nvidia.nvsentinel.healthevent.")
    assert first["data"]["healthEvent"] == h["ce-subject"]


def test_sink_down_for_a_while_then_everything_arrives(sink: CloudEventSink) -> None:
    sink.down()
    trs = transitions(10)
    state = {"failed_at": 0.0}
    registry_holder: list[ExporterMetrics] = []

    def bring_back() -> None:
        m = registry_holder[0] if registry_holder else None
        if state["failed_at"] == 0.0 and m is not None and m.failures.labels(reason="connection")._value.get() >= 10:
            state["failed_at"] = time.monotonic()
            sink.up()

    metrics = ExporterMetrics(CollectorRegistry())
    registry_holder.append(metrics)
    sender = Sender(sink.url, "c1", connections=4, timeout=5)
    d = Dispatcher(sender.send, metrics, concurrency=4, backoff_initial=0.05, backoff_max=0.5)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.run)
            for tr in trs:
                d.put(tr)
            deadline = time.monotonic() + DEADLINE
            while len(sink.ids()) < len(trs):
                bring_back()
                assert time.monotonic() < deadline
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        sender.close()
    assert state["failed_at"] > 0
    assert sorted(sink.ids()) == sorted(t.id for t in trs)
    assert all(v == CHAIN for v in per_event(sink.ids()).values())
    assert metrics.retries._value.get() >= 10


def test_retry_after_is_honoured(sink: CloudEventSink) -> None:
    sink.status, sink.retry_after = 503, "1"
    trs = transitions(1, "New")
    marks: dict[str, float] = {}

    def heal() -> None:
        if sink.attempts >= 1 and "first" not in marks:
            marks["first"] = time.monotonic()
            sink.status = 202

    _, metrics, _ = deliver(sink, trs, lambda: len(sink.ids()) == 1, during=heal, backoff_initial=0.01)
    marks["done"] = time.monotonic()
    assert marks["done"] - marks["first"] >= 0.9  # the hint (1 s), not the 10 ms backoff
    assert metrics.failures.labels(reason="http_5xx")._value.get() == 1


def test_a_refused_event_is_dropped_after_its_retries_and_the_next_goes(sink: CloudEventSink) -> None:
    sink.reject.add("uid-0.New")
    trs = transitions(1, "Quarantined")  # New, Quarantined of one event
    _, metrics, done = deliver(sink, trs, lambda: len(sink.ids()) == 1, backoff_initial=0.01,
                               poison_retries=2, concurrency=1)
    assert metrics.dropped.labels(reason="rejected")._value.get() == 1
    assert sink.ids() == ["uid-0.Quarantined"] and sink.attempts == 4  # 3 refusals, then the next phase
    assert [t.id for t in done] == ["uid-0.New", "uid-0.Quarantined"]
