"""Where the monitor stopped reading, persisted as a small JSON file. Pure rules + load/save.

Rules (docs/conditions.md, "KmsgHealthy: cursor"):

* /dev/kmsg: the cursor is (boot id, last sequence number processed). Same boot id → records with
  a sequence number ≤ the cursor's are skipped (already processed). Another boot id, or no
  cursor → every record in the ring buffer is new (it is all from this boot).
* A regular file: the cursor is (inode, byte offset after the last complete line processed).
  Same inode and the file is at least that long → resume at the offset. Same inode but shorter
  (truncated) or another inode (rotated/replaced) or no cursor → read from byte 0: everything in
  that file is new to us.

The state also keeps the PCI → UUID map learned from mapping lines, so a restart that resumes
after the mapping line still knows which GPU an XID belongs to.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

__all__ = ["Cursor", "file_start_offset", "kmsg_is_new", "load", "save"]


@dataclasses.dataclass
class Cursor:
    kind: str = ""
    """"kmsg" or "file"; "" when nothing was persisted yet."""
    boot_id: str = ""
    seq: int = -1
    inode: int = 0
    offset: int = 0
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
        return cls(
            kind=str(data.get("kind", "")),
            boot_id=str(data.get("boot_id", "")),
            seq=int(data.get("seq", -1)),
            inode=int(data.get("inode", 0)),
            offset=int(data.get("offset", 0)),
            pci_to_uuid={str(k): str(v) for k, v in pci.items()},
        )


def file_start_offset(cursor: Cursor, inode: int, size: int) -> int:
    """Byte offset to start reading a regular file with this inode and size."""
    if cursor.kind != "file" or cursor.inode != inode or cursor.offset > size or cursor.offset < 0:
        return 0
    return cursor.offset


def kmsg_is_new(cursor: Cursor, boot_id: str, seq: int) -> bool:
    """Whether the /dev/kmsg record `seq` of boot `boot_id` has not been processed yet."""
    if cursor.kind != "kmsg" or cursor.boot_id != boot_id:
        return True
    return seq > cursor.seq


def load(path: str) -> tuple[Cursor, str]:
    """(cursor, problem): a missing file is a fresh cursor; an unreadable one too, with a reason."""
    try:
        with open(path, encoding="utf-8") as fh:
            return Cursor.from_json(json.load(fh)), ""
    except FileNotFoundError:
        return Cursor(), ""
    except (OSError, ValueError, TypeError) as exc:
        return Cursor(), f"{type(exc).__name__}: {exc}"


def save(path: str, cursor: Cursor) -> None:
    """Atomically replace `path` (write a temp file beside it, fsync, rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kmsg-cursor-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(cursor.to_json(), fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
