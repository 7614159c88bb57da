"""The kernel-log monitor loop: a source (syslog(2), /dev/kmsg, a file) → the XID decoder → KmsgHealthy.

One thread: read what is new (`sources`: complete lines, each with the position after it), decode
it line by line, apply each GPU event to the server (read the GPU, decide from its current
KmsgHealthy condition, merge by type, write with the resource version, retry on Conflict), then
persist the cursor. The cursor only ever records a line boundary after the lines before it were
applied, so a crash replays at most one batch — and re-applying is harmless (a fatal finding that
is already there is "not-worse": no write).

A line that makes the decoder or the handler raise is skipped (counted, logged), never retried
forever. A line that kills the process outright (the decoder crashing, the process being killed
while on it) is caught by the in-flight marker of the file cursor: before a batch of lines is
handled the state file says so; a run that finds the marker handles those lines one at a time,
and a line in flight at POISON_DEATHS deaths is skipped. Waiting for the Device API does not
count: the marker is cleared while the monitor only waits for the server.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from typing import Any, Final

from nvsentinel import errors
from nvsentinel.node.kmsg import cursor as cursor_mod
from nvsentinel.node.kmsg import logic
from nvsentinel.node.kmsg.metrics import KmsgMetrics
from nvsentinel.node.kmsg.sources import (
    BOOT_ID_PATH, DEFAULT_MAX_LINE_BYTES, READ_SIZE, FifoSource, FileSource, KmsgSource, Line, SourceError,
    SyslogSource, open_source, parse_kmsg_record,
)
from nvsentinel.policy import conditions
from nvsentinel.xid import (
    KIND_FALLEN_OFF_BUS, KIND_GPU_RESET, KIND_PCI_MAPPING, KIND_SXID, KIND_XID, Catalog, Decoder, XidEvent,
    default_catalog,
)

__all__ = [
    "SourceError", "KmsgMonitor", "BOOT_ID_PATH", "READ_SIZE", "POISON_DEATHS", "parse_kmsg_record", "open_source",
    "FileSource", "KmsgSource", "FifoSource", "SyslogSource", "Line",
]

logger = logging.getLogger(__name__)

SERVER_BACKOFF: Final = (0.1, 5.0)
POISON_DEATHS: Final = 3
"""Runs that may die with the same line in flight before it is skipped: the first death is inside
a batch (the next run then goes line by line), the later ones on that very line."""

# the names the tests and older callers used
_FileSource, _KmsgSource, _FifoSource = FileSource, KmsgSource, FifoSource


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
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        metrics: KmsgMetrics | None = None,
    ) -> None:
        self.client = client
        self.source_path = source
        self.state_file = state_file
        self.dedup_window = dedup_window
        self.ignored_xids = frozenset(ignored_xids)
        self.poll_interval = poll_interval
        self.catalog = catalog if catalog is not None else default_catalog()
        self.node_name = node_name
        self.metrics = metrics if metrics is not None else KmsgMetrics()
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
        self.source: FileSource | KmsgSource | FifoSource | SyslogSource = open_source(
            source, self.cursor, max_line_bytes=max_line_bytes, metrics=self.metrics)
        # the crash guard (file sources): lines up to `_careful` (inode, end) are handled one at a
        # time, each marked in flight with `_deaths`; `_arm_to` is the end of the lines being handled
        self._careful: tuple[int, int] | None = None
        self._deaths = 0
        self._arm_to: int | None = None
        self._armed = False
        self._last_run_died()

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
        if ev.kind == KIND_SXID and ev.xid is not None:
            return self._apply_sxid(ev)
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
            self.metrics.gpu(uuid, view.healthy)
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
            self._written(uuid, new_view, kv)
            return decision.note
        raise errors.Unavailable(f"{uuid}: gave up after 16 conflicting writes; will retry")

    def _written(self, uuid: str, view: conditions.GpuView, kv: dict[str, Any]) -> None:
        st, reason, _ = view.condition()
        self.metrics.condition_writes.labels(st).inc()
        self.metrics.gpu(uuid, view.healthy)
        kv.update(condition=logic.CONDITION_TYPE, status=st, reason=reason, action=str(view.action))
        logger.warning("gpu condition changed", extra={"kv": kv})

    def _apply_sxid(self, ev: XidEvent) -> str:
        """An NVSwitch fault touches the whole NVLink fabric: write it on every GPU of the node, with
        one shared transition time (the record's), so the publisher makes one node-level event."""
        assert ev.xid is not None
        kv: dict[str, Any] = {"sxid": ev.xid, "switch": ev.switch, "pci": ev.pci, "severity": ev.severity}
        cls = ev.classification
        if cls.ignored or not cls.fatal:
            note = "ignored" if cls.ignored else "benign"
            logger.info("nvswitch sxid: not fatal, nothing written", extra={"kv": {**kv, "note": note}})
            return note
        reason = conditions.Reason.for_sxid(ev.xid)
        message = logic.sxid_message(ev)
        _, gpus = self.client.list_gpus()
        if not gpus:
            self._warn_once("sxid-no-gpus", "no GPU registered with the Device API; NVSwitch fault not written", kv)
            return "no-gpus"
        now = time.time()
        record = logic.record_time(ev.timestamp, ev.clock, now=now, monotonic_now=time.monotonic(),
                                   same_boot=self.source.kind in ("kmsg", "syslog"))
        shared = logic.shared_sxid_time((g.status for g in gpus), reason, record)
        secs, nanos = int(shared), int(round((shared % 1) * 1e9)) % 1_000_000_000
        notes = []
        for uuid in sorted(g.metadata.name for g in gpus):
            notes.append(self._apply_sxid_to(uuid, ev.xid, cls, message, secs, nanos, dict(kv)))
        written = sum(1 for n in notes if n in ("fatal", "worse"))
        logger.warning("nvswitch sxid: fatal", extra={"kv": {**kv, "reason": reason.wire, "action": str(cls.action),
                                                               "gpus": len(notes), "written": written,
                                                               "transition_time": secs}})
        return "fatal" if written else "not-worse"

    def _apply_sxid_to(self, uuid: str, sxid: int, cls: Any, message: str, secs: int, nanos: int,
                       kv: dict[str, Any]) -> str:
        kv["uuid"] = uuid
        for _ in range(16):
            try:
                current = self.client.get_gpu(uuid)
            except errors.NotFound:
                return "unknown-gpu"  # deleted since the list
            view = logic.view_from_condition(logic.find_condition(current.status, logic.CONDITION_TYPE), self.catalog)
            self.metrics.gpu(uuid, view.healthy)
            decision = logic.decide_sxid(view, sxid, cls, message)
            if not decision.changed:
                return decision.note
            status = logic.with_transition_time(logic.merge_condition(current.status, decision.view, secs, nanos),
                                                secs, nanos)
            if status == current.status:
                return "unchanged"
            try:
                self.client.update_gpu_status(uuid, status, current.resource_version)
            except errors.Conflict:
                continue
            kv["note"] = decision.note
            self._written(uuid, decision.view, kv)
            return decision.note
        raise errors.Unavailable(f"{uuid}: gave up after 16 conflicting writes; will retry")

    def _handle_with_retry(self, ev: XidEvent) -> bool:
        backoff = SERVER_BACKOFF[0]
        warned = False
        while not self.stop_event.is_set():
            if self._arm_to is not None and not self._armed:
                self._write_marker()  # handling again after a wait: a death from here on counts
            try:
                self.handle(ev)
                return True
            except errors.Unavailable as exc:
                if self._armed:
                    self._clear_marker()  # only waiting for the server: being killed now is no poison
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

    def _apply_line(self, line: Line) -> bool:
        """Decode one line and apply its events; False only when stopping. Never raises for a line."""
        if not line.data:
            return True  # dropped by the source (counted and logged there)
        try:
            events = self.decoder.feed(line.data)
        except Exception as exc:  # noqa: BLE001 - a line must not stop the monitor
            self._poisoned(line, "decoder_error", exc)
            self.decoder = Decoder(self.catalog, self.cursor.pci_to_uuid)  # its state is unknown now
            return True
        for ev in events:
            self.metrics.events_decoded.labels(ev.kind).inc()
            try:
                if not self._handle_with_retry(ev):
                    return False
            except Exception as exc:  # noqa: BLE001 - a line must not stop the monitor
                self._poisoned(line, "handler_error", exc)
                break
        return True

    def _poisoned(self, line: Line, reason: str, exc: BaseException) -> None:
        self.metrics.lines_skipped.labels(reason).inc()
        logger.error("kernel log line could not be handled; skipped", exc_info=exc, extra={"kv": {
            "source": self.source_path, "reason": reason, "end": line.end, "bytes": len(line.data),
            "line": line.data[:200].decode("utf-8", "replace").rstrip("\n"),
            "skipped_total": int(self.metrics.value("nvsentinel_kmsg_lines_skipped", reason=reason))}})

    # --- the crash guard ------------------------------------------------------------------------

    def _guarded(self) -> bool:
        return self.source.kind == "file"

    def _last_run_died(self) -> None:
        """Act on an in-flight marker left by a run that died (module docstring)."""
        cur = self.cursor
        if not cur.has_inflight():
            cur.clear_inflight()
            return
        start, end, deaths = cur.inflight_from, cur.inflight_to, cur.deaths + 1
        cur.clear_inflight()
        src = self.source
        if not isinstance(src, FileSource) or (cur.kind, cur.inode, cur.offset) != ("file", src.inode, start) \
                or src.boundary != start:
            return  # the file changed since: the marker says nothing about what is there now
        kv = {"path": self.source_path, "inode": src.inode, "from": start, "to": end, "deaths": deaths}
        if deaths < POISON_DEATHS:
            self._careful, self._deaths = (src.inode, end), deaths
            logger.warning("the previous run died handling these lines; handling them one at a time",
                           extra={"kv": kv})
            return
        self.metrics.lines_skipped.labels("crashed").inc()
        kv["skipped_total"] = int(self.metrics.value("nvsentinel_kmsg_lines_skipped", reason="crashed"))
        logger.error("the monitor died every time it handled this kernel log line; skipped", extra={"kv": kv})
        src.skip_to(end)
        src.update(cur)
        self.save()

    def _group_end(self, lines: list[Line], i: int) -> int:
        """Lines [i, result) are handled under one in-flight marker."""
        if self._careful is not None:
            inode, end = self._careful
            if lines[i].inode == inode and lines[i].end <= end:
                return i + 1
            self._careful, self._deaths = None, 0
        return len(lines)

    def _write_marker(self) -> None:
        assert self._arm_to is not None
        cur = self.cursor
        cur.inflight_from, cur.inflight_to, cur.deaths = cur.offset, self._arm_to, self._deaths
        self._armed = True
        self.save(durable=False)

    def _clear_marker(self) -> None:
        self.cursor.clear_inflight()
        self._armed = False
        self.save(durable=False)

    # --- run ------------------------------------------------------------------------------------

    def _apply_lines(self, lines: list[Line]) -> bool:
        """Handle `lines` in order, moving the (in-memory) cursor after each; False when stopping."""
        i = 0
        while i < len(lines):
            j = self._group_end(lines, i) if self._guarded() else len(lines)
            if self._guarded():
                self._arm_to = lines[j - 1].end
                self._write_marker()
            for line in lines[i:j]:
                if not self._apply_line(line):
                    return False
                self.source.commit(self.cursor, line)
            i = j
        return True

    def step(self) -> bool:
        """Read and apply what is new; persist the cursor. False when there was nothing new."""
        lines = self.source.read()
        before = self._position()
        done = not lines or self._apply_lines(lines)
        self._arm_to, self._armed = None, False
        self.cursor.clear_inflight()
        if not done:
            self.save()  # stopping: the cursor stays before the line that was not applied
            return False
        self.source.update(self.cursor)
        if lines or before != self._position():
            self.save()
        return bool(lines)

    def _position(self) -> tuple[object, ...]:
        cur = self.cursor
        return cur.kind, cur.boot_id, cur.inode, cur.offset, cur.seq, cur.ts, cur.nth

    def save(self, durable: bool = True) -> None:
        try:
            cursor_mod.save(self.state_file, self.cursor, durable=durable)
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
