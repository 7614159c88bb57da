"""Hand-framed response bytes, so reads and watch events reuse the store's serialized objects
(serialize once, send many) instead of parsing and re-serializing them through protobuf."""
from __future__ import annotations

from nvsentinel._pbwire import length_delimited, varint

__all__ = ["varint", "length_delimited", "gpu_response", "create_response", "watch_event", "bookmark_object"]


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
