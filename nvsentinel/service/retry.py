"""The retry schedule every long-running writer shares (publisher, remediation agent)."""
from __future__ import annotations

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, initial: float = 0.1, maximum: float = 30.0) -> float:
    """Seconds before retry `attempt` (1-based): initial, doubling, capped at maximum."""
    if attempt < 1:
        return 0.0
    return min(maximum, initial * 2.0 ** min(attempt - 1, 64))
