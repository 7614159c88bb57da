"""Versioned GPU store: the pure-Python twin, and the specification of the compiled one.

The store keeps every GPU as its canonical serialized `nvidia.device.v1alpha1.Gpu` bytes plus a
little metadata, so servers answer reads and watch events without re-serializing (serialize once,
send many). It speaks the protobuf wire format itself (a small reader for the fields it must see,
everything else copied through verbatim), which keeps protobuf off the hot path of both
implementations and lets the gRPC layer hand it request bytes directly.

Semantics (SPEC §2.1):

* One store-global int64 resource version (RV), starting at 0 and bumped by every mutation:
  create, update, status update and delete. Each object carries the RV of its last change, in
  both `Gpu.resource_version` and `Gpu.metadata.resource_version` (as a string).
* Optimistic concurrency: update / update_status / delete take an expected RV; 0 means
  unconditional; a mismatch raises `Conflict`. Creating an existing name is idempotent and returns
  `(existing, False)`.
* Reads return immutable records: later writes cannot change what a reader holds.
* Bounds: `max_gpus` (LimitExceeded), `max_object_bytes` (InvalidObject), `max_conditions`
  (keep the newest by last_transition_time, count the truncation).
* Every mutation is published to the watch fan-out under the store lock, so watchers see events
  in RV order with no gap, and a fresh watch's snapshot joins the live stream with no gap and no
  duplicate.

Lock design: one mutex guards the name → record map, the RV, the counters and the publish. Every
critical section is O(1) except `list`/`watch` (O(n) reference copies, n ≤ max_gpus); validation
and parsing of input happen before the lock is taken and encoding of the output is a handful of
byte concatenations, so writers cannot starve readers or the reverse (the lock is never held while
waiting for anything). Records are immutable, so a reader that got one never sees a torn object.

Canonical encoding of a stored Gpu (what `GpuRecord.data` holds, field order as protobuf emits):
metadata{name, resource_version=str(rv), namespace, unknown metadata fields}, spec (verbatim, only
if present), status{kept conditions verbatim in input order, recommended_action, unknown status
fields} (only if present), resource_version=rv, unknown top-level fields verbatim.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from nvsentinel import types as _t
from nvsentinel._fanout_py import FanOut, Subscription, WatchEvent
from nvsentinel._pbwire import varint
from nvsentinel.errors import Conflict, InvalidObject, LimitExceeded, NotFound

__all__ = ["GpuStore", "GpuRecord", "is_valid_gpu_name"]

_MASK64 = (1 << 64) - 1
_CONDITION_STATUSES = ("True", "False", "Unknown")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# 8-4-4-4-12 hex digits with dashes at these offsets of a 36-character UUID.
_UUID_DASHES = (8, 13, 18, 23)


# ---- names ----------------------------------------------------------------------------------


def _is_uuid(b: bytes, start: int) -> bool:
    if len(b) - start < 36:
        return False
    for i in range(36):
        c = b[start + i]
        if i in _UUID_DASHES:
            if c != 0x2D:  # '-'
                return False
        elif c not in _HEX:
            return False
    return True


def _is_digits(b: bytes) -> bool:
    return len(b) > 0 and all(0x30 <= c <= 0x39 for c in b)


def is_valid_gpu_name(name: object) -> bool:
    """True for an NVML UUID: `GPU-<uuid>`, `MIG-<uuid>` or the legacy `MIG-GPU-<uuid>/<gi>/<ci>`."""
    if not isinstance(name, str):
        return False
    b = name.encode("utf-8", "surrogatepass")
    if len(b) == 40 and b[:4] in (b"GPU-", b"MIG-"):
        return _is_uuid(b, 4)
    if b[:8] == b"MIG-GPU-" and len(b) >= 48 and _is_uuid(b, 8) and b[44:45] == b"/":
        parts = b[45:].split(b"/")
        return len(parts) == 2 and _is_digits(parts[0]) and _is_digits(parts[1])
    return False


# ---- protobuf wire format -------------------------------------------------------------------


class _Malformed(Exception):
    pass


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


def _field(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int, int]:
    """Read one field: (field number, wire type, value start, value end, next pos).

    For varints the value is (start, end) of its bytes; for LEN the payload.
    """
    tag, pos = _varint(buf, pos, end)
    if tag > 0xFFFFFFFF:
        raise _Malformed("tag out of range")
    number, wire = tag >> 3, tag & 7
    if number == 0:
        raise _Malformed("field number 0")
    if wire == 0:
        _, nxt = _varint(buf, pos, end)
        return number, wire, pos, nxt, nxt
    if wire == 2:
        length, pos = _varint(buf, pos, end)
        if length > end - pos:
            raise _Malformed("length-delimited field runs past the end")
        return number, wire, pos, pos + length, pos + length
    if wire == 1 or wire == 5:
        size = 8 if wire == 1 else 4
        if pos + size > end:
            raise _Malformed("truncated fixed-width field")
        return number, wire, pos, pos + size, pos + size
    raise _Malformed(f"unsupported wire type {wire}")


def _expect(number: int, wire: int, want: int, where: str) -> None:
    if wire != want:
        raise _Malformed(f"{where} field {number} has wire type {wire}, expected {want}")


def _utf8(buf: bytes, start: int, end: int, what: str) -> bytes:
    raw = buf[start:end]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed(f"{what} is not valid UTF-8") from None
    return raw


_key = varint  # tags, lengths and the RV


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _key(len(payload)) + payload


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class _Status:
    """A parsed GpuStatus: canonical bytes, health and how many conditions were dropped."""

    __slots__ = ("data", "health", "truncated")

    def __init__(self, data: bytes, health: str, truncated: int) -> None:
        self.data = data
        self.health = health
        self.truncated = truncated


def _timestamp(buf: bytes, start: int, end: int) -> tuple[int, int]:
    seconds = nanos = 0
    pos = start
    while pos < end:
        number, wire, vs, ve, pos = _field(buf, pos, end)
        if number == 1:
            _expect(number, wire, 0, "Timestamp")
            seconds = _signed64(_varint(buf, vs, ve)[0])
        elif number == 2:
            _expect(number, wire, 0, "Timestamp")
            v = _varint(buf, vs, ve)[0] & 0xFFFFFFFF
            nanos = v - (1 << 32) if v >= 1 << 31 else v
    return seconds, nanos


def _parse_status(buf: bytes, start: int, end: int, max_conditions: int) -> _Status:
    conditions: list[tuple[int, int, bytes, bytes]] = []  # (seconds, nanos, status, payload)
    action = b""
    extra: list[bytes] = []
    pos = start
    while pos < end:
        fstart = pos
        number, wire, vs, ve, pos = _field(buf, pos, end)
        if number == 1:
            _expect(number, wire, 2, "GpuStatus")
            ctype = b""
            cstatus = b""
            seconds = nanos = 0
            cpos = vs
            while cpos < ve:
                n2, w2, s2, e2, cpos = _field(buf, cpos, ve)
                if n2 == 1:
                    _expect(n2, w2, 2, "Condition")
                    ctype = _utf8(buf, s2, e2, "condition type")
                elif n2 == 2:
                    _expect(n2, w2, 2, "Condition")
                    cstatus = _utf8(buf, s2, e2, "condition status")
                elif n2 == 3:
                    _expect(n2, w2, 2, "Condition")
                    seconds, nanos = _timestamp(buf, s2, e2)
                elif n2 == 4 or n2 == 5:
                    _expect(n2, w2, 2, "Condition")
                    _utf8(buf, s2, e2, "condition reason" if n2 == 4 else "condition message")
            if not ctype:
                raise _Malformed("a condition has an empty type")
            if cstatus not in (b"True", b"False", b"Unknown"):
                raise _Malformed(
                    f"condition {ctype.decode()!r} has status {cstatus.decode()!r}; "
                    "expected True, False or Unknown"
                )
            conditions.append((seconds, nanos, cstatus, buf[vs:ve]))
        elif number == 2:
            _expect(number, wire, 2, "GpuStatus")
            action = _utf8(buf, vs, ve, "recommended_action")
        else:
            extra.append(buf[fstart:pos])

    truncated = 0
    if len(conditions) > max_conditions:
        # Keep the newest by last_transition_time; on a tie the later one in the list wins.
        order = sorted(
            range(len(conditions)),
            key=lambda i: (conditions[i][0], conditions[i][1], i),
            reverse=True,
        )
        keep = sorted(order[:max_conditions])
        truncated = len(conditions) - max_conditions
        conditions = [conditions[i] for i in keep]

    health = _t.UNKNOWN
    if conditions:
        statuses = [c[2] for c in conditions]
        if b"False" in statuses:
            health = _t.UNHEALTHY
        elif b"Unknown" in statuses:
            health = _t.UNKNOWN
        else:
            health = _t.HEALTHY
    parts = [_len_field(0x0A, c[3]) for c in conditions]
    if action:
        parts.append(_len_field(0x12, action))
    parts.extend(extra)
    return _Status(b"".join(parts), health, truncated)


class _Parsed:
    """A parsed Gpu ready to be stored (everything except the RV-dependent metadata)."""

    __slots__ = ("name", "namespace", "meta_extra", "spec", "status", "extra", "rv")

    def __init__(self) -> None:
        self.name = ""
        self.namespace = b""
        self.meta_extra = b""
        self.spec: bytes | None = None
        self.status: _Status | None = None
        self.extra = b""
        self.rv = 0


def _parse_gpu(buf: bytes, max_conditions: int) -> _Parsed:
    end = len(buf)
    meta: list[tuple[int, int]] = []
    spec: list[tuple[int, int]] | None = None
    status: list[tuple[int, int]] | None = None
    extra: list[bytes] = []
    out = _Parsed()
    pos = 0
    while pos < end:
        fstart = pos
        number, wire, vs, ve, pos = _field(buf, pos, end)
        if number == 1:
            _expect(number, wire, 2, "Gpu")
            meta.append((vs, ve))
        elif number == 2:
            _expect(number, wire, 2, "Gpu")
            spec = (spec or []) + [(vs, ve)]
        elif number == 3:
            _expect(number, wire, 2, "Gpu")
            status = (status or []) + [(vs, ve)]
        elif number == 4:
            _expect(number, wire, 0, "Gpu")
            out.rv = _signed64(_varint(buf, vs, ve)[0])
        else:
            extra.append(buf[fstart:pos])
    out.extra = b"".join(extra)

    # Repeated occurrences of a sub-message merge (protobuf semantics): read them in order.
    name = b""
    meta_extra: list[bytes] = []
    for ms, me in meta:
        pos = ms
        while pos < me:
            fstart = pos
            number, wire, vs, ve, pos = _field(buf, pos, me)
            if number == 1:
                _expect(number, wire, 2, "ObjectMeta")
                name = _utf8(buf, vs, ve, "metadata.name")
            elif number == 2:
                _expect(number, wire, 2, "ObjectMeta")  # ours to set; the input value is ignored
            elif number == 3:
                _expect(number, wire, 2, "ObjectMeta")
                out.namespace = _utf8(buf, vs, ve, "metadata.namespace")
            else:
                meta_extra.append(buf[fstart:pos])
    out.meta_extra = b"".join(meta_extra)
    out.name = name.decode("utf-8")

    if spec is not None:
        for ss, se in spec:
            pos = ss
            while pos < se:
                number, wire, vs, ve, pos = _field(buf, pos, se)
                if number == 1:
                    _expect(number, wire, 2, "GpuSpec")
                    _utf8(buf, vs, ve, "spec.uuid")
        out.spec = b"".join(buf[s:e] for s, e in spec)
    if status is not None:
        joined = b"".join(buf[s:e] for s, e in status)
        out.status = _parse_status(joined, 0, len(joined), max_conditions)
    return out


# ---- records --------------------------------------------------------------------------------


class GpuRecord:
    """One stored GPU: immutable; `data` is the canonical serialized `Gpu` (RV embedded)."""

    __slots__ = ("name", "resource_version", "data", "health", "_namespace", "_meta_extra", "_spec", "_status", "_extra")

    name: str
    resource_version: int
    data: bytes
    health: str

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("GpuRecord is immutable")

    def message(self) -> Any:
        """Decode `data` into a `gpu_pb2.Gpu` (a fresh copy each call)."""
        from nvsentinel._proto import gpu_pb2

        return gpu_pb2.Gpu.FromString(self.data)

    def __repr__(self) -> str:
        return f"GpuRecord(name={self.name!r}, resource_version={self.resource_version}, health={self.health!r}, {len(self.data)} bytes)"


_set = object.__setattr__


def _encode(rec: GpuRecord) -> bytes:
    rv = rec.resource_version
    meta = (
        _len_field(0x0A, rec.name.encode("utf-8"))
        + _len_field(0x12, str(rv).encode("ascii"))
        + (_len_field(0x1A, rec._namespace) if rec._namespace else b"")
        + rec._meta_extra
    )
    parts = [_len_field(0x0A, meta)]
    if rec._spec is not None:
        parts.append(_len_field(0x12, rec._spec))
    if rec._status is not None:
        parts.append(_len_field(0x1A, rec._status.data))
    parts.append(b"\x20" + _key(rv))
    parts.append(rec._extra)
    return b"".join(parts)


def _make(rv: int, name: str, namespace: bytes, meta_extra: bytes, spec: bytes | None, status: _Status | None, extra: bytes) -> GpuRecord:
    rec = GpuRecord.__new__(GpuRecord)
    _set(rec, "name", name)
    _set(rec, "resource_version", rv)
    _set(rec, "_namespace", namespace)
    _set(rec, "_meta_extra", meta_extra)
    _set(rec, "_spec", spec)
    _set(rec, "_status", status)
    _set(rec, "_extra", extra)
    _set(rec, "health", status.health if status is not None else _t.UNKNOWN)
    _set(rec, "data", _encode(rec))
    return rec


def _with_rv(rec: GpuRecord, rv: int, status: _Status | None = None) -> GpuRecord:
    return _make(rv, rec.name, rec._namespace, rec._meta_extra, rec._spec, status if status is not None else rec._status, rec._extra)


# ---- the store ------------------------------------------------------------------------------


def _as_bytes(obj: object, what: str) -> bytes:
    if type(obj) is bytes:
        return obj  # type: ignore[return-value]
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    serialize = getattr(obj, "SerializeToString", None)
    if serialize is not None and callable(serialize):
        data = serialize()
        if type(data) is bytes:
            return data
    raise InvalidObject(f"expected a {what} message or its serialized bytes, got {type(obj).__name__}")


def _check_rv(value: object, what: str) -> int:
    if type(value) is not int:
        raise InvalidObject(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:  # type: ignore[operator]
        raise InvalidObject(f"{what} must be >= 0, got {value}")
    if value > (1 << 63) - 1:  # type: ignore[operator]
        raise InvalidObject(f"{what} does not fit in int64: {value}")
    return value  # type: ignore[return-value]


def _check_limit(value: object, what: str, low: int = 1) -> int:
    if type(value) is not int or value < low:  # type: ignore[operator]
        raise ValueError(f"{what} must be an int >= {low}, got {value!r}")
    return value  # type: ignore[return-value]


class GpuStore:
    """Versioned, bounded, watchable store of GPUs keyed by NVML UUID (SPEC §2.1).

    Thread-safe. All inputs are validated before anything changes: a refused call raises a typed
    error (`InvalidObject`, `NotFound`, `Conflict`, `LimitExceeded`) and leaves the store as it was.
    """

    def __init__(
        self,
        *,
        max_gpus: int = 1024,
        max_object_bytes: int = 64 * 1024,
        max_conditions: int = 32,
        max_lag: int = 256,
        max_subscribers: int = 256,
        subscribe_rate: float = 10.0,
        subscribe_burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_gpus = _check_limit(max_gpus, "max_gpus")
        self.max_object_bytes = _check_limit(max_object_bytes, "max_object_bytes", 64)
        self.max_conditions = _check_limit(max_conditions, "max_conditions")
        self._fanout = FanOut(
            max_lag=max_lag,
            max_subscribers=max_subscribers,
            subscribe_rate=subscribe_rate,
            subscribe_burst=subscribe_burst,
            clock=clock,
        )
        self._lock = threading.Lock()
        self._items: dict[str, GpuRecord] = {}
        self._rv = 0
        self._healthy = 0
        self._unhealthy = 0
        self._unknown = 0
        self._truncated = 0
        self._rejected = {"invalid": 0, "too_large": 0, "limit": 0, "conflict": 0, "not_found": 0}

    # -- internals --

    def _reject(self, reason: str, exc: Exception) -> Exception:
        with self._lock:
            self._rejected[reason] += 1
        return exc

    def _parse(self, gpu: object) -> _Parsed:
        data = _as_bytes(gpu, "Gpu") if type(gpu) is not bytes else gpu
        if len(data) > self.max_object_bytes:  # type: ignore[arg-type]
            raise self._reject("too_large", InvalidObject(f"object is {len(data)} bytes; the limit is {self.max_object_bytes}"))  # type: ignore[arg-type]
        try:
            parsed = _parse_gpu(data, self.max_conditions)  # type: ignore[arg-type]
        except _Malformed as exc:
            raise self._reject("invalid", InvalidObject(f"malformed Gpu: {exc}")) from None
        if not is_valid_gpu_name(parsed.name):
            raise self._reject("invalid", InvalidObject(f"metadata.name {parsed.name!r} is not a GPU name (GPU-<uuid> or MIG-<uuid>)"))
        return parsed

    def _count(self, health: str, delta: int) -> None:
        if health == _t.HEALTHY:
            self._healthy += delta
        elif health == _t.UNHEALTHY:
            self._unhealthy += delta
        else:
            self._unknown += delta

    def _check_size(self, rec: GpuRecord) -> None:
        if len(rec.data) > self.max_object_bytes:
            self._rejected["too_large"] += 1
            raise InvalidObject(f"object is {len(rec.data)} bytes; the limit is {self.max_object_bytes}")

    def _replace(self, old: GpuRecord, new: GpuRecord, kind: str) -> None:
        """Swap in `new` (lock held): counters, map, publish."""
        self._count(old.health, -1)
        self._count(new.health, +1)
        self._items[new.name] = new
        self._rv = new.resource_version
        self._fanout.publish(kind, new.resource_version, new.name, new.data)

    def _lookup(self, name: str, expected_rv: int) -> GpuRecord:
        old = self._items.get(name)
        if old is None:
            self._rejected["not_found"] += 1
            raise NotFound(f"gpu {name!r} not found")
        if expected_rv and expected_rv != old.resource_version:
            self._rejected["conflict"] += 1
            raise Conflict(
                f"gpu {name!r} is at resource version {old.resource_version}, not {expected_rv}"
            )
        return old

    # -- mutations --

    def create(self, gpu: object) -> tuple[GpuRecord, bool]:
        """Store a new GPU; returns (record, True), or (existing record, False) if the name exists."""
        p = self._parse(gpu)
        with self._lock:
            existing = self._items.get(p.name)
            if existing is not None:
                return existing, False
            if len(self._items) >= self.max_gpus:
                self._rejected["limit"] += 1
                raise LimitExceeded(f"the store holds {len(self._items)} GPUs; the limit is {self.max_gpus}")
            rec = _make(self._rv + 1, p.name, p.namespace, p.meta_extra, p.spec, p.status, p.extra)
            self._check_size(rec)
            if p.status is not None:
                self._truncated += p.status.truncated
            self._count(rec.health, +1)
            self._items[rec.name] = rec
            self._rv = rec.resource_version
            self._fanout.publish(_t.ADDED, rec.resource_version, rec.name, rec.data)
            return rec, True

    def update(self, gpu: object, expected_rv: int | None = None) -> GpuRecord:
        """Replace a GPU's spec and status; `expected_rv` defaults to the object's resource_version."""
        p = self._parse(gpu)
        expected = _check_rv(p.rv if expected_rv is None else expected_rv, "expected resource version")
        with self._lock:
            old = self._lookup(p.name, expected)
            rec = _make(self._rv + 1, p.name, p.namespace, p.meta_extra, p.spec, p.status, p.extra)
            self._check_size(rec)
            if p.status is not None:
                self._truncated += p.status.truncated
            self._replace(old, rec, _t.MODIFIED)
            return rec

    def update_status(self, name: str, status: object, expected_rv: int = 0) -> GpuRecord:
        """Replace a GPU's status (conditions and recommended action) only."""
        if type(name) is not str:
            raise self._reject("invalid", InvalidObject(f"name must be a str, got {type(name).__name__}"))
        expected = _check_rv(expected_rv, "expected resource version")
        data = _as_bytes(status, "GpuStatus")
        if len(data) > self.max_object_bytes:
            raise self._reject("too_large", InvalidObject(f"status is {len(data)} bytes; the limit is {self.max_object_bytes}"))
        try:
            parsed = _parse_status(data, 0, len(data), self.max_conditions)
        except _Malformed as exc:
            raise self._reject("invalid", InvalidObject(f"malformed GpuStatus: {exc}")) from None
        with self._lock:
            old = self._lookup(name, expected)
            rec = _with_rv(old, self._rv + 1, parsed)
            self._check_size(rec)
            self._truncated += parsed.truncated
            self._replace(old, rec, _t.MODIFIED)
            return rec

    def delete(self, name: str, expected_rv: int = 0) -> GpuRecord:
        """Remove a GPU; the deletion bumps the RV and the returned record carries it."""
        if type(name) is not str:
            raise self._reject("invalid", InvalidObject(f"name must be a str, got {type(name).__name__}"))
        expected = _check_rv(expected_rv, "expected resource version")
        with self._lock:
            old = self._lookup(name, expected)
            # upstream forgot the RV bump on delete; a watch resume needs it (SPEC §2.1)
            rec = _with_rv(old, self._rv + 1)
            self._count(old.health, -1)
            del self._items[name]
            self._rv = rec.resource_version
            self._fanout.publish(_t.DELETED, rec.resource_version, rec.name, rec.data)
            return rec

    # -- reads --

    def get(self, name: str, /) -> GpuRecord:
        """The current record of one GPU; raises NotFound. (`name` is positional-only.)"""
        rec = self._items.get(name) if type(name) is str else None
        if rec is None:
            if type(name) is not str:
                raise InvalidObject(f"name must be a str, got {type(name).__name__}")
            raise NotFound(f"gpu {name!r} not found")
        return rec

    def list(self) -> tuple[int, list[GpuRecord]]:
        """(resource version, records) taken atomically; records in creation order."""
        with self._lock:
            return self._rv, list(self._items.values())

    def list_wire(self, field: int = 0) -> bytes:
        """A serialized `GpuList` (metadata.resource_version + items) of the current state.

        With `field` > 0 the GpuList is wrapped as that length-delimited field of an outer message
        (field=1 gives a serialized ListGpusResponse).
        """
        if type(field) is not int or not 0 <= field < 16:
            raise InvalidObject(f"field must be an int in [0, 16), got {field!r}")
        with self._lock:
            rv = self._rv
            items = list(self._items.values())
        parts = [_len_field(0x0A, _len_field(0x0A, str(rv).encode("ascii")))]
        for rec in items:
            parts.append(b"\x12" + _key(len(rec.data)))
            parts.append(rec.data)
        body = b"".join(parts)
        if field:
            return bytes(((field << 3) | 2,)) + _key(len(body)) + body
        return body

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    @property
    def resource_version(self) -> int:
        return self._rv

    def counts(self) -> _t.HealthCounts:
        with self._lock:
            return _t.HealthCounts(len(self._items), self._healthy, self._unhealthy, self._unknown)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: truncations, rejections by reason, and the fan-out's own."""
        with self._lock:
            return {
                "gpus": len(self._items),
                "resource_version": self._rv,
                "truncated_conditions": self._truncated,
                "rejected": dict(self._rejected),
                "watch": self._fanout.stats(),
            }

    # -- watch --

    @property
    def fanout(self) -> FanOut:
        return self._fanout

    def watch(self, since_rv: int | None = None) -> Subscription:
        """Subscribe to changes.

        since_rv=None: a synthetic ADDED for every GPU (oldest change first), then live events,
        with no gap and no duplicate between the two. since_rv=R: every event after R, from the
        history window; raises Expired if R is older than the window (relist) or newer than the
        store (it restarted: relist).
        """
        with self._lock:
            if since_rv is None:
                snapshot = sorted(self._items.values(), key=_by_rv)
                events = [WatchEvent(_t.ADDED, r.resource_version, r.name, r.data) for r in snapshot]
                return self._fanout.subscribe(snapshot=events)
            return self._fanout.subscribe(since_rv=since_rv)

    def bookmark(self) -> None:
        """Offer every idle watcher a BOOKMARK carrying the current RV (call it periodically)."""
        with self._lock:
            self._fanout.bookmark()

    def close(self) -> None:
        """End every watch (subscribers get Closed); the store itself stays readable."""
        self._fanout.close()


def _by_rv(rec: GpuRecord) -> int:
    return rec.resource_version
