"""The NVML settings two components take: the NVML provider (`nvml-provider`) and the device API
server's embedded provider (`device-api-server --enable-nvml-provider`). Here: the reset command's
default and grammar (docs/conditions.md, "GPU reset handshake"), and the checks both run."""
from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Final

__all__ = ["DEFAULT_RESET_COMMAND", "parse_template", "check_nvml_settings"]

#: What a real node runs; `{uuid}` and `{index}` are replaced in every argument.
DEFAULT_RESET_COMMAND: Final = "nvidia-smi --gpu-reset -i {uuid}"


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
                        fake_control: str) -> None:
    """ValueError naming the flag when an NVML setting is unusable."""
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
