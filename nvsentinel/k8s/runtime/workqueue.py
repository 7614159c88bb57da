"""A rate-limited work queue for reconcilers, with client-go's semantics, on anyio.

The contract (client-go `workqueue`, the "stingy" rules):
- a key is queued at most once (`dirty` set): many events for one object cost one reconcile;
- a key being processed is never handed to a second worker; if it is added meanwhile, it is
  queued again when the first worker calls `done(key)`, so the latest state is always seen;
- keys come out FIFO;
- `add_after` keeps the earliest pending time per key; `add_rate_limited` delays a key by
  `base_delay * 2**failures`, capped at `max_delay`, until `forget(key)` resets it;
- after `shutdown()`, adds are ignored, delayed keys are dropped, getters drain what is queued and
  then raise `ShutDown`.

Not thread-safe: every method must be called from the event loop's thread (informer handlers and
workers run there). Delayed keys live in one heap; there is no timer task: waiting getters sleep
until the earliest deadline and move due keys into the queue themselves.
"""
from __future__ import annotations

import collections
import heapq
import logging
import math
import time

import anyio
import anyio.lowlevel

logger = logging.getLogger(__name__)

__all__ = ["ShutDown", "WorkQueue"]


class ShutDown(Exception):
    """The queue was shut down and has nothing left to hand out: the worker should exit."""


class WorkQueue:
    """Deduplicating FIFO of object keys with per-key delays and exponential backoff."""

    def __init__(self, *, base_delay: float = 0.005, max_delay: float = 300.0, name: str = "") -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError(f"need 0 < base_delay <= max_delay, got {base_delay}, {max_delay}")
        self.name = name
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self._queue: collections.deque[str] = collections.deque()
        self._dirty: set[str] = set()           # keys that need a reconcile (queued, or re-added while processing)
        self._processing: set[str] = set()      # keys a worker holds between get() and done()
        self._failures: dict[str, int] = {}
        self._waiting: dict[str, float] = {}    # key -> earliest monotonic deadline pending
        self._heap: list[tuple[float, int, str]] = []   # (deadline, seq, key); stale entries skipped lazily
        self._seq = 0
        self._shutting_down = False
        # created lazily: anyio objects need a running event loop, the constructor may run without one
        self._wakeup: anyio.Event | None = None

    # ---- adding -----------------------------------------------------------------------------------
    def add(self, key: str) -> None:
        """Queue `key` now unless it is already queued; a key in processing is queued after `done`."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._notify()

    def add_after(self, key: str, delay: float) -> None:
        """Queue `key` after `delay` seconds; a pending earlier deadline for the key wins."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        deadline = time.monotonic() + delay
        pending = self._waiting.get(key)
        if pending is not None and pending <= deadline:
            return
        self._waiting[key] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, key))
        if self._heap[0][2] == key and self._heap[0][0] == deadline:
            self._notify()  # a new earliest deadline: sleeping getters must shorten their sleep

    def add_rate_limited(self, key: str) -> None:
        """Queue `key` after its backoff (`base_delay * 2**num_requeues`, capped), then count one more failure."""
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        self.add_after(key, self.backoff(n))

    def backoff(self, failures: int) -> float:
        """The delay after `failures` earlier failures; never overflows, never above `max_delay`."""
        if failures >= 64:  # 2**64 * any sane base is far past any cap; avoids float overflow
            return self.max_delay
        return min(self.base_delay * math.ldexp(1.0, failures), self.max_delay)

    def forget(self, key: str) -> None:
        """Reset the key's failure count (after a success); a pending delayed add stays pending."""
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)

    # ---- taking -----------------------------------------------------------------------------------
    async def get(self) -> str:
        """The next key, FIFO; the caller owns it until `done(key)`. Raises `ShutDown` once drained."""
        await anyio.lowlevel.checkpoint()
        while True:
            self._promote_due()
            if self._queue:
                key = self._queue.popleft()
                self._processing.add(key)
                self._dirty.discard(key)
                return key
            if self._shutting_down:
                raise ShutDown(self.name or "work queue")
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            wakeup = self._wakeup
            timeout = max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else math.inf
            with anyio.move_on_after(timeout):
                await wakeup.wait()

    def done(self, key: str) -> None:
        """Release `key`; if it was added while processing, queue it again now."""
        if key not in self._processing:
            return
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._notify()

    def shutdown(self) -> None:
        """Stop accepting keys, drop delayed ones, wake every getter (they drain, then raise `ShutDown`)."""
        self._shutting_down = True
        self._heap.clear()
        self._waiting.clear()
        self._notify()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        """Depth: keys queued and not yet handed out (delayed keys count once due)."""
        self._promote_due()
        return len(self._queue)

    def pending_delayed(self) -> int:
        """Keys waiting for a deadline (for metrics and tests)."""
        return len(self._waiting)

    def processing(self) -> int:
        """Keys a worker holds now (for metrics and tests)."""
        return len(self._processing)

    # ---- internals --------------------------------------------------------------------------------
    def _promote_due(self) -> None:
        if not self._heap:
            return
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            deadline, _, key = heapq.heappop(self._heap)
            if self._waiting.get(key) != deadline:
                continue  # superseded by an earlier deadline for the same key
            del self._waiting[key]
            self.add(key)

    def _notify(self) -> None:
        # wake every getter: each re-checks the queue; no wake-up can be lost to a cancelled getter
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
