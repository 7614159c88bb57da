"""Watch fan-out: the pure-Python twin, and the specification of the compiled one.

One shared ring of events, which doubles as the resume history, and one cursor per subscriber
(SPEC §2.2). Publishing writes one slot and wakes waiters once, so its cost does not grow with the
number of subscribers. A subscriber whose cursor falls off the tail of the ring (more than
`max_lag` events behind) is the slow one: it is evicted with an explicit reason the next time it
reads, instead of silently skipping events (upstream's watchers diverged without knowing).

Contract of a subscription: events arrive in RV order, gap-free, or the subscriber is evicted
with a reason (`Evicted`); a resume RV older than the window raises `Expired`; a closed fan-out
or subscription raises `Closed`. A fresh subscription first yields its snapshot (synthetic ADDED
events supplied by the store), then live events.

Waiting: `Subscription.get(timeout)` blocks the calling thread (the compiled one releases the
GIL); async code waits through `nvsentinel.fanout.next_event`, which uses the wake-up sockets
registered here (one per event loop, not one per subscriber).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from nvsentinel import types as _t
from nvsentinel.errors import Closed, Evicted, Expired, InvalidObject, LimitExceeded

__all__ = ["FanOut", "Subscription", "WatchEvent"]

_LIVE_TYPES = (_t.ADDED, _t.MODIFIED, _t.DELETED)


class WatchEvent:
    """One watch event: type (ADDED/MODIFIED/DELETED/BOOKMARK), resource version, GPU name and the
    serialized object (empty for BOOKMARK). Immutable and shared by every subscriber."""

    __slots__ = ("type", "resource_version", "name", "data")

    type: str
    resource_version: int
    name: str
    data: bytes

    def __init__(self, type: str, resource_version: int, name: str, data: bytes) -> None:
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "resource_version", resource_version)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "data", data)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("WatchEvent is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WatchEvent):
            return NotImplemented
        return (self.type, self.resource_version, self.name, self.data) == (
            other.type,
            other.resource_version,
            other.name,
            other.data,
        )

    def __hash__(self) -> int:
        return hash((self.type, self.resource_version, self.name, self.data))

    def __repr__(self) -> str:
        return f"WatchEvent({self.type}, rv={self.resource_version}, name={self.name!r}, {len(self.data)} bytes)"


def _positive(value: object, what: str, low: float = 1) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"{what} must be a number >= {low}, got {value!r}")
    return value


class FanOut:
    """Broadcast of watch events to many subscribers through one shared ring (see module doc)."""

    def __init__(
        self,
        *,
        max_lag: int = 256,
        max_subscribers: int = 256,
        subscribe_rate: float = 10.0,
        subscribe_burst: int = 20,
        start_rv: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_lag = int(_positive(max_lag, "max_lag"))
        self.max_subscribers = int(_positive(max_subscribers, "max_subscribers"))
        self.subscribe_rate = float(_positive(subscribe_rate, "subscribe_rate", 1e-9))
        self.subscribe_burst = int(_positive(subscribe_burst, "subscribe_burst"))
        if type(start_rv) is not int or start_rv < 0:
            raise ValueError(f"start_rv must be an int >= 0, got {start_rv!r}")
        self._clock = clock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ring: list[WatchEvent | None] = [None] * self.max_lag
        self._head = 0  # sequence number of the next event published
        self._last_rv = start_rv
        self._dropped_rv = start_rv  # RV of the newest event no longer in the ring
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._tokens = float(self.subscribe_burst)
        self._tokens_at = clock()
        self._bm_seq = 0
        self._bm_rv = start_rv
        self._closed = False
        self._published = 0
        self._evicted = 0
        self._wakeups: dict[int, list[Any]] = {}  # fd -> [socket, armed]

    # -- publishing --

    def publish(self, type: str, rv: int, name: str, data: bytes) -> None:
        """Append one event; never blocks on subscribers. RVs must strictly increase."""
        if type not in _LIVE_TYPES:
            raise InvalidObject(f"event type must be ADDED, MODIFIED or DELETED, not {type!r}")
        if not isinstance(rv, int) or isinstance(rv, bool):
            raise InvalidObject(f"resource version must be an int, got {rv!r}")
        if not isinstance(name, str) or not isinstance(data, bytes):
            raise InvalidObject("name must be a str and data bytes")
        event = WatchEvent(type, rv, name, data)
        with self._lock:
            if rv <= self._last_rv:
                raise InvalidObject(f"resource version {rv} is not after {self._last_rv}")
            if self._closed:
                return
            slot = self._head % self.max_lag
            old = self._ring[slot]
            if old is not None:
                self._dropped_rv = old.resource_version
            self._ring[slot] = event
            self._head += 1
            self._last_rv = rv
            self._published += 1
            self._wake()

    def bookmark(self) -> None:
        """Offer each idle subscriber one BOOKMARK at the last published RV."""
        with self._lock:
            self._bm_seq += 1
            self._bm_rv = self._last_rv
            self._wake()

    def close(self) -> None:
        """Close the fan-out: every subscriber's next read raises Closed. Idempotent."""
        with self._lock:
            self._closed = True
            self._wake()

    def _wake(self) -> None:
        # lock held
        self._cond.notify_all()
        for entry in self._wakeups.values():
            if entry[1]:
                entry[1] = False
                try:
                    os.write(entry[0].fileno(), b"\0")
                except OSError:
                    pass  # full (a wake-up is already pending) or closed: nothing to add

    # -- async wake-ups --

    def add_wakeup(self, sock: socket.socket) -> None:
        """Register a non-blocking socket that gets a byte when an armed waiter should wake."""
        with self._lock:
            self._wakeups[sock.fileno()] = [sock, False]

    def remove_wakeup(self, sock: socket.socket) -> None:
        with self._lock:
            self._wakeups.pop(sock.fileno(), None)

    def arm_wakeup(self, sock: socket.socket) -> None:
        """Ask for one byte on `sock` at the next publish, bookmark or close."""
        with self._lock:
            entry = self._wakeups.get(sock.fileno())
            if entry is None:
                raise InvalidObject("socket is not registered with add_wakeup")
            entry[1] = True

    # -- subscribing --

    def subscribe(self, *, since_rv: int | None = None, snapshot: Sequence[WatchEvent] = ()) -> Subscription:
        """A new subscription: from `since_rv` (every event after it) or fresh (the snapshot, then
        live events from now). Raises LimitExceeded (rate or cap), Expired, Closed, InvalidObject."""
        if since_rv is not None:
            if not isinstance(since_rv, int) or isinstance(since_rv, bool):
                raise InvalidObject(f"resource version must be an int, got {since_rv!r}")
            if since_rv < 0:
                raise InvalidObject(f"resource version must be >= 0, got {since_rv}")
        snap = list(snapshot)
        with self._lock:
            if self._closed:
                raise Closed("the watch fan-out is closed")
            now = self._clock()
            self._tokens = min(
                float(self.subscribe_burst),
                self._tokens + max(0.0, now - self._tokens_at) * self.subscribe_rate,
            )
            self._tokens_at = now
            if self._tokens < 1.0:
                raise LimitExceeded(
                    f"subscribe rate limit: {self.subscribe_rate:g}/s, burst {self.subscribe_burst}"
                )
            if len(self._subs) >= self.max_subscribers:
                self._sweep()
                if len(self._subs) >= self.max_subscribers:
                    raise LimitExceeded(f"{len(self._subs)} subscribers; the limit is {self.max_subscribers}")
            if since_rv is None:
                cursor = self._head
            else:
                if since_rv > self._last_rv:
                    raise Expired(
                        f"resource version {since_rv} is newer than the store's {self._last_rv} "
                        "(the server restarted?): relist"
                    )
                if since_rv < self._dropped_rv:
                    raise Expired(
                        f"resource version {since_rv} is older than the history window "
                        f"(oldest resumable: {self._dropped_rv}): relist"
                    )
                cursor = self._find(since_rv)
            self._tokens -= 1.0
            sub = Subscription(self, cursor, snap, self._bm_seq, since_rv if since_rv is not None else self._last_rv)
            self._subs.add(sub)
            return sub

    def _find(self, rv: int) -> int:
        """First sequence number in the ring whose event RV is > rv (lock held)."""
        lo = max(0, self._head - self.max_lag)
        hi = self._head
        while lo < hi:
            mid = (lo + hi) // 2
            ev = self._ring[mid % self.max_lag]
            assert ev is not None
            if ev.resource_version <= rv:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _sweep(self) -> None:
        """Evict subscribers already past the lag bound to free their slots (lock held)."""
        for sub in list(self._subs):
            if sub._reason is None and self._head - sub._cursor > self.max_lag:
                self._evict(sub)

    def _evict(self, sub: Subscription) -> None:
        lag = self._head - sub._cursor
        sub._reason = Evicted(
            f"subscriber fell {lag} events behind; the bound is {self.max_lag}: "
            f"resume from resource version {sub._last_rv} or relist"
        )
        self._evicted += 1
        self._subs.discard(sub)

    # -- introspection --

    @property
    def resource_version(self) -> int:
        return self._last_rv

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "subscribers": len(self._subs),
                "published_total": self._published,
                "evicted_total": self._evicted,
                "resource_version": self._last_rv,
                "oldest_resumable_rv": self._dropped_rv,
            }


class Subscription:
    """One subscriber's view of a FanOut: read with `get`, `get_nowait`, iteration, or
    `nvsentinel.fanout.next_event` from async code. Close it (or use `with`) to free its slot."""

    def __init__(self, fanout: FanOut, cursor: int, snapshot: list[WatchEvent], bm_seq: int, last_rv: int) -> None:
        self._fanout = fanout
        self._cursor = cursor
        self._snapshot = snapshot
        self._snap_pos = 0
        self._bm_seq = bm_seq
        self._last_rv = last_rv
        self._reason: Exception | None = None

    @property
    def fanout(self) -> FanOut:
        return self._fanout

    @property
    def resource_version(self) -> int:
        """The RV of the last event delivered (or the starting point)."""
        return self._last_rv

    @property
    def pending(self) -> int:
        """Events waiting to be read (snapshot included)."""
        return len(self._snapshot) - self._snap_pos + max(0, self._fanout._head - self._cursor)

    def _poll(self) -> WatchEvent | None:
        # lock held
        fo = self._fanout
        if self._reason is not None:
            raise self._reason
        if self._snap_pos < len(self._snapshot):
            ev = self._snapshot[self._snap_pos]
            self._snapshot[self._snap_pos] = None  # type: ignore[call-overload]  # let it go
            self._snap_pos += 1
            return ev
        if fo._head - self._cursor > fo.max_lag:
            fo._evict(self)
            raise self._reason  # type: ignore[misc]
        if self._cursor < fo._head:
            ev = fo._ring[self._cursor % fo.max_lag]
            self._cursor += 1
            self._last_rv = ev.resource_version  # type: ignore[union-attr]
            return ev
        if fo._closed:
            self._reason = Closed("the watch fan-out was closed")
            fo._subs.discard(self)
            raise self._reason
        if self._bm_seq != fo._bm_seq:
            self._bm_seq = fo._bm_seq
            if fo._bm_rv >= self._last_rv:
                self._last_rv = fo._bm_rv
                return WatchEvent(_t.BOOKMARK, fo._bm_rv, "", b"")
        return None

    def get_nowait(self) -> WatchEvent | None:
        """The next event, or None if there is none yet."""
        with self._fanout._lock:
            return self._poll()

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, waiting up to `timeout` seconds (None: forever); None on timeout."""
        fo = self._fanout
        deadline = None if timeout is None else time.monotonic() + timeout
        with fo._lock:
            while True:
                ev = self._poll()
                if ev is not None:
                    return ev
                if deadline is None:
                    fo._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    fo._cond.wait(remaining)

    def close(self) -> None:
        """Stop the subscription and free its slot; later reads raise Closed. Idempotent."""
        with self._fanout._lock:
            if self._reason is None:
                self._reason = Closed("the subscription was closed")
            self._fanout._subs.discard(self)

    @property
    def closed(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> Exception | None:
        """Why the subscription ended (Evicted / Closed), or None while it is open."""
        return self._reason

    def __iter__(self) -> Iterator[WatchEvent]:
        """Blocking iteration; ends when the subscription or the fan-out is closed (an eviction raises)."""
        while True:
            try:
                ev = self.get()
            except Closed:
                return
            if ev is not None:
                yield ev

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
