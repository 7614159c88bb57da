"""Daemons under test as real processes (`python -m nvsentinel.daemons.<name>`), with their logs kept."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence


class Daemon:
    def __init__(self, module: str, args: Sequence[str], *, env: dict[str, str] | None = None,
                 name: str | None = None) -> None:
        self.name = name or module
        self.cmd = [sys.executable, "-m", f"nvsentinel.daemons.{module}", *args]
        # PYTHONSAFEPATH: the child imports the installed package, never the source tree in the cwd
        # (which lacks the compiled modules and the daemons/ → nvsentinel.daemons mapping)
        self.env = {**(env or os.environ), "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}
        self.log: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None

    def start(self) -> Daemon:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=self.env)
        self._pump = threading.Thread(target=self._read, daemon=True, name=f"log-{self.name}")
        self._pump.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def text(self) -> str:
        return "".join(self.log)

    def wait_log(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {needle!r} in {timeout} s:\n{self.text()[-4000:]}")
            time.sleep(0.02)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited rc={self.proc.returncode}:\n{self.text()[-4000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.name} ignored SIGTERM for {timeout} s:\n{self.text()[-4000:]}")
        return int(self.proc.returncode)

    def close(self) -> None:
        self.kill()
        if self._pump is not None:
            self._pump.join(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


def wait_until(pred: Callable[[], object], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.02, daemons: Sequence[Daemon] = ()) -> object:
    """Poll `pred` until it returns something truthy; fail with the daemons' logs otherwise."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as exc:  # noqa: BLE001 - a transient read failure is retried until the deadline
            last = exc
        else:
            if last:
                return last
        for d in daemons:
            d.check_alive()
        time.sleep(interval)
    logs = "\n".join(f"--- {d.name}\n{d.text()[-3000:]}" for d in daemons)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs}")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; (0, "") when nothing listens."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""
