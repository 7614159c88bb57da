"""Daemons: thin wrappers (flags, wiring, signal handling) around the library.

Installed as `nvsentinel.daemons`. No logic lives here: whatever a daemon decides belongs in the
library, where it can be unit- and property-tested. Daemons do not import each other; what they
share (settings at start) is in this module.
"""
from __future__ import annotations

import argparse
import sys
from typing import TypeVar

from nvsentinel.logs import configure_logging
from nvsentinel.settings import SettingsError, resolve

T = TypeVar("T")


def load_settings(cls: type[T], args: argparse.Namespace, *, prefix: str, prog: str) -> T | None:
    """Settings from flags > environment > defaults, then logging configured from them.

    On a bad setting, one line naming it goes to stderr and None comes back: the daemon exits 2.
    """
    try:
        settings = resolve(cls, args, prefix=prefix)
    except SettingsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
    configure_logging(settings.log_format, settings.log_level)  # type: ignore[attr-defined]
    return settings
