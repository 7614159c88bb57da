"""Kubernetes API errors, typed once at the client boundary (status code + Status reason → class).

Callers catch meaning (`AlreadyExists`, `Gone`, `TooManyRequests`), never HTTP numbers.
"""
from __future__ import annotations

import json
from typing import Any

from nvsentinel.errors import NvsentinelError

__all__ = [
    "KubeError", "KubeNotFound", "KubeConflict", "AlreadyExists", "Gone", "Invalid", "Forbidden",
    "TooManyRequests", "ServerUnavailable", "error_from_response",
]


class KubeError(NvsentinelError):
    """The Kubernetes API refused or failed a request."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "", body: dict[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.body = body or {}
        self.retry_after = retry_after


class KubeNotFound(KubeError):
    """404: the object (or the resource type) does not exist."""


class KubeConflict(KubeError):
    """409 on an update: the resourceVersion sent is stale; read again and retry."""


class AlreadyExists(KubeConflict):
    """409 on a create: an object of that name exists."""


class Gone(KubeError):
    """410: the resourceVersion is older than the server's history (compacted); relist."""


class Invalid(KubeError, ValueError):
    """400/422: the request or the object is malformed or fails the schema."""


class Forbidden(KubeError):
    """401/403: not authenticated, or RBAC does not allow it."""


class TooManyRequests(KubeError):
    """429: throttled, or (for an eviction) a PodDisruptionBudget blocks it; retry after a pause."""


class ServerUnavailable(KubeError):
    """5xx, a timeout or no connection: the API server is unreachable or overloaded; retry with backoff."""


_BY_STATUS: dict[int, type[KubeError]] = {
    400: Invalid, 401: Forbidden, 403: Forbidden, 404: KubeNotFound, 409: KubeConflict, 410: Gone,
    422: Invalid, 429: TooManyRequests,
}


def error_from_response(status: int, data: bytes | str | None, headers: Any = None) -> KubeError:
    """Map one HTTP error response (a `metav1.Status` body, usually) to its class."""
    body: dict[str, Any] = {}
    if data:
        try:
            parsed = json.loads(data)
            if isinstance(parsed, dict):
                body = parsed
        except ValueError:
            pass
    reason = str(body.get("reason", ""))
    message = str(body.get("message") or (data.decode("utf-8", "replace") if isinstance(data, bytes) else data) or "")
    cls: type[KubeError]
    if status == 409 and reason == "AlreadyExists":
        cls = AlreadyExists
    elif status >= 500 or status == 0:
        cls = ServerUnavailable
    else:
        cls = _BY_STATUS.get(status, KubeError)
    retry_after = None
    if headers is not None:
        raw = headers.get("Retry-After") if hasattr(headers, "get") else None
        try:
            retry_after = float(raw) if raw is not None else None
        except ValueError:
            retry_after = None
    return cls(f"{status} {reason or 'Error'}: {message}".strip(), status=status, reason=reason, body=body,
               retry_after=retry_after)
