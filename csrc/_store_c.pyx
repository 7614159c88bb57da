# cython: language_level=3
"""Compiled versioned GPU store. Behaviour and documentation: nvsentinel/_store_py.py (the twin).

C-level choices: the protobuf wire reader and the canonical encoder work on raw byte pointers
(no intermediate Python objects on the status-update path); output bytes are sized first and
filled in place; the store lock is a `cython.pymutex` held only for the O(1) swap and publish.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdio cimport snprintf
from libc.stdlib cimport qsort
from libc.string cimport memcmp, memcpy

import time

from nvsentinel import types as _t
from nvsentinel._fanout_c import FanOut, WatchEvent
from nvsentinel._store_py import _as_bytes, _check_limit
from nvsentinel.errors import Conflict, InvalidObject, LimitExceeded, NotFound

__all__ = ["GpuStore", "GpuRecord", "is_valid_gpu_name"]

cdef str HEALTHY = _t.HEALTHY
cdef str UNHEALTHY = _t.UNHEALTHY
cdef str UNKNOWN = _t.UNKNOWN
cdef str ADDED = _t.ADDED
cdef str MODIFIED = _t.MODIFIED
cdef str DELETED = _t.DELETED

# health codes, also the index into HEALTH_NAMES
cdef enum:
    H_HEALTHY = 0
    H_UNHEALTHY = 1
    H_UNKNOWN = 2
cdef tuple HEALTH_NAMES = (HEALTHY, UNHEALTHY, UNKNOWN)

# condition status codes
cdef enum:
    S_TRUE = 0
    S_FALSE = 1
    S_UNKNOWN = 2

INT64_MAX = 0x7FFFFFFFFFFFFFFF


class _Malformed(Exception):
    pass


# ---- names ----

cdef inline bint _is_hex(unsigned char c) noexcept:
    return (0x30 <= c <= 0x39) or (0x61 <= c <= 0x66) or (0x41 <= c <= 0x46)  # 0-9 a-f A-F


cdef bint _is_uuid(const unsigned char* b, Py_ssize_t n, Py_ssize_t start) noexcept:
    cdef Py_ssize_t i
    if n - start < 36:
        return False
    for i in range(36):
        if i == 8 or i == 13 or i == 18 or i == 23:
            if b[start + i] != 0x2D:  # '-'
                return False
        elif not _is_hex(b[start + i]):
            return False
    return True


cdef bint _is_digits(const unsigned char* b, Py_ssize_t s, Py_ssize_t e) noexcept:
    cdef Py_ssize_t i
    if e <= s:
        return False
    for i in range(s, e):
        if not 0x30 <= b[i] <= 0x39:
            return False
    return True


cdef bint _valid_name_bytes(const unsigned char* b, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i, slash = -1
    if n == 40 and (memcmp(b, b"GPU-", 4) == 0 or memcmp(b, b"MIG-", 4) == 0):
        return _is_uuid(b, n, 4)
    # legacy MIG-GPU-<uuid>/<gi>/<ci>
    if n >= 48 and memcmp(b, b"MIG-GPU-", 8) == 0 and _is_uuid(b, n, 8) and b[44] == 0x2F:  # '/'
        for i in range(45, n):
            if b[i] == 0x2F:
                if slash >= 0:
                    return False
                slash = i
        return slash >= 0 and _is_digits(b, 45, slash) and _is_digits(b, slash + 1, n)
    return False


def is_valid_gpu_name(name):
    """True for an NVML UUID: `GPU-<uuid>`, `MIG-<uuid>` or the legacy `MIG-GPU-<uuid>/<gi>/<ci>`."""
    if not isinstance(name, str):
        return False
    cdef bytes b = (<str>name).encode("utf-8", "surrogatepass")
    return _valid_name_bytes(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


# ---- protobuf wire format ----

ctypedef struct Field:
    unsigned long long number
    int wire
    Py_ssize_t vs       # value start (payload start for LEN)
    Py_ssize_t ve       # value end


cdef int _varint(const unsigned char* buf, Py_ssize_t* pos, Py_ssize_t end,
                 unsigned long long* out) except -1:
    cdef unsigned long long result = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if pos[0] >= end:
            raise _Malformed("truncated varint")
        b = buf[pos[0]]
        pos[0] += 1
        result |= (<unsigned long long>(b & 0x7F)) << shift  # shift <= 63: bits past 64 drop
        if not b & 0x80:
            out[0] = result
            return 0
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


cdef int _field(const unsigned char* buf, Py_ssize_t* pos, Py_ssize_t end, Field* f) except -1:
    cdef unsigned long long tag, length
    cdef Py_ssize_t size
    _varint(buf, pos, end, &tag)
    if tag > 0xFFFFFFFFULL:
        raise _Malformed("tag out of range")
    f.number = tag >> 3
    f.wire = <int>(tag & 7)
    if f.number == 0:
        raise _Malformed("field number 0")
    if f.wire == 0:
        f.vs = pos[0]
        _varint(buf, pos, end, &length)
        f.ve = pos[0]
        return 0
    if f.wire == 2:
        _varint(buf, pos, end, &length)
        if length > <unsigned long long>(end - pos[0]):
            raise _Malformed("length-delimited field runs past the end")
        f.vs = pos[0]
        f.ve = pos[0] + <Py_ssize_t>length
        pos[0] = f.ve
        return 0
    if f.wire == 1 or f.wire == 5:
        size = 8 if f.wire == 1 else 4
        if pos[0] + size > end:
            raise _Malformed("truncated fixed-width field")
        f.vs = pos[0]
        f.ve = pos[0] + size
        pos[0] = f.ve
        return 0
    raise _Malformed(f"unsupported wire type {f.wire}")


cdef inline int _expect(Field* f, int want, str where) except -1:
    if f.wire != want:
        raise _Malformed(f"{where} field {f.number} has wire type {f.wire}, expected {want}")
    return 0


cdef int _utf8(const unsigned char* buf, Py_ssize_t s, Py_ssize_t e, str what) except -1:
    cdef Py_ssize_t i
    for i in range(s, e):
        if buf[i] >= 0x80:
            break
    else:
        return 0  # ASCII
    try:
        PyUnicode_DecodeUTF8(<const char*>buf + s, e - s, NULL)
    except UnicodeDecodeError:
        raise _Malformed(f"{what} is not valid UTF-8") from None
    return 0


cdef inline Py_ssize_t _vlen(unsigned long long v) noexcept:
    cdef Py_ssize_t n = 1
    while v > 0x7F:
        v >>= 7
        n += 1
    return n


cdef inline Py_ssize_t _put_varint(unsigned char* out, unsigned long long v) noexcept:
    cdef Py_ssize_t n = 0
    while v > 0x7F:
        out[n] = <unsigned char>((v & 0x7F) | 0x80)
        v >>= 7
        n += 1
    out[n] = <unsigned char>v
    return n + 1


cdef inline Py_ssize_t _len_field_size(Py_ssize_t n) noexcept:
    return 1 + _vlen(<unsigned long long>n) + n


cdef inline Py_ssize_t _put_len_field(unsigned char* out, unsigned char tag,
                                      const unsigned char* payload, Py_ssize_t n) noexcept:
    cdef Py_ssize_t k
    out[0] = tag
    k = 1 + _put_varint(out + 1, <unsigned long long>n)
    if n:
        memcpy(out + k, payload, n)
    return k + n


cdef inline long long _signed64(unsigned long long v) noexcept:
    return <long long>v  # two's complement, as protobuf reads int64


# ---- GpuStatus ----

ctypedef struct Cond:
    long long seconds
    long long nanos
    Py_ssize_t index
    Py_ssize_t start    # payload start (within the status buffer)
    Py_ssize_t end
    int status


cdef int _cmp_newest_first(const void* a, const void* b) noexcept nogil:
    cdef const Cond* x = <const Cond*>a
    cdef const Cond* y = <const Cond*>b
    if x.seconds != y.seconds:
        return -1 if x.seconds > y.seconds else 1
    if x.nanos != y.nanos:
        return -1 if x.nanos > y.nanos else 1
    return -1 if x.index > y.index else (1 if x.index < y.index else 0)


cdef int _cmp_index(const void* a, const void* b) noexcept nogil:
    cdef Py_ssize_t x = (<const Cond*>a).index
    cdef Py_ssize_t y = (<const Cond*>b).index
    return -1 if x < y else (1 if x > y else 0)


@cython.final
cdef class _Status:
    cdef bytes data
    cdef int health
    cdef Py_ssize_t truncated


cdef int _timestamp(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end,
                    long long* seconds, long long* nanos) except -1:
    cdef Py_ssize_t pos = start, p2
    cdef Field f
    cdef unsigned long long v
    seconds[0] = 0
    nanos[0] = 0
    while pos < end:
        _field(buf, &pos, end, &f)
        if f.number == 1:
            _expect(&f, 0, "Timestamp")
            p2 = f.vs
            _varint(buf, &p2, f.ve, &v)
            seconds[0] = _signed64(v)
        elif f.number == 2:
            _expect(&f, 0, "Timestamp")
            p2 = f.vs
            _varint(buf, &p2, f.ve, &v)
            nanos[0] = <long long>(<int>(<unsigned int>(v & 0xFFFFFFFFULL)))
    return 0


cdef _Status _parse_status(bytes owner, Py_ssize_t start, Py_ssize_t end, Py_ssize_t max_conditions):
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(owner)
    cdef Py_ssize_t pos = start, fstart, cpos, n = 0, cap = 16, i, kept, size, action_s = 0, action_e = 0
    cdef Field f, g
    cdef Cond* conds = <Cond*>PyMem_Malloc(cap * sizeof(Cond))
    cdef Cond* grown
    cdef Py_ssize_t ts, te, ss, se
    cdef list extra = None
    cdef int health, st
    cdef bint any_false, any_unknown
    cdef _Status out
    cdef unsigned char* w
    if conds == NULL:
        raise MemoryError()
    try:
        while pos < end:
            fstart = pos
            _field(buf, &pos, end, &f)
            if f.number == 1:
                _expect(&f, 2, "GpuStatus")
                ts = te = ss = se = 0
                if n == cap:
                    cap *= 2
                    grown = <Cond*>PyMem_Realloc(conds, cap * sizeof(Cond))
                    if grown == NULL:
                        raise MemoryError()
                    conds = grown
                conds[n].seconds = 0
                conds[n].nanos = 0
                cpos = f.vs
                while cpos < f.ve:
                    _field(buf, &cpos, f.ve, &g)
                    if g.number == 1:
                        _expect(&g, 2, "Condition")
                        _utf8(buf, g.vs, g.ve, "condition type")
                        ts = g.vs
                        te = g.ve
                    elif g.number == 2:
                        _expect(&g, 2, "Condition")
                        _utf8(buf, g.vs, g.ve, "condition status")
                        ss = g.vs
                        se = g.ve
                    elif g.number == 3:
                        _expect(&g, 2, "Condition")
                        _timestamp(buf, g.vs, g.ve, &conds[n].seconds, &conds[n].nanos)
                    elif g.number == 4:
                        _expect(&g, 2, "Condition")
                        _utf8(buf, g.vs, g.ve, "condition reason")
                    elif g.number == 5:
                        _expect(&g, 2, "Condition")
                        _utf8(buf, g.vs, g.ve, "condition message")
                if te == ts:
                    raise _Malformed("a condition has an empty type")
                if se - ss == 4 and memcmp(buf + ss, b"True", 4) == 0:
                    st = S_TRUE
                elif se - ss == 5 and memcmp(buf + ss, b"False", 5) == 0:
                    st = S_FALSE
                elif se - ss == 7 and memcmp(buf + ss, b"Unknown", 7) == 0:
                    st = S_UNKNOWN
                else:
                    raise _Malformed(
                        f"condition {owner[ts:te].decode()!r} has status {owner[ss:se].decode()!r}; "
                        "expected True, False or Unknown"
                    )
                conds[n].status = st
                conds[n].index = n
                conds[n].start = f.vs
                conds[n].end = f.ve
                n += 1
            elif f.number == 2:
                _expect(&f, 2, "GpuStatus")
                _utf8(buf, f.vs, f.ve, "recommended_action")
                action_s = f.vs
                action_e = f.ve
            else:
                if extra is None:
                    extra = []
                extra.append(owner[fstart:pos])

        kept = n
        if n > max_conditions:
            # keep the newest by last_transition_time; on a tie the later one in the list wins
            qsort(conds, n, sizeof(Cond), _cmp_newest_first)
            kept = max_conditions
            qsort(conds, kept, sizeof(Cond), _cmp_index)

        any_false = any_unknown = False
        for i in range(kept):
            if conds[i].status == S_FALSE:
                any_false = True
            elif conds[i].status == S_UNKNOWN:
                any_unknown = True
        if kept == 0 or (any_unknown and not any_false):
            health = H_UNKNOWN
        elif any_false:
            health = H_UNHEALTHY
        else:
            health = H_HEALTHY

        size = 0
        for i in range(kept):
            size += _len_field_size(conds[i].end - conds[i].start)
        if action_e > action_s:
            size += _len_field_size(action_e - action_s)
        if extra is not None:
            for piece in extra:
                size += PyBytes_GET_SIZE(piece)
        out = _Status.__new__(_Status)
        out.data = PyBytes_FromStringAndSize(NULL, size)
        w = <unsigned char*>PyBytes_AS_STRING(out.data)
        for i in range(kept):
            w += _put_len_field(w, 0x0A, buf + conds[i].start, conds[i].end - conds[i].start)
        if action_e > action_s:
            w += _put_len_field(w, 0x12, buf + action_s, action_e - action_s)
        if extra is not None:
            for piece in extra:
                memcpy(w, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece))
                w += PyBytes_GET_SIZE(piece)
        out.health = health
        out.truncated = n - kept
        return out
    finally:
        PyMem_Free(conds)


# ---- Gpu ----

@cython.final
cdef class _Parsed:
    cdef str name
    cdef bytes name_b
    cdef bytes namespace
    cdef bytes meta_extra
    cdef object spec        # bytes or None
    cdef _Status status     # or None
    cdef bytes extra
    cdef long long rv


cdef bytes _join_ranges(bytes owner, list ranges):
    if len(ranges) == 1:
        s, e = ranges[0]
        return owner[s:e]
    return b"".join([owner[s:e] for s, e in ranges])


cdef _Parsed _parse_gpu(bytes data, Py_ssize_t max_conditions):
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data), pos = 0, fstart, me, p2
    cdef Field f
    cdef unsigned long long v
    cdef list meta = [], spec = None, status = None, extra = [], meta_extra = []
    cdef _Parsed out = _Parsed.__new__(_Parsed)
    cdef Py_ssize_t name_s = 0, name_e = 0
    cdef bytes joined
    out.rv = 0
    out.namespace = b""
    while pos < end:
        fstart = pos
        _field(buf, &pos, end, &f)
        if f.number == 1:
            _expect(&f, 2, "Gpu")
            meta.append((f.vs, f.ve))
        elif f.number == 2:
            _expect(&f, 2, "Gpu")
            if spec is None:
                spec = []
            spec.append((f.vs, f.ve))
        elif f.number == 3:
            _expect(&f, 2, "Gpu")
            if status is None:
                status = []
            status.append((f.vs, f.ve))
        elif f.number == 4:
            _expect(&f, 0, "Gpu")
            p2 = f.vs
            _varint(buf, &p2, f.ve, &v)
            out.rv = _signed64(v)
        else:
            extra.append(data[fstart:pos])
    out.extra = b"".join(extra)

    # repeated occurrences of a sub-message merge (protobuf semantics): read them in order
    for ms, me_obj in meta:
        pos = ms
        me = me_obj
        while pos < me:
            fstart = pos
            _field(buf, &pos, me, &f)
            if f.number == 1:
                _expect(&f, 2, "ObjectMeta")
                _utf8(buf, f.vs, f.ve, "metadata.name")
                name_s = f.vs
                name_e = f.ve
            elif f.number == 2:
                _expect(&f, 2, "ObjectMeta")  # ours to set; the input value is ignored
            elif f.number == 3:
                _expect(&f, 2, "ObjectMeta")
                _utf8(buf, f.vs, f.ve, "metadata.namespace")
                out.namespace = data[f.vs:f.ve]
            else:
                meta_extra.append(data[fstart:pos])
    out.meta_extra = b"".join(meta_extra)
    out.name_b = data[name_s:name_e]
    out.name = out.name_b.decode("utf-8")

    out.spec = None
    if spec is not None:
        for ss, se in spec:
            pos = ss
            while pos < <Py_ssize_t>se:
                _field(buf, &pos, se, &f)
                if f.number == 1:
                    _expect(&f, 2, "GpuSpec")
                    _utf8(buf, f.vs, f.ve, "spec.uuid")
        out.spec = _join_ranges(data, spec)
    out.status = None
    if status is not None:
        if len(status) == 1:
            s, e = status[0]
            out.status = _parse_status(data, s, e, max_conditions)
        else:
            joined = _join_ranges(data, status)
            out.status = _parse_status(joined, 0, PyBytes_GET_SIZE(joined), max_conditions)
    return out


# ---- records ----

@cython.final
cdef class GpuRecord:
    """One stored GPU: immutable; `data` is the canonical serialized `Gpu` (RV embedded)."""

    cdef readonly str name
    cdef readonly long long resource_version
    cdef readonly bytes data
    cdef readonly str health
    cdef bytes _name_b
    cdef bytes _namespace
    cdef bytes _meta_extra
    cdef object _spec           # bytes or None
    cdef _Status _status        # or None
    cdef bytes _extra

    def __init__(self, *args, **kwargs):
        raise TypeError("GpuRecord objects come from a GpuStore")

    def message(self):
        """Decode `data` into a `gpu_pb2.Gpu` (a fresh copy each call)."""
        from nvsentinel._proto import gpu_pb2

        return gpu_pb2.Gpu.FromString(self.data)

    def __repr__(self):
        return (f"GpuRecord(name={self.name!r}, resource_version={self.resource_version}, "
                f"health={self.health!r}, {len(self.data)} bytes)")


cdef bytes _encode(GpuRecord rec):
    cdef char rvs[24]
    cdef Py_ssize_t rvn = snprintf(rvs, sizeof(rvs), "%lld", rec.resource_version)
    cdef Py_ssize_t name_n = PyBytes_GET_SIZE(rec._name_b)
    cdef Py_ssize_t ns_n = PyBytes_GET_SIZE(rec._namespace)
    cdef Py_ssize_t mx_n = PyBytes_GET_SIZE(rec._meta_extra)
    cdef Py_ssize_t ex_n = PyBytes_GET_SIZE(rec._extra)
    cdef Py_ssize_t spec_n = 0, status_n = 0, meta_n, size
    cdef bytes out
    cdef unsigned char* w
    meta_n = _len_field_size(name_n) + _len_field_size(rvn) + mx_n
    if ns_n:
        meta_n += _len_field_size(ns_n)
    size = _len_field_size(meta_n) + 1 + _vlen(<unsigned long long>rec.resource_version) + ex_n
    if rec._spec is not None:
        spec_n = PyBytes_GET_SIZE(rec._spec)
        size += _len_field_size(spec_n)
    if rec._status is not None:
        status_n = PyBytes_GET_SIZE(rec._status.data)
        size += _len_field_size(status_n)
    out = PyBytes_FromStringAndSize(NULL, size)
    w = <unsigned char*>PyBytes_AS_STRING(out)
    w[0] = 0x0A  # metadata, field 1
    w += 1 + _put_varint(w + 1, <unsigned long long>meta_n)
    w += _put_len_field(w, 0x0A, <const unsigned char*>PyBytes_AS_STRING(rec._name_b), name_n)
    w += _put_len_field(w, 0x12, <const unsigned char*>rvs, rvn)
    if ns_n:
        w += _put_len_field(w, 0x1A, <const unsigned char*>PyBytes_AS_STRING(rec._namespace), ns_n)
    if mx_n:
        memcpy(w, PyBytes_AS_STRING(rec._meta_extra), mx_n)
        w += mx_n
    if rec._spec is not None:
        w += _put_len_field(w, 0x12, <const unsigned char*>PyBytes_AS_STRING(rec._spec), spec_n)
    if rec._status is not None:
        w += _put_len_field(w, 0x1A, <const unsigned char*>PyBytes_AS_STRING(rec._status.data), status_n)
    w[0] = 0x20  # resource_version, field 4, varint
    w += 1 + _put_varint(w + 1, <unsigned long long>rec.resource_version)
    if ex_n:
        memcpy(w, PyBytes_AS_STRING(rec._extra), ex_n)
    return out


cdef GpuRecord _make(long long rv, str name, bytes name_b, bytes namespace, bytes meta_extra,
                     object spec, _Status status, bytes extra):
    cdef GpuRecord rec = GpuRecord.__new__(GpuRecord)
    rec.name = name
    rec.resource_version = rv
    rec._name_b = name_b
    rec._namespace = namespace
    rec._meta_extra = meta_extra
    rec._spec = spec
    rec._status = status
    rec._extra = extra
    rec.health = HEALTH_NAMES[status.health] if status is not None else UNKNOWN
    rec.data = _encode(rec)
    return rec


cdef inline GpuRecord _with_rv(GpuRecord old, long long rv, _Status status):
    return _make(rv, old.name, old._name_b, old._namespace, old._meta_extra, old._spec,
                 status if status is not None else old._status, old._extra)


cdef inline int _health_code(GpuRecord rec) noexcept:
    return rec._status.health if rec._status is not None else H_UNKNOWN


cdef long long _check_rv(object value, str what) except -1:
    if type(value) is not int:
        raise InvalidObject(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise InvalidObject(f"{what} must be >= 0, got {value}")
    if value > INT64_MAX:
        raise InvalidObject(f"{what} does not fit in int64: {value}")
    return <long long>value


cdef inline bint _by_rv_less(GpuRecord a, GpuRecord b) noexcept:
    return a.resource_version < b.resource_version


def _rv_key(GpuRecord rec):
    return rec.resource_version


# ---- the store ----

@cython.final
cdef class GpuStore:
    """Versioned, bounded, watchable GPU store (see nvsentinel._store_py.GpuStore)."""

    cdef:
        readonly Py_ssize_t max_gpus
        readonly Py_ssize_t max_object_bytes
        readonly Py_ssize_t max_conditions
        object _fanout
        object _publish             # bound FanOut.publish
        cython.pymutex _lock        # guards _items, _rv, the counters and the publish
        dict _items                 # name -> GpuRecord, creation order
        long long _rv
        Py_ssize_t _healthy, _unhealthy, _unknown
        long long _truncated
        long long _rej_invalid, _rej_too_large, _rej_limit, _rej_conflict, _rej_not_found
        object __weakref__

    def __init__(self, *, max_gpus=1024, max_object_bytes=64 * 1024, max_conditions=32,
                 max_lag=256, max_subscribers=256, subscribe_rate=10.0, subscribe_burst=20,
                 clock=time.monotonic):
        self.max_gpus = _check_limit(max_gpus, "max_gpus")
        self.max_object_bytes = _check_limit(max_object_bytes, "max_object_bytes", 64)
        self.max_conditions = _check_limit(max_conditions, "max_conditions")
        self._fanout = FanOut(max_lag=max_lag, max_subscribers=max_subscribers,
                              subscribe_rate=subscribe_rate, subscribe_burst=subscribe_burst,
                              clock=clock)
        self._publish = self._fanout.publish
        self._items = {}
        self._rv = 0

    # ---- internals ----

    cdef inline int _count(self, int health, int delta) noexcept:
        if health == H_HEALTHY:
            self._healthy += delta
        elif health == H_UNHEALTHY:
            self._unhealthy += delta
        else:
            self._unknown += delta
        return 0

    cdef _Parsed _parse(self, object gpu):
        cdef bytes data = gpu if type(gpu) is bytes else _as_bytes(gpu, "Gpu")
        cdef _Parsed p
        if PyBytes_GET_SIZE(data) > self.max_object_bytes:
            self._rej_too_large += 1
            raise InvalidObject(f"object is {len(data)} bytes; the limit is {self.max_object_bytes}")
        try:
            p = _parse_gpu(data, self.max_conditions)
        except _Malformed as exc:
            self._rej_invalid += 1
            raise InvalidObject(f"malformed Gpu: {exc}") from None
        if not _valid_name_bytes(<const unsigned char*>PyBytes_AS_STRING(p.name_b), PyBytes_GET_SIZE(p.name_b)):
            self._rej_invalid += 1
            raise InvalidObject(f"metadata.name {p.name!r} is not a GPU name (GPU-<uuid> or MIG-<uuid>)")
        return p

    cdef int _check_size(self, GpuRecord rec) except -1:
        if PyBytes_GET_SIZE(rec.data) > self.max_object_bytes:
            self._rej_too_large += 1
            raise InvalidObject(f"object is {len(rec.data)} bytes; the limit is {self.max_object_bytes}")
        return 0

    cdef GpuRecord _lookup(self, str name, long long expected_rv):
        cdef PyObject* found = PyDict_GetItem(self._items, name)
        cdef GpuRecord old
        if found == NULL:
            self._rej_not_found += 1
            raise NotFound(f"gpu {name!r} not found")
        old = <GpuRecord>found
        if expected_rv and expected_rv != old.resource_version:
            self._rej_conflict += 1
            raise Conflict(f"gpu {name!r} is at resource version {old.resource_version}, not {expected_rv}")
        return old

    cdef int _replace(self, GpuRecord old, GpuRecord new, str kind) except -1:
        self._count(_health_code(old), -1)
        self._count(_health_code(new), +1)
        PyDict_SetItem(self._items, new.name, new)
        self._rv = new.resource_version
        self._publish(kind, new.resource_version, new.name, new.data)
        return 0

    # ---- mutations ----

    def create(self, gpu):
        """Store a new GPU; returns (record, True), or (existing record, False) if the name exists."""
        cdef _Parsed p = self._parse(gpu)
        cdef PyObject* found
        cdef GpuRecord rec
        with self._lock:
            found = PyDict_GetItem(self._items, p.name)
            if found != NULL:
                return <GpuRecord>found, False
            if len(self._items) >= self.max_gpus:
                self._rej_limit += 1
                raise LimitExceeded(f"the store holds {len(self._items)} GPUs; the limit is {self.max_gpus}")
            rec = _make(self._rv + 1, p.name, p.name_b, p.namespace, p.meta_extra, p.spec, p.status, p.extra)
            self._check_size(rec)
            if p.status is not None:
                self._truncated += p.status.truncated
            self._count(_health_code(rec), +1)
            PyDict_SetItem(self._items, rec.name, rec)
            self._rv = rec.resource_version
            self._publish(ADDED, rec.resource_version, rec.name, rec.data)
            return rec, True

    def update(self, gpu, expected_rv=None):
        """Replace a GPU's spec and status; `expected_rv` defaults to the object's resource_version."""
        cdef _Parsed p = self._parse(gpu)
        cdef long long expected = _check_rv(p.rv if expected_rv is None else expected_rv,
                                            "expected resource version")
        cdef GpuRecord old, rec
        with self._lock:
            old = self._lookup(p.name, expected)
            rec = _make(self._rv + 1, p.name, p.name_b, p.namespace, p.meta_extra, p.spec, p.status, p.extra)
            self._check_size(rec)
            if p.status is not None:
                self._truncated += p.status.truncated
            self._replace(old, rec, MODIFIED)
            return rec

    def update_status(self, name, status, expected_rv=0):
        """Replace a GPU's status (conditions and recommended action) only."""
        cdef long long expected
        cdef bytes data
        cdef _Status parsed
        cdef GpuRecord old, rec
        if type(name) is not str:
            self._rej_invalid += 1
            raise InvalidObject(f"name must be a str, got {type(name).__name__}")
        expected = _check_rv(expected_rv, "expected resource version")
        data = status if type(status) is bytes else _as_bytes(status, "GpuStatus")
        if PyBytes_GET_SIZE(data) > self.max_object_bytes:
            self._rej_too_large += 1
            raise InvalidObject(f"status is {len(data)} bytes; the limit is {self.max_object_bytes}")
        try:
            parsed = _parse_status(data, 0, PyBytes_GET_SIZE(data), self.max_conditions)
        except _Malformed as exc:
            self._rej_invalid += 1
            raise InvalidObject(f"malformed GpuStatus: {exc}") from None
        with self._lock:
            old = self._lookup(<str>name, expected)
            rec = _with_rv(old, self._rv + 1, parsed)
            self._check_size(rec)
            self._truncated += parsed.truncated
            self._replace(old, rec, MODIFIED)
            return rec

    def delete(self, name, expected_rv=0):
        """Remove a GPU; the deletion bumps the RV and the returned record carries it."""
        cdef long long expected
        cdef GpuRecord old, rec
        if type(name) is not str:
            self._rej_invalid += 1
            raise InvalidObject(f"name must be a str, got {type(name).__name__}")
        expected = _check_rv(expected_rv, "expected resource version")
        with self._lock:
            old = self._lookup(<str>name, expected)
            # upstream forgot the RV bump on delete; a watch resume needs it (SPEC §2.1)
            rec = _with_rv(old, self._rv + 1, None)
            self._count(_health_code(old), -1)
            del self._items[name]
            self._rv = rec.resource_version
            self._publish(DELETED, rec.resource_version, rec.name, rec.data)
            return rec

    # ---- reads ----

    # METH_O and a plain builtin method (no cyfunction): the hot read path skips argument parsing
    @cython.binding(False)
    @cython.always_allow_keywords(False)
    def get(self, name):
        """The current record of one GPU; raises NotFound."""
        cdef PyObject* found
        if type(name) is str:
            found = PyDict_GetItem(self._items, name)
            if found != NULL:
                return <GpuRecord>found
            raise NotFound(f"gpu {name!r} not found")
        raise InvalidObject(f"name must be a str, got {type(name).__name__}")

    def list(self):
        """(resource version, records) taken atomically; records in creation order."""
        with self._lock:
            return self._rv, list(self._items.values())

    def list_wire(self, field=0):
        """A serialized GpuList of the current state (see the twin)."""
        cdef list items
        cdef long long rv
        cdef char rvs[24]
        cdef Py_ssize_t rvn, size, body, n
        cdef GpuRecord rec
        cdef bytes out
        cdef unsigned char* w
        cdef int fld
        if type(field) is not int or not 0 <= field < 16:
            raise InvalidObject(f"field must be an int in [0, 16), got {field!r}")
        fld = field
        with self._lock:
            rv = self._rv
            items = list(self._items.values())
        rvn = snprintf(rvs, sizeof(rvs), "%lld", rv)
        body = _len_field_size(_len_field_size(rvn))
        for r in items:
            n = PyBytes_GET_SIZE((<GpuRecord>r).data)
            body += _len_field_size(n)
        size = _len_field_size(body) if fld else body
        out = PyBytes_FromStringAndSize(NULL, size)
        w = <unsigned char*>PyBytes_AS_STRING(out)
        if fld:
            w[0] = <unsigned char>((fld << 3) | 2)
            w += 1 + _put_varint(w + 1, <unsigned long long>body)
        w[0] = 0x0A  # metadata
        w += 1 + _put_varint(w + 1, <unsigned long long>_len_field_size(rvn))
        w += _put_len_field(w, 0x0A, <const unsigned char*>rvs, rvn)
        for r in items:
            rec = <GpuRecord>r
            w += _put_len_field(w, 0x12, <const unsigned char*>PyBytes_AS_STRING(rec.data),
                                PyBytes_GET_SIZE(rec.data))
        return out

    def __len__(self):
        return len(self._items)

    def __contains__(self, name):
        return name in self._items

    @property
    def resource_version(self):
        return self._rv

    def counts(self):
        with self._lock:
            return _t.HealthCounts(len(self._items), self._healthy, self._unhealthy, self._unknown)

    def stats(self):
        """Counters for metrics: truncations, rejections by reason, and the fan-out's own."""
        with self._lock:
            return {
                "gpus": len(self._items),
                "resource_version": self._rv,
                "truncated_conditions": self._truncated,
                "rejected": {
                    "invalid": self._rej_invalid,
                    "too_large": self._rej_too_large,
                    "limit": self._rej_limit,
                    "conflict": self._rej_conflict,
                    "not_found": self._rej_not_found,
                },
                "watch": self._fanout.stats(),
            }

    # ---- watch ----

    @property
    def fanout(self):
        return self._fanout

    def watch(self, since_rv=None):
        """Subscribe to changes (see nvsentinel._store_py.GpuStore.watch)."""
        cdef list snapshot, events
        cdef GpuRecord r
        with self._lock:
            if since_rv is None:
                snapshot = sorted(self._items.values(), key=_rv_key)
                events = [WatchEvent(ADDED, r.resource_version, r.name, r.data) for r in snapshot]
                return self._fanout.subscribe(snapshot=events)
            return self._fanout.subscribe(since_rv=since_rv)

    def bookmark(self):
        """Offer every idle watcher a BOOKMARK carrying the current RV."""
        with self._lock:
            self._fanout.bookmark()

    def close(self):
        """End every watch (subscribers get Closed); the store itself stays readable."""
        self._fanout.close()
