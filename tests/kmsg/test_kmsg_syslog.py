"""The kernel-log monitor reading the kernel's log ring through syslog(2) (`--source=syslog`, issue 16:
the chart's monitor needs CAP_SYSLOG only, not privileged).

What is real here: the syslog(2) system call on this machine's kernel (READ_ALL, SIZE_BUFFER), lines
written to the real /dev/kmsg, the real daemon in a subprocess and a real Device API server on real
sockets, the XID decoder, capabilities dropped with setpriv, printk time stamps turned off in the
running kernel.

What cannot be real: user space cannot log a facility-0 (kernel) line (the kernel forces LOG_USER on
/dev/kmsg writes; that is the very property the facility filter stands on), so no test can make the
driver log an XID through the real ring. The positive path (a kernel `NVRM: Xid` line → a finding)
is covered by the pure parser and cursor tests below, fed with the decoder's real driver lines and
with a model of READ_ALL (`RingKlog`: the newest whole lines that fit the buffer, as the kernel
answers); the live path through the real ring is proven with the one line user space may log
(`GPU reset executed:`, which heals a GPU), next to a fake XID that must be dropped.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuid_mod
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xid"))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kmsghelpers import CLI, Monitor, at_least, wait_for  # noqa: E402
from xid_samples import BODIES  # noqa: E402

from nvsentinel import xid as xid_mod  # noqa: E402
from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.node.kmsg import cursor as cursor_mod  # noqa: E402
from nvsentinel.node.kmsg import ring  # noqa: E402
from nvsentinel.node.kmsg.klogctl import Klog  # noqa: E402
from nvsentinel.node.kmsg.metrics import KmsgMetrics  # noqa: E402
from nvsentinel.node.kmsg.sources import BOOT_ID_PATH, SourceError, SyslogSource, TAIL_START  # noqa: E402

MARKER = "<4>NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, GPU has fallen off the bus."
MARKER_PCI = "0000:3b:00"
PRINTK_TIME = Path("/sys/module/printk/parameters/time")


def syslog_works() -> bool:
    try:
        Klog().size()
        return True
    except OSError:
        return False


@pytest.fixture
def syslog_available() -> None:
    """The real system call is the point of these tests: where it cannot run they fail, never skip."""
    assert syslog_works(), "syslog(2) READ_ALL is not permitted here (root, or CAP_SYSLOG, is needed)"


@pytest.fixture
def kmsg_writable() -> None:
    assert os.access("/dev/kmsg", os.W_OK), "the tests write a marker to /dev/kmsg: run them as root"


needs_syslog = pytest.mark.usefixtures("syslog_available")
needs_kmsg_write = pytest.mark.usefixtures("kmsg_writable")


def kmsg_write(text: str) -> None:
    with open("/dev/kmsg", "w") as fh:
        fh.write(text + "\n")


def boot_id() -> str:
    return Path(BOOT_ID_PATH).read_text().strip()


def prefixed(facility: int, level: int, ts: int, body: str) -> bytes:
    return f"<{facility << 3 | level}>[{ts // 1_000_000:5d}.{ts % 1_000_000:06d}] {body}\n".encode()


# ---- the text of READ_ALL: pure ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "facility", "ts", "message"),
    [
        (b"<6>[    0.000000] Linux version 6.8.0\n", 0, 0, b"Linux version 6.8.0"),
        (b"<4>[16940.633679] NVRM: Xid (PCI:0000:3b:00): 79, x\n", 0, 16940633679, b"NVRM: Xid (PCI:0000:3b:00): 79, x"),
        (b"<12>[16940.633679] NVRM: Xid (PCI:0000:3b:00): 79, x", 1, 16940633679, b"NVRM: Xid (PCI:0000:3b:00): 79, x"),
        (b"<30>[    5.100000][    T1] systemd[1]: Started\n", 3, 5100000, b"systemd[1]: Started"),  # PRINTK_CALLER
        (b"<4>[    5.100000][    C3] watchdog\n", 0, 5100000, b"watchdog"),
        (b"<4>NVRM: no time stamp\n", 0, ring.NO_TIME, b"NVRM: no time stamp"),  # printk.time off
        (b"[    5.100000] no level\n", -1, ring.NO_TIME, b"[    5.100000] no level"),
        (b"", -1, ring.NO_TIME, b""),
    ],
)
def test_parse_line(raw, facility, ts, message):
    """Verify a READ_ALL line gives its facility (`<N>` >> 3), its time stamp in microseconds and the
    message after the prefix; the line keeps its prefix and gets its newline back."""
    rec = ring.parse_line(raw)
    assert (rec.facility, rec.ts, rec.message) == (facility, ts, message)
    assert rec.line == raw.rstrip(b"\n") + b"\n"


@given(st.binary(max_size=400))
@settings(max_examples=400, deadline=None)
def test_arbitrary_bytes_never_raise(data):
    """Verify arbitrary bytes, as a line or as READ_ALL text, never make the parser or `locate` raise,
    and `locate` always answers a start inside the window."""
    window = [ring.parse_line(raw) for raw in ring.split_lines(data)]
    ring.parse_line(data)
    ring.positions(window)
    for cur in (None, ring.Position(0, 1), ring.Position(12_345_678, 3)):
        for complete in (False, True):
            where = ring.locate(window, cur, complete)
            assert 0 <= where.start <= len(window)
    for rec in window:
        ring.kernel_or_reset(rec.facility, rec.message)


@given(facility=st.integers(0, 23), level=st.integers(0, 7), body=st.sampled_from(BODIES),
       ts=st.integers(0, 10**12))
@settings(max_examples=300, deadline=None)
def test_only_the_kernel_speaks_for_the_driver(facility, level, body, ts):
    """Verify the facility filter: a facility-0 line is kept, any other facility is dropped unless
    its message is reset tooling's `GPU reset executed:` line; and what the filter keeps from user
    space decodes to no driver event."""
    rec = ring.parse_line(prefixed(facility, level, ts, body))
    assert (rec.facility, rec.ts) == (facility, ts)
    kept = ring.kernel_or_reset(rec.facility, rec.message)
    assert kept is (facility == 0 or body.startswith("GPU reset executed: "))
    if kept and facility != 0:
        assert {e.kind for e in xid_mod.decode_stream([rec.line])} <= {xid_mod.KIND_GPU_RESET}


def test_real_driver_lines_decode_the_same_through_the_syslog_prefix():
    """Verify the positive path on the decoder's real driver lines: a facility-0 READ_ALL line
    (`<4>[ts] BODY`) decodes to the same events as the dmesg line `[ts] BODY`; the very same line
    from user space (`<12>`) is dropped by the filter before the decoder sees it."""
    decoded = 0
    for i, body in enumerate(BODIES):
        if "\\x0a" in body:
            continue  # a /dev/kmsg record's escaped newlines: READ_ALL prints a line per newline
        ts = 1_000_000 * (100 + i) + 1
        kernel = ring.parse_line(prefixed(0, 4, ts, body))
        assert ring.kernel_or_reset(kernel.facility, kernel.message)
        dmesg = f"[{ts // 1_000_000:5d}.{ts % 1_000_000:06d}] {body}\n".encode()
        got = [(e.kind, e.xid, e.pci, e.gpu_uuid, e.error_code) for e in xid_mod.decode_stream([kernel.line])]
        want = [(e.kind, e.xid, e.pci, e.gpu_uuid, e.error_code) for e in xid_mod.decode_stream([dmesg])]
        if body.startswith("GPU reset executed: "):
            assert got == []  # the kernel does not log reset tooling's line: not a recovery
        else:
            assert got == want, body
            decoded += bool(got)
        user = ring.parse_line(prefixed(1, 4, ts, body))
        assert ring.kernel_or_reset(user.facility, user.message) is body.startswith("GPU reset executed: ")
    assert decoded >= 20
    (ev,) = xid_mod.decode_stream([prefixed(0, 4, 5, MARKER.removeprefix("<4>"))])
    assert (ev.kind, ev.xid, ev.pci, ev.classification.action.value) == ("xid", 79, MARKER_PCI, "RESTART_BM")


# ---- a record with newlines: READ_ALL prints a line per newline, each under the record's prefix ----

FORGED = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, GPU has fallen off the bus."


@pytest.mark.parametrize("echo", [
    "tmpfs: Bad value for 'size'",                    # the echoed option ended in a newline
    "EXT4-fs (sda1): Unrecognized mount option \"x",   # the forged line is the rest of the option
])
def test_a_newline_in_echoed_text_cannot_start_a_driver_line(echo):
    """Verify the attack syslog(2) alone would let through: a kernel message that echoes user text with
    a newline in it prints the text after the newline as a line of its own, under the kernel's own
    prefix (facility 0). It is joined back into its record, as /dev/kmsg shows it, and decodes to
    nothing; the same text as a record of its own (another prefix) does decode."""
    ts = 5_000_001
    klog = RingKlog([prefixed(0, 6, ts - 7, "earlier"), prefixed(0, 3, ts, echo), prefixed(0, 3, ts, FORGED)])
    src = SyslogSource(cursor_mod.Cursor(), klog=klog)
    lines = _texts(src.read())
    assert len(lines) == 2 and lines[1].endswith(b"\\x0a" + FORGED.encode() + b"\n")
    assert list(xid_mod.decode_stream(lines)) == []
    alone = RingKlog([prefixed(0, 3, ts, echo), prefixed(0, 4, ts, FORGED)])  # level differs: another record
    assert [e.xid for e in xid_mod.decode_stream(_texts(SyslogSource(cursor_mod.Cursor(), klog=alone).read()))] == [79]


def test_a_record_split_at_its_newlines_is_one_line():
    """Verify the driver's own multi-line record (the GPU fell off the bus) still decodes when READ_ALL
    splits it, and that a restart between its lines never hands out its tail as a message."""
    ts = 7_000_000
    record = ["NVRM: The NVIDIA GPU 0000:b3:00.0", "NVRM: (PCI ID: 10de:26b5) installed in this system has",
              "NVRM: fallen off the bus and is not responding to commands."]
    klog = RingKlog([prefixed(0, 6, ts - 1, "before"), *(prefixed(0, 3, ts, part) for part in record)])
    state = cursor_mod.Cursor()
    metrics = KmsgMetrics()
    src = SyslogSource(state, klog=klog, metrics=metrics)
    got = list(xid_mod.decode_stream(_texts(src.read())))
    assert [e.kind for e in got] == [xid_mod.KIND_FALLEN_OFF_BUS] and got[0].pci == "0000:b3:00"
    src.update(state)
    klog.lines.append(prefixed(0, 3, ts, FORGED))  # a line under the same prefix, after the cursor
    klog.end = len(klog.lines)
    again = SyslogSource(cursor_mod.Cursor.from_json(state.to_json()), klog=klog, metrics=metrics)
    assert again.read() == []
    assert metrics.value("nvsentinel_kmsg_records_dropped", reason="continuation") == 1


def test_locate_rules():
    """Verify the cursor rules on a hand-made window, duplicate time stamps included."""
    w = [ring.parse_line(prefixed(0, 6, ts, f"m{i}")) for i, ts in enumerate([0, 0, 0, 5, 7, 7, 7, 9])]
    P = ring.Position
    assert ring.locate(w, None, False) == (0, False, False)  # no cursor: everything
    assert ring.locate(w, P(7, 2), False) == (6, False, False)  # the 2nd line stamped 7
    assert ring.locate(w, P(9, 1), False) == (8, False, False)  # at the end: nothing new
    assert ring.locate(w, P(0, 2), True) == (2, False, False)  # the boot's 0.000000 group, whole ring
    assert ring.locate(w, P(0, 2), False) == (0, True, False)  # may be cut: ask for more
    assert ring.locate(w[4:], P(7, 1), False) == (0, True, False)  # starts inside the group
    assert ring.locate(w[4:], P(5, 1), True) == (0, False, True)  # the cursor's line was overwritten
    assert ring.locate(w[5:], P(7, 3), True) == (2, False, True)  # overwritten inside the group
    assert ring.locate(w, P(6, 1), False) == (4, False, False)  # a stamp not there: after what is older


# ---- resuming exactly: the real SyslogSource on a model of READ_ALL ------------------------------

class RingKlog:
    """READ_ALL as the kernel answers it: the newest whole lines whose text fits `length`, oldest
    first; lines older than `start` were overwritten. (The real call is tested below.)"""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines, self.start, self.end = lines, 0, len(lines)
        self.reads: list[int] = []

    def size(self) -> int:
        return 1 << 16

    def read_all(self, length: int) -> bytes:
        self.reads.append(length)
        out: list[bytes] = []
        total = 0
        for line in reversed(self.lines[self.start:self.end]):
            if total + len(line) > length:
                break
            out.append(line)
            total += len(line)
        return b"".join(reversed(out))


_steps = st.sampled_from([0, 0, 0, 1, 3, 1_000_000])
_sizes = st.sampled_from([10, 60, 300, 1500])


@st.composite
def rings(draw):
    """(lines, handled): a ring with runs of equal time stamps and lines of varied lengths (some
    windows then end inside a run), and how many of its lines the monitor saw before."""
    n = draw(st.integers(2, 120))
    ts, lines = 1_000_000, []
    for i in range(n):
        ts += draw(_steps)
        facility = draw(st.sampled_from([0, 0, 0, 1]))
        pad = "x" * draw(_sizes)
        # the level alternates, so neighbours never share a prefix: each line is a record of its own here
        # (lines of one record, which share it, are test_a_record_split_at_its_newlines_is_one_line's)
        lines.append(prefixed(facility, 4 + i % 2, ts, f"NVRM: Xid (PCI:0000:3b:00): 13, line {i} {pad}"))
    return lines, draw(st.integers(1, n - 1))


def _texts(lines) -> list[bytes]:
    return [line.data for line in lines]


@given(rings(), st.integers(0, 3))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_resume_is_exact_with_duplicate_time_stamps(case, restarts):
    """Verify the cursor: a monitor that handled the first `handled` lines of a ring (through a saved
    state file and `restarts` restarts) hands out exactly the rest, in order, once — however many
    lines share the cursor's time stamp, wherever the first window cuts, and with user-space lines
    dropped but still moving the cursor."""
    lines, handled = case
    kernel = [rec for rec in map(ring.parse_line, lines) if rec.facility == 0]
    want_all = [rec.line for rec in kernel]
    klog = RingKlog(lines)
    klog.end = handled
    state = cursor_mod.Cursor()
    src = SyslogSource(state, klog=klog)
    seen = _texts(src.read())
    src.update(state)
    for _ in range(restarts):  # a restart with nothing new: no line again
        state = cursor_mod.Cursor.from_json(json.loads(json.dumps(state.to_json())))
        src = SyslogSource(state, klog=klog)
        assert src.read() == []
    klog.end = len(lines)
    src = SyslogSource(cursor_mod.Cursor.from_json(state.to_json()), klog=klog)
    seen += _texts(src.read())
    assert seen == want_all
    assert src.read() == []
    assert all(n >= TAIL_START for n in klog.reads)


@given(rings(), st.integers(1, 50))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_an_overwritten_cursor_is_an_overrun(case, lost):
    """Verify a cursor whose line the ring overwrote: counted as an overrun, and every kernel line
    still in the ring that is newer than the cursor is handed out (none twice)."""
    lines, handled = case
    klog = RingKlog(lines)
    klog.end = handled
    state = cursor_mod.Cursor()
    metrics = KmsgMetrics()
    src = SyslogSource(state, klog=klog, metrics=metrics)
    first = _texts(src.read())
    src.update(state)
    cur = ring.Position(state.ts, state.nth)
    klog.end, klog.start = len(lines), min(handled + lost, len(lines))  # the cursor's line is gone
    src = SyslogSource(cursor_mod.Cursor.from_json(state.to_json()), klog=klog, metrics=metrics)
    again = _texts(src.read())
    kept = [ring.parse_line(x) for x in lines[klog.start:]]
    newer = [r.line for r in kept if r.facility == 0 and r.ts > cur.ts]
    assert not set(again) & set(first)
    assert [x for x in again if x in newer] == newer
    if kept and kept[0].ts > cur.ts:
        assert metrics.value("nvsentinel_kmsg_ring_overruns") == 1


# ---- the real system call ----------------------------------------------------------------------

@needs_syslog
def test_real_ring_holds_kernel_records():
    """Verify syslog(2) READ_ALL on this machine: the ring's size is known, its text parses, and it
    holds facility-0 lines (the kernel's own) with printk time stamps."""
    klog = Klog()
    size = klog.size()
    assert size >= 4096
    window = [ring.parse_line(raw) for raw in ring.split_lines(klog.read_all(4 * size))]
    kernel = [rec for rec in window if rec.facility == 0]
    assert kernel, window[:3]
    assert all(rec.ts >= 0 for rec in window)
    assert all(a.ts <= b.ts + 1000 for a, b in zip(kernel, kernel[1:]))  # ring order ~ time order


@needs_syslog
@needs_kmsg_write
def test_user_space_lands_as_facility_1():
    """Verify the property the filter stands on, on the real kernel: a driver line written to
    /dev/kmsg asking for facility 0 (`<4>`) is in the ring with facility 1 (`<12>`)."""
    tag = uuid_mod.uuid4().hex
    kmsg_write(f"{MARKER} {tag}")
    window = [ring.parse_line(raw) for raw in ring.split_lines(Klog().read_all(TAIL_START))]
    (rec,) = [r for r in window if tag.encode() in r.line]
    assert rec.facility == 1 and rec.line.startswith(b"<12>[")
    assert not ring.kernel_or_reset(rec.facility, rec.message)


@pytest.fixture
def server():
    sock_dir = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    srv = ThreadServer(make_settings(sock_dir)).start()
    client = DeviceApiClient(srv.tcp, timeout=5)
    try:
        yield srv, client
    finally:
        client.close()
        srv.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _gpu(client: DeviceApiClient, uuid: str) -> None:
    client.create_gpu(gpu_pb2.Gpu(metadata=gpu_pb2.ObjectMeta(name=uuid), spec=gpu_pb2.GpuSpec(uuid=uuid)))


def _kmsg_cond(client: DeviceApiClient, uuid: str) -> tuple[str, str]:
    for c in client.get_gpu(uuid).status.conditions:
        if c.type == "KmsgHealthy":
            return c.status, c.reason
    return "", ""


@needs_syslog
@needs_kmsg_write
def test_monitor_drops_a_fake_xid_and_heals_through_the_real_ring(server, tmp_path):
    """Verify through the real ring, the real daemon (`--source=syslog`) and a real Device API:
    the driver line `MARKER` written to /dev/kmsg reaches syslog(2) with facility 1 and is dropped
    (counted, logged) — no condition is published for its GPU although the monitor knows that PCI
    id — while reset tooling's `GPU reset executed:` line, written after it, heals another GPU; and
    the saved cursor (boot id, time stamp, count) resumes after it on restart."""
    srv, client = server
    faked, healed = (f"GPU-{uuid_mod.uuid4()}" for _ in range(2))  # new names: old runs' lines do not match
    _gpu(client, faked)
    _gpu(client, healed)
    gpu = client.get_gpu(healed)
    st_ = gpu_pb2.GpuStatus(recommended_action="RESTART_BM")
    st_.conditions.add(type="KmsgHealthy", status="False", reason="Xid79", message="XID 79: GPU has fallen off the bus")
    client.update_gpu_status(healed, st_, gpu.resource_version)
    faked_rv = client.get_gpu(faked).resource_version

    # the state: this boot, the ring's current end, and the PCI id of the marker mapped to `faked`
    klog = Klog()
    window = [ring.parse_line(raw) for raw in ring.split_lines(klog.read_all(4 * klog.size()))]  # all of it
    last, nth = window[-1], ring.positions(window)[-1]
    state = tmp_path / "kmsg.json"
    state.write_text(json.dumps({"kind": "syslog", "boot_id": boot_id(), "ts": last.ts, "nth": nth,
                                 "pci_to_uuid": {MARKER_PCI: faked}}))
    mon = Monitor("--address", srv.tcp, "--source", "syslog", "--state-file", str(state), "--syslog-interval", "0.05",
                  "--log-level", "DEBUG")
    try:
        wait_for("the monitor to follow the ring", lambda: "following the kernel log through syslog(2)" in mon.log(),
                 mon)
        assert "resumed=True" in mon.log()
        kmsg_write(MARKER)
        kmsg_write(f"GPU reset executed: {healed}")
        raw = [ring.parse_line(x) for x in ring.split_lines(Klog().read_all(TAIL_START))]
        (fake,) = [r for r in raw if r.message == MARKER.removeprefix("<4>").encode() and r.ts > last.ts]
        assert fake.facility == 1
        wait_for("the reset line to heal its GPU", lambda: _kmsg_cond(client, healed) == ("True", "GpuReset"), mon)
        # the reset line comes after the marker in the ring, so the marker was handled (dropped) by now
        assert _kmsg_cond(client, faked) == ("", "")
        assert client.get_gpu(faked).resource_version == faked_rv
        wait_for("the drop counted", at_least(mon, 1, "nvsentinel_kmsg_records_dropped", reason="user_space"), mon)
        assert "reason=user_space" in mon.log() and "NVRM: Xid (PCI:0000:3b:00): 79" in mon.log()
        assert mon.stop() == 0
    finally:
        mon.close()
    saved = json.loads(state.read_text())
    assert (saved["kind"], saved["boot_id"]) == ("syslog", boot_id()) and saved["ts"] > last.ts
    assert saved["pci_to_uuid"] == {MARKER_PCI: faked}

    # restart: nothing is handled twice (the GPU healed above is faulted again by hand: a replayed
    # reset line would heal it again)
    gpu = client.get_gpu(healed)
    client.update_gpu_status(healed, st_, gpu.resource_version)
    rv = client.get_gpu(healed).resource_version
    mon = Monitor("--address", srv.tcp, "--source", "syslog", "--state-file", str(state), "--syslog-interval", "0.05")
    try:
        tag = uuid_mod.uuid4().hex
        kmsg_write(f"nvsentinel test {tag}")  # a line after the old ones: once it is read, they would have been
        wait_for("the new line read", lambda: json.loads(state.read_text())["ts"] > saved["ts"], mon)
        assert client.get_gpu(healed).resource_version == rv
        assert mon.stop() == 0
    finally:
        mon.close()


# ---- what stops it at start ----------------------------------------------------------------------

def _dmesg_restricted() -> bool:
    try:
        return Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() == "1"
    except OSError:
        return False


@pytest.mark.usefixtures("dmesg_restricted")
def test_without_cap_syslog_one_clear_line(tmp_path):
    """Verify a monitor without CAP_SYSLOG (root with it dropped from the bounding set, under
    kernel.dmesg_restrict=1) exits 1 at start with one line that names what to grant."""
    proc = subprocess.run(["setpriv", "--bounding-set=-syslog", "--", *CLI, "kmsg-monitor", "--address",
                           "127.0.0.1:1", "--source=syslog", "--state-file", str(tmp_path / "s.json"),
                           "--log-format", "plain"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if "cannot start" in ln]
    assert "syslog(2) is not permitted (EPERM)" in line and "CAP_SYSLOG" in line and "add: [SYSLOG]" in line


@pytest.mark.usefixtures("dmesg_restricted")
def test_root_with_only_cap_syslog_starts(server, tmp_path):
    """Verify what the chart runs is enough: root with every capability dropped but SYSLOG, no new
    privileges, reads the ring (the monitor starts and saves its syslog cursor); and however long
    its interval, it stops at once on SIGTERM."""
    srv, client = server
    _gpu(client, f"GPU-{uuid_mod.uuid4()}")  # the server is ready once a GPU is registered
    state = tmp_path / "s.json"
    mon = Monitor("--address", srv.tcp, "--source=syslog", "--state-file", str(state), "--syslog-interval", "30",
                  prefix=("setpriv", "--no-new-privs", "--bounding-set=-all,+syslog", "--inh-caps=-all", "--"))
    try:
        wait_for("the cursor saved", lambda: state.exists() and json.loads(state.read_text())["kind"] == "syslog", mon)
        status = Path(f"/proc/{mon.proc.pid}/status").read_text()
        assert "CapEff:\t0000000400000000" in status  # CAP_SYSLOG (34) only
        wait_for("the first wait", lambda: "interval=30.0" in mon.log(), mon)
        started = time.monotonic()
        assert mon.stop() == 0
        assert time.monotonic() - started < 5, "a stop waits for no poll interval to end"
    finally:
        mon.close()


DMESG_RESTRICT = Path("/proc/sys/kernel/dmesg_restrict")


@pytest.fixture
def dmesg_restricted():
    """kernel.dmesg_restrict=1 for the test (restored after): then syslog(2) needs CAP_SYSLOG, which these tests
    drop or keep with setpriv. Needs root and setpriv; where they are missing the tests fail, never skip."""
    assert os.geteuid() == 0 and shutil.which("setpriv"), "these tests need root and setpriv (util-linux)"
    before = DMESG_RESTRICT.read_text().strip()
    if not _dmesg_restricted():
        DMESG_RESTRICT.write_text("1")
    try:
        yield
    finally:
        DMESG_RESTRICT.write_text(before)


@pytest.fixture
def printk_time_off():
    """Turn printk time stamps off in the running kernel for the test (restored after, on or off as it was)."""
    assert os.geteuid() == 0 and os.access(PRINTK_TIME, os.W_OK), "setting printk.time needs root"
    before = PRINTK_TIME.read_text().strip()
    PRINTK_TIME.write_text("N")
    try:
        yield
    finally:
        PRINTK_TIME.write_text(before)


@needs_syslog
@needs_kmsg_write
def test_printk_time_off_refused_then_resumed(printk_time_off, tmp_path):
    """Verify the real kernel with printk time stamps off: the daemon refuses to start with one line
    naming the fix; a source already following the ring reads nothing meanwhile (an error counted)
    and, once time stamps are back, hands out the kernel lines logged while they were off."""
    proc = subprocess.run([*CLI, "kmsg-monitor", "--address", "127.0.0.1:1", "--source=syslog",
                           "--state-file", str(tmp_path / "s.json")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "printk.time=1" in proc.stderr and "--source=/dev/kmsg" in proc.stderr and "Traceback" not in proc.stderr

    PRINTK_TIME.write_text("Y")
    metrics = KmsgMetrics()
    src = SyslogSource(cursor_mod.Cursor(), metrics=metrics)
    src.read()  # the whole ring: the cursor is now at its end
    PRINTK_TIME.write_text("N")
    tag = uuid_mod.uuid4().hex
    kmsg_write(f"GPU reset executed: GPU-{tag[:8]}-0000-0000-0000-000000000000")
    assert src.read() == []
    assert metrics.value("nvsentinel_kmsg_read_errors", op="read") == 1
    PRINTK_TIME.write_text("Y")
    got = src.read()
    assert [line.data for line in got if tag[:8].encode() in line.data]
    assert all(line.data.startswith(b"<") and b"] " in line.data for line in got)


def test_bad_syslog_interval_exit_2(tmp_path):
    """Verify --syslog-interval out of range: one line, exit 2."""
    proc = subprocess.run([*CLI, "kmsg-monitor", "--address", "127.0.0.1:1", "--source=syslog", "--state-file",
                           str(tmp_path / "s.json"), "--syslog-interval", "0"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--syslog-interval must be 0.01..60" in proc.stderr, proc.stderr


def test_source_error_is_typed():
    """Verify a klogctl that refuses maps to SourceError (the daemon's exit 1), not an OSError."""
    class Refusing(RingKlog):
        def size(self) -> int:
            raise PermissionError(1, "syslog(2) SIZE_BUFFER: Operation not permitted")

    with pytest.raises(SourceError, match="CAP_SYSLOG"):
        SyslogSource(cursor_mod.Cursor(), klog=Refusing([]))
