"""Find and load libnvidia-ml for pynvml: under the driver root, else the system default (SPEC §5).
Call before pynvml's first nvmlInit.

`NvmlLoader` is what a provider is given: how to load its library and build its GPU resetter. A real
node uses `NvmlLoader.real`; only a daemon's explicit `--fake-nvml` wiring swaps in the fake's
(`nvsentinel.devtools.fake_nvml.nvml_loader`), so the provider never knows which one it runs on.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from nvsentinel.node.nvml.reset import Resetter, make_resetter

__all__ = ["LIB_NAME", "LIB_DIRS", "NvmlLibraryError", "NvmlLoader", "find_library", "load_library"]

logger = logging.getLogger(__name__)

LIB_NAME = "libnvidia-ml.so.1"
#: Where a driver root (e.g. the GPU operator's /run/nvidia/driver) keeps the library, in order.
LIB_DIRS = ("usr/lib64", "usr/lib/x86_64-linux-gnu", "lib64", "lib/x86_64-linux-gnu", "usr/lib", "lib")


class NvmlLibraryError(RuntimeError):
    """No usable NVML library: a clear, one-line reason (the daemon exits non-zero with it)."""


def find_library(driver_root: str | os.PathLike[str]) -> Path | None:
    """The first `libnvidia-ml.so.1` under `driver_root`'s standard library dirs, or None."""
    if not driver_root:
        return None
    root = Path(driver_root)
    for sub in LIB_DIRS:
        candidate = root / sub / LIB_NAME
        if candidate.is_file():
            return candidate
    return None


def load_library(driver_root: str) -> str:
    """Preload the NVML library pynvml will use; returns a description for the log.

    Raises NvmlLibraryError when a library was found but cannot be loaded. Not finding one under the
    driver root is not an error here: pynvml then tries the system default and `nvmlInit` reports
    LibraryNotFound (the description is then `system-default`).
    """
    path = find_library(driver_root)
    if path is None:
        logger.info(
            "libnvidia-ml not under the driver root; falling back to the system default",
            extra={"kv": {"driver_root": driver_root, "searched": ",".join(LIB_DIRS)}},
        )
        return "system-default"
    try:
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise NvmlLibraryError(f"cannot load {path}: {exc}") from None
    return str(path)


@dataclasses.dataclass(frozen=True)
class NvmlLoader:
    """How a provider gets its NVML library and its GPU resetter (built after the library is loaded)."""

    load: Callable[[], str]
    """Preload the library; returns a description for the log; raises NvmlLibraryError."""
    resetter: Callable[[], Resetter | None]
    """The resetter for `--nvml-reset-command` (None: resets disabled)."""
    not_found_hint: str = ""
    """Appended to an NVML init failure when the library came from the system default."""

    @classmethod
    def real(cls, driver_root: str, reset_command: str) -> NvmlLoader:
        hint = (f"; no libnvidia-ml.so.1 under --nvml-driver-root {driver_root!r} nor on the system "
                "library path (is the NVIDIA driver installed or mounted? --fake-nvml selects the fake "
                "for tests)")
        return cls(functools.partial(load_library, driver_root), functools.partial(make_resetter, reset_command),
                   hint)

    def init_failure(self, library: str, error: object) -> str:
        """One line for an NVML init failure, with the hint when the system default was tried."""
        return f"{error}{self.not_found_hint if library == 'system-default' else ''}"
