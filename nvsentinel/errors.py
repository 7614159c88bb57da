"""The one error tree of nvsentinel.

Both implementations (compiled and pure-Python twin) raise these same classes, so `except Conflict`
works whichever is loaded. Each leaf that names a `grpc_code` maps to exactly one gRPC status code
(by name, so this module needs no grpc import); the API boundary maps them once.
"""
from __future__ import annotations

from typing import ClassVar

__all__ = [
    "NvsentinelError",
    "StoreError",
    "NotFound",
    "Conflict",
    "LimitExceeded",
    "InvalidObject",
    "Expired",
    "Evicted",
    "Unavailable",
    "Closed",
    "GRPC_CODES",
]


class NvsentinelError(Exception):
    """Root of every error nvsentinel raises on purpose."""

    grpc_code: ClassVar[str] = "UNKNOWN"


class StoreError(NvsentinelError):
    """An operation on the GPU store or its watch fan-out was refused."""


class NotFound(StoreError):
    """No GPU of that name."""

    grpc_code = "NOT_FOUND"


class Conflict(StoreError):
    """The expected resource version did not match the object's current one (optimistic concurrency)."""

    grpc_code = "ABORTED"


class LimitExceeded(StoreError):
    """A configured bound was reached (GPU count, subscribers, subscribe rate)."""

    grpc_code = "RESOURCE_EXHAUSTED"


class Evicted(LimitExceeded):
    """A watch subscriber fell further behind than its lag bound and was dropped.

    Resume from the last delivered resource version (or relist if that has expired too).
    """


class InvalidObject(StoreError, ValueError):
    """Bad input: wrong type, malformed wire bytes, invalid name, oversized object, negative RV."""

    grpc_code = "INVALID_ARGUMENT"


class Expired(StoreError):
    """A watch asked to resume from a resource version the history window no longer holds: relist."""

    grpc_code = "OUT_OF_RANGE"


class Unavailable(StoreError):
    """The service is not ready (or is shutting down); retry later."""

    grpc_code = "UNAVAILABLE"


class Closed(Unavailable):
    """The subscription or the store was closed."""


def _leaves() -> dict[str, type[NvsentinelError]]:
    out: dict[str, type[NvsentinelError]] = {}
    stack: list[type[NvsentinelError]] = [NvsentinelError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if "grpc_code" in vars(cls) and cls is not NvsentinelError:
            out[cls.grpc_code] = cls
    return out


#: gRPC status code name -> the error class that declares it (unique by construction, tested).
GRPC_CODES: dict[str, type[NvsentinelError]] = _leaves()
