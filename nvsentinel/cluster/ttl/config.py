"""Settings of the TTL controller: a documented dataclass the `controllers` command turns into flags.

Retention itself (TTL, bounds, batch, interval) is not here: it lives in the policy ConfigMap, so an
operator can change it without a restart.
"""
from __future__ import annotations

import dataclasses

from nvsentinel.service.settings import setting

__all__ = ["TTLConfig", "POLICY_CONFIGMAP"]

POLICY_CONFIGMAP = "nvsentinel-policy"


@dataclasses.dataclass(frozen=True)
class TTLConfig:
    policy_configmap: str = setting(POLICY_CONFIGMAP, help="ConfigMap (controllers' namespace) holding the "
                                    "retention policy (<release>-policy)", metavar="NAME")
    event_selector: str = setting("", help="label selector on HealthEvents this controller may delete (empty: "
                                  "all)", metavar="SELECTOR")

    def validate(self) -> None:
        if not self.policy_configmap:
            raise ValueError("--policy-configmap must not be empty")
