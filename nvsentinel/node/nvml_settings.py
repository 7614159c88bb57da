"""The NVML settings two components take: the NVML provider (`nvml-provider`) and the device API
server's embedded provider (`device-api-server --enable-nvml-provider`). Here: the reset command's
default and grammar (docs/conditions.md, "GPU reset handshake"), the health poll and NVML call
deadline defaults and ranges (docs/conditions.md, "Recovery action", "A hung driver"), and the
checks both run."""
from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Final

__all__ = ["DEFAULT_RESET_COMMAND", "DEFAULT_HEALTH_POLL_INTERVAL", "DEFAULT_NVML_CALL_TIMEOUT",
           "HEALTH_POLL_RANGE", "NVML_CALL_TIMEOUT_RANGE", "parse_template", "check_nvml_settings"]

#: What a real node runs; `{uuid}` and `{index}` are replaced in every argument.
DEFAULT_RESET_COMMAND: Final = "nvidia-smi --gpu-reset -i {uuid}"
#: Seconds between reads of every GPU's recovery action: a level the driver may change with no
#: event on an older driver, cheap to read (one field query per GPU).
DEFAULT_HEALTH_POLL_INTERVAL: Final = 5.0
HEALTH_POLL_RANGE: Final = (0.05, 3600.0)
#: Seconds an NVML call on a GPU may take before the GPU is Unknown (NvmlUnresponsive). NVML
#: queries answer in microseconds to milliseconds; a driver busy with a reset or recovery can take
#: seconds, and flapping to Unknown under load would be noise.
DEFAULT_NVML_CALL_TIMEOUT: Final = 10.0
NVML_CALL_TIMEOUT_RANGE: Final = (0.05, 600.0)


def parse_template(template: str) -> list[str]:
    """The argv of a reset command template; ValueError when it is not a usable command line."""
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise ValueError(f"cannot split {template!r}: {exc}") from None
    if not argv:
        raise ValueError("empty command")
    return argv


def check_nvml_settings(ignored_xids: Iterable[int], reset_command: str, *, fake: bool, fake_topology: str,
                        fake_control: str, health_poll_interval: float = DEFAULT_HEALTH_POLL_INTERVAL,
                        nvml_call_timeout: float = DEFAULT_NVML_CALL_TIMEOUT,
                        poll_flag: str = "--health-poll-interval") -> None:
    """ValueError naming the flag when an NVML setting is unusable (`poll_flag`: the poll interval's
    flag in this daemon; the Device API server's own `--health-*` flags are about itself)."""
    for flag, value, (low, high) in ((poll_flag, health_poll_interval, HEALTH_POLL_RANGE),
                                     ("--nvml-call-timeout", nvml_call_timeout, NVML_CALL_TIMEOUT_RANGE)):
        if not low <= value <= high:
            raise ValueError(f"{flag} must be {low:g}..{high:g} seconds, got {value:g}")
    for xid in ignored_xids:
        if not 0 < xid < 1 << 16:
            raise ValueError(f"--nvml-ignored-xids: {xid} is not an XID")
    if reset_command.strip():
        try:
            parse_template(reset_command)
        except ValueError as exc:
            raise ValueError(f"--nvml-reset-command: {exc}") from None
    if (fake_topology or fake_control) and not fake:
        raise ValueError("--fake-nvml-topology/--fake-nvml-control need --fake-nvml")
