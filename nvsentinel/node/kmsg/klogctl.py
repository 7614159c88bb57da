"""The syslog(2) system call (glibc `klogctl`), read-only: the size of the kernel's log ring and its
newest records as text.

Why a system call and not /dev/kmsg: container runtimes admit the host's /dev/kmsg character
device (1:11) only to privileged containers (the device cgroup refuses it otherwise, whatever is
mounted and whatever capabilities the container has), and privileged hands the container every
device and capability of the node. syslog(2) needs no device: only CAP_SYSLOG when
kernel.dmesg_restrict=1, and the runtimes' default seccomp profiles (containerd, CRI-O, Docker)
allow the call exactly when CAP_SYSLOG is in the container's capability set. Only the
non-destructive actions are used: READ_ALL leaves the ring and every other reader as they were
(READ, action 2, would move the position shared with `/proc/kmsg` readers such as rsyslog).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable
from typing import Final

__all__ = ["Klog", "SYSLOG_ACTION_READ_ALL", "SYSLOG_ACTION_SIZE_BUFFER"]

SYSLOG_ACTION_READ_ALL: Final = 3
SYSLOG_ACTION_SIZE_BUFFER: Final = 10


def _klogctl() -> Callable[[int, object, int], int]:
    """libc's `klogctl(type, buf, len)`; raises OSError (no libc) or AttributeError (no klogctl)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fn = libc.klogctl
    fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


class Klog:
    """syslog(2) READ_ALL and SIZE_BUFFER. Errors are OSError with the errno (EPERM: not permitted)."""

    def __init__(self) -> None:
        self._call = _klogctl()

    def _check(self, rc: int, action: str) -> int:
        if rc < 0:
            err = ctypes.get_errno() or errno.EIO
            raise OSError(err, f"syslog(2) {action}: {os.strerror(err)}")
        return rc

    def size(self) -> int:
        """Bytes of the kernel's log ring (log_buf_len)."""
        return self._check(self._call(SYSLOG_ACTION_SIZE_BUFFER, None, 0), "SIZE_BUFFER")

    def read_all(self, length: int) -> bytes:
        """The newest whole records whose text fits in `length` bytes, oldest first."""
        buf = ctypes.create_string_buffer(length)
        n = self._check(self._call(SYSLOG_ACTION_READ_ALL, buf, length), "READ_ALL")
        return buf.raw[:n]
