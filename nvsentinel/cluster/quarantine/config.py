"""Settings of the quarantine controller: a documented dataclass the `controllers` command turns into flags."""
from __future__ import annotations

import dataclasses

from nvsentinel.cluster.ownership import TAINT_KEY
from nvsentinel.policy.handoff import ModeRule, RemediationMode, parse_mode_rules
from nvsentinel.service.settings import setting

__all__ = ["QuarantineConfig", "BREAKER_CONFIGMAP", "TAINT_KEY"]

#: Where the breaker's state lives (in the controllers' namespace), so `nvsentinel breaker` and a
#: new leader see the same trip.
BREAKER_CONFIGMAP = "nvsentinel-circuit-breaker"
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclasses.dataclass(frozen=True)
class QuarantineConfig:
    breaker_percent: float = setting(
        10.0, help="percent of GPU nodes nvsentinel may cordon within the window; upstream saw one bad job "
        "flag 77 nodes in 11 racks, so a mass event must stop at a fraction of the fleet")
    breaker_max_nodes: int = setting(
        50, help="absolute cap on nodes cordoned within the window, whatever the fleet size")
    breaker_window: float = setting(
        600.0, help="seconds: the sliding window the breaker counts cordons in; also how long a trip lasts "
        "unless an operator resets it (10 min: longer than one job's crash cascade)")
    breaker_configmap: str = setting(BREAKER_CONFIGMAP, help="ConfigMap (controllers' namespace) holding the "
                                     "breaker state", metavar="NAME")
    taint_key: str = setting(TAINT_KEY, help="taint key put on quarantined nodes")
    taint_value: str = setting("true", help="taint value")
    taint_effect: str = setting("NoSchedule", help="taint effect: NoSchedule keeps running pods (the drain "
                                "controller evicts them, respecting PDBs); NoExecute would bypass PDBs")
    hold_requeue: float = setting(5.0, help="seconds between re-checks of an event held by the open breaker")
    node_missing_requeue: float = setting(30.0, help="seconds between re-checks of an event whose Node does "
                                          "not exist (yet)")
    node_selector: str = setting("", help="label selector: only these nodes are quarantined and counted as "
                                 "the fleet (empty: all nodes)", metavar="SELECTOR")
    event_selector: str = setting("", help="label selector on HealthEvents this controller handles (empty: "
                                  "all)", metavar="SELECTOR")
    remediation_mode: str = setting(
        "nvsentinel", help="who remediates a quarantined node that no --remediation-mode-rules entry matches: "
        "nvsentinel (the whole chain), external (quarantine, set the Node condition, recommend, and stop: another "
        "system repairs) or approve (drain, then wait for `nvsentinel approve`)", metavar="MODE")
    remediation_mode_rules: str = setting(
        "", help='JSON list of {"nodeSelector": SELECTOR, "mode": MODE}; the first rule whose selector matches the '
        "node decides its mode (docs/integrations.md)", metavar="JSON")
    # no flag of its own: `nvsentinel controllers` passes the drain stage's --drain-scope (a GPU-scoped quarantine
    # leaves the node schedulable where that is safe)
    drain_scope: str = "node"

    @property
    def mode_rules(self) -> tuple[ModeRule, ...]:
        return parse_mode_rules(self.remediation_mode_rules)

    @property
    def default_mode(self) -> RemediationMode:
        return RemediationMode(self.remediation_mode)

    def validate(self) -> None:
        if not 0 < self.breaker_percent <= 100:
            raise ValueError(f"--breaker-percent must be in (0, 100], got {self.breaker_percent}")
        if self.breaker_max_nodes < 1:
            raise ValueError(f"--breaker-max-nodes must be >= 1, got {self.breaker_max_nodes}")
        if not 1 <= self.breaker_window <= 7 * 86400:
            raise ValueError(f"--breaker-window must be 1..604800 seconds, got {self.breaker_window}")
        if not self.breaker_configmap:
            raise ValueError("--breaker-configmap must not be empty")
        if not self.taint_key:
            raise ValueError("--taint-key must not be empty")
        if self.taint_effect not in _EFFECTS:
            raise ValueError(f"--taint-effect must be one of {', '.join(_EFFECTS)}, got {self.taint_effect!r}")
        if self.remediation_mode not in {m.value for m in RemediationMode}:
            raise ValueError(f"--remediation-mode must be one of {', '.join(m.value for m in RemediationMode)}, "
                             f"got {self.remediation_mode!r}")
        self.mode_rules  # raises ValueError naming the bad rule
        for name in ("hold_requeue", "node_missing_requeue"):
            value = getattr(self, name)
            if not 0.01 <= value <= 3600:
                raise ValueError(f"--{name.replace('_', '-')} must be 0.01..3600 seconds, got {value}")
