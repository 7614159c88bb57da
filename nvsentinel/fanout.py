"""Watch fan-out (SPEC §2.2): public API, plus waiting from async code.

Picks the compiled implementation (`nvsentinel._fanout_c`) unless `NVSENTINEL_NO_EXTENSIONS` is
set. Contract (see `nvsentinel._fanout_py`): events arrive in RV order, gap-free, or the subscriber
is evicted with a reason (`Evicted`); a resume RV older than the window raises `Expired`.

Threads wait with `sub.get(timeout)`. Async code (asyncio or trio, through anyio) waits with
`await next_event(sub, timeout)` or `async for event in events(sub)`: all subscribers of one
event loop share one wake-up socket, so a publish costs one write per event loop, however many
subscribers wait.
"""
from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel

from nvsentinel._compat import NO_EXTENSIONS
from nvsentinel.errors import Closed, Evicted, Expired, LimitExceeded

__all__ = [
    "IMPLEMENTATION",
    "FanOut",
    "Subscription",
    "WatchEvent",
    "next_event",
    "events",
    "Closed",
    "Evicted",
    "Expired",
    "LimitExceeded",
]

IMPLEMENTATION: Literal["c", "py"]

if TYPE_CHECKING:
    from nvsentinel._fanout_py import FanOut, Subscription, WatchEvent
elif NO_EXTENSIONS:
    from nvsentinel._fanout_py import FanOut, Subscription, WatchEvent

    IMPLEMENTATION = "py"
else:
    from nvsentinel._fanout_c import FanOut, Subscription, WatchEvent

    IMPLEMENTATION = "c"


class _LoopHub:
    """The wake-up socket pair one event loop shares for one fan-out.

    One waiting task (the reader) awaits the socket; the others await `event`, which the reader
    sets when it wakes. Every waiter arms the fan-out before its final check, so a publish that
    lands after the check always writes the socket.
    """

    def __init__(self, fanout: Any) -> None:
        self.fanout = fanout
        self.rsock, self.wsock = socket.socketpair()
        self.rsock.setblocking(False)
        self.wsock.setblocking(False)
        fanout.add_wakeup(self.wsock)
        self.event = anyio.Event()
        self.reading = False

    async def wait(self) -> None:
        if self.reading:
            await self.event.wait()
            return
        self.reading = True
        try:
            await anyio.wait_readable(self.rsock)
            try:
                while self.rsock.recv(4096):
                    pass
            except BlockingIOError:
                pass
        finally:
            self.reading = False
            event, self.event = self.event, anyio.Event()
            event.set()

    def close(self) -> None:
        self.fanout.remove_wakeup(self.wsock)
        self.rsock.close()
        self.wsock.close()


# fan-out -> {event loop key -> hub}; both levels are weak so neither keeps the other alive.
_hubs: "weakref.WeakKeyDictionary[Any, dict[Any, _LoopHub]]" = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def _loop_key() -> tuple[Any, Any]:
    """(key, weak-referenceable owner or None) for the running event loop."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return anyio.lowlevel.current_token(), None  # another backend (trio)
    return id(loop), loop


def _hub(fanout: Any) -> _LoopHub:
    key, owner = _loop_key()
    with _hubs_lock:
        per_loop = _hubs.setdefault(fanout, {})
        hub = per_loop.get(key)
        if hub is None:
            hub = per_loop[key] = _LoopHub(fanout)
            if owner is not None:  # the hub (and its sockets) go when the loop does
                weakref.finalize(owner, _drop_hub, weakref.ref(fanout), key)
    return hub


def _drop_hub(fanout_ref: "weakref.ref[Any]", key: Any) -> None:
    fanout = fanout_ref()
    if fanout is None:
        return
    with _hubs_lock:
        hub = _hubs.get(fanout, {}).pop(key, None)
    if hub is not None:
        hub.close()


async def next_event(sub: Subscription, timeout: float | None = None) -> WatchEvent | None:
    """The subscription's next event, awaited without blocking the event loop; None on timeout.

    Raises what `sub.get` raises (Evicted, Closed).
    """
    event = sub.get_nowait()
    if event is not None:
        return event
    hub = _hub(sub.fanout)
    with anyio.move_on_after(timeout):
        while True:
            sub.fanout.arm_wakeup(hub.wsock)
            event = sub.get_nowait()
            if event is not None:
                return event
            await hub.wait()
    return None


async def events(sub: Subscription) -> AsyncIterator[WatchEvent]:
    """Async iteration over a subscription; ends when it (or its fan-out) is closed."""
    while True:
        try:
            event = await next_event(sub)
        except Closed:
            return
        if event is not None:
            yield event
