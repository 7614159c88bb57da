"""The kernel-log monitor reading a log FILE, against what happens to log files in real life
(issue 16): copytruncate, lines that never end, read errors, a line that kills the monitor, a cursor
inside a line, and bad flags. The real daemon in a subprocess follows a real file on disk and writes
to a real Device API server on real sockets; faults are injected for real (/proc/self/mem gives a
true EIO, a directory or a mode-000 file at the path, delete and recreate), and the counters are
read from the daemon's own /metrics endpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings  # noqa: E402
from kmsghelpers import CLI, Monitor, append, at_least, free_port, wait_for  # noqa: E402

from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.node.kmsg import cursor as cursor_mod  # noqa: E402
from nvsentinel.node.kmsg.monitor import POISON_DEATHS, KmsgMonitor  # noqa: E402

N_GPUS = 5
UUIDS = [f"GPU-{i:08x}-b6d3-9791-4798-481be2406bdb" for i in range(N_GPUS)]
PCIS = [f"0000:{0x18 + 0x10 * i:02x}:00.0" for i in range(N_GPUS)]
CANONICAL = [p.rsplit(".", 1)[0] for p in PCIS]  # what the decoder (and the state file) keeps


def mapping(i: int) -> str:
    return f"[   10.{i:06d}] NVRM: GPU at PCI:{PCIS[i]}: {UUIDS[i]}\n"


def xid(i: int, n: int, t: float = 100.0) -> str:
    tail = {79: "GPU has fallen off the bus.",
            48: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer"}.get(n, "Ch 00000001")
    return f"[{t:12.6f}] NVRM: Xid (PCI:{PCIS[i]}): {n}, pid=1234, name=python, {tail}\n"


def syslog_xid(i: int, n: int) -> str:
    return f"Jan  1 00:00:00 gpu-node-1 kernel: NVRM: Xid (PCI:{PCIS[i]}): {n}, pid=1234, name=python, GPU has fallen off the bus.\n"


def noise(tag: str, count: int) -> str:
    return "".join(f"[{200 + k:8d}.{k:06d}] {tag} eth0: link up {k} 1000Mbps full duplex\n" for k in range(count))


def kmsg_cond(client: DeviceApiClient, i: int) -> tuple[str, str]:
    for c in client.get_gpu(UUIDS[i]).status.conditions:
        if c.type == "KmsgHealthy":
            return c.status, c.reason
    return "", ""


def faulted(client: DeviceApiClient, i: int, n: int) -> Callable[[], bool]:
    return lambda: kmsg_cond(client, i) == ("False", f"Xid{n}")


def caught_up(state: Path, log: Path) -> bool:
    data = json.loads(state.read_text())
    st = log.stat()
    return data["kind"] == "file" and data["inode"] == st.st_ino and data["offset"] == st.st_size


class StateWatcher:
    """Reads the state file all along and records every file offset it holds that is not at a line
    boundary of the (append-only) log: there must be none."""

    def __init__(self, state: Path, log: Path) -> None:
        self.state, self.log = state, log
        self.seen: set[int] = set()
        self.bad: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StateWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = json.loads(self.state.read_text())
                offset, inode = data["offset"], data["inode"]
                with open(self.log, "rb") as fh:
                    if os.fstat(fh.fileno()).st_ino == inode and offset not in self.seen:
                        self.seen.add(offset)
                        before = os.pread(fh.fileno(), 1, offset - 1) if offset else b"\n"
                        if before != b"\n":
                            self.bad.append((offset, before))
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.002)


@pytest.fixture
def env():
    sock_dir = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    work = Path(tempfile.mkdtemp(prefix="kmsgf-"))
    server = ThreadServer(make_settings(sock_dir)).start()
    client = DeviceApiClient(server.tcp, timeout=5)
    for uuid in UUIDS:
        client.create_gpu(gpu_pb2.Gpu(metadata=gpu_pb2.ObjectMeta(name=uuid), spec=gpu_pb2.GpuSpec(uuid=uuid)))
    monitors: list[Monitor] = []
    log, state = work / "kern.log", work / "state" / "kmsg.json"

    def start(*extra: str, prefix: tuple[str, ...] = (), address: str = server.tcp) -> Monitor:
        mon = Monitor("--address", address, "--source", str(log), "--state-file", str(state),
                      "--poll-interval", "0.02", *extra, prefix=prefix)
        monitors.append(mon)
        return mon

    log.write_bytes(b"")
    try:
        yield client, work, log, state, start
    finally:
        for mon in monitors:
            mon.close()
        client.close()
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def save_state(state: Path, log: Path, **fields: object) -> None:
    cur = cursor_mod.Cursor(kind="file", inode=log.stat().st_ino,
                            pci_to_uuid={CANONICAL[i]: UUIDS[i] for i in range(N_GPUS)})
    for key, value in fields.items():
        setattr(cur, key, value)
    cursor_mod.save(str(state), cur)


# ---- copytruncate ------------------------------------------------------------------------------


def test_copytruncate_rereads_the_file_from_its_start(env):
    """Verify a file truncated in place (same inode) is read again from byte 0 — also when it was
    written again past the old offset before the monitor looked (a naive size check misses the fault
    at its start) — and after a plain truncate to 0, a fault written next is published."""
    client, work, log, state, start = env
    mon = start()
    append(log, "".join(mapping(i) for i in range(N_GPUS)) + noise("old", 40))
    wait_for("the cursor at the end", lambda: caught_up(state, log), mon)
    old_size, inode = log.stat().st_size, log.stat().st_ino

    # logrotate copytruncate, and the writer already wrote more than we had read: the fault is at 0
    shutil.copyfile(log, work / "kern.log.1")
    fresh = (xid(0, 79, t=500.0) + noise("new", 80)).encode()
    assert len(fresh) > old_size
    with open(log, "r+b") as fh:
        fh.truncate(0)
        fh.write(fresh)
    assert log.stat().st_ino == inode
    wait_for("GPU 0 Xid79 from the rewritten file", faulted(client, 0, 79), mon)
    wait_for("the truncation counted", at_least(mon, 1, "nvsentinel_kmsg_file_truncations"), mon)
    wait_for("the cursor at the end", lambda: caught_up(state, log), mon)

    # a plain truncate to 0, then a fault
    with open(log, "r+b") as fh:
        fh.truncate(0)
    wait_for("the second truncation counted", at_least(mon, 2, "nvsentinel_kmsg_file_truncations"), mon)
    append(log, xid(1, 48, t=600.0))
    wait_for("GPU 1 Xid48 after the truncate", faulted(client, 1, 48), mon)
    wait_for("the cursor at the end", lambda: caught_up(state, log), mon)
    assert mon.log().count("file truncated or rewritten in place") == 2
    assert kmsg_cond(client, 2) == ("", "")
    assert mon.stop() == 0


def test_copytruncate_while_stopped_is_found_at_start(env):
    """Verify a restart finds a file that was copytruncated and written past the saved offset while
    the monitor was down (the bytes before the offset differ) and reads it from 0."""
    client, _work, log, state, start = env
    mon = start()
    append(log, "".join(mapping(i) for i in range(N_GPUS)) + noise("old", 20))
    wait_for("the cursor at the end", lambda: caught_up(state, log), mon)
    assert mon.stop() == 0
    old_size = log.stat().st_size
    fresh = (xid(2, 79, t=700.0) + noise("new", 40)).encode()
    assert len(fresh) > old_size
    with open(log, "r+b") as fh:
        fh.truncate(0)
        fh.write(fresh)
    mon = start()
    wait_for("GPU 2 Xid79", faulted(client, 2, 79), mon)
    assert "file truncated or rewritten in place" in mon.log()
    assert mon.stop() == 0


# ---- lines without end -------------------------------------------------------------------------


def test_overlong_lines_are_dropped_counted_and_memory_stays_bounded(env):
    """Verify a line over --max-line-bytes (default 64 KiB) is dropped with one error line and a
    count, even when it holds an XID; a 64 MiB line that never ends does not grow the monitor's
    memory and counts once; the next real XID line is published; the state file only ever holds
    line boundaries."""
    client, _work, log, state, start = env
    mon = start()
    with StateWatcher(state, log) as watcher:
        append(log, "".join(mapping(i) for i in range(N_GPUS)) + xid(0, 79))
        wait_for("GPU 0 Xid79", faulted(client, 0, 79), mon)

        # terminated, too long: dropped whole (its XID is not decoded), the next line is published
        append(log, f"[  200.000000] NVRM: Xid (PCI:{PCIS[1]}): 79, pid=1, name=x, " + "A" * 70_000 + "\n")
        append(log, xid(2, 48))
        wait_for("GPU 2 Xid48", faulted(client, 2, 48), mon)
        assert kmsg_cond(client, 1) == ("", "")
        assert mon.counter("nvsentinel_kmsg_lines_skipped", reason="overlong") == 1
        assert mon.log().count("longer than --max-line-bytes") == 1

        # a line that never ends: 64 MiB without a newline, written in 1 MiB pieces
        wait_for("the cursor at the end", lambda: caught_up(state, log), mon)
        peak_before = mon.peak_rss_kib()
        boundary = log.stat().st_size
        append(log, "[  300.000000] partial ")
        block = b"B" * (1 << 20)
        for _ in range(64):
            append(log, block)
        wait_for("the never-ending line counted", at_least(mon, 2, "nvsentinel_kmsg_lines_skipped",
                                                           reason="overlong"), mon)
        assert json.loads(state.read_text())["offset"] == boundary  # not inside the line
        append(log, "\n" + xid(3, 79))
        wait_for("GPU 3 Xid79 after the resync", faulted(client, 3, 79), mon)
        wait_for("the cursor at the end", lambda: caught_up(state, log), mon)
        grown_mib = (mon.peak_rss_kib() - peak_before) / 1024
        assert grown_mib < 32, f"peak RSS grew by {grown_mib:.1f} MiB reading a 64 MiB line"
        assert mon.counter("nvsentinel_kmsg_lines_skipped", reason="overlong") == 2
        assert mon.log().count("longer than --max-line-bytes") == 2
    assert watcher.seen and not watcher.bad, watcher.bad
    assert mon.stop() == 0


# ---- read errors -------------------------------------------------------------------------------


def test_read_errors_are_retried_and_the_monitor_recovers(env):
    """Verify a real EIO (the path replaced by a link to /proc/self/mem), a directory at the path,
    and the file deleted then recreated: the monitor logs once per streak, counts, retries with
    backoff, keeps running (same process), and publishes the next XID once a file is readable."""
    client, work, log, _state, start = env
    mon = start()
    append(log, "".join(mapping(i) for i in range(N_GPUS)) + xid(0, 79))
    wait_for("GPU 0 Xid79", faulted(client, 0, 79), mon)
    pid = mon.proc.pid

    # EIO: reading /proc/<pid>/mem at offset 0 fails with EIO, every time
    link = work / "mem.link"
    os.symlink("/proc/self/mem", link)
    os.replace(link, log)
    wait_for("read errors retried", at_least(mon, 3, "nvsentinel_kmsg_read_errors", op="read"), mon)
    assert "EIO" in mon.log()
    assert mon.log().count("cannot read the log file; retrying with backoff") == 1  # once per streak
    fresh = work / "fresh.log"
    fresh.write_text(xid(1, 48))
    os.replace(fresh, log)
    wait_for("GPU 1 Xid48 after EIO", faulted(client, 1, 48), mon)
    assert "log file readable again" in mon.log()

    # a directory at the path
    os.rename(log, work / "kern.log.2")
    log.mkdir()
    wait_for("opens retried", at_least(mon, 3, "nvsentinel_kmsg_read_errors", op="open"), mon)
    assert "EISDIR" in mon.log()
    log.rmdir()
    fresh.write_text(xid(2, 48))
    os.replace(fresh, log)
    wait_for("GPU 2 Xid48 after the directory", faulted(client, 2, 48), mon)

    # deleted, then created again
    log.unlink()
    wait_for("the path noticed gone", lambda: "the path is gone" in mon.log(), mon)
    log.write_text(xid(3, 79))
    wait_for("GPU 3 Xid79 after delete and recreate", faulted(client, 3, 79), mon)
    assert mon.proc.pid == pid and mon.proc.poll() is None
    assert kmsg_cond(client, 4) == ("", "")
    assert mon.stop() == 0


def test_permission_flapping(env):
    """Verify a file the monitor may not open (mode 000, the monitor without DAC override) is
    retried until the permission comes back, and an open file keeps being read while its mode flaps."""
    client, work, log, state, start = env
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root ignores file modes: run the monitor without those capabilities
        setpriv = shutil.which("setpriv")
        assert setpriv, "running as root: setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE"
        prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search", "--")
    mon = start(prefix=prefix)
    append(log, "".join(mapping(i) for i in range(N_GPUS)) + xid(0, 79))
    wait_for("GPU 0 Xid79", faulted(client, 0, 79), mon)
    probe = work / "probe"
    probe.write_text("x")
    probe.chmod(0)
    assert subprocess.run([*prefix, "cat", str(probe)], capture_output=True).returncode != 0, \
        "file modes are not enforced for the monitor here: the test cannot take the permission away"

    new = work / "kern.log.new"
    new.write_text(xid(1, 48))
    new.chmod(0)
    os.rename(log, work / "kern.log.1")
    os.rename(new, log)
    wait_for("opens retried", at_least(mon, 2, "nvsentinel_kmsg_read_errors", op="open"), mon)
    assert "EACCES" in mon.log()
    assert kmsg_cond(client, 1) == ("", "")
    log.chmod(0o644)
    wait_for("GPU 1 Xid48 once readable", faulted(client, 1, 48), mon)

    log.chmod(0)  # the open descriptor still reads
    append(log, xid(2, 79))
    wait_for("GPU 2 Xid79 through the open file", faulted(client, 2, 79), mon)
    log.chmod(0o644)
    assert mon.stop() == 0


# ---- a line that kills the monitor; a cursor inside a line ---------------------------------------


@pytest.mark.parametrize("deaths", [0, POISON_DEATHS - 1])
def test_a_line_the_monitor_died_on_is_not_looped_on(env, deaths):
    """Verify the in-flight marker a dying run leaves: one death → the lines are handled again, one
    at a time (the fault is published); POISON_DEATHS deaths on the line → it is skipped with one
    error line and a count, the next line is published, and restarts never handle it again."""
    client, _work, log, state, start = env
    prefix = "".join(mapping(i) for i in range(N_GPUS)).encode()
    poison = xid(0, 79).encode()
    log.write_bytes(prefix + poison + xid(1, 48).encode())
    p0, p1 = len(prefix), len(prefix) + len(poison)
    # what the state file holds when a run died handling the poison line (`deaths` runs before it too)
    save_state(state, log, offset=p0, check=prefix[-64:].hex(), inflight_from=p0, inflight_to=p1, deaths=deaths)
    with StateWatcher(state, log) as watcher:
        mon = start()
        wait_for("GPU 1 Xid48", faulted(client, 1, 48), mon)
        wait_for("the cursor at the end", lambda: caught_up(state, log), mon)
        saved, _ = cursor_mod.load(str(state))
        assert not saved.has_inflight()
        if deaths + 1 >= POISON_DEATHS:
            assert kmsg_cond(client, 0) == ("", "")
            assert mon.counter("nvsentinel_kmsg_lines_skipped", reason="crashed") == 1
            assert mon.log().count("the monitor died every time it handled this kernel log line") == 1
        else:
            assert kmsg_cond(client, 0) == ("False", "Xid79")
            assert mon.counter("nvsentinel_kmsg_lines_skipped", reason="crashed") == 0
            assert "handling them one at a time" in mon.log()
        assert mon.stop() == 0

        mon = start()
        append(log, xid(2, 48))
        wait_for("GPU 2 Xid48 after a restart", faulted(client, 2, 48), mon)
        assert "died" not in mon.log() and "resumed=True" in mon.log()
        if deaths + 1 >= POISON_DEATHS:
            assert kmsg_cond(client, 0) == ("", "")
        assert mon.stop() == 0
    assert watcher.seen and not watcher.bad, watcher.bad


def test_killed_while_waiting_for_the_server_is_no_poison(env):
    """Verify kill -9 while the monitor waits for an unreachable Device API, POISON_DEATHS times,
    does not make the line a poison: the state holds no in-flight marker while it waits, and the
    fault is published once the server is there."""
    client, _work, log, state, start = env
    port = free_port()
    log.write_text(mapping(0) + xid(0, 79))
    for _ in range(POISON_DEATHS):
        mon = start(address=f"127.0.0.1:{port}")
        wait_for("the monitor waiting for the server", lambda: "device api unreachable" in mon.log(), mon)
        saved, _ = cursor_mod.load(str(state))
        assert not saved.has_inflight() and saved.offset < log.stat().st_size
        mon.kill()
    mon = start()
    wait_for("GPU 0 Xid79", faulted(client, 0, 79), mon)
    assert "died" not in mon.log()
    assert mon.stop() == 0


def test_a_cursor_inside_a_line_resyncs_at_the_next_line(env):
    """Verify a saved offset inside a line (the file changed under it, or an older state) is not
    resumed mid-line: the rest of that line — here a well-formed XID 79 line of its own — is skipped
    and counted, and the next line is published."""
    client, _work, log, state, start = env
    head = "".join(mapping(i) for i in range(N_GPUS)) + syslog_xid(0, 79)
    log.write_text(head)
    inside = head.rindex("NVRM: Xid")
    save_state(state, log, offset=inside)  # no `check`: as an older monitor saved it
    mon = start()
    append(log, xid(1, 48))
    wait_for("GPU 1 Xid48", faulted(client, 1, 48), mon)
    wait_for("the cursor at the end", lambda: caught_up(state, log), mon)
    assert kmsg_cond(client, 0) == ("", "")
    assert mon.counter("nvsentinel_kmsg_lines_skipped", reason="resync") == 1
    assert "saved cursor is inside a line" in mon.log()
    assert mon.stop() == 0


def test_a_line_that_makes_the_handler_raise_is_skipped(env, tmp_path):
    """Verify (in-process; the bug is injected, the file, decoder and server are real) a line whose
    handling raises is skipped with a count, the cursor moves past it, and the next line applies."""
    client, _work, log, _state, _start = env
    log.write_text("".join(mapping(i) for i in range(N_GPUS)) + xid(0, 13) + xid(1, 79))

    class Buggy(KmsgMonitor):
        def handle(self, ev):  # a bug that only XID 13 reaches
            if ev.xid == 13:
                raise RuntimeError("injected bug")
            return super().handle(ev)

    mon = Buggy(client, str(log), str(tmp_path / "s.json"))
    try:
        while mon.step():
            pass
        assert kmsg_cond(client, 1) == ("False", "Xid79")
        assert mon.metrics.value("nvsentinel_kmsg_lines_skipped", reason="handler_error") == 1
        saved, _ = cursor_mod.load(str(tmp_path / "s.json"))
        assert saved.offset == log.stat().st_size and not saved.has_inflight()
    finally:
        mon.close()


# ---- flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (("--state-file", "a/" * 5000 + "x"), "--state-file is too long"),
        (("--state-file", "/tmp/" + "x" * 300 + "/state.json"), "--state-file has a path component of 300 bytes"),
        (("--state-file", "{tmp}/a-file/deeper/state.json"), "is not a directory, so its directory cannot be created"),
        (("--state-file", "{tmp}"), "is a directory; it must name a file"),
        (("--state-file", "{tmp}/"), "ends with '/'; it must name a file"),
        (("--state-file", "{tmp}/kern.log"), "is the --source file"),
        (("--max-line-bytes", "100"), "--max-line-bytes must be 4096..16777216, got 100"),
        (("--max-line-bytes", str(1 << 30)), "--max-line-bytes must be 4096..16777216"),
        (("--max-line-bytes", "lots"), "--max-line-bytes"),
        (("--metrics-port", "70000"), "--metrics-port must be 0..65535"),
    ],
)
def test_bad_flags_one_line_exit_2(tmp_path, flags, text):
    """Verify bad --state-file paths and out-of-range limits, through the real CLI: exit 2, one line
    on stderr naming the flag, no traceback."""
    (tmp_path / "kern.log").write_text("")
    (tmp_path / "a-file").write_text("")
    args = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    if "--state-file" not in args:
        args += ["--state-file", str(tmp_path / "state.json")]
    proc = subprocess.run([*CLI, "kmsg-monitor", "--address", "127.0.0.1:1", "--source", str(tmp_path / "kern.log"),
                           *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert text in proc.stderr


def test_deep_but_valid_state_file_is_created(env):
    """Verify a deeply nested state file whose directories do not exist yet is accepted and created."""
    client, work, log, _state, _start = env
    deep = work.joinpath(*["d"] * 200, "state.json")
    mon = Monitor("--address", "127.0.0.1:1", "--source", str(log), "--state-file", str(deep), "--poll-interval", "0.02")
    try:
        append(log, "hello\n")
        wait_for("the deep state file", lambda: deep.exists() and json.loads(deep.read_text())["offset"] == 6, mon)
    finally:
        mon.close()


def test_unwritable_state_dir_exit_2(tmp_path):
    """Verify a --state-file whose directory cannot be created (a read-only parent, for a monitor
    without DAC override) exits 2 with one line before the monitor starts."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "running as root: setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE"
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    (tmp_path / "kern.log").write_text("")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    ro.chmod(0o555)
    try:
        proc = subprocess.run([*prefix, *CLI, "kmsg-monitor", "--address", "127.0.0.1:1",
                               "--source", str(tmp_path / "kern.log"), "--state-file", str(ro / "sub" / "state.json")],
                              capture_output=True, text=True, timeout=60)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot create or write files in" in proc.stderr
