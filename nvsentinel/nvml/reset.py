"""Resetting one GPU, for the gpu-reset handshake (docs/conditions.md, "GPU reset handshake").

NVML has no public GPU reset (`nvidia-smi -r` uses driver internals; pynvml's `nvmlDeviceReset*`
reset clocks and counters), so a real node runs a command, and the fake libnvidia-ml exports
`fakeNvmlResetGpu(index)` for the same job. A resetter only resets: re-verifying the GPU through
NVML is the provider's part.

This module imports no pynvml.
"""
from __future__ import annotations

import ctypes
import shlex
import subprocess
from typing import Final, Protocol

from nvsentinel import fake_nvml

__all__ = [
    "DEFAULT_RESET_COMMAND",
    "DEFAULT_TIMEOUT",
    "ResetError",
    "Resetter",
    "CommandResetter",
    "FakeResetter",
    "parse_template",
    "make_resetter",
]

#: What a real node runs; `{uuid}` and `{index}` are replaced in every argument.
DEFAULT_RESET_COMMAND: Final = "nvidia-smi --gpu-reset -i {uuid}"
#: Seconds a reset command may take (nvidia-smi needs a few; a hung driver must not hold the GPU forever).
DEFAULT_TIMEOUT: Final = 120.0
#: Characters of the command's stderr kept in the error (it lands in a GPU condition message).
OUTPUT_TAIL: Final = 300


class ResetError(RuntimeError):
    """The reset did not happen or did not verify: one line, for the `GpuReset` message."""


class Resetter(Protocol):
    description: str
    """For the logs: what a reset runs."""

    def reset(self, index: int, uuid: str) -> None:
        """Reset the GPU; raise ResetError when it fails."""


def parse_template(template: str) -> list[str]:
    """The argv of a reset command template; ValueError when it is not a usable command line."""
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise ValueError(f"cannot split {template!r}: {exc}") from None
    if not argv:
        raise ValueError("empty command")
    return argv


def _one_line(data: bytes) -> str:
    text = " | ".join(line.strip() for line in data.decode(errors="replace").splitlines() if line.strip())
    return text if len(text) <= OUTPUT_TAIL else "…" + text[-OUTPUT_TAIL:]


class CommandResetter:
    """Runs a command per reset (real nodes). Placeholders are replaced literally, not with
    `str.format`, so a template may carry shell braces (`sh -c '... ${X}'`)."""

    def __init__(self, template: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.template = template
        self.argv_template = parse_template(template)
        self.timeout = timeout
        self.description = f"command: {template}"

    def argv(self, index: int, uuid: str) -> list[str]:
        return [a.replace("{uuid}", uuid).replace("{index}", str(index)) for a in self.argv_template]

    def reset(self, index: int, uuid: str) -> None:
        argv = self.argv(index, uuid)
        shown = shlex.join(argv)
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=self.timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise ResetError(f"`{shown}` timed out after {self.timeout:g} s") from None
        except OSError as exc:
            raise ResetError(f"`{shown}` could not run: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            output = _one_line(proc.stderr) or _one_line(proc.stdout) or "no output"
            raise ResetError(f"`{shown}` exited {proc.returncode}: {output}")


class FakeResetter:
    """Resets a GPU of the fake libnvidia-ml loaded in this process (tests and demos)."""

    description = "fake NVML: fakeNvmlResetGpu(index)"

    def __init__(self, fake: fake_nvml.FakeNvml) -> None:
        self._fake = fake
        self._reset = fake.cdll.fakeNvmlResetGpu
        self._reset.argtypes = [ctypes.c_uint]
        self._reset.restype = ctypes.c_int

    def reset(self, index: int, uuid: str) -> None:
        if self._reset(index) != 0:
            raise ResetError(f"fakeNvmlResetGpu({index}) failed: {self._fake.last_error() or 'no reason given'}")


def make_resetter(template: str, *, timeout: float = DEFAULT_TIMEOUT) -> Resetter | None:
    """The resetter a provider uses: None when resets are disabled (an empty template).

    With the fake NVML loaded (only ever explicitly, `--fake-nvml`) the default template resets the
    fake GPU, since there is no nvidia-smi to run; any other template is run as given, so a demo
    or a test can still drive a command (a failing one, say) against the fake.
    """
    if not template.strip():
        return None
    fake = fake_nvml.loaded()
    if fake is not None and template.strip() == DEFAULT_RESET_COMMAND:
        return FakeResetter(fake)
    return CommandResetter(template, timeout=timeout)
