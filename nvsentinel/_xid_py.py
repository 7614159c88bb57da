"""Kernel-log / XID decoder, pure-Python twin (the reference for `nvsentinel._xid_c`).

This module is the specification: the compiled decoder must return exactly the same events for
every input (a hypothesis differential test holds them to it). It decodes line by line with `re`.

Input model
-----------
Input is bytes (str is encoded as UTF-8). It is split into lines at `\\n`; one trailing `\\r` is
dropped; a line longer than `MAX_LINE_BYTES` is cut to that length (warning `WARN_TRUNCATED`). A
line is looked at only if it holds an anchor: `NVRM: `, `SXid (` or `GPU reset executed: ` (or a
fallen-off-the-bus record is open, below). Text fields are decoded as UTF-8 with `replace`.

Anchoring: a line is a header and a message
-------------------------------------------
Every rule must match at the **start of the message**, never later in it. Kernel messages echo
text that users control (a tmpfs mount option: `tmpfs: Unknown parameter 'NVRM: Xid (...): 79, …'`,
a file or device name, a process name), so a rule matched anywhere in the line would let any user
fake an XID, clear a real fault with a fake `GPU reset executed:` line, or point a PCI id at
another GPU with a fake `NVRM: GPU at …` line. The driver prints `NVRM: ` (the NVSwitch driver
`nvidia-nvswitchN: `) at the start of its own messages, and reset tooling logs
`GPU reset executed: GPU-…` as its whole message, so anchoring keeps every real line.

The header is what log tools print before the message. It is read left to right, each part
optional and taken only when it fits exactly, and the message starts where it ends:

1. a /dev/kmsg record header `P,SEQ,USEC,FLAGS[,…];` (the message follows at once); or
2. a level `<P>`, or a `dmesg -x` facility and level (`kern  :warn  : `); then
3. a syslog time stamp (ISO 8601, or BSD `Aug 30 11:43:09[.ffffff]`) and a space; then, unless a
   rule starts right there (`dmesg --time-format=iso`), `[HOST ]TAG[[PID]]: `, where a host never
   ends with `:` and, after an ISO stamp, a tag without a host must be `kernel` (dmesg's ISO lines
   have no tag, so `input: <device name>: …` there is a kernel message, not a host and a tag); or
   a `dmesg -T` stamp `[Fri Aug 30 11:43:09 2024] ` (the message follows); or the tag `kernel: `
   alone; then
4. a dmesg stamp `[ 1108.858286] ` (`[123] ` too), and after it, when no tag was read,
   `HOST kernel: ` (`journalctl -o short-monotonic`).

Anything else (another format, leading spaces, a continuation line) leaves the message at the
line start, where no rule matches. The header also says who wrote the line. The kernel logs with
facility 0, and user space cannot (the kernel forces LOG_USER on /dev/kmsg writes that ask for
0). A kmsg header or `<P>` with P ≥ 8, a `dmesg -x` facility other than `kern`, or a syslog tag
other than `kernel` names user space: the driver rules (1–5) do not apply. P < 8, `kern`, or the
tag `kernel` names the kernel: the reset rule (6) does not apply, since reset tooling is user
space and a kernel message that starts with `GPU reset executed:` echoes someone's text (an
nf_log prefix, say). Plain dmesg lines name no one, and both apply. Syslog files are written by
syslogd for anyone who can reach /dev/log (`logger -t kernel …`), so a tag there proves nothing;
/dev/kmsg's facility does.

Line rules, tried in this order at the message start; the first that matches wins:

1. **Xid**: `NVRM: Xid (<pci>[ GPU-I:n][ GPU-CI:n]): <xid>[,] <tail>` → kind `xid`. The tail may
   start with `pid=…,` and `name=…,`; the rest is the message, in which the decoder looks for a
   channel (`Ch 00000001`, `Channel 0x23`, `ChID 000c`), a location `(GPC g, TPC t[, SM s])`, for
   XID 74 `link N(0x…, …)`, for XID 154 the new recovery action (`… to 0x1 (GPU Reset Required)`),
   and for XIDs 144–150 the NVLink5 form `SUBCODE Severity XCn in Link N (0xINTR 0xSTATUS …)`
   (error code `145.SUBCODE`).
2. **SXid**: `[nvidia-nvswitchN: ]SXid (<pci>): <sxid>[,] [Fatal|Non-fatal,] [Link N] <message>`.
3. **Mapping**: `NVRM: GPU at <pci>: GPU-…` → kind `pci_mapping`; later events of that PCI id
   carry the UUID.
4. **Fallen (one line)**: `NVRM: GPU <pci>: GPU has fallen off the bus…` → kind `fallen_off_bus`.
5. **Fallen (record)**: `NVRM: The NVIDIA GPU <pci>`; if `fallen off the bus` follows in the same
   line (a /dev/kmsg record, where newlines print as `\\x0a`) → kind `fallen_off_bus` at once;
   otherwise the record stays open for the next `FALLEN_OFF_BUS_WINDOW` lines, and the first of
   them that matches no rule, is not from user space, and whose message (after the header and
   any indentation: dmesg indents a record's later lines) starts with `NVRM: ` and holds
   `fallen off the bus` completes it (dmesg prints the record as three lines). `(PCI ID: 10de:26b5)`
   anywhere in the record is kept.
6. **Reset**: `GPU reset executed: GPU-…` → kind `gpu_reset`, healthy unless the rest of the line
   says `success: false` or `fail` (any case).

`<pci>` is `[PCI:][dddd[dddd]:]bb:dd[.f]` (the domain may be absent on old drivers) and is
normalised to `dddd:bb:dd` (`nvsentinel._xid_types.normalize_pci`). Inside the parentheses of
rules 1 and 2 it may also be the short form `dddd:bb` (device 00: a GPU is device 0 behind its
port), or redacted: a mask of 1–32 characters of `0-9a-fA-F:.xX*#?` holding at least one of
`xX*#?` (`XXXX:XX:XX.X`), `<…>` or `[…]` (1–32 characters inside), or `redacted` in any case. A
redacted line decodes with `pci=""` and the warning `WARN_PCI_UNKNOWN`; the alternatives are
tried in that order.

Time stamps come from the header: the first of its stamps that is a real date (kmsg, syslog,
`dmesg -T`, dmesg, in the order they appear). kmsg is monotonic, ISO 8601 realtime, BSD syslog
yearless, `dmesg -T` realtime (read as UTC), dmesg monotonic.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from nvsentinel._xid_catalog import Catalog, default_catalog
from nvsentinel._xid_types import (
    CLOCK_MONOTONIC,
    CLOCK_REALTIME,
    CLOCK_YEARLESS,
    FALLEN_OFF_BUS_WINDOW,
    KIND_FALLEN_OFF_BUS,
    KIND_GPU_RESET,
    KIND_PCI_MAPPING,
    KIND_SXID,
    KIND_XID,
    MAX_LINE_BYTES,
    WARN_154_NO_NAME,
    WARN_154_NO_TARGET,
    WARN_PCI_UNKNOWN,
    WARN_TRUNCATED,
    Location,
    NvLink5,
    XidEvent,
    normalize_pci,
)

__all__ = ["Decoder", "decode_line"]

# ---- grammar: rules (each matched at the message start) ----
_ANCHOR: Final = re.compile(rb"NVRM: |SXid \(|GPU reset executed: ")
_HEXD: Final = rb"[0-9a-fA-F]"
_PCI: Final = rb"(?:PCI:)?(?:(" + _HEXD + rb"{4,8}):)?(" + _HEXD + rb"{2}):(" + _HEXD + rb"{2})(?:\." + _HEXD + rb")?"
# inside the parentheses of rules 1 and 2: the full form, the short form, or a redacted id (5 groups)
_PCI_PAREN: Final = (
    rb"(?:PCI:)?(?:(?:(" + _HEXD + rb"{4,8}):)?(" + _HEXD + rb"{2}):(" + _HEXD + rb"{2})(?:\." + _HEXD + rb")?"
    rb"|(" + _HEXD + rb"{4,8}):(" + _HEXD + rb"{2})"
    rb"|(?=[0-9a-fA-F:.]{0,31}[xX*#?])[0-9a-fA-FxX*#?:.]{1,32}"
    rb"|<[^<>()]{1,32}>|\[[^\[\]()]{1,32}\]|(?i:redacted))"
)
_XID: Final = re.compile(
    rb"NVRM: Xid \(" + _PCI_PAREN + rb"(?: GPU-I:(\d{1,4}))?(?: GPU-CI:(\d{1,4}))?\): *(\d{1,6})(?!\d),? *"
)
_SXID: Final = re.compile(rb"(?:nvidia-nvswitch(\d{1,4}): )?SXid \(" + _PCI_PAREN + rb"\): *(\d{1,6})(?!\d),? *")
_MAPPING: Final = re.compile(rb"NVRM: GPU at " + _PCI + rb": (GPU-[0-9a-fA-F-]{1,64})")
_FALLEN_LINE_TEXT: Final = b"GPU has fallen off the bus"
_FALLEN_LINE: Final = re.compile(rb"NVRM: GPU " + _PCI + rb": " + _FALLEN_LINE_TEXT)
_FALLEN_START: Final = re.compile(rb"NVRM: The NVIDIA GPU " + _PCI)
_RESET: Final = re.compile(rb"GPU reset executed: (GPU-[0-9a-fA-F-]{1,64})")
_FALLEN_TEXT: Final = b"fallen off the bus"
_RECORD_LINE: Final = re.compile(rb"[ \t]*NVRM: ")  # a later line of an open record (dmesg indents it)
_DEVICE_ID: Final = re.compile(rb"\(PCI ID: ([0-9a-fA-F]{4}:[0-9a-fA-F]{4})\)")
_DRIVER: Final = b"NVRM: "

_PID_NAME: Final = re.compile(rb"(?:pid=([^,]{0,64})(?:, *|\Z))?(?:name=([^,]{0,256})(?:, *|\Z))?")
_PID: Final = re.compile(rb"\d{1,10}")
_UNKNOWN_NAMES: Final = (b"<unknown>", b"'<unknown>'")
_CHANNEL: Final = re.compile(
    rb"(?<![0-9A-Za-z])(?:Channel|ChID|Ch) (?:0x)?([0-9a-fA-F]{1,16})(?![0-9A-Za-z])"
)
_LOCATION: Final = re.compile(rb"\(GPC (\d{1,4}), TPC (\d{1,4})(?:, SM (\d{1,4}))?\)")
_LINK74: Final = re.compile(
    rb"(?<![0-9A-Za-z])link (\d{1,4})(?!\d)"
    rb"(?: ?\((0x[0-9a-fA-F]{1,16}(?:, *0x[0-9a-fA-F]{1,16}){0,15})\))?"
)
_HEX_REG: Final = re.compile(rb"0x([0-9a-fA-F]{1,16})")
_NVL5: Final = re.compile(
    rb"([A-Za-z0-9_]{1,64}) +([A-Za-z]{1,16}) +([A-Za-z0-9_]{1,16}) +([A-Za-z0-9_]{1,16})"
    rb" +Link +(-?\d{1,4}) +\(0x([0-9a-fA-F]{1,16}) +0x([0-9a-fA-F]{1,16})"
    rb"((?: +0x[0-9a-fA-F]{1,16}){0,14})"
)
_RECOVERY_TARGET: Final = b" to "
_RECOVERY_CODE: Final = re.compile(rb"0x([0-9a-fA-F]{1,16})")
_SXID_SEVERITY: Final = re.compile(rb"(Fatal|Non-fatal|Nonfatal)(?:, *|\Z)")
_SXID_LINK: Final = re.compile(rb"Link (\d{1,4})(?!\d),? *")
_RESET_FAILED: Final = (b"success: false", b"fail")
_NVLINK5_XIDS: Final = range(144, 151)

# ---- grammar: the header before the message (module doc, "Anchoring") ----
_MONTHS: Final = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_KMSG: Final = re.compile(rb"(\d{1,3}),\d{1,20},(\d{1,15}),[^;]{0,64};")
_PRI: Final = re.compile(rb"<(\d{1,3})>")
_DECODED: Final = re.compile(  # dmesg -x
    rb"(kern|user|mail|daemon|authpriv|auth|syslog|lpr|news|uucp|cron|ftp|local[0-7]) {0,8}:"
    rb"(?:emerg|alert|crit|err|warn|notice|info|debug) {0,8}: "
)
_TS_ISO: Final = re.compile(
    rb"((\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?) "
)
_TS_BSD: Final = re.compile(rb"(" + _MONTHS + rb" ([ \d]\d) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?) ")
_TS_DMESG_T: Final = re.compile(
    rb"\[((?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) " + _MONTHS + rb" ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4}))\] ?"
)
_TS_DMESG: Final = re.compile(rb"\[ *((\d{1,10})(?:\.(\d{1,9}))?)\] ?")
_TAG: Final = re.compile(rb"([^ :\[\]]{1,64}(?:\[\d{1,10}\])?): ")
_HOST: Final = re.compile(rb"[^ ]{0,254}[^ :] ")  # a host name never ends with ':' (a tag does)
_KERNEL_TAG: Final = b"kernel: "
_KERNEL: Final = b"kernel"
_RULE_START: Final = re.compile(rb"NVRM: |SXid \(|nvidia-nvswitch\d{1,4}: SXid \(|GPU reset executed: ")
_USER_FACILITY: Final = 8  # syslog prefix = facility * 8 + level; the kernel's facility is 0

_MONTH_NUMBER: Final = {
    name: i + 1
    for i, name in enumerate(
        (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
    )
}
_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_POW10: Final[tuple[int, ...]] = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000)

_Timestamp = tuple[float | None, str, str]
_NO_TIME: Final[_Timestamp] = (None, "", "")
# (where the message starts, a part names user space, a part names the kernel, the time stamp)
_Header = tuple[int, bool, bool, _Timestamp]


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _valid_date(year: int, month: int, day: int) -> bool:
    if not 1 <= month <= 12 or day < 1:
        return False
    days = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    return day <= days


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _with_fraction(seconds: int, fraction: bytes | None) -> float:
    if not fraction:
        return float(seconds)
    return seconds + int(fraction) / _POW10[len(fraction)]


def _clock_ok(hour: int, minute: int, second: int) -> bool:
    return hour <= 23 and minute <= 59 and second <= 59


def _iso_time(m: re.Match[bytes]) -> _Timestamp:
    year, month, day = int(m.group(2)), int(m.group(3)), int(m.group(4))
    hour, minute, second = int(m.group(5)), int(m.group(6)), int(m.group(7))
    if not (_valid_date(year, month, day) and _clock_ok(hour, minute, second)):
        return _NO_TIME
    epoch = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    zone = m.group(9)
    if zone and zone != b"Z":
        digits = zone[1:].replace(b":", b"")
        offset = int(digits[:2]) * 3600 + int(digits[2:]) * 60
        epoch -= offset if zone[:1] == b"+" else -offset
    return _with_fraction(epoch, m.group(8)), CLOCK_REALTIME, m.group(1).decode("ascii")


def _bsd_time(m: re.Match[bytes]) -> _Timestamp:
    month, day = _MONTH_NUMBER[m.group(2)], int(m.group(3))
    hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if not (_valid_date(2000, month, day) and _clock_ok(hour, minute, second)):  # 2000: a leap year
        return _NO_TIME
    seconds = (_days_from_civil(2000, month, day) - _days_from_civil(2000, 1, 1)) * 86400
    seconds += hour * 3600 + minute * 60 + second
    return _with_fraction(seconds, m.group(7)), CLOCK_YEARLESS, m.group(1).decode("ascii")


def _dmesg_t_time(m: re.Match[bytes]) -> _Timestamp:
    month, day, year = _MONTH_NUMBER[m.group(2)], int(m.group(3)), int(m.group(7))
    hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if not (_valid_date(year, month, day) and _clock_ok(hour, minute, second)):
        return _NO_TIME
    epoch = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return float(epoch), CLOCK_REALTIME, m.group(1).decode("ascii")


def _header(line: bytes) -> _Header:
    """Read the header of a line (module doc, "Anchoring"): where the message starts, whether a part
    names user space, whether a part names the kernel, and the time stamp (the first real date
    among the header's stamps)."""
    m = _KMSG.match(line)
    if m:
        usec = int(m.group(2))
        time = (usec / 1_000_000, CLOCK_MONOTONIC, f"{usec // 1_000_000}.{usec % 1_000_000:06d}")
        user = int(m.group(1)) >= _USER_FACILITY
        return m.end(), user, not user, time
    pos, user, kernel, time, tagged = 0, False, False, _NO_TIME, False
    m = _PRI.match(line)
    if m:
        pos, user = m.end(), int(m.group(1)) >= _USER_FACILITY
        kernel = not user
    else:
        m = _DECODED.match(line)
        if m:
            pos, user = m.end(), m.group(1) != b"kern"
            kernel = not user
    m = iso = _TS_ISO.match(line, pos)
    if m:
        time = _iso_time(m)
    else:
        m = _TS_BSD.match(line, pos)
        if m:
            time = _bsd_time(m)
    if m:  # a syslog line: [HOST ]TAG: follows, unless the message starts right here (dmesg --time-format=iso)
        pos = m.end()
        if _RULE_START.match(line, pos):
            return pos, user, kernel, time
        tag = _TAG.match(line, pos)
        if tag is not None and iso and tag.group(1) != _KERNEL:
            # dmesg --time-format=iso prints no tag, so `input: <any name>` there is a kernel
            # message: after an ISO stamp, a tag without a host must be the kernel's
            tag = None
        if tag is None:
            host = _HOST.match(line, pos)
            tag = _TAG.match(line, host.end()) if host else None
        if tag:
            pos, tagged = tag.end(), True
            if tag.group(1) == _KERNEL:
                kernel = True
            else:
                user = True
    else:
        m = _TS_DMESG_T.match(line, pos)
        if m:
            return m.end(), user, kernel, _dmesg_t_time(m)
        if line.startswith(_KERNEL_TAG, pos):
            pos, tagged, kernel = pos + len(_KERNEL_TAG), True, True
    m = _TS_DMESG.match(line, pos)
    if m:
        if time is _NO_TIME:
            time = _with_fraction(int(m.group(2)), m.group(3)), CLOCK_MONOTONIC, m.group(1).decode("ascii")
        pos = m.end()
        if not tagged:  # journalctl -o short-monotonic: "[ 1108.858286] HOST kernel: "
            host = _HOST.match(line, pos)
            if host and line.startswith(_KERNEL_TAG, host.end()):
                pos, kernel = host.end() + len(_KERNEL_TAG), True
    return pos, user, kernel, time


def _pci(m: re.Match[bytes], first: int) -> str:
    domain = int(m.group(first), 16) if m.group(first) else 0
    return f"{domain:04x}:{m.group(first + 1).lower().decode()}:{m.group(first + 2).lower().decode()}"


def _pci_paren(m: re.Match[bytes], first: int) -> str:
    """The canonical PCI id of a `_PCI_PAREN` match whose groups start at `first`; "" when redacted."""
    if m.group(first + 1) is not None:
        return _pci(m, first)
    if m.group(first + 3) is not None:  # the short form dddd:bb: device 00
        return f"{int(m.group(first + 3), 16):04x}:{m.group(first + 4).lower().decode()}:00"
    return ""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _opt_int(raw: bytes | None) -> int | None:
    return int(raw) if raw is not None else None


def _as_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"expected bytes or str, got {type(data).__name__}")


def _record_fallen_text(line: bytes, head: _Header) -> int:
    """Where `fallen off the bus` is in a later line of an open record, or -1: the line must not
    be from user space, and its message (after the header and indentation) starts with `NVRM: `."""
    at, user, _, _ = head
    if user:
        return -1
    m = _RECORD_LINE.match(line, at)
    return line.find(_FALLEN_TEXT, m.end()) if m else -1


class _Pending:
    """An open `NVRM: The NVIDIA GPU <pci>` record waiting for its `fallen off the bus` line."""

    __slots__ = ("pci", "time", "lines", "device_id", "truncated", "left")

    def __init__(self, pci: str, time: _Timestamp, line: bytes, device_id: str, truncated: bool) -> None:
        self.pci = pci
        self.time = time
        self.lines = [line]
        self.device_id = device_id
        self.truncated = truncated
        self.left = FALLEN_OFF_BUS_WINDOW


class Decoder:
    """Streaming kernel-log decoder: feed chunks (split anywhere), get events.

    `feed()` returns the events of the lines the chunk completed; `finish()` decodes a last line
    without a newline and closes an open fallen-off-the-bus record (an unfinished record yields
    nothing). After `finish()` the decoder may be fed a new stream; the PCI→UUID map is kept.

    `catalog` classifies every event (default: the package catalog). `pci_to_uuid` seeds the map
    that mapping lines (`NVRM: GPU at PCI:…: GPU-…`) extend; keys are normalised (ValueError if
    one is not a PCI id). Malformed input never raises: it decodes to nothing or to a best-effort
    event with `warnings`. Memory is bounded: a partial line keeps at most `MAX_LINE_BYTES + 1`
    bytes. Not thread-safe; use one decoder per stream.
    """

    def __init__(self, catalog: Catalog | None = None, pci_to_uuid: Mapping[str, str] | None = None) -> None:
        self._catalog = catalog if catalog is not None else default_catalog()
        self._uuid_by_pci: dict[str, str] = {}
        self._pci_by_uuid: dict[str, str] = {}
        for pci, uuid in (pci_to_uuid or {}).items():
            norm = normalize_pci(pci)
            if norm is None:
                raise ValueError(f"pci_to_uuid: {pci!r} is not a PCI id")
            self._uuid_by_pci[norm] = uuid
            self._pci_by_uuid[uuid] = norm
        self._partial = bytearray()
        self._overflow = False
        self._pending: _Pending | None = None

    @property
    def pci_to_uuid(self) -> dict[str, str]:
        """A copy of the PCI id → GPU UUID map learned so far (canonical PCI ids)."""
        return dict(self._uuid_by_pci)

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def feed(self, chunk: bytes | bytearray | memoryview | str) -> list[XidEvent]:
        """Decode the lines that `chunk` completes; keep the unfinished tail for the next call."""
        data = _as_bytes(chunk)
        out: list[XidEvent] = []
        if not data:
            return out
        if self._partial or self._overflow:
            i = data.find(b"\n")
            if i < 0:
                self._keep(data)
                return out
            self._keep(data[:i])
            line, overflow = bytes(self._partial), self._overflow
            self._partial.clear()
            self._overflow = False
            self._line(line, overflow, out)
            data = data[i + 1 :]
        lines = data.split(b"\n")
        self._keep(lines.pop())
        for line in lines:
            if self._pending is not None or _ANCHOR.search(line):
                self._line(line, False, out)
        return out

    def finish(self) -> list[XidEvent]:
        """Decode the last line if it had no newline, then drop an unfinished fallen-off record."""
        out: list[XidEvent] = []
        if self._partial or self._overflow:
            line, overflow = bytes(self._partial), self._overflow
            self._partial.clear()
            self._overflow = False
            self._line(line, overflow, out)
        self._pending = None
        return out

    # ---- lines ----
    def _keep(self, data: bytes) -> None:
        if self._overflow or not data:
            return
        self._partial += data
        if len(self._partial) > MAX_LINE_BYTES + 1:
            del self._partial[MAX_LINE_BYTES + 1 :]
            self._overflow = True

    def _line(self, line: bytes, overflow: bool, out: list[XidEvent]) -> None:
        if overflow:
            line, truncated = line[:MAX_LINE_BYTES], True
        else:
            if line.endswith(b"\r"):
                line = line[:-1]
            truncated = len(line) > MAX_LINE_BYTES
            if truncated:
                line = line[:MAX_LINE_BYTES]
        pending = self._pending
        head = _header(line)
        event = self._rules(line, head, truncated)
        if self._pending is not pending:  # the line opened a new record
            return
        if event is not None:
            out.append(event)
        elif pending is not None:
            at = _record_fallen_text(line, head)
            if at >= 0:
                self._pending = None
                pending.lines.append(line)
                out.append(self._fallen_record(pending, line, at, truncated))
                return
        if pending is not None:
            pending.lines.append(line)
            pending.truncated = pending.truncated or truncated
            if not pending.device_id:
                m = _DEVICE_ID.search(line)
                if m:
                    pending.device_id = m.group(1).lower().decode()
            pending.left -= 1
            if pending.left == 0:
                self._pending = None

    def _rules(self, line: bytes, head: _Header, truncated: bool) -> XidEvent | None:
        at, user, kernel, time = head
        # rules 1-5 are the drivers': never for a line that user space wrote
        if line.startswith(_DRIVER, at):
            return None if user else self._driver_rules(line, at, time, truncated)
        if not user:
            m = _SXID.match(line, at)
            if m:
                return self._sxid(line, m, time, truncated)
        # rule 6 is reset tooling's: never for a line the kernel printed (it would be echoed text)
        m = None if kernel else _RESET.match(line, at)
        if m:
            uuid = m.group(1).decode()
            rest = line[m.end() :]
            lowered = rest.lower()
            healthy = not any(word in lowered for word in _RESET_FAILED)
            return self._build(
                KIND_GPU_RESET, "GPU_RESET", None, self._pci_by_uuid.get(uuid, ""), time, line, truncated,
                gpu_uuid=uuid, message=_text(rest.lstrip(b", ")), healthy=healthy,
            )
        return None

    def _driver_rules(self, line: bytes, at: int, time: _Timestamp, truncated: bool) -> XidEvent | None:
        """Rules 1 and 3-5, for a message that starts with `NVRM: ` (rules 2 and 6 cannot match it)."""
        m = _XID.match(line, at)
        if m:
            return self._xid(line, m, time, truncated)
        m = _MAPPING.match(line, at)
        if m:
            pci, uuid = _pci(m, 1), m.group(4).decode()
            self._uuid_by_pci[pci] = uuid
            self._pci_by_uuid[uuid] = pci
            return self._build(KIND_PCI_MAPPING, "", None, pci, time, line, truncated, gpu_uuid=uuid)
        m = _FALLEN_LINE.match(line, at)
        if m:
            message = _text(line[m.end() - len(_FALLEN_LINE_TEXT) :])
            return self._build(
                KIND_FALLEN_OFF_BUS, "GPU_FALLEN_OFF_BUS", None, _pci(m, 1), time, line, truncated,
                message=message,
            )
        m = _FALLEN_START.match(line, at)
        if m:
            pci = _pci(m, 1)
            rest = line[m.end() :]
            dev = _DEVICE_ID.search(rest)
            device_id = dev.group(1).lower().decode() if dev else ""
            found = rest.find(_FALLEN_TEXT)
            if found >= 0:
                return self._build(
                    KIND_FALLEN_OFF_BUS, "GPU_FALLEN_OFF_BUS", None, pci, time, line, truncated,
                    message=_text(rest[found:]), pci_device_id=device_id,
                )
            self._pending = _Pending(pci, time, line, device_id, truncated)
        return None

    # ---- rule bodies ----
    def _xid(self, line: bytes, m: re.Match[bytes], time: _Timestamp, truncated: bool) -> XidEvent:
        xid = int(m.group(8))
        tail = line[m.end() :]
        pn = _PID_NAME.match(tail)
        assert pn is not None  # every group is optional: it always matches
        pid_raw, name_raw = pn.group(1), pn.group(2)
        pid = int(pid_raw) if pid_raw is not None and _PID.fullmatch(pid_raw) else None
        process = "" if name_raw is None or name_raw in _UNKNOWN_NAMES else _text(name_raw)
        msg = tail[pn.end() :]
        pci = _pci_paren(m, 1)
        warnings: list[str] = [] if pci else [WARN_PCI_UNKNOWN]
        channel: int | None = None
        location: Location | None = None
        link: int | None = None
        registers: tuple[int, ...] = ()
        recovery_action = ""
        recovery_code: int | None = None
        nvlink5: NvLink5 | None = None
        severity = ""

        ch = _CHANNEL.search(msg)
        if ch:
            channel = int(ch.group(1), 16)
        loc = _LOCATION.search(msg)
        if loc:
            location = Location(int(loc.group(1)), int(loc.group(2)), _opt_int(loc.group(3)))
        error_code = str(xid)
        if xid == 74:
            lk = _LINK74.search(msg)
            if lk:
                link = int(lk.group(1))
                if lk.group(2) is not None:
                    registers = tuple(int(r, 16) for r in _HEX_REG.findall(lk.group(2)))
        elif xid == 154:
            to = msg.rfind(_RECOVERY_TARGET)
            if to < 0:
                warnings.append(WARN_154_NO_TARGET)
            else:
                region = msg[to + len(_RECOVERY_TARGET) :]
                code = _RECOVERY_CODE.match(region)
                if code:
                    recovery_code = int(code.group(1), 16)
                left = region.find(b"(")
                right = region.find(b")", left + 1) if left >= 0 else -1
                name = region[left + 1 : right].strip() if right >= 0 else b""
                if name:
                    recovery_action = _text(name)
                else:
                    warnings.append(WARN_154_NO_NAME)
        elif xid in _NVLINK5_XIDS:
            nv = _NVL5.match(msg)
            if nv:
                severity = nv.group(2).lower().decode()
                registers = (int(nv.group(6), 16), int(nv.group(7), 16)) + tuple(
                    int(r, 16) for r in _HEX_REG.findall(nv.group(8))
                )
                link = int(nv.group(5))
                nvlink5 = NvLink5(
                    subcode=nv.group(1).decode(),
                    severity=severity,
                    containment=nv.group(3).decode(),
                    injected=nv.group(4) != b"i0",
                    link=link,
                    intr_info=registers[0],
                    error_status=registers[1],
                )
                error_code = f"{xid}.{nv.group(1).decode()}"
        return self._build(
            KIND_XID, error_code, xid, pci, time, line, truncated,
            pid=pid, process=process, channel=channel, message=_text(msg),
            gpu_instance=_opt_int(m.group(6)), compute_instance=_opt_int(m.group(7)), location=location,
            link=link, registers=registers, recovery_action=recovery_action, recovery_code=recovery_code,
            nvlink5=nvlink5, severity=severity, warnings=warnings,
        )

    def _sxid(self, line: bytes, m: re.Match[bytes], time: _Timestamp, truncated: bool) -> XidEvent:
        sxid = int(m.group(7))
        rest = line[m.end() :]
        severity = ""
        link: int | None = None
        sev = _SXID_SEVERITY.match(rest)
        if sev:
            severity = "fatal" if sev.group(1) == b"Fatal" else "nonfatal"
            rest = rest[sev.end() :]
        lk = _SXID_LINK.match(rest)
        if lk:
            link = int(lk.group(1))
            rest = rest[lk.end() :]
        pci = _pci_paren(m, 2)
        return self._build(
            KIND_SXID, f"SXID.{sxid}", sxid, pci, time, line, truncated,
            switch=_opt_int(m.group(1)), severity=severity, link=link, message=_text(rest),
            warnings=None if pci else [WARN_PCI_UNKNOWN],
        )

    def _fallen_record(self, pending: _Pending, line: bytes, at: int, truncated: bool) -> XidEvent:
        device_id = pending.device_id
        if not device_id:
            m = _DEVICE_ID.search(line)
            if m:
                device_id = m.group(1).lower().decode()
        return self._build(
            KIND_FALLEN_OFF_BUS, "GPU_FALLEN_OFF_BUS", None, pending.pci, pending.time,
            b"\n".join(pending.lines), pending.truncated or truncated,
            message=_text(line[at:]), pci_device_id=device_id,
        )

    # ---- event assembly ----
    def _build(
        self, kind: str, error_code: str, xid: int | None, pci: str, time: _Timestamp, raw: bytes,
        truncated: bool, *, gpu_uuid: str = "", pid: int | None = None, process: str = "",
        channel: int | None = None, message: str = "", gpu_instance: int | None = None,
        compute_instance: int | None = None, location: Location | None = None, link: int | None = None,
        registers: tuple[int, ...] = (), recovery_action: str = "", recovery_code: int | None = None,
        nvlink5: NvLink5 | None = None, severity: str = "", switch: int | None = None,
        pci_device_id: str = "", healthy: bool = False, warnings: list[str] | None = None,
    ) -> XidEvent:
        if not gpu_uuid and pci and kind != KIND_GPU_RESET:
            gpu_uuid = self._uuid_by_pci.get(pci, "")
        notes = ([WARN_TRUNCATED] if truncated else []) + (warnings or [])
        classification = self._catalog.classify(
            xid,
            kind=kind,
            error_code=error_code or None,
            recovery_action=recovery_action,
            recovery_code=recovery_code,
            severity=severity,
            healthy=healthy,
        )
        return XidEvent(
            kind=kind,
            error_code=error_code,
            xid=xid,
            pci=pci,
            gpu_uuid=gpu_uuid,
            timestamp=time[0],
            clock=time[1],
            time_text=time[2],
            pid=pid,
            process=process,
            channel=channel,
            message=message,
            gpu_instance=gpu_instance,
            compute_instance=compute_instance,
            location=location,
            link=link,
            registers=registers,
            recovery_action=recovery_action,
            recovery_code=recovery_code,
            nvlink5=nvlink5,
            severity=severity,
            switch=switch,
            pci_device_id=pci_device_id,
            healthy=healthy,
            warnings=tuple(notes),
            classification=classification,
            raw=_text(raw),
        )


def decode_line(
    line: bytes | bytearray | memoryview | str,
    *,
    catalog: Catalog | None = None,
    pci_to_uuid: Mapping[str, str] | None = None,
) -> XidEvent | None:
    """Decode one record: the first event in `line`, or None when it is not a line we decode.

    A record with embedded newlines (a journal record of a multi-line printk) is decoded as the
    lines it holds, so a whole fallen-off-the-bus record yields its event. Never raises on input.
    """
    decoder = Decoder(catalog, pci_to_uuid)
    events = decoder.feed(line)
    events += decoder.finish()
    return events[0] if events else None
