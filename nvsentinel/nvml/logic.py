"""The NVML provider's decisions, with no I/O: event + current view → new view; view → status.

Condition contract (docs/conditions.md): the provider owns one condition type, `NvmlHealthy`
(True = healthy). A fatal finding sets it False with reason `Xid<n>` / `EccDoubleBit` / `GpuLost`
and sets `recommended_action`; only a recovery signal (re-verification after a lost GPU came back,
or a GPU reset the provider performed and re-verified) makes it True again. Benign,
single-bit-ECC and ignored events change nothing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Final

from nvsentinel._proto import gpu_pb2
from nvsentinel.catalog import Action, Catalog, Classification, default_catalog

__all__ = [
    "CONDITION_TYPE",
    "REASON_HEALTHY",
    "REASON_RECOVERED",
    "REASON_LOST",
    "REASON_DBE",
    "REASON_GPU_RESET",
    "Xid",
    "DoubleBitEcc",
    "SingleBitEcc",
    "Lost",
    "Recovered",
    "Reset",
    "Finding",
    "GpuView",
    "Decision",
    "decide",
    "severity",
    "merge_status",
]

CONDITION_TYPE: Final = "NvmlHealthy"
REASON_HEALTHY: Final = "NvmlOk"
REASON_RECOVERED: Final = "Recovered"
REASON_LOST: Final = "GpuLost"
REASON_DBE: Final = "EccDoubleBit"
REASON_GPU_RESET: Final = "GpuReset"

#: How bad an action is; a new fatal finding replaces the current one only if strictly worse.
_SEVERITY: Final = {
    Action.NONE: 0,
    Action.UNKNOWN: 1,
    Action.COMPONENT_RESET: 2,
    Action.RUN_DCGMEUD: 3,
    Action.RUN_FIELDDIAG: 3,
    Action.CONTACT_SUPPORT: 4,
    Action.RESTART_VM: 5,
    Action.REPLACE_VM: 6,
    Action.RESTART_BM: 7,
}


def severity(action: str) -> int:
    try:
        return _SEVERITY[Action(action)]
    except ValueError:
        return 1


# --- events -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Xid:
    xid: int
    classification: Classification | None = None
    """The source's own, line-aware classification when it has one (the kernel log: XID 154's
    action from the line, NVLink5 severity); None: classify the XID number with the catalog."""


@dataclasses.dataclass(frozen=True)
class DoubleBitEcc:
    pass


@dataclasses.dataclass(frozen=True)
class SingleBitEcc:
    pass


@dataclasses.dataclass(frozen=True)
class Lost:
    detail: str = "NVML reports GPU_IS_LOST"


@dataclasses.dataclass(frozen=True)
class Recovered:
    detail: str = "re-verified after the GPU came back"


@dataclasses.dataclass(frozen=True)
class Reset:
    """The provider reset the GPU and re-verified it, as HealthEvent `request` asked."""

    request: str


Event = Xid | DoubleBitEcc | SingleBitEcc | Lost | Recovered | Reset


# --- state --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Finding:
    reason: str
    message: str
    action: Action


@dataclasses.dataclass(frozen=True)
class GpuView:
    """What the provider believes about one GPU: healthy, or one fatal finding."""

    finding: Finding | None = None
    reason_if_healthy: str = REASON_HEALTHY
    message_if_healthy: str = "NVML reports no fatal error"
    sbe_count: int = 0

    @property
    def healthy(self) -> bool:
        return self.finding is None

    def condition(self) -> tuple[str, str, str]:
        """(status, reason, message) of the NvmlHealthy condition."""
        if self.finding is None:
            return "True", self.reason_if_healthy, self.message_if_healthy
        return "False", self.finding.reason, self.finding.message

    @property
    def action(self) -> Action:
        return Action.NONE if self.finding is None else self.finding.action


@dataclasses.dataclass(frozen=True)
class Decision:
    view: GpuView
    changed: bool
    """True when the condition or the action changed (the status must be written)."""
    note: str
    """Why, for the log: fatal, worse, not-worse, benign, ignored, sbe, lost, recovered, healthy, reset."""


def _xid_finding(
    xid: int, reason: str, catalog: Catalog, ignored: Collection[int], cls: Classification | None = None
) -> tuple[Finding | None, str]:
    if xid in ignored:
        return None, "ignored"
    if cls is None:
        cls = catalog.classify(xid)
    if cls.ignored:
        return None, "ignored"
    if not cls.fatal:
        return None, "benign"
    entry = catalog.entry(xid)
    description = entry.description if entry is not None and entry.description else cls.mnemonic
    return Finding(reason, f"XID {xid}: {description}", cls.action), "fatal"


def decide(
    view: GpuView,
    event: Event,
    *,
    catalog: Catalog | None = None,
    ignored_xids: Collection[int] = (),
) -> Decision:
    """The new view of one GPU after `event`."""
    cat = catalog if catalog is not None else default_catalog()
    if isinstance(event, SingleBitEcc):
        return Decision(dataclasses.replace(view, sbe_count=view.sbe_count + 1), False, "sbe")
    if isinstance(event, Recovered):
        if view.finding is None:
            return Decision(view, False, "healthy")
        new = GpuView(None, REASON_RECOVERED, f"NVML healthy again: {event.detail}", view.sbe_count)
        return Decision(new, True, "recovered")
    if isinstance(event, Reset):
        # healthy whatever it was: the reset is the recovery signal, and it names who asked for it
        new = GpuView(None, REASON_GPU_RESET,
                      f"GPU reset and re-verified (requested by HealthEvent {event.request})", view.sbe_count)
        return Decision(new, new.condition() != view.condition() or view.action != Action.NONE, "reset")
    if isinstance(event, Lost):
        cls = cat.classify(kind="fallen_off_bus")
        finding = Finding(REASON_LOST, f"GPU is lost: {event.detail}", cls.action)
        if view.finding is not None and view.finding.reason == REASON_LOST:
            return Decision(view, False, "lost")
        return Decision(dataclasses.replace(view, finding=finding), True, "lost")
    if isinstance(event, Xid):
        finding, note = _xid_finding(event.xid, f"Xid{event.xid}", cat, ignored_xids, event.classification)
    elif isinstance(event, DoubleBitEcc):
        finding, note = _xid_finding(48, REASON_DBE, cat, ignored_xids)
        if finding is not None:
            finding = dataclasses.replace(finding, message="double-bit (uncorrectable) ECC error: " + finding.message)
    else:
        raise TypeError(f"not an NVML provider event: {event!r}")
    if finding is None:
        return Decision(view, False, note)
    if view.finding is not None and severity(finding.action) <= severity(view.finding.action):
        return Decision(view, False, "not-worse")
    return Decision(dataclasses.replace(view, finding=finding), True, "fatal" if view.finding is None else "worse")


def merge_status(
    current: gpu_pb2.GpuStatus, view: GpuView, now_seconds: int, now_nanos: int = 0,
    *, condition_type: str = CONDITION_TYPE,
) -> gpu_pb2.GpuStatus:
    """`current` with only the `condition_type` condition (default NvmlHealthy) replaced by
    `view`'s; other conditions kept. Other detectors reuse it with their own type.

    The transition time changes only when the condition's status changes. `recommended_action`:
    unhealthy → our action unless another provider's False condition already asks for something
    worse; healthy → NONE unless another provider's condition is False (then left alone).
    """
    status, reason, message = view.condition()
    out = gpu_pb2.GpuStatus()
    out.CopyFrom(current)
    del out.conditions[:]
    mine = None
    others_false = False
    new = None
    for cond in current.conditions:
        if cond.type == condition_type:
            if mine is None:  # keep its position; drop duplicates of our type
                mine = cond
                new = out.conditions.add()
        else:
            out.conditions.add().CopyFrom(cond)
            others_false = others_false or cond.status == "False"
    if new is None:
        new = out.conditions.add()
    new.type, new.status, new.reason, new.message = condition_type, status, reason, message
    if mine is not None and mine.status == status:
        new.last_transition_time.CopyFrom(mine.last_transition_time)
    else:
        new.last_transition_time.seconds = now_seconds
        new.last_transition_time.nanos = now_nanos
    if not view.healthy:
        if not (others_false and severity(current.recommended_action) > severity(view.action)):
            out.recommended_action = str(view.action)
    elif not others_false:
        out.recommended_action = str(Action.NONE)
    return out
