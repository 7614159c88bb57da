"""Hand-framed response bytes, so reads and watch events reuse the store's serialized objects
(serialize once, send many) instead of parsing and re-serializing them through protobuf."""
from __future__ import annotations


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """One length-delimited field (a sub-message or string) of an outer message."""
    return bytes(((field << 3) | 2,)) + varint(len(payload)) + payload


def gpu_response(gpu: bytes) -> bytes:
    """GetGpuResponse / UpdateGpuResponse / UpdateGpuStatusResponse: {gpu = 1}."""
    return length_delimited(1, gpu)


def create_response(gpu: bytes, created: bool) -> bytes:
    """CreateGpuResponse: {gpu = 1, created = 2}."""
    return length_delimited(1, gpu) + (b"\x10\x01" if created else b"")


_TYPES = {t: length_delimited(1, t.encode()) for t in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")}


def watch_event(event_type: str, gpu: bytes) -> bytes:
    """WatchGpusResponse: {type = 1, object = 2}."""
    return _TYPES[event_type] + length_delimited(2, gpu)


def bookmark_object(rv: int) -> bytes:
    """The Gpu a BOOKMARK carries: only the resource version, in both of its places."""
    return length_delimited(1, length_delimited(2, str(rv).encode())) + b"\x20" + varint(rv)
