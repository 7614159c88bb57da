"""Where the monitor stopped reading, persisted as a small JSON file. Pure rules + load/save.

Rules (docs/conditions.md, "KmsgHealthy: cursor"):

* /dev/kmsg: the cursor is (boot id, last sequence number processed). Same boot id → records with
  a sequence number ≤ the cursor's are skipped (already processed). Another boot id, or no
  cursor → every record in the ring buffer is new (it is all from this boot).
* syslog(2): the cursor is (boot id, `ts` = the time stamp in microseconds of the last line
  processed, `nth` = how many lines with that time stamp were processed). Same boot id → the lines
  after that one in the ring are new (`ring.locate`); another boot id, or no cursor → every line
  in the ring is new, as for /dev/kmsg.
* A regular file: the cursor is (inode, byte offset after the last complete line processed, and
  `check`: the last bytes before that offset). The offset is always a line boundary. Same inode,
  the file at least that long and the same bytes before the offset → resume at the offset. Same
  inode but shorter (truncated), or other bytes there (truncated and written again: copytruncate
  while the monitor was down), or another inode (rotated/replaced), or no cursor → read from
  byte 0: everything in that file is new to us.
* The in-flight marker (`inflight_from`, `inflight_to`, `deaths`): written before the monitor
  handles the lines [from, to) of the file, cleared once they are handled. Found at start, it
  means the previous run died inside those lines; `deaths` counts how many runs did, so a line
  that kills the monitor is skipped instead of killing it forever (`monitor.POISON_DEATHS`).

The state also keeps the PCI → UUID map learned from mapping lines, so a restart that resumes
after the mapping line still knows which GPU an XID belongs to.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

from nvsentinel.node.kmsg import ring

__all__ = ["Cursor", "file_start_offset", "kmsg_is_new", "syslog_position", "load", "save", "CHECK_BYTES"]

CHECK_BYTES = 64
"""How many bytes before the offset the file cursor keeps (hex) to recognise the same content."""


@dataclasses.dataclass
class Cursor:
    kind: str = ""
    """"kmsg", "syslog", "file" or "fifo"; "" when nothing was persisted yet."""
    boot_id: str = ""
    seq: int = -1
    ts: int = -1
    """syslog: microseconds since boot of the last line processed (-1: none)."""
    nth: int = 0
    """syslog: how many lines with time stamp `ts`, in ring order, were processed."""
    inode: int = 0
    offset: int = 0
    check: str = ""
    """hex of up to CHECK_BYTES bytes ending at `offset` ("" when unknown)."""
    inflight_from: int = -1
    inflight_to: int = -1
    deaths: int = 0
    pci_to_uuid: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Cursor:
        if not isinstance(data, dict):
            raise ValueError("state is not a JSON object")
        pci = data.get("pci_to_uuid") or {}
        if not isinstance(pci, dict):
            raise ValueError("pci_to_uuid is not an object")
        cur = cls(
            kind=str(data.get("kind", "")),
            boot_id=str(data.get("boot_id", "")),
            seq=int(data.get("seq", -1)),
            ts=int(data.get("ts", -1)),
            nth=int(data.get("nth", 0)),
            inode=int(data.get("inode", 0)),
            offset=int(data.get("offset", 0)),
            check=str(data.get("check", "")),
            inflight_from=int(data.get("inflight_from", -1)),
            inflight_to=int(data.get("inflight_to", -1)),
            deaths=int(data.get("deaths", 0)),
            pci_to_uuid={str(k): str(v) for k, v in pci.items()},
        )
        if check_bytes(cur) is None:
            cur.check = ""  # not hex, or too long: a check we cannot trust is no check
        return cur

    def clear_inflight(self) -> None:
        self.inflight_from, self.inflight_to, self.deaths = -1, -1, 0

    def has_inflight(self) -> bool:
        return 0 <= self.inflight_from < self.inflight_to


def check_bytes(cursor: Cursor) -> bytes | None:
    """The bytes the file cursor says precede its offset; None when there is no usable check."""
    if not cursor.check:
        return None
    try:
        raw = bytes.fromhex(cursor.check)
    except ValueError:
        return None
    if not 0 < len(raw) <= min(CHECK_BYTES, cursor.offset):
        return None
    return raw


def file_start_offset(cursor: Cursor, inode: int, size: int) -> int:
    """Byte offset to start reading a regular file with this inode and size (before `check`)."""
    if cursor.kind != "file" or cursor.inode != inode or cursor.offset > size or cursor.offset < 0:
        return 0
    return cursor.offset


def kmsg_is_new(cursor: Cursor, boot_id: str, seq: int) -> bool:
    """Whether the /dev/kmsg record `seq` of boot `boot_id` has not been processed yet."""
    if cursor.kind != "kmsg" or cursor.boot_id != boot_id:
        return True
    return seq > cursor.seq


def syslog_position(cursor: Cursor, boot_id: str) -> ring.Position | None:
    """Where to resume reading the ring through syslog(2); None: every line in it is new (no
    syslog cursor, another boot, or an unknown boot id)."""
    if cursor.kind != "syslog" or not boot_id or cursor.boot_id != boot_id or cursor.ts < 0 or cursor.nth < 1:
        return None
    return ring.Position(cursor.ts, cursor.nth)


def load(path: str) -> tuple[Cursor, str]:
    """(cursor, problem): a missing file is a fresh cursor; an unreadable one too, with a reason."""
    try:
        with open(path, encoding="utf-8") as fh:
            return Cursor.from_json(json.load(fh)), ""
    except FileNotFoundError:
        return Cursor(), ""
    except (OSError, ValueError, TypeError) as exc:
        return Cursor(), f"{type(exc).__name__}: {exc}"


def save(path: str, cursor: Cursor, *, durable: bool = True) -> None:
    """Atomically replace `path` (write a temp file beside it, rename).

    `durable`: fsync first, so the cursor survives a power loss. The in-flight marker only has to
    survive the process dying (the kernel keeps what was written), so it skips the fsync.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kmsg-cursor-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(cursor.to_json(), fh, sort_keys=True)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
