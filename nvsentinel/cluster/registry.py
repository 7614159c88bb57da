"""The stages of the controller chain, in one list: name, own settings, and how to build each one.

`nvsentinel controllers` takes its flags from here (each stage's settings dataclass, under the
`CONTROLLERS_` prefix), validates `--controllers` against it, and builds the reconcilers from it in
chain order. A new stage is one `Stage` entry (docs/architecture.md).

The quarantine settings' `--taint-key`, `--node-selector` and `--event-selector` apply to the whole
chain: resolution must remove the taint quarantine put, on the same nodes and events.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from nvsentinel.cluster.conditions.config import NodeConditionsConfig
from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.remediation.config import RemediationConfig
from nvsentinel.cluster.resolution.config import ResolutionConfig

if TYPE_CHECKING:
    from nvsentinel.k8s.runtime.controller import Reconciler

__all__ = ["ChainSettings", "Stage", "STAGES", "STAGE_NAMES", "CONTROLLER_CONFIGS", "build_reconcilers"]


class ChainSettings(Protocol):
    """What the stages take from the chain's own settings (`nvsentinel.cluster.settings.ControllersSettings`)."""

    controllers: Sequence[str]
    namespace: str
    policy_configmap: str


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    """As `--controllers` names it."""
    build: Callable[[ChainSettings, Mapping[str, Any]], Reconciler]
    """(chain settings, every stage's resolved settings by name) → the reconciler."""
    settings: type | None = None
    """Its own settings dataclass, resolved from the same flags; None: derived from the chain's."""


def _quarantine(settings: ChainSettings, configs: Mapping[str, Any]) -> Reconciler:
    from nvsentinel.cluster.quarantine.controller import QuarantineController

    d: DrainConfig = configs["drain"]
    return QuarantineController(dataclasses.replace(configs["quarantine"], drain_scope=d.drain_scope))


def _conditions(settings: ChainSettings, configs: Mapping[str, Any]) -> Reconciler:
    from nvsentinel.cluster.conditions.controller import NodeConditionsController

    q: QuarantineConfig = configs["quarantine"]
    return NodeConditionsController(dataclasses.replace(configs["conditions"], node_selector=q.node_selector,
                                                        event_selector=q.event_selector))


def _drain(settings: ChainSettings, configs: Mapping[str, Any]) -> Reconciler:
    from nvsentinel.cluster.drain.controller import DrainController

    q: QuarantineConfig = configs["quarantine"]
    return DrainController(dataclasses.replace(configs["drain"], node_selector=q.node_selector,
                                               event_selector=q.event_selector))


def _remediation(settings: ChainSettings, configs: Mapping[str, Any]) -> Reconciler:
    from nvsentinel.cluster.remediation.controller import RemediationController

    q: QuarantineConfig = configs["quarantine"]
    return RemediationController(dataclasses.replace(
        configs["remediation"], namespace=settings.namespace, node_selector=q.node_selector,
        event_selector=q.event_selector))


def _resolution(settings: ChainSettings, configs: Mapping[str, Any]) -> Reconciler:
    from nvsentinel.cluster.resolution.controller import ResolutionController

    q: QuarantineConfig = configs["quarantine"]
    return ResolutionController(dataclasses.replace(configs["resolution"], taint_key=q.taint_key,
                                                    node_selector=q.node_selector, event_selector=q.event_selector))


def _ttl(settings: ChainSettings, configs: Mapping[str, Any]) -> Reconciler:
    from nvsentinel.cluster.ttl.config import TTLConfig
    from nvsentinel.cluster.ttl.controller import TTLController

    q: QuarantineConfig = configs["quarantine"]
    return TTLController(TTLConfig(policy_configmap=settings.policy_configmap, event_selector=q.event_selector))


#: The chain, in order.
STAGES: tuple[Stage, ...] = (
    Stage("quarantine", _quarantine, QuarantineConfig),
    Stage("conditions", _conditions, NodeConditionsConfig),
    Stage("drain", _drain, DrainConfig),
    Stage("remediation", _remediation, RemediationConfig),
    Stage("resolution", _resolution, ResolutionConfig),
    Stage("ttl", _ttl),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
#: Each stage's own settings dataclass, resolved from the controllers' flags and environment prefix.
CONTROLLER_CONFIGS: dict[str, type] = {s.name: s.settings for s in STAGES if s.settings is not None}


def build_reconcilers(settings: ChainSettings, configs: Mapping[str, Any]) -> list[Reconciler]:
    """One reconciler per `--controllers` entry, in the order given (validated against `STAGE_NAMES`)."""
    by_name = {s.name: s for s in STAGES}
    return [by_name[name].build(settings, configs) for name in settings.controllers]
