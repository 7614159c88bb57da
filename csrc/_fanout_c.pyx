# cython: language_level=3
"""Compiled watch fan-out. Behaviour and documentation: nvsentinel/_fanout_py.py (the twin).

C-level choices: the ring and the cursors are plain C fields guarded by the GIL — every section
that reads or writes them is straight C with no call that could run Python code (objects that
can be freed there hold only str/bytes, whose deallocation runs none), so it is atomic under the
GIL. Threads sleep without the GIL on a C wait queue (waitq.h) that a publish wakes with one
broadcast. The compiled module therefore needs a GIL; _compat picks the twin on free-threaded
builds.
"""
cimport cython
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport errno
from posix.unistd cimport write

import time
import weakref

from nvsentinel import types as _t
from nvsentinel._fanout_py import _positive
from nvsentinel.errors import Closed, Evicted, Expired, InvalidObject, LimitExceeded
from waitq cimport nvs_waitq, nvs_waitq_destroy, nvs_waitq_gen, nvs_waitq_init, nvs_waitq_notify, nvs_waitq_wait

__all__ = ["FanOut", "Subscription", "WatchEvent"]

cdef str ADDED = _t.ADDED
cdef str MODIFIED = _t.MODIFIED
cdef str DELETED = _t.DELETED
cdef str BOOKMARK = _t.BOOKMARK
# a thread blocked without a timeout still wakes this often to let signals (Ctrl-C) through
cdef double SIGNAL_SLICE = 0.2


@cython.final
cdef class WatchEvent:
    """One watch event (see nvsentinel._fanout_py.WatchEvent)."""

    cdef readonly str type
    cdef readonly long long resource_version
    cdef readonly str name
    cdef readonly bytes data            # serialized Gpu; b"" for BOOKMARK

    def __init__(self, str type, long long resource_version, str name, bytes data):
        self.type = type
        self.resource_version = resource_version
        self.name = name
        self.data = data

    def __eq__(self, other):
        if not isinstance(other, WatchEvent):
            return NotImplemented
        cdef WatchEvent o = <WatchEvent>other
        return (self.type == o.type and self.resource_version == o.resource_version
                and self.name == o.name and self.data == o.data)

    def __hash__(self):
        return hash((self.type, self.resource_version, self.name, self.data))

    def __repr__(self):
        return f"WatchEvent({self.type}, rv={self.resource_version}, name={self.name!r}, {len(self.data)} bytes)"


cdef inline WatchEvent _event(str type, long long rv, str name, bytes data):
    cdef WatchEvent ev = WatchEvent.__new__(WatchEvent)
    ev.type = type
    ev.resource_version = rv
    ev.name = name
    ev.data = data
    return ev


@cython.final
cdef class FanOut:
    """Broadcast of watch events through one shared ring (see nvsentinel._fanout_py.FanOut)."""

    cdef:
        readonly Py_ssize_t max_lag     # ring size == lag bound == resume window, in events
        readonly Py_ssize_t max_subscribers
        readonly double subscribe_rate  # tokens per second
        readonly Py_ssize_t subscribe_burst
        list _ring                      # max_lag slots; slot i holds event of sequence i % max_lag
        long long _head                 # sequence number of the next event
        long long _last_rv              # RV of the newest event (or start_rv)
        long long _dropped_rv           # RV of the newest event no longer in the ring
        object _subs                    # weakref.WeakSet of live subscriptions
        object _clock
        double _tokens
        double _tokens_at
        long long _bm_seq               # bumped by bookmark()
        long long _bm_rv
        bint _closed
        long long _published
        long long _evicted
        dict _wakeups                   # fd -> [socket, armed]
        Py_ssize_t _n_wakeups
        nvs_waitq _wq
        bint _wq_ok
        object __weakref__


    def __cinit__(self):
        self._wq_ok = nvs_waitq_init(&self._wq) == 0
        if not self._wq_ok:
            raise MemoryError("cannot initialise the fan-out wait queue")

    def __dealloc__(self):
        if self._wq_ok:
            nvs_waitq_destroy(&self._wq)

    def __init__(self, *, max_lag=256, max_subscribers=256, subscribe_rate=10.0,
                 subscribe_burst=20, start_rv=0, clock=time.monotonic):
        self.max_lag = int(_positive(max_lag, "max_lag"))
        self.max_subscribers = int(_positive(max_subscribers, "max_subscribers"))
        self.subscribe_rate = float(_positive(subscribe_rate, "subscribe_rate", 1e-9))
        self.subscribe_burst = int(_positive(subscribe_burst, "subscribe_burst"))
        if type(start_rv) is not int or start_rv < 0:
            raise ValueError(f"start_rv must be an int >= 0, got {start_rv!r}")
        self._clock = clock
        self._ring = [None] * self.max_lag
        self._head = 0
        self._last_rv = start_rv
        self._dropped_rv = start_rv
        self._subs = weakref.WeakSet()
        self._tokens = <double>self.subscribe_burst
        self._tokens_at = clock()
        self._bm_seq = 0
        self._bm_rv = start_rv
        self._closed = False
        self._published = 0
        self._evicted = 0
        self._wakeups = {}
        self._n_wakeups = 0

    # ---- publishing ----

    cpdef publish(self, str type, long long rv, str name, bytes data):
        """Append one event; never blocks on subscribers. RVs must strictly increase."""
        if type is not ADDED and type is not MODIFIED and type is not DELETED:
            if type not in (ADDED, MODIFIED, DELETED):
                raise InvalidObject(f"event type must be ADDED, MODIFIED or DELETED, not {type!r}")
        if name is None or data is None:
            raise InvalidObject("name must be a str and data bytes")
        cdef WatchEvent ev = _event(type, rv, name, data)  # allocate before touching the ring
        cdef Py_ssize_t slot
        cdef object old
        if rv <= self._last_rv:
            raise InvalidObject(f"resource version {rv} is not after {self._last_rv}")
        if self._closed:
            return
        # ---- ring update: C only, atomic under the GIL ----
        slot = <Py_ssize_t>(self._head % self.max_lag)
        old = self._ring[slot]
        if old is not None:
            self._dropped_rv = (<WatchEvent>old).resource_version
        self._ring[slot] = ev
        old = None
        self._head += 1
        self._last_rv = rv
        self._published += 1
        self._wake()

    def bookmark(self):
        """Offer each idle subscriber one BOOKMARK at the last published RV."""
        self._bm_seq += 1
        self._bm_rv = self._last_rv
        self._wake()

    def close(self):
        """Close the fan-out: every subscriber's next read raises Closed. Idempotent."""
        self._closed = True
        self._wake()

    cdef int _wake(self) except -1:
        cdef list entry
        cdef int fd
        nvs_waitq_notify(&self._wq)
        if self._n_wakeups:
            for fd_obj, entry_obj in self._wakeups.items():
                entry = <list>entry_obj
                if entry[1]:
                    entry[1] = False
                    fd = fd_obj
                    write(fd, b"\0", 1)  # EAGAIN: a wake-up is already pending; fine
        return 0

    # ---- async wake-ups ----

    def add_wakeup(self, sock):
        """Register a non-blocking socket that gets a byte when an armed waiter should wake."""
        self._wakeups[sock.fileno()] = [sock, False]
        self._n_wakeups = len(self._wakeups)

    def remove_wakeup(self, sock):
        self._wakeups.pop(sock.fileno(), None)
        self._n_wakeups = len(self._wakeups)

    def arm_wakeup(self, sock):
        """Ask for one byte on `sock` at the next publish, bookmark or close."""
        entry = self._wakeups.get(sock.fileno())
        if entry is None:
            raise InvalidObject("socket is not registered with add_wakeup")
        entry[1] = True

    # ---- subscribing ----

    def subscribe(self, *, since_rv=None, snapshot=()):
        """A new subscription (see nvsentinel._fanout_py.FanOut.subscribe)."""
        cdef long long since = -1
        cdef double now
        if since_rv is not None:
            if not isinstance(since_rv, int) or isinstance(since_rv, bool):
                raise InvalidObject(f"resource version must be an int, got {since_rv!r}")
            if since_rv < 0:
                raise InvalidObject(f"resource version must be >= 0, got {since_rv}")
            if since_rv > 0x7FFFFFFFFFFFFFFF:
                raise Expired(
                    f"resource version {since_rv} is newer than the store's {self._last_rv} "
                    "(the server restarted?): relist"
                )
            since = since_rv
        cdef list snap = list(snapshot)
        if self._closed:
            raise Closed("the watch fan-out is closed")
        now = self._clock()
        self._tokens = min(<double>self.subscribe_burst,
                           self._tokens + max(0.0, now - self._tokens_at) * self.subscribe_rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            raise LimitExceeded(
                f"subscribe rate limit: {self.subscribe_rate:g}/s, burst {self.subscribe_burst}"
            )
        if len(self._subs) >= self.max_subscribers:
            self._sweep()
            if len(self._subs) >= self.max_subscribers:
                raise LimitExceeded(f"{len(self._subs)} subscribers; the limit is {self.max_subscribers}")
        cdef Subscription sub = Subscription.__new__(Subscription)  # allocate first (see module doc)
        # ---- C only from here to the end of the cursor choice ----
        if since < 0:
            sub._cursor = self._head
            sub._last_rv = self._last_rv
        else:
            if since > self._last_rv:
                raise Expired(
                    f"resource version {since} is newer than the store's {self._last_rv} "
                    "(the server restarted?): relist"
                )
            if since < self._dropped_rv:
                raise Expired(
                    f"resource version {since} is older than the history window "
                    f"(oldest resumable: {self._dropped_rv}): relist"
                )
            sub._cursor = self._find(since)
            sub._last_rv = since
        sub._fanout = self
        sub._snapshot = snap
        sub._snap_pos = 0
        sub._bm_seq = self._bm_seq
        sub._reason = None
        self._tokens -= 1.0
        self._subs.add(sub)
        return sub

    cdef Py_ssize_t _find(self, long long rv) noexcept:
        """First sequence number in the ring whose event RV is > rv."""
        cdef long long lo = self._head - self.max_lag
        cdef long long hi = self._head
        cdef long long mid
        if lo < 0:
            lo = 0
        while lo < hi:
            mid = (lo + hi) // 2
            if (<WatchEvent>self._ring[mid % self.max_lag]).resource_version <= rv:
                lo = mid + 1
            else:
                hi = mid
        return <Py_ssize_t>lo

    def _sweep(self):
        cdef Subscription sub
        for s in list(self._subs):
            sub = <Subscription>s
            if sub._reason is None and self._head - sub._cursor > self.max_lag:
                self._evict(sub)

    cdef int _evict(self, Subscription sub) except -1:
        cdef long long lag = self._head - sub._cursor
        sub._reason = Evicted(
            f"subscriber fell {lag} events behind; the bound is {self.max_lag}: "
            f"resume from resource version {sub._last_rv} or relist"
        )
        self._evicted += 1
        self._subs.discard(sub)
        return 0

    # ---- introspection ----

    @property
    def resource_version(self):
        return self._last_rv

    @property
    def closed(self):
        return self._closed

    def stats(self):
        return {
            "subscribers": len(self._subs),
            "published_total": self._published,
            "evicted_total": self._evicted,
            "resource_version": self._last_rv,
            "oldest_resumable_rv": self._dropped_rv,
        }


@cython.final
cdef class Subscription:
    """One subscriber's view of a FanOut (see nvsentinel._fanout_py.Subscription)."""

    cdef:
        FanOut _fanout
        long long _cursor               # next sequence number to read
        list _snapshot
        Py_ssize_t _snap_pos
        long long _bm_seq
        long long _last_rv              # RV of the last event delivered
        object _reason                  # None while open, else the exception to raise
        object __weakref__


    def __init__(self, *args, **kwargs):
        raise TypeError("subscriptions come from FanOut.subscribe() or GpuStore.watch()")

    @property
    def fanout(self):
        return self._fanout

    @property
    def resource_version(self):
        return self._last_rv

    @property
    def pending(self):
        cdef long long live = self._fanout._head - self._cursor
        return len(self._snapshot) - self._snap_pos + (live if live > 0 else 0)

    cdef object _poll(self):
        cdef FanOut fo = self._fanout
        cdef object ev
        if self._reason is not None:
            raise self._reason
        if self._snap_pos < len(self._snapshot):
            ev = self._snapshot[self._snap_pos]
            self._snapshot[self._snap_pos] = None  # let it go
            self._snap_pos += 1
            return ev
        if fo._head - self._cursor > fo.max_lag:
            fo._evict(self)
            raise self._reason
        if self._cursor < fo._head:
            ev = fo._ring[self._cursor % fo.max_lag]
            self._cursor += 1
            self._last_rv = (<WatchEvent>ev).resource_version
            return ev
        if fo._closed:
            self._reason = Closed("the watch fan-out was closed")
            fo._subs.discard(self)
            raise self._reason
        if self._bm_seq != fo._bm_seq:
            self._bm_seq = fo._bm_seq
            if fo._bm_rv >= self._last_rv:
                self._last_rv = fo._bm_rv
                return _event(BOOKMARK, fo._bm_rv, "", b"")
        return None

    def get_nowait(self):
        """The next event, or None if there is none yet."""
        return self._poll()

    def get(self, timeout=None):
        """The next event, waiting up to `timeout` seconds (None: forever) without the GIL."""
        cdef FanOut fo = self._fanout
        cdef unsigned long long gen
        cdef double deadline = 0.0, remaining = SIGNAL_SLICE
        cdef bint forever = timeout is None
        if not forever:
            deadline = time.monotonic() + float(timeout)
        while True:
            gen = nvs_waitq_gen(&fo._wq)  # before the check: a publish after it moves gen
            ev = self._poll()
            if ev is not None:
                return ev
            if not forever:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if remaining > SIGNAL_SLICE:
                    remaining = SIGNAL_SLICE
            with nogil:
                nvs_waitq_wait(&fo._wq, gen, remaining)
            PyErr_CheckSignals()

    def close(self):
        """Stop the subscription and free its slot; later reads raise Closed. Idempotent."""
        if self._reason is None:
            self._reason = Closed("the subscription was closed")
        self._fanout._subs.discard(self)

    @property
    def closed(self):
        return self._reason is not None

    @property
    def reason(self):
        return self._reason

    def __iter__(self):
        while True:
            try:
                ev = self.get()
            except Closed:
                return
            if ev is not None:
                yield ev

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
