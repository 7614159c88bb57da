"""The kernel-log monitor's pure parts, table-driven: cursor rules, the dedup rule, the merge."""
from __future__ import annotations

import json
import socket
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
from gpus import status as make_status  # noqa: E402

from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.kmsg import cursor, logic  # noqa: E402
from nvsentinel.node.kmsg import monitor  # noqa: E402
from nvsentinel.node.kmsg.monitor import parse_kmsg_record  # noqa: E402
from nvsentinel.node.kmsg.sources import KmsgRecord  # noqa: E402
from nvsentinel.policy import conditions as nvml_logic  # noqa: E402

UUID = "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb"


@pytest.mark.parametrize(
    ("cur", "inode", "size", "want"),
    [
        (cursor.Cursor(), 7, 100, 0),  # no cursor: the whole file is new
        (cursor.Cursor(kind="file", inode=7, offset=40), 7, 100, 40),  # resume
        (cursor.Cursor(kind="file", inode=7, offset=100), 7, 100, 100),  # at the end
        (cursor.Cursor(kind="file", inode=7, offset=140), 7, 100, 0),  # truncated
        (cursor.Cursor(kind="file", inode=7, offset=40), 8, 100, 0),  # rotated: another inode
        (cursor.Cursor(kind="kmsg", boot_id="b", seq=5), 7, 100, 0),  # a kmsg cursor says nothing
        (cursor.Cursor(kind="file", inode=7, offset=-3), 7, 100, 0),  # nonsense
    ],
)
def test_file_start_offset(cur, inode, size, want):
    """Verify the file cursor rule: resume only on the same inode and a file at least that long."""
    assert cursor.file_start_offset(cur, inode, size) == want


@pytest.mark.parametrize(
    ("cur", "boot", "seq", "want"),
    [
        (cursor.Cursor(), "b1", 0, True),
        (cursor.Cursor(kind="kmsg", boot_id="b1", seq=10), "b1", 10, False),
        (cursor.Cursor(kind="kmsg", boot_id="b1", seq=10), "b1", 9, False),
        (cursor.Cursor(kind="kmsg", boot_id="b1", seq=10), "b1", 11, True),
        (cursor.Cursor(kind="kmsg", boot_id="b1", seq=10), "b2", 3, True),  # new boot: all new
        (cursor.Cursor(kind="file", inode=1, offset=9), "b1", 0, True),
    ],
)
def test_kmsg_is_new(cur, boot, seq, want):
    """Verify the /dev/kmsg cursor rule: same boot id → only sequence numbers above the cursor."""
    assert cursor.kmsg_is_new(cur, boot, seq) is want


def test_cursor_round_trip_and_bad_files(tmp_path):
    """Verify the state file round-trips, and a corrupt or missing one is a fresh cursor."""
    path = str(tmp_path / "sub" / "state.json")
    assert cursor.load(path) == (cursor.Cursor(), "")
    cur = cursor.Cursor(kind="file", inode=12, offset=345, pci_to_uuid={"0000:b3:00": UUID})
    cursor.save(path, cur)
    assert cursor.load(path) == (cur, "")
    assert [n for n in os.listdir(tmp_path / "sub")] == ["state.json"]
    for bad in ("{not json", "[1, 2]", json.dumps({"seq": "x"}), json.dumps({"pci_to_uuid": 3})):
        Path(path).write_text(bad)
        got, problem = cursor.load(path)
        assert got == cursor.Cursor() and problem


@pytest.mark.parametrize(
    ("record", "want"),
    [
        (b"6,1234,5678,-;NVRM: Xid (PCI:0000:b3:00): 79, x\n",
         (1234, 0, b"6,1234,5678,-;NVRM: Xid (PCI:0000:b3:00): 79, x\n", b"NVRM: Xid (PCI:0000:b3:00): 79, x")),
        (b"4,7,1,c;hello\n SUBSYSTEM=pci\n DEVICE=+pci:0000:b3:00.0\n", (7, 0, b"4,7,1,c;hello\n", b"hello")),
        (b"12,8,1,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1\n",  # user space: LOG_USER (1) << 3 | 4
         (8, 1, b"12,8,1,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1\n", b"NVRM: Xid (PCI:0000:3b:00): 79, pid=1")),
        (b"garbage", None),
        (b"6,x,1,-;text\n", None),
        (b"x,1,1,-;text\n", None),
        (b"-8,1,1,-;text\n", None),
        (b"", None),
    ],
)
def test_parse_kmsg_record(record, want):
    """Verify /dev/kmsg records give (sequence, facility, first line, message) and malformed ones are dropped."""
    assert parse_kmsg_record(record) == (None if want is None else KmsgRecord(*want))


def _nvml_false(reason: str, seconds: int) -> gpu_pb2.GpuStatus:
    st = gpu_pb2.GpuStatus(recommended_action="RESTART_BM")
    c = st.conditions.add(type="NvmlHealthy", status="False", reason=reason, message="m")
    c.last_transition_time.seconds = seconds
    return st


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "reason", "window", "want"),
    [
        (_nvml_false("Xid79", int(NOW) - 5), "Xid79", 30, True),
        (_nvml_false("Xid79", int(NOW) - 31), "Xid79", 30, False),  # outside the window
        (_nvml_false("Xid79", int(NOW) - 5), "Xid48", 30, False),  # another XID
        (_nvml_false("Xid79", int(NOW) + 2), "Xid79", 30, True),  # clocks a little apart
        (_nvml_false("Xid79", int(NOW) - 5), "Xid79", 0, False),  # dedup off
        (make_status(("NvmlHealthy", "True")), "Xid79", 30, False),
        (gpu_pb2.GpuStatus(), "Xid79", 30, False),
        (_nvml_false("GpuLost", int(NOW) - 1), "GpuLost", 30, True),
    ],
)
def test_reported_by_nvml(status, reason, window, want):
    """Verify the cross-source dedup rule: same reason, NvmlHealthy False, transition within the window."""
    assert logic.reported_by_nvml(status, reason, NOW, window) is want


def test_view_from_condition_and_merge():
    """Verify the view is read back from the server's condition, and the merge keeps other types."""
    assert logic.view_from_condition(None).healthy
    cond = gpu_pb2.Condition(type="KmsgHealthy", status="False", reason="Xid79", message="XID 79: x")
    view = logic.view_from_condition(cond)
    assert view.finding == nvml_logic.Finding("Xid79", "XID 79: x", nvml_logic.Action.RESTART_BM)
    # sticky: a benign XID and the same fatal XID change nothing
    assert not nvml_logic.decide(view, nvml_logic.Xid(13)).changed
    assert not nvml_logic.decide(view, nvml_logic.Xid(79)).changed
    current = make_status(("NvmlHealthy", "True"), ("Other", "True"), action="NONE")
    fatal = nvml_logic.decide(logic.view_from_condition(None), nvml_logic.Xid(79)).view
    merged = logic.merge_condition(current, fatal, 1_900_000_000)
    assert [(c.type, c.status) for c in merged.conditions] == [
        ("NvmlHealthy", "True"), ("Other", "True"), ("KmsgHealthy", "False")]
    assert merged.recommended_action == "RESTART_BM"
    mine = logic.find_condition(merged, "KmsgHealthy")
    assert (mine.reason, mine.last_transition_time.seconds) == ("Xid79", 1_900_000_000)
    # the same view again: the transition time is kept, nothing changes
    assert logic.merge_condition(merged, fatal, 1_900_000_100) == merged
    healed = logic.merge_condition(merged, logic.recovered_view(fatal, UUID), 1_900_000_200)
    mine = logic.find_condition(healed, "KmsgHealthy")
    assert (mine.status, mine.reason, healed.recommended_action) == ("True", "GpuReset", "NONE")
    # another provider's False condition keeps the shared action
    other_false = make_status(("NvmlHealthy", "False"), action="RESTART_BM")
    merged = logic.merge_condition(other_false, nvml_logic.decide(logic.view_from_condition(None), nvml_logic.Xid(48)).view, 1)
    assert merged.recommended_action == "RESTART_BM"


def _records(*items: tuple[int, str], prio: dict[int, int] | None = None) -> socket.socket:
    """A non-blocking descriptor that returns one record per read, like /dev/kmsg (priority 6, the
    kernel's facility 0 at level info, unless `prio` says otherwise for a sequence number)."""
    writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for seq, text in items:
        writer.send(f"{(prio or {}).get(seq, 6)},{seq},{seq * 1000},-;{text}\n SUBSYSTEM=pci\n".encode())
    writer.close()
    reader.setblocking(False)
    return reader


@pytest.mark.parametrize(
    ("cur", "want"),
    [
        (cursor.Cursor(), [1, 2, 3, 4]),  # no state: the whole ring buffer
        (cursor.Cursor(kind="kmsg", boot_id="boot-a", seq=2), [3, 4]),  # same boot: after the cursor
        (cursor.Cursor(kind="kmsg", boot_id="boot-a", seq=9), []),
        (cursor.Cursor(kind="kmsg", boot_id="boot-b", seq=2), [1, 2, 3, 4]),  # rebooted: all new
    ],
)
def test_kmsg_source_honours_the_cursor(tmp_path, cur, want):
    """Verify the /dev/kmsg reader skips records at or below the cursor of the same boot."""
    boot = tmp_path / "boot_id"
    boot.write_text("boot-a\n")
    sock = _records((1, "a"), (2, "NVRM: Xid (PCI:0000:b3:00): 79, x"), (3, "garbage ;;"), (4, "d"))
    src = monitor._KmsgSource("/dev/kmsg", cur, str(boot), fd=sock.detach())
    try:
        lines = [line.data for line in src.read()]
        assert [int(line.split(b",")[1]) for line in lines] == want
        assert all(line.endswith(b"\n") and b"SUBSYSTEM" not in line for line in lines)
        saved = cursor.Cursor()
        src.update(saved)
        assert (saved.kind, saved.boot_id, saved.seq) == ("kmsg", "boot-a", want[-1] if want else cur.seq)
    finally:
        src.close()


def test_kmsg_source_drops_what_user_space_wrote(tmp_path):
    """Verify the /dev/kmsg reader hands out only facility-0 records and reset tooling's line: a
    driver line written by user space (facility 1, as the kernel forces on /dev/kmsg writes) is
    dropped and counted, a malformed record too, and the cursor still moves past them."""
    from nvsentinel.node.kmsg.metrics import KmsgMetrics

    boot = tmp_path / "boot_id"
    boot.write_text("boot-a\n")
    uuid = "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb"
    sock = _records((1, "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, GPU has fallen off the bus."),
                    (2, "NVRM: Xid (PCI:0000:3b:00): 48, pid=1, name=x, DBE"),
                    (3, f"GPU reset executed: {uuid}"),
                    (4, "systemd[1]: Started Journal Service."),
                    prio={1: 12, 3: 13, 4: 30})
    metrics = KmsgMetrics()
    src = monitor._KmsgSource("/dev/kmsg", cursor.Cursor(), str(boot), fd=sock.detach(), metrics=metrics)
    try:
        lines = [(line.end, line.data) for line in src.read()]
        assert lines == [(2, b"6,2,2000,-;NVRM: Xid (PCI:0000:3b:00): 48, pid=1, name=x, DBE\n"),
                         (3, f"13,3,3000,-;GPU reset executed: {uuid}\n".encode())]
        assert metrics.value("nvsentinel_kmsg_records_dropped", reason="user_space") == 2
        saved = cursor.Cursor()
        src.update(saved)
        assert saved.seq == 4
    finally:
        src.close()


def test_fifo_source_yields_lines_across_writers(tmp_path):
    """Verify a FIFO source returns complete lines only, and keeps reading after a writer closes."""
    import os

    from nvsentinel.node.kmsg import cursor as cursor_mod
    from nvsentinel.node.kmsg.monitor import open_source

    path = tmp_path / "kmsg.fifo"
    os.mkfifo(path)
    src = open_source(str(path), cursor_mod.Cursor())

    class source:  # the lines' text only
        kind = src.kind
        update = src.update

        @staticmethod
        def read() -> list[bytes]:
            return [line.data for line in src.read()]

    try:
        assert source.kind == "fifo" and source.read() == []
        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(w, b"NVRM: Xid (PCI:0000:18:00): 79, pid=1, name=a\nhalf a li")
        assert source.read() == [b"NVRM: Xid (PCI:0000:18:00): 79, pid=1, name=a\n"]
        os.write(w, b"ne\n")
        os.close(w)
        assert source.read() == [b"half a line\n"]
        assert source.read() == []  # no writer: nothing, no error
        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # a new writer (journalctl restarted)
        os.write(w, b"second writer\n")
        os.close(w)
        assert source.read() == [b"second writer\n"]
        cur = cursor_mod.Cursor()
        source.update(cur)
        assert cur.kind == "fifo"
    finally:
        src.close()


@pytest.mark.parametrize(
    "line, reason, action",
    [
        (b"NVRM: Xid (PCI:0000:18:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)", "Xid154", "COMPONENT_RESET"),
        (b"NVRM: Xid (PCI:0000:18:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)", "Xid154", "RESTART_BM"),
        (b"NVRM: Xid (PCI:0000:18:00): 154, GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)", None, None),
    ],
)
def test_xid_154_takes_its_action_from_the_line(line, reason, action):
    """Verify the kernel-log path decides XID 154 by the action the line names, not the catalog row."""
    from nvsentinel import xid
    from nvsentinel.policy import conditions as nvml_logic

    ev = xid.decode_line(line)
    decision = nvml_logic.decide(nvml_logic.GpuView(), nvml_logic.Xid(ev.xid, ev.classification))
    if reason is None:
        assert decision.changed is False
    else:
        assert decision.changed and decision.view.finding.reason.wire == reason
        assert str(decision.view.finding.action) == action
