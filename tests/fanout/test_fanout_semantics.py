"""Watch fan-out semantics (SPEC §2.2) on both implementations, alone and through the store."""
from __future__ import annotations

import threading
import time

import anyio
import pytest
from gpus import gpu, gpu_name, status

from nvsentinel import fanout as facade
from nvsentinel.errors import Closed, Evicted, Expired, InvalidObject, LimitExceeded

A, B = gpu_name(1), gpu_name(2)


@pytest.fixture
def fo_mod(impl):
    return impl.load("fanout")


@pytest.fixture
def store_mod(impl):
    return impl.load("store")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(sub):
    out = []
    while (ev := sub.get_nowait()) is not None:
        out.append(ev)
    return out


def rvs(events):
    return [(e.type, e.resource_version) for e in events]


def test_fresh_watch_is_snapshot_then_live_without_gap_or_duplicate(store_mod):
    """Verify a fresh watch yields ADDED for every GPU (oldest change first), then every later change."""
    store = store_mod.GpuStore()
    store.create(gpu(A))
    store.create(gpu(B))
    store.update_status(A, status(("Ready", "True")))  # A is now rv 3, B rv 2
    sub = store.watch()
    store.update_status(B, status(("Ready", "False")))
    store.delete(A)
    events = drain(sub)
    assert [(e.type, e.resource_version, e.name) for e in events] == [
        ("ADDED", 2, B),
        ("ADDED", 3, A),
        ("MODIFIED", 4, B),
        ("DELETED", 5, A),
    ]
    assert events[2].data == store.get(B).data
    assert sub.resource_version == 5


def test_resume_from_rv_delivers_every_later_event(store_mod):
    """Verify watch(since_rv=R) yields exactly the events after R, deletes included."""
    store = store_mod.GpuStore()
    store.create(gpu(A))
    store.create(gpu(B))
    store.delete(A)
    store.update_status(B, status(("Ready", "True")))
    assert rvs(drain(store.watch(since_rv=0))) == [("ADDED", 1), ("ADDED", 2), ("DELETED", 3), ("MODIFIED", 4)]
    assert rvs(drain(store.watch(since_rv=2))) == [("DELETED", 3), ("MODIFIED", 4)]
    assert drain(store.watch(since_rv=4)) == []


def test_list_then_watch_from_the_list_rv_has_no_gap(store_mod):
    """Verify the upstream list+watch gap is closed: a GPU created between list and watch arrives."""
    store = store_mod.GpuStore()
    store.create(gpu(A))
    rv, _ = store.list()
    store.create(gpu(B))
    events = drain(store.watch(since_rv=rv))
    assert [(e.type, e.name) for e in events] == [("ADDED", B)]


def test_expired_rv_outside_the_window(store_mod):
    """Verify resuming from an RV older than the window (or newer than the store) raises Expired."""
    store = store_mod.GpuStore(max_lag=4)
    store.create(gpu(A))
    for _ in range(6):
        store.update_status(A, status(("Ready", "True")))
    assert store.resource_version == 7
    with pytest.raises(Expired, match="older than the history window"):
        store.watch(since_rv=2)
    assert rvs(drain(store.watch(since_rv=3))) == [("MODIFIED", 4), ("MODIFIED", 5), ("MODIFIED", 6), ("MODIFIED", 7)]
    with pytest.raises(Expired, match="newer than the store"):
        store.watch(since_rv=8)
    with pytest.raises(InvalidObject):
        store.watch(since_rv=-1)


def test_slow_subscriber_is_evicted_with_a_reason_and_others_are_not(fo_mod):
    """Verify a subscriber more than max_lag behind is evicted explicitly, and a fast one keeps going."""
    fo = fo_mod.FanOut(max_lag=8)
    slow, fast = fo.subscribe(), fo.subscribe()
    got = []
    for rv in range(1, 21):
        fo.publish("MODIFIED", rv, A, b"x")
        got.extend(drain(fast))
    assert [e.resource_version for e in got] == list(range(1, 21))
    with pytest.raises(Evicted, match="fell 20 events behind; the bound is 8"):
        slow.get_nowait()
    assert slow.closed and isinstance(slow.reason, Evicted)
    with pytest.raises(Evicted):  # stays evicted
        slow.get(timeout=0)
    assert fo.stats()["evicted_total"] == 1
    assert fo.stats()["subscribers"] == 1


def test_publish_never_blocks_on_a_stalled_subscriber(fo_mod):
    """Verify publishing many more events than the lag bound returns promptly with a stalled reader."""
    fo = fo_mod.FanOut(max_lag=16)
    stalled = fo.subscribe()
    start = time.monotonic()
    for rv in range(1, 10_001):
        fo.publish("MODIFIED", rv, A, b"")
    assert time.monotonic() - start < 5
    with pytest.raises(Evicted):
        stalled.get_nowait()


def test_bookmarks_reach_idle_subscribers_once(store_mod):
    """Verify bookmark() gives each idle watcher one BOOKMARK at the current RV, after any pending event."""
    store = store_mod.GpuStore()
    store.create(gpu(A))
    idle = store.watch(since_rv=1)
    busy = store.watch(since_rv=1)
    store.update_status(A, status(("Ready", "True")))
    store.bookmark()
    assert rvs(drain(idle)) == [("MODIFIED", 2), ("BOOKMARK", 2)]
    store.bookmark()
    assert rvs(drain(busy)) == [("MODIFIED", 2), ("BOOKMARK", 2)]
    ev = idle.get(timeout=0.01)
    assert ev is not None and ev.type == "BOOKMARK" and ev.name == "" and ev.data == b""
    assert idle.get(timeout=0.01) is None


def test_subscriber_cap_and_closing_frees_a_slot(fo_mod):
    """Verify the subscriber cap raises LimitExceeded and closing (or evicting) one frees its slot."""
    fo = fo_mod.FanOut(max_subscribers=2, max_lag=2)
    first, _second = fo.subscribe(), fo.subscribe()
    with pytest.raises(LimitExceeded, match="the limit is 2"):
        fo.subscribe()
    first.close()
    with pytest.raises(Closed):
        first.get_nowait()
    third = fo.subscribe()
    for rv in range(1, 4):  # _second and third fall 3 behind: past the bound
        fo.publish("ADDED", rv, A, b"")
    assert fo.subscribe() is not None  # the sweep evicted the laggards
    with pytest.raises(Evicted):
        third.get_nowait()


def test_subscribe_rate_limit(fo_mod):
    """Verify the token bucket: a burst of 20, then 10 per second."""
    clock = FakeClock()
    fo = fo_mod.FanOut(subscribe_rate=10, subscribe_burst=20, clock=clock)
    subs = [fo.subscribe() for _ in range(20)]
    with pytest.raises(LimitExceeded, match="rate limit"):
        fo.subscribe()
    clock.now += 0.1  # one token back
    subs.append(fo.subscribe())
    with pytest.raises(LimitExceeded):
        fo.subscribe()
    clock.now += 1.0
    subs.extend(fo.subscribe() for _ in range(10))
    assert len(subs) == 31


def test_publish_validates(fo_mod):
    """Verify publish refuses unknown event types and non-increasing RVs with InvalidObject."""
    fo = fo_mod.FanOut()
    fo.publish("ADDED", 5, A, b"")
    with pytest.raises(InvalidObject):
        fo.publish("BOOKMARK", 6, A, b"")
    with pytest.raises(InvalidObject, match="not after 5"):
        fo.publish("MODIFIED", 5, A, b"")
    with pytest.raises((InvalidObject, TypeError)):
        fo.publish("MODIFIED", 6, A, "not bytes")


def test_close_ends_every_subscription(store_mod):
    """Verify closing the store ends watches with Closed (after pending events) and refuses new ones."""
    store = store_mod.GpuStore()
    sub = store.watch()
    store.create(gpu(A))
    store.close()
    assert sub.get_nowait().type == "ADDED"
    with pytest.raises(Closed):
        sub.get(timeout=1)
    with pytest.raises(Closed):
        store.watch()
    assert list(sub) == []  # iteration just ends


def test_blocking_get_wakes_on_publish_and_times_out(fo_mod):
    """Verify get() sleeps until a publish from another thread, and returns None after its timeout."""
    fo = fo_mod.FanOut()
    sub = fo.subscribe()
    start = time.monotonic()
    assert sub.get(timeout=0.05) is None
    assert time.monotonic() - start >= 0.04
    timer = threading.Timer(0.05, fo.publish, ("ADDED", 1, A, b""))
    timer.start()
    ev = sub.get(timeout=5)
    timer.join()
    assert ev is not None and ev.resource_version == 1


def test_many_threads_wait_and_all_wake(fo_mod):
    """Verify one publish wakes every thread blocked in get() (the broadcast)."""
    fo = fo_mod.FanOut()
    subs = [fo.subscribe() for _ in range(16)]
    results = [None] * 16

    def wait(i):
        results[i] = subs[i].get(timeout=10)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    fo.publish("ADDED", 1, A, b"z")
    for t in threads:
        t.join(timeout=10)
    assert [r.resource_version for r in results] == [1] * 16


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_async_waiters_share_one_wakeup(fo_mod, anyio_backend):
    """Verify many async subscribers in one loop all receive events published from another thread."""

    async def main():
        fo = fo_mod.FanOut(subscribe_burst=50)
        subs = [fo.subscribe() for _ in range(50)]
        received = {i: [] for i in range(50)}

        async def consume(i):
            async for ev in facade.events(subs[i]):
                received[i].append(ev.resource_version)
                if ev.resource_version == 20:
                    return

        def produce():
            for rv in range(1, 21):
                fo.publish("MODIFIED", rv, A, b"")
                time.sleep(0.001)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(consume, i)
            await anyio.to_thread.run_sync(produce)
        assert all(v == list(range(1, 21)) for v in received.values())
        fo.close()

    anyio.run(main, backend=anyio_backend)


def test_async_next_event_timeout_and_close(fo_mod):
    """Verify next_event returns None on timeout, an event when one is published, and raises Closed."""

    async def main():
        fo = fo_mod.FanOut()
        sub = fo.subscribe()
        assert await facade.next_event(sub, timeout=0.05) is None
        fo.publish("ADDED", 1, A, b"")
        assert (await facade.next_event(sub, timeout=1)).resource_version == 1
        async with anyio.create_task_group() as tg:
            async def closer():
                await anyio.sleep(0.05)
                fo.close()

            tg.start_soon(closer)
            with pytest.raises(Closed):
                await facade.next_event(sub, timeout=5)

    anyio.run(main)


def test_async_waiter_cancellation_hands_over_the_socket(fo_mod):
    """Verify cancelling the task that holds the wake-up socket does not strand the other waiters."""

    async def main():
        fo = fo_mod.FanOut()
        a, b = fo.subscribe(), fo.subscribe()
        got = []

        async def wait_b():
            got.append(await facade.next_event(b, timeout=5))

        scope = anyio.CancelScope()

        async def wait_a():
            with scope:
                await facade.next_event(a)  # first in: becomes the socket reader

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_a)
            await anyio.sleep(0.02)
            tg.start_soon(wait_b)  # waits on the reader's event
            await anyio.sleep(0.02)
            scope.cancel()
            await anyio.sleep(0.02)
            fo.publish("ADDED", 1, A, b"")
        assert got[0].resource_version == 1

    anyio.run(main)


@pytest.mark.parametrize("lag, evicted", [(7, False), (8, False), (9, True)])
def test_lag_bound_is_exact(fo_mod, lag, evicted):
    """Verify a subscriber exactly max_lag behind still reads everything, and one more evicts it."""
    fo = fo_mod.FanOut(max_lag=8)
    sub = fo.subscribe()
    for rv in range(1, lag + 1):
        fo.publish("MODIFIED", rv, A, b"")
    if evicted:
        with pytest.raises(Evicted):
            sub.get_nowait()
    else:
        assert [e.resource_version for e in drain(sub)] == list(range(1, lag + 1))


def test_async_wakeup_sockets_go_with_their_event_loop(fo_mod):
    """Verify each event loop's wake-up socket is unregistered once that loop is gone (no fd leak)."""
    import gc

    fo = fo_mod.FanOut(subscribe_burst=100)

    async def once():
        sub = fo.subscribe()
        assert await facade.next_event(sub, timeout=0.01) is None
        sub.close()

    for _ in range(5):
        anyio.run(once)
    gc.collect()
    assert facade._hubs.get(fo, {}) == {}
