"""What the kernel-log monitor's end-to-end tests share: the real daemon in a subprocess, a state wait, a log file."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from nvsentinel import errors

#: Seconds a test waits for a state (generous: the suite runs on busy machines).
DEADLINE = 45.0

_BIN = Path(sys.executable).parent / "nvsentinel"
CLI = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "nvsentinel"]


def append(path: Path, text: str | bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Monitor:
    """`nvsentinel kmsg-monitor` in a subprocess, stderr in a temp file, /metrics on a free port."""

    def __init__(self, *flags: str, prefix: tuple[str, ...] = ()) -> None:
        self._log = tempfile.TemporaryFile()
        self.metrics_port = free_port()
        try:
            self.proc = subprocess.Popen(
                [*prefix, *CLI, "kmsg-monitor", "--metrics-port", str(self.metrics_port), *flags],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
                # faulthandler: a SIGABRT (sent when it will not stop) writes every thread's stack to the log
                env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1"),
            )
        except BaseException:
            self._log.close()
            raise

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _sample(self, name: str, labels: dict[str, str]) -> tuple[bool, float | None]:
        """(answered, value) of one sample of the daemon's /metrics; value None when absent."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return False, None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return True, sample.value
        return True, None

    def counter(self, name: str, **labels: str) -> float | None:
        """A counter from the daemon's /metrics (None while it does not answer yet; 0 before it moved)."""
        answered, value = self._sample(name + "_total", labels)
        return (value if value is not None else 0.0) if answered else None

    def gauge(self, name: str, **labels: str) -> float | None:
        """A sample from the daemon's /metrics by its exact name (None when absent or not answering)."""
        return self._sample(name, labels)[1]

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self) -> int:
        """SIGTERM, and its exit status. One that does not stop within DEADLINE (a busy machine can take seconds)
        is made to dump its threads' stacks (SIGABRT) and the test fails showing them."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(15)
                raise AssertionError(f"kmsg-monitor ignored SIGTERM for {DEADLINE:g} s; its log ends:\n"
                                     f"{self.log()[-6000:]}") from None
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(15)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)
        self._log.close()


def wait_for(what: str, check: Callable[[], object], mon: Monitor, timeout: float = DEADLINE) -> object:
    """Poll `check` until it returns something true; fail with the monitor's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (errors.NvsentinelError, OSError, ValueError, KeyError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        assert mon.proc.poll() is None, f"monitor exited rc={mon.proc.returncode}:\n{mon.log()}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}); monitor log:\n{mon.log()}")


def at_least(mon: Monitor, n: float, name: str, **labels: str) -> Callable[[], bool]:
    return lambda: (mon.counter(name, **labels) or 0) >= n
