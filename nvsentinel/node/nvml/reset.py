"""Resetting one GPU, for the gpu-reset handshake (docs/conditions.md, "GPU reset handshake").

NVML has no public GPU reset (`nvidia-smi -r` uses driver internals; pynvml's `nvmlDeviceReset*`
reset clocks and counters), so a real node runs a command (the fake libnvidia-ml's resetter is in
`nvsentinel.devtools.fake_nvml`, wired only by `--fake-nvml`). A resetter only resets:
re-verifying the GPU through NVML is the provider's part.

This module imports no pynvml.
"""
from __future__ import annotations

import shlex
import subprocess
from typing import Final, Protocol

from nvsentinel.node.nvml_settings import DEFAULT_RESET_COMMAND, parse_template

__all__ = [
    "DEFAULT_RESET_COMMAND",
    "DEFAULT_TIMEOUT",
    "ResetError",
    "Resetter",
    "CommandResetter",
    "parse_template",
    "make_resetter",
]

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


def make_resetter(template: str, *, timeout: float = DEFAULT_TIMEOUT) -> Resetter | None:
    """The resetter a provider uses: None when resets are disabled (an empty template)."""
    if not template.strip():
        return None
    return CommandResetter(template, timeout=timeout)
