"""The controllers' work queue: client-go's dedup, processing, delay and backoff rules, on anyio."""
from __future__ import annotations

import time

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvsentinel.k8s.runtime.workqueue import ShutDown, WorkQueue


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def get_now(q: WorkQueue) -> str:
    with anyio.fail_after(1):
        return await q.get()


async def assert_blocks(q: WorkQueue, for_s: float = 0.05) -> None:
    with anyio.move_on_after(for_s) as scope:
        key = await q.get()
        raise AssertionError(f"get() returned {key!r}, expected to block")
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_fifo_order():
    """Verify keys come out in the order they were first added."""
    q = WorkQueue()
    for k in ("a", "b", "c"):
        q.add(k)
    assert [await get_now(q) for _ in range(3)] == ["a", "b", "c"]


@pytest.mark.anyio
async def test_queued_key_is_deduplicated():
    """Verify adding a key that is already queued does not queue it twice."""
    q = WorkQueue()
    q.add("a")
    q.add("b")
    q.add("a")
    assert len(q) == 2
    assert await get_now(q) == "a"
    assert await get_now(q) == "b"
    await assert_blocks(q)


@pytest.mark.anyio
async def test_key_added_while_processing_is_requeued_after_done():
    """Verify a key re-added during processing is held back, then queued again by done()."""
    q = WorkQueue()
    q.add("a")
    assert await get_now(q) == "a"
    q.add("a")
    q.add("a")
    assert len(q) == 0  # held: a second worker must not get it now
    await assert_blocks(q)
    q.done("a")
    assert len(q) == 1
    assert await get_now(q) == "a"
    q.done("a")
    assert len(q) == 0


@pytest.mark.anyio
async def test_done_without_readd_does_not_requeue():
    """Verify done() on a key nobody re-added leaves the queue empty, and done() of an unknown key is harmless."""
    q = WorkQueue()
    q.add("a")
    assert await get_now(q) == "a"
    q.done("a")
    q.done("never-seen")
    assert len(q) == 0
    await assert_blocks(q)


@pytest.mark.anyio
async def test_concurrent_workers_never_share_a_key():
    """Verify several workers never hold the same key at once and every add is eventually processed."""
    q = WorkQueue()
    holding: set[str] = set()
    overlaps: list[str] = []
    processed: list[str] = []

    async def worker() -> None:
        while True:
            try:
                key = await q.get()
            except ShutDown:
                return
            if key in holding:
                overlaps.append(key)
            holding.add(key)
            await anyio.sleep(0.001)
            holding.discard(key)
            processed.append(key)
            q.done(key)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(worker)
        for i in range(200):
            q.add(f"k{i % 7}")
            if i % 3 == 0:
                await anyio.sleep(0)
        with anyio.fail_after(5):
            while len(q) or q.processing():
                await anyio.sleep(0.005)
        q.shutdown()
    assert overlaps == []
    assert set(processed) == {f"k{i}" for i in range(7)}


@pytest.mark.anyio
async def test_waiting_getter_is_woken_by_add():
    """Verify a getter blocked on an empty queue returns as soon as a key is added."""
    q = WorkQueue()
    got: list[str] = []

    async def getter() -> None:
        got.append(await q.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(getter)
        await anyio.sleep(0.01)
        assert got == []
        q.add("x")
    assert got == ["x"]


@pytest.mark.anyio
async def test_shutdown_drains_then_raises_and_wakes_all_getters():
    """Verify shutdown lets getters drain queued keys, then every getter raises ShutDown; later adds are ignored."""
    q = WorkQueue()
    q.add("a")
    q.shutdown()
    q.add("b")
    q.add_after("c", 0.001)
    assert await get_now(q) == "a"
    with pytest.raises(ShutDown):
        await get_now(q)

    q2 = WorkQueue()
    results: list[str] = []

    async def getter() -> None:
        try:
            await q2.get()
        except ShutDown:
            results.append("shutdown")

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(getter)
        await anyio.sleep(0.01)
        q2.shutdown()
    assert results == ["shutdown"] * 3


@pytest.mark.anyio
async def test_shutdown_drops_delayed_keys():
    """Verify keys waiting for a deadline are not handed out after shutdown."""
    q = WorkQueue()
    q.add_after("later", 0.01)
    q.shutdown()
    await anyio.sleep(0.02)
    with pytest.raises(ShutDown):
        await get_now(q)


@pytest.mark.anyio
async def test_add_after_delays_and_a_sleeping_getter_wakes_at_the_deadline():
    """Verify add_after hands the key out no earlier than its delay, without a task per key."""
    q = WorkQueue()
    t0 = time.monotonic()
    q.add_after("a", 0.05)
    assert len(q) == 0 and q.pending_delayed() == 1
    assert await get_now(q) == "a"
    assert time.monotonic() - t0 >= 0.05
    assert q.pending_delayed() == 0


@pytest.mark.anyio
async def test_add_after_earliest_deadline_wins():
    """Verify a shorter delay for a pending key moves it earlier, and a longer one does not move it later."""
    q = WorkQueue()
    q.add_after("a", 10.0)
    q.add_after("a", 0.02)     # earlier: wins
    q.add_after("a", 5.0)      # later: ignored
    assert q.pending_delayed() == 1
    t0 = time.monotonic()
    assert await get_now(q) == "a"
    assert time.monotonic() - t0 < 1.0
    q.done("a")
    await assert_blocks(q, 0.05)  # the superseded 10 s entry does not hand it out again


@pytest.mark.anyio
async def test_new_earlier_deadline_wakes_a_getter_sleeping_on_a_later_one():
    """Verify a getter sleeping until a far deadline is woken for a nearer one added meanwhile."""
    q = WorkQueue()
    q.add_after("far", 30.0)
    got: list[str] = []

    async def getter() -> None:
        got.append(await q.get())

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(getter)
            await anyio.sleep(0.01)
            q.add_after("near", 0.02)
    assert got == ["near"]


@pytest.mark.anyio
async def test_add_after_non_positive_delay_is_an_immediate_add():
    """Verify add_after with delay <= 0 queues the key now."""
    q = WorkQueue()
    q.add_after("a", 0)
    q.add_after("b", -1)
    assert len(q) == 2


@pytest.mark.anyio
async def test_delayed_key_already_queued_is_not_duplicated():
    """Verify a delayed add that comes due while the key is still queued does not queue it twice."""
    q = WorkQueue()
    q.add("a")
    q.add_after("a", 0.01)
    await anyio.sleep(0.02)
    assert len(q) == 1
    assert await get_now(q) == "a"
    await assert_blocks(q)


def test_rate_limited_backoff_doubles_and_caps():
    """Verify add_rate_limited delays by base * 2**failures up to max_delay, and forget resets the count."""
    q = WorkQueue(base_delay=0.01, max_delay=0.1)
    assert [q.backoff(n) for n in range(6)] == [0.01, 0.02, 0.04, 0.08, 0.1, 0.1]
    assert q.backoff(10_000) == 0.1  # no float overflow after a long outage
    for expected in range(1, 4):
        q.add_rate_limited("a")
        assert q.num_requeues("a") == expected
    assert q.num_requeues("b") == 0
    q.forget("a")
    assert q.num_requeues("a") == 0


def test_invalid_delays_are_refused():
    """Verify a non-positive base delay or a cap below it raises ValueError."""
    with pytest.raises(ValueError):
        WorkQueue(base_delay=0)
    with pytest.raises(ValueError):
        WorkQueue(base_delay=1, max_delay=0.5)


@pytest.mark.anyio
async def test_rate_limited_key_arrives_after_its_backoff():
    """Verify the first rate-limited add waits base_delay and the next waits twice as long."""
    q = WorkQueue(base_delay=0.03, max_delay=1.0)
    t0 = time.monotonic()
    q.add_rate_limited("a")
    assert len(q) == 0
    assert await get_now(q) == "a"
    first = time.monotonic() - t0
    q.done("a")
    t1 = time.monotonic()
    q.add_rate_limited("a")
    assert await get_now(q) == "a"
    second = time.monotonic() - t1
    assert first >= 0.03 and second >= 0.06


@pytest.mark.anyio
async def test_cancelled_getter_does_not_swallow_a_key():
    """Verify a getter cancelled while waiting leaves the next key for the other getters."""
    q = WorkQueue()
    got: list[str] = []

    async def getter() -> None:
        got.append(await q.get())

    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(getter)
            await anyio.sleep(0.01)
            doomed.cancel_scope.cancel()
        outer.start_soon(getter)
        await anyio.sleep(0.01)
        q.add("a")
    assert got == ["a"]


# ---- differential test against a tiny model ----------------------------------------------------------

class Model:
    """The rules in their simplest form: a list for the queue, sets for dirty and processing."""

    def __init__(self) -> None:
        self.queue: list[str] = []
        self.dirty: set[str] = set()
        self.processing: set[str] = set()
        self.failures: dict[str, int] = {}
        self.shut = False

    def add(self, k: str) -> None:
        if self.shut or k in self.dirty:
            return
        self.dirty.add(k)
        if k not in self.processing:
            self.queue.append(k)

    def get(self) -> str:
        k = self.queue.pop(0)
        self.dirty.discard(k)
        self.processing.add(k)
        return k

    def done(self, k: str) -> None:
        if k in self.processing:
            self.processing.discard(k)
            if k in self.dirty:
                self.queue.append(k)


KEYS = st.sampled_from(["a", "b", "c", "d"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), KEYS),
        st.tuples(st.just("get"), st.none()),
        st.tuples(st.just("done"), KEYS),
        st.tuples(st.just("fail"), KEYS),
        st.tuples(st.just("forget"), KEYS),
        st.tuples(st.just("shutdown"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_queue_matches_model(ops):
    """Verify every add/get/done/forget/shutdown sequence gives the model's keys, depth and requeue counts."""

    async def run() -> None:
        q = WorkQueue(base_delay=1000.0, max_delay=1000.0)  # rate-limited keys never come due in the test
        m = Model()
        for op, key in ops:
            if op == "add":
                q.add(key)
                m.add(key)
            elif op == "get":
                if m.queue:
                    assert await get_now(q) == m.get()
                elif m.shut:
                    with pytest.raises(ShutDown):
                        await get_now(q)
                else:
                    await assert_blocks(q, 0.001)
            elif op == "done":
                q.done(key)
                m.done(key)
            elif op == "fail":
                q.add_rate_limited(key)
                m.failures[key] = m.failures.get(key, 0) + 1
            elif op == "forget":
                q.forget(key)
                m.failures.pop(key, None)
            else:
                q.shutdown()
                m.shut = True
            assert len(q) == len(m.queue)
            assert q.processing() == len(m.processing)
            for k in "abcd":
                assert q.num_requeues(k) == m.failures.get(k, 0)

    anyio.run(run, backend="asyncio")
