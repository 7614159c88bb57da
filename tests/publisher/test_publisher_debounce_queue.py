"""Per-GPU debounce, the bounded pending queue and the retry schedule (pure, injected clock)."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvsentinel.node.publisher.logic import Debouncer, PendingQueue, backoff_delay
from nvsentinel.policy.healthevent import HealthEvent, HealthEventSpec

EPS = 1e-9


def simulate(window: float, offers: list[tuple[str, float]], publishes: list[bool] | None = None):
    """Drive a Debouncer like the worker: poll at every deadline, offer at every offer time.

    Returns (emissions [(key, value, time)], offers [(key, value, time)]). Values are offer indexes.
    """
    d: Debouncer[str, int] = Debouncer(window)
    emitted: list[tuple[str, int, float]] = []
    offered: list[tuple[str, int, float]] = []
    t = 0.0
    n = 0

    def process(key: str, value: int, now: float) -> None:
        nonlocal n
        emitted.append((key, value, now))
        if publishes is None or publishes[n % len(publishes)]:
            d.published(key, now)
        n += 1

    def poll_until(limit: float) -> None:
        while True:
            nxt = d.next_deadline()
            if nxt is None or nxt > limit:
                return
            for k, v in d.due(nxt):
                process(k, v, nxt)

    for i, (key, gap) in enumerate(offers):
        t += gap
        poll_until(t)
        offered.append((key, i, t))
        if d.offer(key, i, t):
            process(key, i, t)
    poll_until(float("inf"))
    assert len(d) == 0 and d.next_deadline() is None
    return emitted, offered


OFFERS = st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 12, allow_nan=False)), max_size=40)


@settings(max_examples=400, deadline=None)
@given(st.floats(0, 10, allow_nan=False), OFFERS)
def test_debounce_properties(window, offers):
    """Verify: the first value is immediate, at most one publish per GPU per window, the latest
    value is always published, values are never reordered, and a wait never exceeds the window."""
    emitted, offered = simulate(window, offers)
    for key in "abc":
        mine = [o for o in offered if o[0] == key]
        out = [e for e in emitted if e[0] == key]
        if not mine:
            assert not out
            continue
        assert out[0] == mine[0]  # the first is never delayed
        assert out[-1][1] == mine[-1][1]  # nothing lost: the final state is published
        values = [v for _, v, _ in out]
        assert values == sorted(values) and len(set(values)) == len(values)
        times = [t for _, _, t in out]
        assert all(b - a >= window - EPS for a, b in zip(times, times[1:]))  # one per window
        offered_at = {v: t for _, v, t in mine}
        for _, v, t in out:
            assert offered_at[v] - EPS <= t <= offered_at[v] + window + EPS


@settings(max_examples=200, deadline=None)
@given(st.floats(0.1, 10, allow_nan=False), OFFERS, st.lists(st.booleans(), min_size=1, max_size=5))
def test_debounce_only_publishes_open_windows(window, offers, publishes):
    """Verify processing that publishes nothing opens no window, and the final state still comes out."""
    emitted, offered = simulate(window, offers, publishes)
    for key in "abc":
        mine = [o for o in offered if o[0] == key]
        if mine:
            assert [e for e in emitted if e[0] == key][-1][1] == mine[-1][1]


def test_debounce_examples():
    """Verify the documented shape: immediate, coalesced to the latest, released at the window end."""
    d: Debouncer[str, str] = Debouncer(5.0)
    assert d.offer("gpu", "v1", 0.0) is True
    d.published("gpu", 0.0)
    assert d.offer("gpu", "v2", 1.0) is False
    assert d.offer("gpu", "v3", 2.0) is False
    assert d.offer("other", "x", 2.0) is True  # GPUs are independent
    assert d.next_deadline() == 5.0 and d.due(4.9) == []
    assert d.due(5.0) == [("gpu", "v3")]
    assert d.offer("gpu", "v4", 11.0) is True  # quiet window: immediate again
    d.published("gpu", 11.0)
    assert d.offer("gpu", "v5", 12.0) is False
    assert d.drain() == [("gpu", "v5")] and len(d) == 0
    assert Debouncer(0).offer("gpu", "v", 0.0) is True
    with pytest.raises(ValueError):
        Debouncer(-1)


def ev(name: str, healthy: bool = False) -> HealthEvent:
    spec = HealthEventSpec(source="nvml-provider", node_name="n", component_class="GPU", check_name="c",
                           is_fatal=not healthy, is_healthy=healthy,
                           detected_at=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    return HealthEvent(name=name, spec=spec)


def test_queue_is_fifo_per_gpu_and_gpus_are_independent():
    """Verify a GPU's events go one at a time in order, while a failing GPU holds up no other."""
    q = PendingQueue(10)
    q.push("g1", ev("g1-fatal"))
    q.push("g1", ev("g1-healthy", healthy=True))
    q.push("g2", ev("g2-fatal"))
    a = q.pop_ready(0.0)
    assert a.event.name == "g1-fatal"
    b = q.pop_ready(0.0)
    assert b.event.name == "g2-fatal"  # g1's next waits for g1-fatal
    assert q.pop_ready(0.0) is None
    q.retry(a, not_before=5.0)  # g1 fails: backs off, keeps its head
    q.finish(b)
    assert q.pop_ready(1.0) is None and q.next_ready_at() == 5.0
    assert q.pop_ready(5.0) is a and a.attempts == 1
    q.finish(a)
    assert q.pop_ready(5.0).event.name == "g1-healthy"
    assert q.counts() == {"fatal": 0, "healthy": 1}


def test_queue_bound_drops_the_oldest_healthy_never_a_fatal():
    """Verify at the bound the oldest healthy goes, a new healthy is refused when all are fatal,
    and a fatal is accepted over the bound."""
    q = PendingQueue(3)
    q.push("g1", ev("h1", healthy=True))
    q.push("g2", ev("f2"))
    q.push("g3", ev("h3", healthy=True))
    dropped = q.push("g4", ev("f4"))
    assert [p.event.name for p in dropped] == ["h1"]
    dropped = q.push("g5", ev("f5"))
    assert [p.event.name for p in dropped] == ["h3"]
    dropped = q.push("g6", ev("h6", healthy=True))
    assert [p.event.name for p in dropped] == ["h6"]  # all fatal: the new healthy is the one to go
    assert q.push("g7", ev("f7")) == [] and len(q) == 4  # over the bound, never a fatal lost
    assert [p.event.name for p in q.items()] == ["f2", "f4", "f5", "f7"]


def test_queue_never_drops_a_healthy_being_sent():
    """Verify the event in flight is not dropped under it."""
    q = PendingQueue(1)
    q.push("g1", ev("h1", healthy=True))
    sending = q.pop_ready(0.0)
    assert [p.event.name for p in q.push("g2", ev("h2", healthy=True))] == ["h2"]
    q.finish(sending)
    assert len(q) == 0


OPS = st.lists(st.tuples(st.sampled_from(["push", "send_ok", "send_fail"]), st.sampled_from(["g1", "g2", "g3"]),
                         st.booleans()), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), OPS)
def test_queue_invariants(limit, ops):
    """Verify over random pushes and sends: no fatal is ever dropped, each GPU's events are sent in
    push order, and the size stays within the bound unless fatals alone exceed it."""
    q = PendingQueue(limit)
    pushed: dict[str, list[str]] = {}
    sent: dict[str, list[str]] = {}
    n = 0
    now = 0.0
    for op, gpu, healthy in ops:
        now += 1
        if op == "push":
            n += 1
            name = f"{gpu}-{n}"
            pushed.setdefault(gpu, []).append(name)
            for lost in q.push(gpu, ev(name, healthy)):
                assert lost.event.spec.is_healthy
                pushed[lost.gpu].remove(lost.event.name)
        else:
            item = q.pop_ready(now)
            if item is None:
                continue
            if op == "send_ok":
                q.finish(item)
                sent.setdefault(item.gpu, []).append(item.event.name)
            else:
                q.retry(item, now + 0.5)
        fatal = q.counts()["fatal"]
        assert len(q) <= max(limit, fatal)
    while (item := q.pop_ready(float("inf"))) is not None:
        q.finish(item)
        sent.setdefault(item.gpu, []).append(item.event.name)
    assert sent == {g: names for g, names in pushed.items() if names}


def test_backoff_schedule():
    """Verify 100 ms doubling to a 30 s cap."""
    assert [backoff_delay(i) for i in range(1, 5)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff_delay(9) == 25.6 and backoff_delay(10) == 30.0 and backoff_delay(10_000) == 30.0
    assert backoff_delay(0) == 0.0
