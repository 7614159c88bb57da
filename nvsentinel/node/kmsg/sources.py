"""Where the kernel-log monitor's lines come from: syslog(2), /dev/kmsg (records), a log file, or a FIFO.

Every source hands out `Line`s: one complete line each, with the position just after it, so the
monitor can move its cursor line by line and never records a position inside a line. Memory is
bounded by `max_line_bytes`: a longer line (terminated or not) is dropped with a counted, logged
error and reading resynchronises at the next newline.

The file source (`FileSource`) also follows the file across what happens to log files:

* rename rotation (another inode at the path): finish the old file, then read the new one from 0;
* copytruncate (the same inode, truncated — perhaps already written again past our offset): the
  last `CHECK_BYTES` bytes before the read position no longer match → read it again from 0;
* read errors (EIO, the file gone, replaced by a directory, permissions flapping): never raised;
  the file is closed and reopened with backoff (100 ms → 5 s), logged once per streak;
* a saved cursor inside a line (the file changed under it): the rest of that line is skipped.

The two kernel sources (`SyslogSource`, `KmsgSource`) know who wrote each record (its facility)
and hand out only the kernel's own lines, plus reset tooling's `GPU reset executed:` lines
(`ring.kernel_or_reset`); the rest is dropped and counted (`nvsentinel_kmsg_records_dropped_total`).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Final, NamedTuple

from nvsentinel.node.kmsg import cursor as cursor_mod
from nvsentinel.node.kmsg import ring
from nvsentinel.node.kmsg.config import (
    DEFAULT_MAX_LINE_BYTES, MAX_MAX_LINE_BYTES, MIN_MAX_LINE_BYTES, SYSLOG_SOURCE,
)
from nvsentinel.node.kmsg.klogctl import Klog
from nvsentinel.node.kmsg.metrics import KmsgMetrics

__all__ = [
    "SourceError", "Line", "FileSource", "KmsgSource", "FifoSource", "SyslogSource", "KmsgRecord", "open_source",
    "parse_kmsg_record", "BOOT_ID_PATH", "READ_SIZE", "DEFAULT_MAX_LINE_BYTES", "MIN_MAX_LINE_BYTES",
    "MAX_MAX_LINE_BYTES", "REOPEN_BACKOFF", "TAIL_START", "TAIL_MARGIN", "TAIL_MAX",
]

logger = logging.getLogger("nvsentinel.node.kmsg.monitor")

BOOT_ID_PATH: Final = "/proc/sys/kernel/random/boot_id"
READ_SIZE: Final = 1 << 20
REOPEN_BACKOFF: Final = (0.1, 5.0)
_CHECK: Final = cursor_mod.CHECK_BYTES


class SourceError(RuntimeError):
    """The source cannot be opened at start (clear message; the daemon exits 1)."""


class Line(NamedTuple):
    data: bytes
    """The line with its newline; b"" for a line that was dropped (only its position counts)."""
    end: int
    """File: the byte offset just after the line. /dev/kmsg: the record's sequence number.
    syslog: the line's time stamp (microseconds since boot)."""
    inode: int = 0
    """File: the inode the line was read from (a rotation hands out the old file's last lines)."""
    nth: int = 0
    """syslog: how many lines with this time stamp, in ring order, up to and including this one."""


def read_boot_id(path: str) -> str:
    """This boot's id ("" when unreadable: a cursor then cannot tell boots apart)."""
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except (OSError, ValueError):
        return ""


def _drop_record(metrics: KmsgMetrics, source: str, reason: str, line: bytes) -> None:
    """Count a record dropped before decoding; logged at DEBUG (user space writes to /dev/kmsg all
    the time: systemd at boot, for one)."""
    metrics.records_dropped.labels(reason).inc()
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("kernel log record dropped", extra={"kv": {
            "source": source, "reason": reason, "line": line[:200].decode("utf-8", "replace").rstrip("\n")}})


def _dropped(metrics: KmsgMetrics, path: str, reason: str, offset: int, nbytes: int, limit: int,
             terminated: bool) -> None:
    """Count and log one dropped line (one log line per line dropped)."""
    metrics.lines_skipped.labels(reason).inc()
    kv = {"path": path, "reason": reason, "offset": offset, "bytes": nbytes, "terminated": terminated,
          "skipped_total": int(metrics.value("nvsentinel_kmsg_lines_skipped", reason=reason))}
    if reason == "overlong":
        kv["max_line_bytes"] = limit
        logger.error("kernel log line longer than --max-line-bytes dropped; resuming at the next line", extra={"kv": kv})
    else:
        logger.warning("saved cursor is inside a line; skipping to the next line boundary", extra={"kv": kv})


def _split(data: bytes, base: int, inode: int, limit: int, on_overlong: Callable[[int, int], None]) -> list[Line]:
    """The complete lines of `data` (which ends with a newline), the first one starting at `base`."""
    out = []
    pos = base
    parts = data.split(b"\n")
    parts.pop()  # after the last newline: nothing
    for part in parts:
        end = pos + len(part) + 1
        if len(part) > limit:
            on_overlong(pos, len(part))
            out.append(Line(b"", end, inode))
        else:
            out.append(Line(part + b"\n", end, inode))
        pos = end
    return out


class FileSource:
    """A regular file, followed across rotation, truncation and read errors (module docstring).

    Positions: `boundary` is the offset after the last line handed out (always a line boundary),
    `_fp` the up to CHECK_BYTES bytes before it. A line still without its newline stays in the
    file and is read again with the rest of it; while a line longer than the limit is being dropped
    (`_skip`), `_scan` is how far it was read.
    """

    kind = "file"

    def __init__(self, path: str, cur: cursor_mod.Cursor, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 metrics: KmsgMetrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.metrics = metrics if metrics is not None else KmsgMetrics()
        self._read_size = max(READ_SIZE, max_line_bytes + 1)
        self._clock = clock
        self._fd = -1
        self.inode = 0
        self._dev = 0
        self.boundary = 0
        self._fp = b""
        self._skip = ""
        self._scan = 0
        self._backoff = REOPEN_BACKOFF[0]
        self._retry_at = 0.0
        self._failing = ""
        self._failures = 0
        self._path_gone = False
        try:
            fd, st = self._open()
        except OSError as exc:
            raise SourceError(f"cannot open --source {path!r}: {exc.strerror}") from None
        self._fd, self.inode, self._dev = fd, st.st_ino, st.st_dev
        self.boundary = cursor_mod.file_start_offset(cur, st.st_ino, st.st_size)
        if self.boundary:
            self._fp = cursor_mod.check_bytes(cur) or b""
            try:
                self._check_position()
            except OSError as exc:
                self._failed("read", exc)
        logger.info("following file", extra={"kv": {"path": path, "inode": self.inode, "offset": self.boundary,
                                                     "resumed": self.boundary > 0,
                                                     "max_line_bytes": max_line_bytes}})

    # ---- the position -------------------------------------------------------------------------

    def update(self, cur: cursor_mod.Cursor) -> None:
        """Set `cur` to where this source stands (every line handed out so far was handled)."""
        cur.kind, cur.inode, cur.offset, cur.check = "file", self.inode, self.boundary, self._fp.hex()

    def commit(self, cur: cursor_mod.Cursor, line: Line) -> None:
        """Set `cur` to just after `line` (the lines before it were handled)."""
        cur.kind, cur.inode, cur.offset, cur.check = "file", line.inode, line.end, line.data[-_CHECK:].hex()

    def skip_to(self, end: int) -> None:
        """Continue after `end` (a line the monitor gave up on), at a line boundary."""
        if self._fd < 0:
            self.boundary, self._fp, self._skip = end, b"", ""
            return
        try:
            self.boundary, self._fp, self._skip = end, b"", ""
            self._check_position()
        except OSError as exc:
            self._failed("read", exc)

    def _check_position(self) -> None:
        """After (re)opening at `boundary` > 0: is the file still what was read up to there?"""
        if not self.boundary:
            return
        if self._fp:
            k = len(self._fp)
            if os.pread(self._fd, k, self.boundary - k) != self._fp:
                self._restart("the bytes before the saved offset changed")
                return
        if os.pread(self._fd, 1, self.boundary - 1) != b"\n":
            if os.fstat(self._fd).st_size < self.boundary:
                self._restart("shorter than the saved offset")
                return
            self._skip, self._scan = "resync", self.boundary
            _dropped(self.metrics, self.path, "resync", self.boundary, 0, self.max_line_bytes, False)
        if not self._fp:
            k = min(_CHECK, self.boundary)
            self._fp = os.pread(self._fd, k, self.boundary - k)

    def _restart(self, why: str) -> None:
        """copytruncate or a rewrite in place: everything in the file is new to us."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            size = -1
        if 0 <= size < self.boundary:
            why = "the file is shorter than the read position"
        self.metrics.truncations.inc()
        logger.info("file truncated or rewritten in place; reading it from its start", extra={"kv": {
            "path": self.path, "inode": self.inode, "offset": self.boundary, "size": size, "why": why,
            "truncations_total": int(self.metrics.value("nvsentinel_kmsg_file_truncations"))}})
        self.boundary, self._fp, self._skip, self._scan = 0, b"", "", 0

    # ---- reading ------------------------------------------------------------------------------

    def read(self) -> list[Line]:
        """The next complete lines (at most one read's worth); [] when nothing new or failing."""
        if self._fd < 0 and not self._reopen():
            return []
        try:
            lines = self._read_lines()
            if not lines:
                lines = self._idle()
        except OSError as exc:
            self._failed("read", exc)
            return []
        if self._fd >= 0:  # a rotation may have ended on a new file that cannot be opened yet
            self._ok()
        return lines

    def _read_lines(self) -> list[Line]:
        if self._skip:
            return self._read_skipping()
        k = len(self._fp)
        buf = os.pread(self._fd, k + self._read_size, self.boundary - k)
        if buf[:k] != self._fp:
            self._restart("the bytes before the read position changed")
            return []
        cut = buf.rfind(b"\n", k) + 1
        if not cut:  # no newline in the new bytes: a partial line, read again once it grows
            if len(buf) - k > self.max_line_bytes:
                self._start_skip(self.boundary, len(buf) - k)
            return []
        base = self.boundary
        lines = _split(buf[k:cut], base, self.inode, self.max_line_bytes, self._overlong)
        self.boundary = base + cut - k
        self._fp = buf[max(0, cut - _CHECK):cut]
        if len(buf) - cut > self.max_line_bytes:
            self._start_skip(self.boundary, len(buf) - cut)
        return lines

    def _overlong(self, offset: int, nbytes: int) -> None:
        _dropped(self.metrics, self.path, "overlong", offset, nbytes, self.max_line_bytes, True)

    def _start_skip(self, at: int, seen: int) -> None:
        """A line without a newline within the limit: drop it, keep only how far it was read."""
        self._skip, self._scan = "overlong", at + seen
        _dropped(self.metrics, self.path, "overlong", at, seen, self.max_line_bytes, False)

    def _read_skipping(self) -> list[Line]:
        k = len(self._fp)
        if k and os.pread(self._fd, k, self.boundary - k) != self._fp:
            self._restart("the bytes before the read position changed")
            return []
        buf = os.pread(self._fd, self._read_size, self._scan)
        i = buf.find(b"\n")
        if i < 0:
            self._scan += len(buf)
            return []
        end = self._scan + i + 1
        if i + 1 >= _CHECK:
            fp = buf[i + 1 - _CHECK:i + 1]
        else:
            fp = os.pread(self._fd, min(_CHECK, end), end - min(_CHECK, end))
        logger.info("resynchronised at a line boundary", extra={"kv": {
            "path": self.path, "reason": self._skip, "from": self.boundary, "to": end}})
        self.boundary, self._fp, self._skip, self._scan = end, fp, "", 0
        return [Line(b"", end, self.inode)]

    def _idle(self) -> list[Line]:
        """Nothing new in the open file: was it truncated, or is another file at the path now?"""
        if os.fstat(self._fd).st_size < (self._scan if self._skip else self.boundary):
            self._restart("shorter than the read position")
            return []
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if not self._path_gone:
                self._path_gone = True
                logger.info("the path is gone; following the open file until a new one appears",
                            extra={"kv": {"path": self.path, "error": exc.strerror}})
            return []
        self._path_gone = False
        if (st.st_ino, st.st_dev) == (self.inode, self._dev):
            return []
        return self._rotate()

    def _rotate(self) -> list[Line]:
        """Finish the old file (its last line may never get its newline now), then open the new one."""
        lines = self._read_lines()
        if lines:
            return lines  # written just before the rotation; the next idle read comes back here
        if self._skip:
            end = os.fstat(self._fd).st_size
            lines = [Line(b"", end, self.inode)]
        else:
            rest = os.pread(self._fd, self.max_line_bytes + 1, self.boundary)
            if rest:
                lines = [Line(rest + b"\n", self.boundary + len(rest), self.inode)]
        old = self.inode
        self._close()
        self.inode, self._dev, self.boundary, self._fp, self._skip, self._scan = 0, 0, 0, b"", "", 0
        self.metrics.rotations.inc()
        logger.info("file rotated; following the new file from its start", extra={"kv": {
            "path": self.path, "old_inode": old,
            "rotations_total": int(self.metrics.value("nvsentinel_kmsg_file_rotations"))}})
        self._retry_at = 0.0
        self._reopen()
        return lines

    # ---- opening and failing ------------------------------------------------------------------

    def _open(self) -> tuple[int, os.stat_result]:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise OSError(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL, f"is {kind}")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _reopen(self) -> bool:
        if self._clock() < self._retry_at:
            return False
        try:
            fd, st = self._open()
        except OSError as exc:
            self._failed("open", exc)
            return False
        had = self.inode
        same = had != 0 and (st.st_ino, st.st_dev) == (self.inode, self._dev)
        self._fd, self.inode, self._dev = fd, st.st_ino, st.st_dev
        if not same:
            if had:  # replaced while we could not read it: the old file's rest is out of reach
                logger.info("another file is at the path; following it from its start",
                            extra={"kv": {"path": self.path, "old_inode": had, "inode": self.inode}})
                self.metrics.rotations.inc()
            self.boundary, self._fp, self._skip, self._scan = 0, b"", "", 0
            return True
        self._skip, self._scan = "", 0  # a line being dropped is found again, from its start
        try:
            self._check_position()
        except OSError as exc:
            self._failed("read", exc)
            return False
        return True

    def _failed(self, op: str, exc: OSError) -> None:
        """Close, count, and retry later (backoff); logged once per streak of the same error."""
        self._close()
        self.metrics.read_errors.labels(op).inc()
        self._failures += 1
        delay = self._backoff
        self._retry_at = self._clock() + delay
        self._backoff = min(self._backoff * 2, REOPEN_BACKOFF[1])
        name = errno.errorcode.get(exc.errno or 0, "")
        key = f"{op}:{name}"
        kv = {"path": self.path, "op": op, "error": f"{name}: {exc.strerror or exc}" if name else str(exc),
              "retry_in": round(delay, 3), "failures": self._failures,
              "read_errors_total": int(self.metrics.value("nvsentinel_kmsg_read_errors", op=op))}
        if key != self._failing:
            self._failing = key
            logger.warning("cannot read the log file; retrying with backoff", extra={"kv": kv})
        else:
            logger.debug("cannot read the log file; retrying with backoff", extra={"kv": kv})

    def _ok(self) -> None:
        if self._failures:
            logger.info("log file readable again", extra={"kv": {
                "path": self.path, "inode": self.inode, "offset": self.boundary, "failures": self._failures}})
            self._failures, self._failing, self._backoff = 0, "", REOPEN_BACKOFF[0]

    def _close(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def close(self) -> None:
        self._close()


class KmsgRecord(NamedTuple):
    seq: int
    facility: int
    line: bytes
    """The first line with its header and a newline (what the XID decoder reads)."""
    message: bytes
    """The first line after the header."""


def parse_kmsg_record(record: bytes) -> KmsgRecord | None:
    """One /dev/kmsg record `PRIO,SEQ,USEC,FLAGS[,...];message` (dictionary lines after it are
    ignored), or None if malformed. PRIO is facility << 3 | level."""
    line = record.split(b"\n", 1)[0]
    header, sep, message = line.partition(b";")
    fields = header.split(b",")
    if not sep or len(fields) < 3:
        return None
    try:
        prio, seq = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if prio < 0 or seq < 0:
        return None
    return KmsgRecord(seq, prio >> 3, line + b"\n", message)


class KmsgSource:
    """/dev/kmsg (or another character device speaking its record format): one record per read."""

    kind = "kmsg"

    def __init__(self, path: str, cur: cursor_mod.Cursor, boot_id_path: str = BOOT_ID_PATH, fd: int | None = None,
                 *, metrics: KmsgMetrics | None = None) -> None:
        """`fd`: an already open non-blocking descriptor with record boundaries (tests)."""
        self.path = path
        self.metrics = metrics if metrics is not None else KmsgMetrics()
        self.boot_id = read_boot_id(boot_id_path)
        if fd is not None:
            self._fd = fd
        else:
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                raise SourceError(f"cannot open --source {path!r}: {exc.strerror}") from None
        self.seq = cur.seq if cur.kind == "kmsg" and cur.boot_id == self.boot_id else -1
        self._probe = cursor_mod.Cursor(kind="kmsg", boot_id=self.boot_id, seq=self.seq)
        logger.info("following kmsg", extra={"kv": {"path": path, "boot_id": self.boot_id, "after_seq": self.seq}})

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(self) -> list[Line]:
        out = []
        for _ in range(4096):
            try:
                record = os.read(self._fd, 8192)  # a record is at most 8 KiB: memory is bounded
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them
                    self.metrics.overruns.inc()
                    logger.warning("kmsg: records were lost (ring buffer overrun)", extra={"kv": {
                        "after_seq": self.seq, "overruns_total": int(self.metrics.value("nvsentinel_kmsg_ring_overruns"))}})
                    continue
                raise
            if not record:
                break
            parsed = parse_kmsg_record(record)
            if parsed is None:
                _drop_record(self.metrics, self.path, "malformed", record)
                continue
            if not cursor_mod.kmsg_is_new(self._probe, self.boot_id, parsed.seq):
                continue
            self._probe.seq = parsed.seq
            self.seq = parsed.seq
            if not ring.kernel_or_reset(parsed.facility, parsed.message):
                _drop_record(self.metrics, self.path, "user_space", parsed.line)
                continue
            out.append(Line(parsed.line, parsed.seq))
        return out

    def update(self, cur: cursor_mod.Cursor) -> None:
        cur.kind, cur.boot_id, cur.seq = "kmsg", self.boot_id, self.seq

    def commit(self, cur: cursor_mod.Cursor, line: Line) -> None:
        cur.kind, cur.boot_id, cur.seq = "kmsg", self.boot_id, line.end


TAIL_START: Final = 16 << 10
"""Bytes of the ring's newest text asked for first: at one read a second, far more than a busy
node logs, so one system call finds the cursor."""
TAIL_MARGIN: Final = 4096
"""A read that came back this much short of the buffer holds the whole ring: no older record would
have fit (one record's text is at most 2 KiB: PRINTK_MESSAGE_MAX; 1 KiB before Linux 6.1)."""
TAIL_MAX: Final = 64 << 20
"""The most one read asks for (the text of a 16 MiB ring, with its prefixes); memory stays bounded."""


def _denied(exc: OSError) -> str:
    """The one start-up line for a syslog(2) that does not work here."""
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if exc.errno == errno.EPERM:
        return ("--source=syslog: syslog(2) is not permitted (EPERM): the monitor needs CAP_SYSLOG (kernel."
                "dmesg_restrict=1). In a pod: runAsUser: 0 with capabilities {drop: [ALL], add: [SYSLOG]} (a non-root "
                "user gets no effective capability) and a seccomp profile that allows syslog(2) (RuntimeDefault "
                "does once SYSLOG is added); or use --source=/dev/kmsg")
    return f"--source=syslog: syslog(2) failed ({name}: {os.strerror(exc.errno or 0)}); use --source=/dev/kmsg"


_NO_TIME_STAMPS: Final = ("--source=syslog: the kernel log has no printk time stamps (printk.time is off), so the "
                          "monitor cannot tell where it stopped: set printk.time=1 (kernel command line, or "
                          "/sys/module/printk/parameters/time) or use --source=/dev/kmsg")


class SyslogSource:
    """The kernel's log ring through syslog(2) READ_ALL (`klogctl`): no device, CAP_SYSLOG only.

    Each read asks for the newest `TAIL_START` bytes of text and doubles that until the window
    starts before the cursor's time stamp or holds the whole ring (`ring.locate`); the lines after
    the cursor are new. A cursor whose line was overwritten before it was read is an overrun
    (counted in `nvsentinel_kmsg_ring_overruns_total`, logged with the time span). No cursor, or
    another boot: the whole ring is new, as with /dev/kmsg.

    Time stamps are required (printk.time, on in every mainstream distribution kernel): without
    them nothing in the text is unique, and a cursor on "the last line's text" would skip a fault
    that repeats the line it stopped at (the same XID again, after a reset). The monitor refuses to
    start without them, and while they are off it reads nothing (an error per streak) and resumes
    where it was once they are back.
    """

    kind = "syslog"

    def __init__(self, cur: cursor_mod.Cursor, *, metrics: KmsgMetrics | None = None,
                 boot_id_path: str = BOOT_ID_PATH, klog: Klog | None = None) -> None:
        self.path = SYSLOG_SOURCE
        self.metrics = metrics if metrics is not None else KmsgMetrics()
        self.boot_id = read_boot_id(boot_id_path)
        try:
            self._klog = klog if klog is not None else Klog()
        except (OSError, AttributeError) as exc:  # no libc, or one without klogctl
            raise SourceError(f"--source=syslog: cannot load klogctl from the C library: {exc}") from None
        try:
            size = self._klog.size()
            probe = ring.split_lines(self._klog.read_all(TAIL_START))
        except OSError as exc:
            raise SourceError(_denied(exc)) from None
        if probe and ring.parse_line(probe[-1]).ts == ring.NO_TIME:
            raise SourceError(_NO_TIME_STAMPS)
        self.ring_size = size
        self._cap = max(TAIL_START, min(TAIL_MAX, 4 * size))  # the text is longer than the ring's bytes
        self.position = cursor_mod.syslog_position(cur, self.boot_id)
        self._failing = ""
        pos = self.position
        logger.info("following the kernel log through syslog(2)", extra={"kv": {
            "boot_id": self.boot_id, "ring_bytes": size, "resumed": pos is not None,
            "after_ts": f"{pos.ts / 1e6:.6f}" if pos else "", "after_nth": pos.nth if pos else 0}})

    def close(self) -> None:
        pass

    def _window(self) -> tuple[list[ring.Record], bool] | None:
        """The ring's newest lines, enough of them to find the cursor (or all of them), and whether
        that is the whole ring; None when they carry no time stamps."""
        length = TAIL_START
        while True:
            text = self._klog.read_all(length)
            complete = len(text) <= length - TAIL_MARGIN or length >= self._cap
            window = [ring.parse_line(raw) for raw in ring.split_lines(text)]
            if any(rec.ts == ring.NO_TIME for rec in window):
                return None
            pos = self.position
            if complete or (pos is not None and window and window[0].ts < pos.ts):
                return window, complete
            length = min(length * 2, self._cap)

    def read(self) -> list[Line]:
        try:
            got = self._window()
        except OSError as exc:
            self._failed(f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror or exc}")
            return []
        if got is None:
            self._failed(_NO_TIME_STAMPS)
            return []
        window, complete = got
        if self._failing:
            logger.info("kernel log readable again", extra={"kv": {"source": self.path}})
            self._failing = ""
        where = ring.locate(window, self.position, complete)
        if where.overrun:
            self.metrics.overruns.inc()
            assert self.position is not None
            logger.warning("kernel log: the ring overwrote records before they were read; some may be lost",
                           extra={"kv": {"after_ts": f"{self.position.ts / 1e6:.6f}",
                                         "oldest_ts": f"{window[0].ts / 1e6:.6f}" if window else "",
                                         "overruns_total": int(self.metrics.value("nvsentinel_kmsg_ring_overruns"))}})
        nths = ring.positions(window)
        out = []
        for span in ring.records(window, where.start):
            first, last = span.first, span.last
            end = window[last]
            self.position = ring.Position(end.ts, nths[last])
            if span.tail:  # lines of a record whose head was handled already: nothing in them starts a message
                _drop_record(self.metrics, self.path, "continuation", end.line)
                continue
            rec = window[first]
            if rec.facility < 0:
                _drop_record(self.metrics, self.path, "malformed", rec.line)
            elif not ring.kernel_or_reset(rec.facility, rec.message):
                _drop_record(self.metrics, self.path, "user_space", rec.line)
            else:
                out.append(Line(ring.joined_line(window, first, last), end.ts, 0, nths[last]))
        return out

    def _failed(self, error: str) -> None:
        """A read that failed: counted every time, logged once per streak of the same error."""
        self.metrics.read_errors.labels("read").inc()
        kv = {"source": self.path, "error": error,
              "read_errors_total": int(self.metrics.value("nvsentinel_kmsg_read_errors", op="read"))}
        if error != self._failing:
            self._failing = error
            logger.error("cannot read the kernel log; retrying", extra={"kv": kv})
        else:
            logger.debug("cannot read the kernel log; retrying", extra={"kv": kv})

    def update(self, cur: cursor_mod.Cursor) -> None:
        cur.kind, cur.boot_id = "syslog", self.boot_id
        cur.ts, cur.nth = (self.position.ts, self.position.nth) if self.position else (-1, 0)

    def commit(self, cur: cursor_mod.Cursor, line: Line) -> None:
        cur.kind, cur.boot_id, cur.ts, cur.nth = "syslog", self.boot_id, line.end, line.nth


class FifoSource:
    """A named pipe (e.g. `journalctl -kf -o cat > FIFO`): lines as they arrive, across writers.

    A pipe keeps no history, so there is nothing to replay and no cursor to keep; the partial line
    is kept in memory, at most `max_line_bytes` of it.
    """

    kind = "fifo"

    def __init__(self, path: str, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 metrics: KmsgMetrics | None = None) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.metrics = metrics if metrics is not None else KmsgMetrics()
        try:
            # O_NONBLOCK: opening the read end does not wait for a writer
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceError(f"cannot open --source {path!r}: {exc.strerror}") from None
        self._tail = b""
        self._skipping = False
        logger.info("following fifo", extra={"kv": {"path": path}})

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _overlong(self, _offset: int, nbytes: int) -> None:
        _dropped(self.metrics, self.path, "overlong", 0, nbytes, self.max_line_bytes, True)

    def read(self) -> list[Line]:
        out: list[Line] = []
        while True:
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            if not data:  # no writer right now; a later writer's lines arrive on the same end
                break
            if self._skipping:
                i = data.find(b"\n")
                if i < 0:
                    continue
                self._skipping, data = False, data[i + 1:]
            data = self._tail + data
            cut = data.rfind(b"\n") + 1
            self._tail = data[cut:]
            if cut:
                out.extend(_split(data[:cut], 0, 0, self.max_line_bytes, self._overlong))
            if len(self._tail) > self.max_line_bytes:
                _dropped(self.metrics, self.path, "overlong", 0, len(self._tail), self.max_line_bytes, False)
                self._tail, self._skipping = b"", True
        return out

    def update(self, cur: cursor_mod.Cursor) -> None:
        cur.kind = "fifo"

    def commit(self, cur: cursor_mod.Cursor, line: Line) -> None:
        cur.kind = "fifo"


def open_source(path: str, cur: cursor_mod.Cursor, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                metrics: KmsgMetrics | None = None) -> FileSource | KmsgSource | FifoSource | SyslogSource:
    if path == SYSLOG_SOURCE:
        return SyslogSource(cur, metrics=metrics)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot open --source {path!r}: {exc.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        return KmsgSource(path, cur, metrics=metrics)
    if stat.S_ISFIFO(st.st_mode):
        return FifoSource(path, max_line_bytes=max_line_bytes, metrics=metrics)
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"--source {path!r} is not a regular file, a FIFO or a character device")
    return FileSource(path, cur, max_line_bytes=max_line_bytes, metrics=metrics)
