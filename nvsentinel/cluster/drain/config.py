"""Settings of the drain controller: a documented dataclass the `controllers` command turns into flags."""
from __future__ import annotations

import dataclasses

from nvsentinel.policy.healthevent import DrainScope
from nvsentinel.service.settings import setting

__all__ = ["DrainConfig"]


@dataclasses.dataclass(frozen=True)
class DrainConfig:
    drain_skip_namespaces: str = setting(
        "kube-system", help="comma-separated namespaces whose pods are never evicted (system agents keep "
        "the node manageable)", metavar="NS,...")
    drain_pdb_retry: float = setting(
        5.0, help="seconds between eviction retries while a PodDisruptionBudget blocks (429)")
    drain_timeout: float = setting(
        600.0, help="seconds from the Draining transition after which the drain counts as timed out")
    drain_force_delete: bool = setting(
        False, help="after --drain-timeout, delete the remaining pods with grace 0 (bypasses PDBs); "
        "otherwise keep waiting with reason DrainTimeout")
    drain_grace_period: int = setting(30, help="gracePeriodSeconds sent with each eviction")
    drain_poll: float = setting(
        2.0, help="seconds between re-checks while evicted pods are still terminating")
    drain_scope: str = setting(
        "node", help="node: evict every pod of a quarantined node; gpu: only the pods on the event's GPUs, from the "
        "pod mapping the publisher records (kubelet PodResources API), falling back to the node, with the reason, "
        "when that is not known to be enough (docs/drain.md)", metavar="SCOPE")
    # no flags of their own: `nvsentinel controllers` passes the chain's --node-selector and
    # --event-selector (the quarantine settings), so every stage handles the same nodes and events
    node_selector: str = ""
    event_selector: str = ""

    @property
    def skip_namespaces(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.drain_skip_namespaces.split(",") if n.strip())

    def validate(self) -> None:
        if self.drain_scope not in {s.value for s in DrainScope}:
            raise ValueError(f"--drain-scope must be node or gpu, got {self.drain_scope!r}")
        for name in ("drain_pdb_retry", "drain_poll"):
            value = getattr(self, name)
            if not 0.01 <= value <= 3600:
                raise ValueError(f"--{name.replace('_', '-')} must be 0.01..3600 seconds, got {value}")
        if not 1 <= self.drain_timeout <= 7 * 86400:
            raise ValueError(f"--drain-timeout must be 1..604800 seconds, got {self.drain_timeout}")
        if not 0 <= self.drain_grace_period <= 3600:
            raise ValueError(f"--drain-grace-period must be 0..3600, got {self.drain_grace_period}")
