"""The kernel-log monitor loop: a source (file or /dev/kmsg) → the XID decoder → KmsgHealthy.

One thread: read what is new, decode it, apply each GPU event to the server (read the GPU, decide
from its current KmsgHealthy condition, merge by type, write with the resource version, retry on
Conflict), then persist the cursor. The cursor advances only after the events before it were
applied, so a crash replays at most one batch — and re-applying is harmless (a fatal finding that
is already there is "not-worse": no write).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Collection
from typing import Any

from nvsentinel import errors
from nvsentinel.node.kmsg import cursor as cursor_mod
from nvsentinel.node.kmsg import logic
from nvsentinel.policy import conditions
from nvsentinel.xid import (
    KIND_FALLEN_OFF_BUS, KIND_GPU_RESET, KIND_PCI_MAPPING, KIND_XID, Catalog, Decoder, XidEvent, default_catalog,
)

__all__ = ["SourceError", "KmsgMonitor", "BOOT_ID_PATH", "parse_kmsg_record"]

logger = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
READ_SIZE = 1 << 20
SERVER_BACKOFF = (0.1, 5.0)


class SourceError(RuntimeError):
    """The source cannot be opened (clear message; the daemon exits 1)."""


def parse_kmsg_record(record: bytes) -> tuple[int, bytes] | None:
    """(sequence number, first line with its header) of one /dev/kmsg record, or None if malformed."""
    line = record.split(b"\n", 1)[0]
    header, sep, _ = line.partition(b";")
    fields = header.split(b",")
    if not sep or len(fields) < 3:
        return None
    try:
        return int(fields[1]), line + b"\n"
    except ValueError:
        return None


class _FileSource:
    """A regular file, followed across rotation (new inode at the path) and truncation."""

    kind = "file"

    def __init__(self, path: str, cur: cursor_mod.Cursor) -> None:
        self.path = path
        self._fd = self._open()
        st = os.fstat(self._fd)
        self.inode = st.st_ino
        self.offset = cursor_mod.file_start_offset(cur, st.st_ino, st.st_size)
        self._tail = b""
        logger.info("following file", extra={"kv": {"path": path, "inode": self.inode, "offset": self.offset,
                                                     "resumed": self.offset > 0}})

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceError(f"cannot open --source {self.path!r}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SourceError(f"--source {self.path!r} is not a regular file, a FIFO or a character device")
        return fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read_lines(self) -> bytes:
        data = os.pread(self._fd, READ_SIZE, self.offset + len(self._tail))
        if not data:
            return b""
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        self.offset += cut
        return data[:cut]

    def read(self) -> list[bytes]:
        """Complete new lines (as one chunk), following rotation/truncation."""
        chunk = self._read_lines()
        if chunk:
            return [chunk]
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []  # rotation in progress: keep the old file until the new one appears
        if st.st_ino != self.inode:
            out = []
            while True:  # drain what the old file still had
                chunk = self._read_lines()
                if not chunk:
                    break
                out.append(chunk)
            if self._tail:
                out.append(self._tail + b"\n")
            self.close()
            try:
                self._fd = self._open()
            except SourceError as exc:
                logger.warning("rotated file not readable yet", extra={"kv": {"error": str(exc)}})
                self._fd = os.open(os.devnull, os.O_RDONLY)  # retried at the next poll (inode differs)
                self.inode = -1
                return out
            self.inode, self.offset, self._tail = os.fstat(self._fd).st_ino, 0, b""
            logger.info("file rotated; following the new file from its start",
                        extra={"kv": {"path": self.path, "inode": self.inode}})
            return out
        if st.st_size < self.offset + len(self._tail):
            logger.info("file truncated; reading from its start",
                        extra={"kv": {"path": self.path, "size": st.st_size, "offset": self.offset}})
            self.offset, self._tail = 0, b""
        return []

    def update(self, cur: cursor_mod.Cursor) -> None:
        cur.kind, cur.inode, cur.offset = "file", self.inode, self.offset


class _KmsgSource:
    """/dev/kmsg (or another character device speaking its record format): one record per read."""

    kind = "kmsg"

    def __init__(self, path: str, cur: cursor_mod.Cursor, boot_id_path: str = BOOT_ID_PATH, fd: int | None = None) -> None:
        """`fd`: an already open non-blocking descriptor with record boundaries (tests)."""
        self.path = path
        try:
            with open(boot_id_path, encoding="ascii") as fh:
                self.boot_id = fh.read().strip()
        except OSError:
            self.boot_id = ""
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

    def read(self) -> list[bytes]:
        out = []
        for _ in range(4096):
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them
                    logger.warning("kmsg: records were lost (ring buffer overrun)", extra={"kv": {}})
                    continue
                raise
            if not record:
                break
            parsed = parse_kmsg_record(record)
            if parsed is None:
                continue
            seq, line = parsed
            if not cursor_mod.kmsg_is_new(self._probe, self.boot_id, seq):
                continue
            self._probe.seq = seq
            self.seq = seq
            out.append(line)
        return out

    def update(self, cur: cursor_mod.Cursor) -> None:
        cur.kind, cur.boot_id, cur.seq = "kmsg", self.boot_id, self.seq


class _FifoSource:
    """A named pipe (e.g. `journalctl -kf -o cat > FIFO`): lines as they arrive, across writers.

    A pipe keeps no history, so there is nothing to replay and no cursor to keep.
    """

    kind = "fifo"

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            # O_NONBLOCK: opening the read end does not wait for a writer
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceError(f"cannot open --source {path!r}: {exc.strerror}") from None
        self._tail = b""
        logger.info("following fifo", extra={"kv": {"path": path}})

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(self) -> list[bytes]:
        out = []
        while True:
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            if not data:  # no writer right now; a later writer's lines arrive on the same end
                break
            data = self._tail + data
            cut = data.rfind(b"\n") + 1
            self._tail = data[cut:]
            if cut:
                out.append(data[:cut])
        return out

    def update(self, cur: cursor_mod.Cursor) -> None:
        cur.kind = "fifo"


def open_source(path: str, cur: cursor_mod.Cursor) -> _FileSource | _KmsgSource | _FifoSource:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot open --source {path!r}: {exc.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        return _KmsgSource(path, cur)
    if stat.S_ISFIFO(st.st_mode):
        return _FifoSource(path)
    return _FileSource(path, cur)


class KmsgMonitor:
    def __init__(
        self,
        client: Any,
        source: str,
        state_file: str,
        *,
        dedup_window: float = 30.0,
        ignored_xids: Collection[int] = (),
        poll_interval: float = 0.2,
        catalog: Catalog | None = None,
        node_name: str = "",
    ) -> None:
        self.client = client
        self.source_path = source
        self.state_file = state_file
        self.dedup_window = dedup_window
        self.ignored_xids = frozenset(ignored_xids)
        self.poll_interval = poll_interval
        self.catalog = catalog if catalog is not None else default_catalog()
        self.node_name = node_name
        self.stop_event = threading.Event()
        self._warned: set[str] = set()
        self.cursor, problem = cursor_mod.load(state_file)
        if problem:
            logger.warning("state file unreadable; starting without a cursor",
                           extra={"kv": {"state_file": state_file, "error": problem}})
        pci_map = {}
        for pci, uuid in self.cursor.pci_to_uuid.items():
            try:
                Decoder(self.catalog, {pci: uuid})
                pci_map[pci] = uuid
            except ValueError:
                pass
        self.cursor.pci_to_uuid = pci_map
        self.decoder = Decoder(self.catalog, pci_map)
        self.source = open_source(source, self.cursor)

    # --- events ---------------------------------------------------------------------------------

    def _warn_once(self, key: str, msg: str, kv: dict[str, Any]) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(msg, extra={"kv": kv})

    def _to_detection(self, ev: XidEvent) -> conditions.Event | None:
        if ev.kind == KIND_XID and ev.xid is not None:
            return conditions.Xid(ev.xid, ev.classification, ev.error_code)  # line-aware: XID 154, NVLink5
        if ev.kind == KIND_FALLEN_OFF_BUS:
            return conditions.Lost("kernel log: GPU has fallen off the bus")
        if ev.kind == KIND_GPU_RESET and ev.healthy:
            return conditions.Recovered("GPU reset executed")
        return None

    def handle(self, ev: XidEvent) -> str:
        """Apply one decoded event; returns a note for logs and tests."""
        if ev.kind == KIND_PCI_MAPPING:
            if ev.pci and ev.gpu_uuid:
                self.cursor.pci_to_uuid[ev.pci] = ev.gpu_uuid
            return "mapping"
        event = self._to_detection(ev)
        if event is None:
            return "not-a-gpu-event"
        uuid = ev.gpu_uuid or self.cursor.pci_to_uuid.get(ev.pci, "")
        if not uuid:
            self._warn_once("pci:" + ev.pci, "no GPU UUID known for this PCI id; event skipped",
                            {"pci": ev.pci, "error_code": ev.error_code})
            return "unmapped"
        return self._apply(uuid, ev, event)

    def _apply(self, uuid: str, ev: XidEvent, event: conditions.Event) -> str:
        for _ in range(16):
            try:
                current = self.client.get_gpu(uuid)
            except errors.NotFound:
                self._warn_once("uuid:" + uuid, "GPU not registered with the Device API; event skipped",
                                {"uuid": uuid, "pci": ev.pci, "error_code": ev.error_code})
                return "unknown-gpu"
            view = logic.view_from_condition(logic.find_condition(current.status, logic.CONDITION_TYPE), self.catalog)
            decision = conditions.decide(view, event, catalog=self.catalog, ignored_xids=self.ignored_xids)
            kv = {"uuid": uuid, "pci": ev.pci, "error_code": ev.error_code, "note": decision.note}
            if not decision.changed:
                logger.debug("kmsg event", extra={"kv": kv})
                return decision.note
            new_view = decision.view
            if isinstance(event, conditions.Recovered):
                new_view = logic.recovered_view(new_view, uuid)
            now = time.time()
            if new_view.finding is not None and logic.reported_by_nvml(
                    current.status, new_view.finding.reason, now, self.dedup_window):
                kv["note"] = "dedup"
                logger.info("already reported by the NVML provider; not written twice", extra={"kv": kv})
                return "dedup"
            status = logic.merge_condition(current.status, new_view, int(now), int((now % 1) * 1e9))
            if status == current.status:
                return "unchanged"
            try:
                self.client.update_gpu_status(uuid, status, current.resource_version)
            except errors.Conflict:
                continue
            st, reason, _ = new_view.condition()
            kv.update(condition=logic.CONDITION_TYPE, status=st, reason=reason, action=str(new_view.action))
            logger.warning("gpu condition changed", extra={"kv": kv})
            return decision.note
        raise errors.Unavailable(f"{uuid}: gave up after 16 conflicting writes; will retry")

    def _handle_with_retry(self, ev: XidEvent) -> bool:
        backoff = SERVER_BACKOFF[0]
        warned = False
        while not self.stop_event.is_set():
            try:
                self.handle(ev)
                return True
            except errors.Unavailable as exc:
                if not warned:
                    logger.warning("device api unreachable; retrying with backoff",
                                   extra={"kv": {"address": getattr(self.client, "address", ""), "error": str(exc)}})
                    warned = True
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, SERVER_BACKOFF[1])
            except errors.NvsentinelError as exc:  # the server refused this one event: not retried
                logger.warning("device api refused the event; skipped",
                               extra={"kv": {"error_code": ev.error_code, "uuid": ev.gpu_uuid, "pci": ev.pci,
                                             "error": f"{type(exc).__name__}: {exc}"}})
                return True
        return False

    # --- run ------------------------------------------------------------------------------------

    def step(self) -> bool:
        """Read and apply what is new; persist the cursor. False when there was nothing new."""
        chunks = self.source.read()
        for chunk in chunks:
            for ev in self.decoder.feed(chunk):
                if not self._handle_with_retry(ev):
                    return False  # stopping: the cursor stays before the unapplied events
        if chunks or self.cursor.kind != self.source.kind:
            self.source.update(self.cursor)
            self.save()
        return bool(chunks)

    def save(self) -> None:
        try:
            cursor_mod.save(self.state_file, self.cursor)
        except OSError as exc:
            self._warn_once("state", "cannot write the state file; a restart may re-read old lines",
                            {"state_file": self.state_file, "error": str(exc)})

    def run(self) -> None:
        while not self.stop_event.is_set():
            if not self.step():
                self.stop_event.wait(self.poll_interval)
        logger.info("kmsg monitor stopping", extra={"kv": {}})

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.source.close()
