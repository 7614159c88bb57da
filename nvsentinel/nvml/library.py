"""Find and load libnvidia-ml for pynvml: under the driver root, else the system default; or the
fake, only when explicitly asked (SPEC §5). Call before pynvml's first nvmlInit."""
from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

__all__ = ["LIB_NAME", "LIB_DIRS", "NvmlLibraryError", "find_library", "load_library"]

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


def load_library(
    driver_root: str,
    *,
    fake: bool = False,
    fake_topology: str | None = None,
    fake_control: str | None = None,
) -> str:
    """Preload the NVML library pynvml will use; returns a description for the log.

    Raises NvmlLibraryError when a library was found but cannot be loaded, or the fake is missing.
    Not finding one under the driver root is not an error here: pynvml then tries the system
    default and `nvmlInit` reports LibraryNotFound.
    """
    if fake:
        from nvsentinel import fake_nvml

        try:
            loaded = fake_nvml.load(topology=fake_topology or None, control=fake_control or None)
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            raise NvmlLibraryError(f"cannot load the fake NVML: {exc}") from None
        return f"fake:{loaded.path}"
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
