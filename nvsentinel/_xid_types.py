"""Event types shared by both XID decoders (compiled and twin), and the PCI id normaliser.

Every kind is decoded only from a line whose kernel message *starts* with its form (the twin's
module doc, "Anchoring"): text that a message merely contains is an echo, never an event.

Both `nvsentinel._xid_c` and `nvsentinel._xid_py` build these exact classes, so events from either
compare equal field by field. Events are `NamedTuple`s: immutable, hashable, cheap to build from C
(one `tuple.__new__`), `_asdict()` for JSON. Pure data; no I/O, no logging, no catalog lookups.
"""
from __future__ import annotations

import re
from typing import Final, NamedTuple

from nvsentinel._xid_catalog import Classification

__all__ = [
    "KIND_XID",
    "KIND_SXID",
    "KIND_FALLEN_OFF_BUS",
    "KIND_PCI_MAPPING",
    "KIND_GPU_RESET",
    "KINDS",
    "CLOCK_MONOTONIC",
    "CLOCK_REALTIME",
    "CLOCK_YEARLESS",
    "MAX_LINE_BYTES",
    "FALLEN_OFF_BUS_WINDOW",
    "WARN_TRUNCATED",
    "WARN_154_NO_TARGET",
    "WARN_154_NO_NAME",
    "WARN_PCI_UNKNOWN",
    "Location",
    "NvLink5",
    "XidEvent",
    "normalize_pci",
]

# ---- event kinds ----
KIND_XID: Final = "xid"
"""`NVRM: Xid (PCI:…): N, …` — a GPU error report from the driver."""
KIND_SXID: Final = "sxid"
"""`nvidia-nvswitchN: SXid (PCI:…): N, …` — an NVSwitch error report."""
KIND_FALLEN_OFF_BUS: Final = "fallen_off_bus"
"""`NVRM: The NVIDIA GPU … has fallen off the bus` (possibly a multi-line record)."""
KIND_PCI_MAPPING: Final = "pci_mapping"
"""`NVRM: GPU at PCI:…: GPU-…` — ties a PCI id to a GPU UUID."""
KIND_GPU_RESET: Final = "gpu_reset"
"""`GPU reset executed: GPU-…` — written by reset tooling (user space: never decoded from a line whose
header names the kernel); a recovery signal unless it failed."""
KINDS: Final = (KIND_XID, KIND_SXID, KIND_FALLEN_OFF_BUS, KIND_PCI_MAPPING, KIND_GPU_RESET)

# ---- timestamp clocks ----
CLOCK_MONOTONIC: Final = "monotonic"
"""Seconds since boot: dmesg `[ 1108.858286]`, /dev/kmsg record headers."""
CLOCK_REALTIME: Final = "realtime"
"""UNIX epoch seconds: ISO 8601 syslog/journal stamps, `dmesg -T` (read as UTC: dmesg prints local time)."""
CLOCK_YEARLESS: Final = "yearless"
"""Seconds since 1 January of an unknown (assumed leap) year: BSD syslog `Aug 30 11:43:09`."""

# ---- limits (identical in both implementations) ----
MAX_LINE_BYTES: Final = 65536
"""Longer lines are cut to this many bytes before decoding (bounded memory in streaming mode)."""
FALLEN_OFF_BUS_WINDOW: Final = 4
"""Lines after `NVRM: The NVIDIA GPU <pci>` searched for `fallen off the bus` (dmesg needs 2)."""

# ---- parse warnings (the decoder never raises on input; it warns on a best-effort event) ----
WARN_TRUNCATED: Final = f"line longer than {MAX_LINE_BYTES} bytes was truncated"
WARN_154_NO_TARGET: Final = "XID 154: no new recovery action ('to ...') in the message"
WARN_154_NO_NAME: Final = "XID 154: the new recovery action is not a parenthesised name"
WARN_PCI_UNKNOWN: Final = "the PCI id is redacted: the event names no GPU"


class Location(NamedTuple):
    """Where on the chip an XID 13/31 graphics exception happened: `(GPC 0, TPC 1, SM 2)`."""

    gpc: int
    tpc: int
    sm: int | None


class NvLink5(NamedTuple):
    """NVLink5 detail of XIDs 144–150: `RLW_SRC_TRACK Nonfatal XC1 i0 Link 10 (0x… 0x…)`."""

    subcode: str
    """Error sub-code name, e.g. `RLW_SRC_TRACK`; the error code becomes `145.RLW_SRC_TRACK`."""
    severity: str
    """As printed, lower-cased: `nonfatal` or `fatal`."""
    containment: str
    """Cross-containment token as printed, e.g. `XC1`."""
    injected: bool
    """True when the injected-error token is not `i0` (a test injection, not a real fault)."""
    link: int
    intr_info: int
    """First register: IntrInfo."""
    error_status: int
    """Second register: ErrorStatus."""


class XidEvent(NamedTuple):
    """One decoded kernel-log record. Immutable; identical from both implementations.

    Fields that a line form does not carry are `None`, `""` or `()`.
    """

    kind: str
    """One of `KINDS`."""
    error_code: str
    """`"79"`, `"145.RLW_SRC_TRACK"`, `"SXID.24007"`, `"GPU_FALLEN_OFF_BUS"`, `"GPU_RESET"`, `""`."""
    xid: int | None
    """The XID (or SXid) number: the one right after the parentheses, never one in the message."""
    pci: str
    """Canonical PCI id `dddd:bb:dd` (lower-case, 4+ digit domain, function dropped) or `""`: none on
    the line (a reset line whose UUID no mapping line named), or redacted (`WARN_PCI_UNKNOWN`)."""
    gpu_uuid: str
    """`GPU-…` when the line or an earlier mapping line named it, else `""`."""
    timestamp: float | None
    """Seconds on `clock`, from the line's prefix; None when the line had no time stamp."""
    clock: str
    """`CLOCK_MONOTONIC`, `CLOCK_REALTIME`, `CLOCK_YEARLESS`, or `""` without a time stamp."""
    time_text: str
    """The time stamp exactly as printed (without brackets), for display."""
    pid: int | None
    process: str
    """Process name from `name=…`; `""` when absent or `<unknown>`."""
    channel: int | None
    """Channel from `Ch 00000001` / `Channel 0x23` / `ChID 000c`."""
    message: str
    """The driver's free text after the structured fields."""
    gpu_instance: int | None
    """MIG `GPU-I:NN` inside the parentheses."""
    compute_instance: int | None
    """MIG `GPU-CI:NN` inside the parentheses."""
    location: Location | None
    link: int | None
    """NVLink number (XID 74, NVLink5, SXid)."""
    registers: tuple[int, ...]
    """XID 74 link registers, or the NVLink5 register list."""
    recovery_action: str
    """XID 154: the new recovery action's name as printed (`GPU Reset Required`)."""
    recovery_code: int | None
    """XID 154: the new recovery action's code (`0x1`)."""
    nvlink5: NvLink5 | None
    severity: str
    """`"fatal"`, `"nonfatal"` (NVLink5, SXid) or `""`."""
    switch: int | None
    """NVSwitch index from `nvidia-nvswitchN:`."""
    pci_device_id: str
    """`10de:26b5` from a fallen-off-the-bus record's `(PCI ID: …)`."""
    healthy: bool
    """True only for a successful `GPU reset executed` line (a recovery signal)."""
    warnings: tuple[str, ...]
    """Parse warnings for best-effort events (see the `WARN_*` constants)."""
    classification: Classification
    """What it means and what to do, from the XID catalog (`nvsentinel.xid.classify`)."""
    raw: str
    """The record as read (lines joined with `\\n` for a multi-line record)."""


_PCI_RE = re.compile(
    r"\s*(?:PCI:)?(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-9a-fA-F])?\s*"
)


def normalize_pci(text: str) -> str | None:
    """Return the canonical form `dddd:bb:dd` of a PCI id, or None if `text` is not one.

    Accepts what drivers and NVML print: `PCI:0000:3B:00.0`, `00000000:3b:00.0` (NVML), `0000:3b:00`,
    `3b:00` (bus:device only, domain 0). The function number is dropped: every consumer compares
    GPUs, not functions. The decoder emits exactly this form, so `normalize_pci(event.pci) ==
    event.pci`.
    """
    m = _PCI_RE.fullmatch(text)
    if m is None:
        return None
    domain = int(m.group(1), 16) if m.group(1) else 0
    return f"{domain:04x}:{m.group(2).lower()}:{m.group(3).lower()}"
