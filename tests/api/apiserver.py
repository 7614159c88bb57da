"""Test helpers: a real Device API server on real sockets, in a thread or in a subprocess."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from nvsentinel.node.api.config import DeviceApiSettings
from nvsentinel.node.api.server import DeviceApiServer


def socket_dir() -> str:
    """A short directory for unix sockets (paths must stay under ~108 bytes)."""
    return tempfile.mkdtemp(prefix="nvs-", dir="/tmp")


def make_settings(sock_dir: str, **overrides: Any) -> DeviceApiSettings:
    base = dict(
        grpc_address="127.0.0.1:0",
        unix_socket=os.path.join(sock_dir, "device.sock"),
        health_port=0,
        metrics_port=0,
        shutdown_delay=0.0,
        shutdown_timeout=5.0,
        ready_timeout=30.0,
        watch_burst=1000,
        watch_rate=1000.0,
    )
    base.update(overrides)
    return DeviceApiSettings(**base)


class ThreadServer:
    """A DeviceApiServer on its own event loop in a background thread."""

    def __init__(self, settings: DeviceApiSettings, extra_handlers=()) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.server = DeviceApiServer(settings, extra_handlers=extra_handlers)
        self._thread = threading.Thread(target=self.loop.run_forever, name="api-server", daemon=True)

    def start(self) -> ThreadServer:
        self._thread.start()
        self.call(self.server.start())
        return self

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_sync(self, fn, *args):
        async def wrapper():
            return fn(*args)

        return self.call(wrapper())

    @staticmethod
    async def _cancel_leftovers() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.server.tcp_port}"

    @property
    def unix(self) -> str:
        return f"unix://{self.settings.unix_socket}"

    @property
    def store(self):
        return self.server.store

    def http(self, port_kind: str, path: str) -> tuple[int, str]:
        port = self.server.health_port if port_kind == "health" else self.server.metrics_port
        return http_get(port, path)

    def stop(self, **kwargs) -> None:
        if self.loop.is_running():
            self.call(self.server.stop(**kwargs))
            self.call(self._cancel_leftovers())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclasses.dataclass
class SubprocessServer:
    """The real daemon: `python -m nvsentinel.daemons.device_api_server` with flags."""

    proc: subprocess.Popen
    tcp_port: int
    health_port: int
    metrics_port: int
    unix_socket: str
    log: list[str]

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    @property
    def unix(self) -> str:
        return f"unix://{self.unix_socket}"

    @classmethod
    def start(cls, sock_dir: str, *flags: str, tcp_port: int = 0, timeout: float = 20,
              env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> SubprocessServer:
        """Start the daemon (later flags override the defaults here, e.g. `--grpc-address ""`;
        `prefix` runs it under another command, e.g. `unshare`)."""
        sock = os.path.join(sock_dir, "device.sock")
        cmd = [
            *prefix, sys.executable, "-m", "nvsentinel.daemons.device_api_server",
            "--grpc-address", f"127.0.0.1:{tcp_port}", "--unix-socket", sock,
            "--health-port", "0", "--metrics-port", "0", "--shutdown-delay", "0.3",
            "--watch-burst", "1000", *flags,
        ]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        log: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            log.append(line)
            if "msg=listening" in line:
                ports = dict(re.findall(r"(\w+_port)=(\d+)", line))  # grpc_port=- : no TCP listener
                server = cls(proc, int(ports.get("grpc_port", 0)), int(ports["health_port"]), int(ports["metrics_port"]),
                             sock, log)
                server._pumper = threading.Thread(target=server._pump, daemon=True)
                server._pumper.start()
                return server
        proc.kill()
        proc.wait(10)
        proc.stderr.close()
        raise RuntimeError("server did not start:\n" + "".join(log))

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def terminate(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        pumper = getattr(self, "_pumper", None)
        if pumper is not None:
            pumper.join(5)
        if not self.proc.stderr.closed:
            self.proc.stderr.close()


@contextlib.contextmanager
def temp_socket_dir():
    d = socket_dir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def take(stream, n, timeout=10):
    """The next n events of a WatchStream (fails the test on timeout)."""
    out = []
    failure = []
    done = threading.Event()

    def run():
        try:
            for ev in stream:
                out.append(ev)
                if len(out) == n:
                    break
        except Exception as exc:  # handed to the test thread
            failure.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    if not done.wait(timeout):
        stream.cancel()
        raise AssertionError(f"got {len(out)} of {n} events: {[(e.type, e.resource_version) for e in out]}")
    if failure:
        raise failure[0]
    return out
