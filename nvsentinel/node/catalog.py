"""The XID catalog a node daemon classifies with: the package catalog plus the site override file.

The kernel-log monitor and the publisher both take `--xid-overrides` (env `NVSENTINEL_XID_OVERRIDES`,
docs/xid.md) and must read it the same way, or the monitor's condition and the publisher's
`isFatal` disagree. Daemons never import each other, so the loading lives here, at the node room's
level, and each daemon calls it at start (a bad file: exit 1 with one line naming it).
"""
from __future__ import annotations

import logging

from nvsentinel.errors import NvsentinelError
from nvsentinel.xid import Catalog, default_catalog, load_catalog

__all__ = ["OverridesError", "site_catalog"]

logger = logging.getLogger(__name__)


class OverridesError(NvsentinelError):
    """The site override file cannot be read or is not a valid override document."""


def site_catalog(path: str) -> Catalog:
    """The package catalog with the override file at `path` layered on it; "" → the package catalog.

    Raises `OverridesError` naming the file (missing, unreadable, not JSON, a bad field).
    """
    if not path:
        return default_catalog()
    try:
        catalog = load_catalog(path)
    except (OSError, ValueError) as exc:
        raise OverridesError(f"--xid-overrides {path!r}: {exc}") from exc
    logger.info("xid site overrides in force", extra={"kv": {
        "path": path, "codes": ",".join(sorted(catalog.overrides))}})
    return catalog
