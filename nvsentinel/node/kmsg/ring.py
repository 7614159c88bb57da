"""The kernel's log ring as syslog(2) prints it, and where the monitor's cursor is in it. Pure: no I/O.

`SYSLOG_ACTION_READ_ALL` hands out the newest records that fit the caller's buffer, one text line
each (a record with newlines in it gives one line per newline, every one with the same prefix):

    <N>[ seconds.micros] message          printk.time on (every mainstream distribution kernel)
    <N>[ seconds.micros][  T123] message  CONFIG_PRINTK_CALLER
    <N>message                            printk.time off: no time stamp

`<N>` is facility << 3 | level. The kernel logs with facility 0 and user space cannot: a write to
/dev/kmsg that asks for facility 0 (or none) is given LOG_USER (kernel/printk/printk.c,
`devkmsg_write`). So the facility tells the kernel's own lines from lines anybody with write access
to /dev/kmsg made up (`kernel_or_reset`).

The cursor. Nothing in READ_ALL text is unique (no sequence number), so the monitor remembers the
time stamp of the last line it handled and how many lines with that very time stamp it had handled
(`Position`); lines share a time stamp when a record has several lines, or two records land in one
microsecond. `locate` finds that line in a window of the ring's newest lines: the window must start
before the cursor's time stamp (`first.ts < position.ts`), else it may have cut the group of lines
with that time stamp and the count would be wrong, and the caller asks for a larger window. Lines
after the cursor's line, in ring order, are new whatever their time stamps (CPUs stamp a record
before they reserve its place in the ring, so stamps can be a microsecond out of order).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Final, NamedTuple

__all__ = [
    "KERNEL_FACILITY", "RESET_PREFIX", "Record", "Position", "Located", "parse_line", "split_lines", "kernel_or_reset",
    "locate", "positions", "prefix_of", "Span", "records", "joined_line",
]

KERNEL_FACILITY: Final = 0
RESET_PREFIX: Final = b"GPU reset executed: "
"""The one message the monitor takes from user space: reset tooling logs it (the XID decoder only
accepts it from user space, and only driver lines from the kernel; `nvsentinel._xid_py`)."""

# <N> then an optional [seconds.micros] and an optional [caller]; the kernel prints `%5lu.%06lu`
_PREFIX: Final = re.compile(rb"<(\d{1,4})>(?:\[ *(\d{1,12})\.(\d{6})\](?:\[ *[TC]\d{1,10}\])? ?)?")
NO_TIME: Final = -1


class Record(NamedTuple):
    """One line of READ_ALL text."""

    line: bytes
    """The whole line, prefix included, with its newline (what the XID decoder reads)."""
    facility: int
    """From `<N>`; -1 when the line has no `<N>` prefix (no kernel line lacks it)."""
    ts: int
    """Microseconds since boot from `[seconds.micros]`; NO_TIME when the line has none."""
    message: bytes
    """The line after its prefix, without the newline."""


@dataclasses.dataclass(frozen=True)
class Position:
    """The last line handled: its time stamp and how many lines with that time stamp, in ring order
    up to and including it, were handled (>= 1)."""

    ts: int
    nth: int


class Located(NamedTuple):
    start: int
    """Index of the first new line of the window (len(window) when nothing is new)."""
    need_more: bool
    """The window may have cut the cursor's group: ask for a larger one (nothing else is valid)."""
    overrun: bool
    """The cursor's line is no longer in the ring: records the monitor never read may be lost."""


def parse_line(raw: bytes) -> Record:
    """A line of READ_ALL text (with or without its newline). Never raises: a line that is not
    `<N>...` has facility -1, one without a time stamp ts NO_TIME."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    m = _PREFIX.match(body)
    if m is None:
        return Record(body + b"\n", -1, NO_TIME, body)
    facility = int(m.group(1)) >> 3
    ts = int(m.group(2)) * 1_000_000 + int(m.group(3)) if m.group(2) is not None else NO_TIME
    return Record(body + b"\n", facility, ts, body[m.end():])


def split_lines(text: bytes) -> list[bytes]:
    """The complete lines of READ_ALL text (the kernel ends every line with a newline; an
    unterminated rest, which it never returns, is dropped)."""
    parts = text.split(b"\n")
    parts.pop()
    return parts


def prefix_of(rec: Record) -> bytes:
    """The line's `<N>[time][caller] ` prefix, as printed."""
    return rec.line[: len(rec.line) - len(rec.message) - 1]


class Span(NamedTuple):
    """The lines `first..last` of one kernel record in a window."""

    first: int
    last: int
    tail: bool
    """the rest of a record whose head an earlier read handled: nothing in it starts a message"""


def _continues(window: list[Record], i: int) -> bool:
    """Line i has the very prefix of line i-1 (level, time stamp, caller): the same record."""
    rec = window[i]
    return i > 0 and rec.facility >= 0 and rec.ts != NO_TIME and prefix_of(window[i - 1]) == prefix_of(rec)


def records(window: list[Record], start: int) -> list[Span]:
    """The kernel records in `window[start:]`.

    syslog(2) prints a record that has newlines in it as several lines, each with the record's own
    prefix. A message that echoes user text with a newline in it would so put a line that starts
    with whatever the user wrote under a genuine kernel prefix: anchoring alone cannot tell it from a
    driver line. A line with the very prefix of the line before it is therefore part of that line's
    record, never a message of its own, and the record is decoded as /dev/kmsg presents it: one line,
    its newlines escaped (`\\x0a`). (Two records printed at the same microsecond at the same level
    look the same and are joined too: the second is then not read as a message. docs/conditions.md.)
    """
    out: list[Span] = []
    for i in range(start, len(window)):
        if _continues(window, i):
            if out:
                out[-1] = out[-1]._replace(last=i)
            else:
                out.append(Span(i, i, tail=True))
        else:
            out.append(Span(i, i, tail=False))
    return out


def joined_line(window: list[Record], first: int, last: int) -> bytes:
    """Lines `first..last` of one record as one line, newlines escaped as /dev/kmsg escapes them."""
    head = window[first]
    return head.line[:-1] + b"".join(b"\\x0a" + window[j].message for j in range(first + 1, last + 1)) + b"\n"


def kernel_or_reset(facility: int, message: bytes) -> bool:
    """Whether the monitor decodes a line: the kernel's own (facility 0), or reset tooling's
    `GPU reset executed:` line, which comes from user space by design. Everything else user space
    wrote to /dev/kmsg is dropped: it cannot speak for the driver."""
    return facility == KERNEL_FACILITY or (facility > KERNEL_FACILITY and message.startswith(RESET_PREFIX))


def positions(window: list[Record]) -> list[int]:
    """For each line, how many lines with its time stamp the window holds up to and including it
    (its `Position.nth`, given a window that starts before the first line with that time stamp)."""
    seen: dict[int, int] = {}
    out = []
    for rec in window:
        seen[rec.ts] = seen.get(rec.ts, 0) + 1
        out.append(seen[rec.ts])
    return out


def locate(window: list[Record], cursor: Position | None, complete: bool) -> Located:
    """Where the new lines of `window` (the ring's newest lines, in ring order) start.

    `complete`: the window holds every line the ring still has (the kernel had no older record to
    give). No cursor (first start, or another boot): every line is new.

    * The window starts before the cursor's time stamp: the cursor's line is the `nth` line with
      that stamp; the lines after it are new. If the stamp is there fewer than `nth` times (or not
      at all: printk time toggled, a state file from elsewhere), the lines after the last line
      stamped no later than the cursor are new.
    * It does not, and is not complete: `need_more`.
    * It does not, and is complete: the ring's oldest line is at or after the cursor's stamp. At
      it (the lines at boot all stamped 0.000000, say) the count still finds the line when the group
      is whole; otherwise the cursor's line was overwritten (`overrun`) and every line after the
      stamp is new.
    """
    if cursor is None:
        return Located(0, False, False)
    if not window:
        return Located(0, not complete, False)
    first = window[0].ts
    if first >= cursor.ts and not complete:
        return Located(0, True, False)
    group = [i for i, rec in enumerate(window) if rec.ts == cursor.ts]
    if len(group) >= cursor.nth:
        return Located(group[cursor.nth - 1] + 1, False, False)
    overrun = first > cursor.ts or (first == cursor.ts and complete)
    if group:
        return Located(group[-1] + 1, False, overrun)
    start = 0
    for i, rec in enumerate(window):
        if 0 <= rec.ts <= cursor.ts:
            start = i + 1
    return Located(start, False, overrun)
