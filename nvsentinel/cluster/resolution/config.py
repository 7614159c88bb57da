"""Settings of the resolution controller: a documented dataclass the `controllers` command turns into flags."""
from __future__ import annotations

import dataclasses
import datetime as _dt

from nvsentinel.cluster.ownership import TAINT_KEY
from nvsentinel.service.settings import setting

__all__ = ["ResolutionConfig"]


@dataclasses.dataclass(frozen=True)
class ResolutionConfig:
    max_clock_skew: float = setting(60.0, help="seconds an event's spec.detectedAt may run ahead of its creation "
                                    "time; later dates count as creation + this (a node clock ahead, or a lie, "
                                    "cannot date a recovery after a later fault)")
    resolve_nodewide_healthy: bool = setting(False, help="let a healthy event that names no GPU resolve every "
                                             "fault of its node (off: it must name the GPU)")
    node_gone_grace: float = setting(300.0, help="seconds after its creation an open HealthEvent whose Node the API "
                                     "server does not have (404) is closed, Cancelled with NodeGone (an event may "
                                     "arrive before its Node registers)")
    # no flags of their own: `nvsentinel controllers` passes the chain's --taint-key (the quarantine stage's: our
    # taint must not outlive the quarantine), --node-selector and --event-selector
    taint_key: str = TAINT_KEY
    node_selector: str = ""
    event_selector: str = ""

    @property
    def skew(self) -> _dt.timedelta:
        return _dt.timedelta(seconds=self.max_clock_skew)

    def validate(self) -> None:
        if not self.taint_key:
            raise ValueError("--taint-key must not be empty")
        if not 0 <= self.max_clock_skew <= 86400:
            raise ValueError(f"--max-clock-skew must be between 0 and 86400 seconds, got {self.max_clock_skew}")
        if not 0 <= self.node_gone_grace <= 30 * 86400:
            raise ValueError(f"--node-gone-grace must be between 0 and 2592000 seconds, got {self.node_gone_grace}")
