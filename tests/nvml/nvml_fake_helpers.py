"""Run fake-NVML scenarios in child processes.

The fake must be loaded before pynvml loads a library, and a process keeps its NVML library for
life, so every scenario runs the real pynvml in a fresh interpreter.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

PRELUDE = """\
import ctypes, json, os, sys, time
from nvsentinel.devtools import fake_nvml
"""

# Registers every GPU for XID, ECC and GPU-unavailable (as far as supported), prints "ready", then
# prints one JSON line per wait result. Handles map to indexes without an NVML call, so a lost GPU
# cannot break the printing.
EVENT_LOOP = """\
fake_nvml.load(topology=os.environ.get("TOPOLOGY"), control=os.environ["CONTROL"])
import pynvml as N
N.nvmlInit()
wanted = (N.nvmlEventTypeXidCriticalError | N.nvmlEventTypeDoubleBitEccError
          | N.nvmlEventTypeSingleBitEccError | N.nvmlEventTypeGpuUnavailableError)
s = N.nvmlEventSetCreate()
index = {}
for i in range(N.nvmlDeviceGetCount()):
    h = N.nvmlDeviceGetHandleByIndex(i)
    index[ctypes.cast(h, ctypes.c_void_p).value] = i
    N.nvmlDeviceRegisterEvents(h, N.nvmlDeviceGetSupportedEventTypes(h) & wanted, s)
print("ready", flush=True)
while True:
    try:
        e = N.nvmlEventSetWait(s, int(os.environ.get("WAIT_MS", "5000")))
    except N.NVMLError as exc:
        print(json.dumps({"error": type(exc).__name__}), flush=True)
        if isinstance(exc, N.NVMLError_GpuIsLost):
            time.sleep(0.05)
        continue
    gpu = index[ctypes.cast(e.device, ctypes.c_void_p).value]
    print(json.dumps({"gpu": gpu, "type": e.eventType, "data": e.eventData,
                      "gi": e.gpuInstanceId}), flush=True)
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without any NVSENTINEL_FAKE_NVML_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVSENTINEL_FAKE_NVML")}
    env.update(extra)
    return env


def run_script(body: str, *, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run PRELUDE + body in a fresh interpreter; fail with its stderr if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else clean_env(),
    )
    assert proc.returncode == 0, f"scenario failed (rc={proc.returncode}):\n{proc.stderr}"
    return proc


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON document on the last stdout line of a finished scenario."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Child:
    """A long-running scenario whose stdout lines are read with a deadline."""

    def __init__(self, body: str, env: dict[str, str]) -> None:
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buf = b""
        self._stderr_text = ""

    def readline(self, timeout: float) -> str:
        """The next stdout line, or AssertionError (with the child's stderr) after `timeout` s."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no line from the child within {timeout} s:\n{self.stderr()}")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise AssertionError(f"the child exited (rc={self.proc.wait()}):\n{self.stderr()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def read_json(self, timeout: float, skip_timeouts: bool = True) -> dict[str, Any]:
        """The next JSON line, skipping wait timeouts unless asked not to."""
        while True:
            doc = json.loads(self.readline(timeout))
            if not (skip_timeouts and doc.get("error") == "NVMLError_Timeout"):
                return doc

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def close(self) -> str:
        """Stop the child (idempotent); returns its stderr."""
        if self._stderr.closed:
            return self._stderr_text
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr_text = self.stderr()
        self._stderr.close()
        return self._stderr_text

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The fake's default 8×H100 topology, in device-index order (docs/fake-nvml.md).
UUIDS = [
    "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb",
    "GPU-976baef6-3b1f-dc48-2908-168925b1cdbf",
    "GPU-0d1b0f43-1453-595a-d607-8ca6a707ec5e",
    "GPU-e7b01a4c-23be-ec6e-51b4-457253d5dcb5",
    "GPU-e1e1a66f-fac2-ceba-e5c7-a20a37641d4f",
    "GPU-5e9d0ca7-4e0a-ab77-b3fb-a13a10f842a5",
    "GPU-52b81f07-a3a7-4f63-8230-94a60121e489",
    "GPU-fbb47182-3151-f650-bb28-627c0c4b623c",
]

#: The default PCI bus ids as NVML writes them, in device-index order (docs/fake-nvml.md).
BUS_IDS = [f"00000000:{bus}:00.0" for bus in ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")]

#: The default board serials, in device-index order (docs/fake-nvml.md); 13 digits, like an H100's.
SERIALS = [
    "1584599117040",
    "3445944457933",
    "6862077252711",
    "2645154599609",
    "3533968738104",
    "9650881804520",
    "9435417890636",
    "5737694684938",
]

#: NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, the one field id the fake answers.
FI_RECOVERY_ACTION = 230
