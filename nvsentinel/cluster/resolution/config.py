"""Settings of the resolution controller: a documented dataclass the `controllers` command turns into flags."""
from __future__ import annotations

import dataclasses

from nvsentinel.cluster.ownership import TAINT_KEY
from nvsentinel.service.settings import setting

__all__ = ["ResolutionConfig"]


@dataclasses.dataclass(frozen=True)
class ResolutionConfig:
    taint_key: str = setting(TAINT_KEY, help="taint key removed from released nodes; must match the quarantine "
                             "controller's --taint-key, or our taint would outlive the quarantine")
    node_selector: str = setting("", help="label selector: only these nodes are released (empty: all nodes)",
                                 metavar="SELECTOR")
    event_selector: str = setting("", help="label selector on HealthEvents this controller handles (empty: "
                                  "all)", metavar="SELECTOR")

    def validate(self) -> None:
        if not self.taint_key:
            raise ValueError("--taint-key must not be empty")
