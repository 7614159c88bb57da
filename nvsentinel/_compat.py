"""The one place that decides between the compiled core and the pure-Python twins.

`NVSENTINEL_NO_EXTENSIONS` (any non-empty value) forces the twins; so does any interpreter other
than CPython. Read once at import (aio-libs pattern).
"""
from __future__ import annotations

import os
import platform
import sys

NO_EXTENSIONS: bool = bool(os.environ.get("NVSENTINEL_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
# The compiled fan-out relies on the GIL for its ring invariants (see csrc/_fanout_c.pyx).
if not getattr(sys, "_is_gil_enabled", lambda: True)():
    NO_EXTENSIONS = True
