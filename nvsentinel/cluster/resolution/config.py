"""Settings of the resolution controller: a documented dataclass the `controllers` command turns into flags."""
from __future__ import annotations

import dataclasses
import datetime as _dt

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
    max_clock_skew: float = setting(60.0, help="seconds an event's spec.detectedAt may run ahead of its creation "
                                    "time; later dates count as creation + this (a node clock ahead, or a lie, "
                                    "cannot date a recovery after a later fault)")
    resolve_nodewide_healthy: bool = setting(False, help="let a healthy event that names no GPU resolve every "
                                             "fault of its node (off: it must name the GPU)")

    @property
    def skew(self) -> _dt.timedelta:
        return _dt.timedelta(seconds=self.max_clock_skew)

    def validate(self) -> None:
        if not self.taint_key:
            raise ValueError("--taint-key must not be empty")
        if not 0 <= self.max_clock_skew <= 86400:
            raise ValueError(f"--max-clock-skew must be between 0 and 86400 seconds, got {self.max_clock_skew}")
