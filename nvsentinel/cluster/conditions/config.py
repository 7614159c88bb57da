"""Settings of the conditions controller: a documented dataclass the `controllers` command turns into flags."""
from __future__ import annotations

import dataclasses

from nvsentinel.service.settings import setting

__all__ = ["NodeConditionsConfig", "MIRROR_MODES"]

#: off: our condition only; external: also the mirror on nodes handed to an external repairer; always: on every
#: node with an open fault.
MIRROR_MODES = ("off", "external", "always")


@dataclasses.dataclass(frozen=True)
class NodeConditionsConfig:
    node_condition_mirror: str = setting(
        "off", help="also write AcceleratedHardwareReady=False (reason NvidiaXID<n>Error, what EKS node auto repair "
        "and Karpenter's node repair act on): off, external (only on nodes handed to an external repairer, "
        "--remediation-mode external, so one system repairs a node) or always (every node with an open fault)",
        metavar="MODE")
    # no flags of their own: `nvsentinel controllers` passes the chain's --node-selector and --event-selector
    node_selector: str = ""
    event_selector: str = ""

    def validate(self) -> None:
        if self.node_condition_mirror not in MIRROR_MODES:
            raise ValueError(f"--node-condition-mirror must be one of {', '.join(MIRROR_MODES)}, "
                             f"got {self.node_condition_mirror!r}")
