"""The versioned GPU store (SPEC §2.1): public API.

Picks the compiled implementation (`nvsentinel._store_c`) unless `NVSENTINEL_NO_EXTENSIONS` is
set; `IMPLEMENTATION` says which one is loaded. Both behave identically (one test suite, a
differential property test); the full contract is documented on the twin, `nvsentinel._store_py`.

    >>> from nvsentinel.store import GpuStore
    >>> store = GpuStore()
    >>> rec, created = store.create(gpu)            # a gpu_pb2.Gpu or its serialized bytes
    >>> rec = store.update_status(rec.name, status, expected_rv=rec.resource_version)
    >>> with store.watch() as sub:                  # ADDED for each GPU, then live events
    ...     event = sub.get(timeout=1.0)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from nvsentinel._compat import NO_EXTENSIONS
from nvsentinel.errors import Conflict, InvalidObject, LimitExceeded, NotFound
from nvsentinel.types import HealthCounts

__all__ = [
    "IMPLEMENTATION",
    "GpuStore",
    "GpuRecord",
    "is_valid_gpu_name",
    "HealthCounts",
    "Conflict",
    "InvalidObject",
    "LimitExceeded",
    "NotFound",
]

IMPLEMENTATION: Literal["c", "py"]

if TYPE_CHECKING:
    from nvsentinel._store_py import GpuRecord, GpuStore, is_valid_gpu_name
elif NO_EXTENSIONS:
    from nvsentinel._store_py import GpuRecord, GpuStore, is_valid_gpu_name

    IMPLEMENTATION = "py"
else:
    from nvsentinel._store_c import GpuRecord, GpuStore, is_valid_gpu_name

    IMPLEMENTATION = "c"
