"""Small immutable value types shared by both implementations of the core.

Defined once in pure Python so the compiled and the twin implementations return the same types
where speed does not matter (counts, constants).
"""
from __future__ import annotations

from typing import Final, NamedTuple

__all__ = [
    "ADDED",
    "MODIFIED",
    "DELETED",
    "BOOKMARK",
    "EVENT_TYPES",
    "HEALTHY",
    "UNHEALTHY",
    "UNKNOWN",
    "HealthCounts",
    "health_of",
]

ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"
BOOKMARK: Final = "BOOKMARK"
#: Watch event types, as they appear on the wire (WatchGpusResponse.type).
EVENT_TYPES: Final = (ADDED, MODIFIED, DELETED, BOOKMARK)

HEALTHY: Final = "healthy"
UNHEALTHY: Final = "unhealthy"
UNKNOWN: Final = "unknown"


class HealthCounts(NamedTuple):
    """GPU counts by health, judged over all conditions (any False → unhealthy, else any Unknown or
    no condition at all → unknown, else healthy)."""

    total: int
    healthy: int
    unhealthy: int
    unknown: int


def health_of(statuses: "list[str] | tuple[str, ...]") -> str:
    """The store's health rule over condition statuses, for clients that only have the object."""
    if "False" in statuses:
        return UNHEALTHY
    if not statuses or "Unknown" in statuses:
        return UNKNOWN
    return HEALTHY
