"""Kernel-log / XID decoder, pure-Python twin (the reference for `nvsentinel._xid_c`).

This module is the specification: the compiled decoder must return exactly the same events for
every input (a hypothesis differential test holds them to it). It decodes line by line with `re`.

Input model
-----------
Input is bytes (str is encoded as UTF-8). It is split into lines at `\\n`; one trailing `\\r` is
dropped; a line longer than `MAX_LINE_BYTES` is cut to that length (warning `WARN_TRUNCATED`). A
line is looked at only if it holds an anchor: `NVRM: `, `SXid (` or `GPU reset executed: ` (or a
fallen-off-the-bus record is open, below). Text fields are decoded as UTF-8 with `replace`.

Line rules, tried in this order; the first that matches anywhere in the line wins (regex search
semantics: the leftmost position where the whole rule matches):

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
   them that matches no rule but holds `fallen off the bus` completes it (dmesg prints the record
   as three lines). `(PCI ID: 10de:26b5)` anywhere in the record is kept.
6. **Reset**: `GPU reset executed: GPU-…` → kind `gpu_reset`, healthy unless the rest of the line
   says `success: false` or `fail` (any case).

`<pci>` is `[PCI:][dddd[dddd]:]bb:dd[.f]` (the domain may be absent on old drivers) and is
normalised to `dddd:bb:dd` (`nvsentinel._xid_types.normalize_pci`).

Time stamps are read from the text before the rule's match, first form that fits: a /dev/kmsg
header `6,1234,5678901,-;` (monotonic); at the line start, after an optional `<N>` level: ISO 8601
(realtime), BSD syslog `Aug 30 11:43:09` (yearless), `dmesg -T` `[Fri Aug 30 11:43:09 2024]`
(realtime, read as UTC); else the first `[ 1108.858286]` (monotonic).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

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
    WARN_TRUNCATED,
    Location,
    NvLink5,
    XidEvent,
    normalize_pci,
)

__all__ = ["Decoder", "decode_line"]

# ---- grammar ----
_ANCHOR: Final = re.compile(rb"NVRM: |SXid \(|GPU reset executed: ")
_PCI: Final = rb"(?:PCI:)?(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-9a-fA-F])?"
_XID: Final = re.compile(
    rb"NVRM: Xid \(" + _PCI + rb"(?: GPU-I:(\d{1,4}))?(?: GPU-CI:(\d{1,4}))?\): *(\d{1,6})(?!\d),? *"
)
_SXID: Final = re.compile(rb"(?:nvidia-nvswitch(\d{1,4}): )?SXid \(" + _PCI + rb"\): *(\d{1,6})(?!\d),? *")
_MAPPING: Final = re.compile(rb"NVRM: GPU at " + _PCI + rb": (GPU-[0-9a-fA-F-]{1,64})")
_FALLEN_LINE_TEXT: Final = b"GPU has fallen off the bus"
_FALLEN_LINE: Final = re.compile(rb"NVRM: GPU " + _PCI + rb": " + _FALLEN_LINE_TEXT)
_FALLEN_START: Final = re.compile(rb"NVRM: The NVIDIA GPU " + _PCI)
_RESET: Final = re.compile(rb"GPU reset executed: (GPU-[0-9a-fA-F-]{1,64})")
_FALLEN_TEXT: Final = b"fallen off the bus"
_DEVICE_ID: Final = re.compile(rb"\(PCI ID: ([0-9a-fA-F]{4}:[0-9a-fA-F]{4})\)")

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

# ---- time stamps ----
_MONTHS: Final = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_PRIO: Final = rb"(?:<\d{1,3}>)?"
_TS_KMSG: Final = re.compile(rb"\d{1,3},\d{1,20},(\d{1,15}),[^;]{0,64};")
_TS_ISO: Final = re.compile(
    _PRIO + rb"((\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?)"
)
_TS_BSD: Final = re.compile(_PRIO + rb"(" + _MONTHS + rb" ([ \d]\d) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?)")
_TS_DMESG_T: Final = re.compile(
    _PRIO + rb"\[((?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) " + _MONTHS + rb" ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4}))\]"
)
_TS_DMESG: Final = re.compile(rb"\[ *(\d{1,10})\.(\d{1,9})\]")
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


def _timestamp(prefix: bytes) -> _Timestamp:
    """Read the time stamp of a line from the text before its rule match (forms in module doc)."""
    m = _TS_KMSG.match(prefix)
    if m:
        usec = int(m.group(1))
        return usec / 1_000_000, CLOCK_MONOTONIC, f"{usec // 1_000_000}.{usec % 1_000_000:06d}"
    m = _TS_ISO.match(prefix)
    if m:
        year, month, day = int(m.group(2)), int(m.group(3)), int(m.group(4))
        hour, minute, second = int(m.group(5)), int(m.group(6)), int(m.group(7))
        if _valid_date(year, month, day) and _clock_ok(hour, minute, second):
            epoch = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
            zone = m.group(9)
            if zone and zone != b"Z":
                digits = zone[1:].replace(b":", b"")
                offset = int(digits[:2]) * 3600 + int(digits[2:]) * 60
                epoch -= offset if zone[:1] == b"+" else -offset
            return _with_fraction(epoch, m.group(8)), CLOCK_REALTIME, m.group(1).decode("ascii")
    m = _TS_BSD.match(prefix)
    if m:
        month, day = _MONTH_NUMBER[m.group(2)], int(m.group(3))
        hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
        if _valid_date(2000, month, day) and _clock_ok(hour, minute, second):  # 2000: a leap year
            seconds = (_days_from_civil(2000, month, day) - _days_from_civil(2000, 1, 1)) * 86400
            seconds += hour * 3600 + minute * 60 + second
            return _with_fraction(seconds, m.group(7)), CLOCK_YEARLESS, m.group(1).decode("ascii")
    m = _TS_DMESG_T.match(prefix)
    if m:
        month, day, year = _MONTH_NUMBER[m.group(2)], int(m.group(3)), int(m.group(7))
        hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
        if _valid_date(year, month, day) and _clock_ok(hour, minute, second):
            epoch = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
            return float(epoch), CLOCK_REALTIME, m.group(1).decode("ascii")
    m = _TS_DMESG.search(prefix)
    if m:
        return (
            _with_fraction(int(m.group(1)), m.group(2)),
            CLOCK_MONOTONIC,
            (m.group(1) + b"." + m.group(2)).decode("ascii"),
        )
    return _NO_TIME


def _pci(m: re.Match[bytes], first: int) -> str:
    domain = int(m.group(first), 16) if m.group(first) else 0
    return f"{domain:04x}:{m.group(first + 1).lower().decode()}:{m.group(first + 2).lower().decode()}"


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
        event = self._rules(line, truncated)
        if self._pending is not pending:  # the line opened a new record
            return
        if event is not None:
            out.append(event)
        elif pending is not None:
            at = line.find(_FALLEN_TEXT)
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

    def _rules(self, line: bytes, truncated: bool) -> XidEvent | None:
        m = _XID.search(line)
        if m:
            return self._xid(line, m, truncated)
        m = _SXID.search(line)
        if m:
            return self._sxid(line, m, truncated)
        m = _MAPPING.search(line)
        if m:
            pci, uuid = _pci(m, 1), m.group(4).decode()
            self._uuid_by_pci[pci] = uuid
            self._pci_by_uuid[uuid] = pci
            return self._event(
                KIND_PCI_MAPPING, "", None, pci, line, m.start(), truncated, gpu_uuid=uuid
            )
        m = _FALLEN_LINE.search(line)
        if m:
            message = _text(line[m.end() - len(_FALLEN_LINE_TEXT) :])
            return self._event(
                KIND_FALLEN_OFF_BUS, "GPU_FALLEN_OFF_BUS", None, _pci(m, 1), line, m.start(), truncated,
                message=message,
            )
        m = _FALLEN_START.search(line)
        if m:
            pci = _pci(m, 1)
            rest = line[m.end() :]
            dev = _DEVICE_ID.search(rest)
            device_id = dev.group(1).lower().decode() if dev else ""
            at = rest.find(_FALLEN_TEXT)
            if at >= 0:
                return self._event(
                    KIND_FALLEN_OFF_BUS, "GPU_FALLEN_OFF_BUS", None, pci, line, m.start(), truncated,
                    message=_text(rest[at:]), pci_device_id=device_id,
                )
            self._pending = _Pending(pci, _timestamp(line[: m.start()]), line, device_id, truncated)
            return None
        m = _RESET.search(line)
        if m:
            uuid = m.group(1).decode()
            rest = line[m.end() :]
            lowered = rest.lower()
            healthy = not any(word in lowered for word in _RESET_FAILED)
            return self._event(
                KIND_GPU_RESET, "GPU_RESET", None, self._pci_by_uuid.get(uuid, ""), line, m.start(), truncated,
                gpu_uuid=uuid, message=_text(rest.lstrip(b", ")), healthy=healthy,
            )
        return None

    # ---- rule bodies ----
    def _xid(self, line: bytes, m: re.Match[bytes], truncated: bool) -> XidEvent:
        xid = int(m.group(6))
        tail = line[m.end() :]
        pn = _PID_NAME.match(tail)
        assert pn is not None  # every group is optional: it always matches
        pid_raw, name_raw = pn.group(1), pn.group(2)
        pid = int(pid_raw) if pid_raw is not None and _PID.fullmatch(pid_raw) else None
        process = "" if name_raw is None or name_raw in _UNKNOWN_NAMES else _text(name_raw)
        msg = tail[pn.end() :]
        warnings: list[str] = []
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
        return self._event(
            KIND_XID, error_code, xid, _pci(m, 1), line, m.start(), truncated,
            pid=pid, process=process, channel=channel, message=_text(msg),
            gpu_instance=_opt_int(m.group(4)), compute_instance=_opt_int(m.group(5)), location=location,
            link=link, registers=registers, recovery_action=recovery_action, recovery_code=recovery_code,
            nvlink5=nvlink5, severity=severity, warnings=warnings,
        )

    def _sxid(self, line: bytes, m: re.Match[bytes], truncated: bool) -> XidEvent:
        sxid = int(m.group(5))
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
        return self._event(
            KIND_SXID, f"SXID.{sxid}", sxid, _pci(m, 2), line, m.start(), truncated,
            switch=_opt_int(m.group(1)), severity=severity, link=link, message=_text(rest),
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
    def _event(
        self, kind: str, error_code: str, xid: int | None, pci: str, line: bytes, start: int,
        truncated: bool, **fields: Any,
    ) -> XidEvent:
        return self._build(kind, error_code, xid, pci, _timestamp(line[:start]), line, truncated, **fields)

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
