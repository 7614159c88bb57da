"""The condition contract (docs/conditions.md): how every detector writes GPU health, in one place.

What lives here, so that no detector or consumer keeps its own copy:

* the condition types, who owns each one, and their healthy and handshake reasons;
* `Reason`: why a condition is False, as values (the XID, its sub-code, or what else failed), and
  the one codec between a reason and the string the Device API carries (`Reason.wire`,
  `Reason.from_wire`); the wire format is unchanged (`Xid79`, `EccDoubleBit`, `GpuLost`);
* what a reason means: its check name, error codes and catalog classification (`Reason.kind_of`);
* the detection events, `Finding`, `GpuView` and the one decision function `decide` (the NVML
  provider and the kernel-log monitor share it, so their findings agree);
* `merge_status`: replace only your own condition in a GPU status (contract rules 2, 4, 5, 8).

Pure: no I/O, no clock reads (time is passed in).
"""
from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Collection, Mapping
from typing import Final

from nvsentinel._proto import gpu_pb2
from nvsentinel.xid import Action, Catalog, Classification, default_catalog

__all__ = [
    "NVML_HEALTHY", "KMSG_HEALTHY", "RESET_REQUESTED", "GPU_RESET", "SOURCES", "source_of",
    "CONDITION_TYPE", "REASON_HEALTHY", "REASON_KMSG_HEALTHY", "REASON_RECOVERED", "REASON_GPU_RESET",
    "RECOVERY_REASONS", "REASON_RESET_REQUESTED", "REASON_RESET_VERIFIED", "REASON_RESET_FAILED",
    "REASON_LOST", "REASON_DBE", "UNSPECIFIED_REASON",
    "CHECK_XID", "CHECK_ECC", "CHECK_LOST", "CHECK_OTHER", "CHECK_RECOVERY_ACTION", "CHECK_RESPONSIVE", "CHECK_SXID",
    "REASON_UNRESPONSIVE", "UNRESPONSIVE", "RecoveryActionKind", "RECOVERY_ACTIONS", "RECOVERY_ACTION_NAMES",
    "recovery_action_kind",
    "Action", "ReasonKind", "Reason", "FaultKind", "LOST", "DOUBLE_BIT_ECC", "XID_DOUBLE_BIT_ECC", "XID_FALLEN_OFF_BUS",
    "Xid", "DoubleBitEcc", "SingleBitEcc", "Lost", "Recovered", "Reset", "RecoveryAction", "Unresponsive",
    "Responsive", "Event",
    "Finding", "GpuView", "Decision", "decide", "severity", "find_condition", "merge_status",
]

# ---- condition types and their owners (rule 1: one owner per type) ----------------------------

NVML_HEALTHY: Final = "NvmlHealthy"
"""The NVML provider's health condition."""
KMSG_HEALTHY: Final = "KmsgHealthy"
"""The kernel-log monitor's health condition."""
RESET_REQUESTED: Final = "ResetRequested"
"""The remediation agent's request for a GPU reset (the handshake's question)."""
GPU_RESET: Final = "GpuReset"
"""The NVML provider's answer to a reset request (the handshake's answer)."""

#: Health condition type → the detector that owns it (a HealthEvent's `source`).
SOURCES: Final[Mapping[str, str]] = {NVML_HEALTHY: "nvml-provider", KMSG_HEALTHY: "kmsg-monitor"}

#: The NVML provider's condition type (the name its modules have always used).
CONDITION_TYPE: Final = NVML_HEALTHY


def source_of(condition_type: str) -> str:
    """The detector that owns a condition type (an unknown type names itself)."""
    return SOURCES.get(condition_type, condition_type)


# ---- reasons -----------------------------------------------------------------------------------

REASON_HEALTHY: Final = "NvmlOk"
"""NvmlHealthy True: no fatal error seen since the provider started."""
REASON_KMSG_HEALTHY: Final = "KmsgOk"
"""KmsgHealthy True: the kernel log shows no fatal error."""
REASON_RECOVERED: Final = "Recovered"
"""True again after a recovery signal (the provider re-verified the GPU)."""
REASON_GPU_RESET: Final = "GpuReset"
"""True again after a GPU reset (one the provider performed, or one the kernel log reports)."""
#: True reasons that say "this GPU recovered" (not the initial NvmlOk): a publisher that starts and
#: finds one publishes the healthy event, so a recovery while it was down is not lost.
RECOVERY_REASONS: Final = frozenset({REASON_RECOVERED, REASON_GPU_RESET})

REASON_RESET_REQUESTED: Final = "RemediationRequested"
"""ResetRequested True: the message names the HealthEvent that asks."""
REASON_RESET_VERIFIED: Final = "ResetVerified"
REASON_RESET_FAILED: Final = "ResetFailed"

REASON_LOST: Final = "GpuLost"
REASON_DBE: Final = "EccDoubleBit"
#: A False condition without a reason still is a fault; it needs a name.
UNSPECIFIED_REASON: Final = "Unhealthy"

CHECK_XID: Final = "xid-error-check"
CHECK_ECC: Final = "memory-ecc-check"
CHECK_LOST: Final = "gpu-lost-check"
CHECK_OTHER: Final = "gpu-health-check"
CHECK_RECOVERY_ACTION: Final = "gpu-recovery-action-check"
CHECK_RESPONSIVE: Final = "nvml-responsive-check"
CHECK_SXID: Final = "nvswitch-sxid-check"

REASON_UNRESPONSIVE: Final = "NvmlUnresponsive"
"""NvmlHealthy Unknown: an NVML call on this GPU ran past its deadline (the driver may be hung)."""

_XID_WIRE = re.compile(r"Xid(\d{1,10})")
_SXID_WIRE = re.compile(r"SXid(\d{1,10})")
_RA_WIRE = re.compile(r"RecoveryAction([A-Za-z0-9]{1,40})")


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryActionKind:
    """One value of NVML's GPU recovery action (field NVML_FI_DEV_GET_GPU_RECOVERY_ACTION)."""

    value: int
    name: str
    """NVML's name without its prefix: `GPU_RESET`."""
    action: Action
    """What nvsentinel recommends for it (docs/conditions.md#recovery-action)."""

    @property
    def camel(self) -> str:
        return "".join(p.capitalize() for p in self.name.split("_"))


#: NVML's recovery actions (nvml.h `NVML_GPU_RECOVERY_ACTION_*`) → the recommended action. A value not
#: listed here is never healthy: it is a fault whose action is UNKNOWN (a human looks).
RECOVERY_ACTIONS: Final[Mapping[int, RecoveryActionKind]] = {k.value: k for k in (
    RecoveryActionKind(0, "NONE", Action.NONE),
    RecoveryActionKind(1, "GPU_RESET", Action.COMPONENT_RESET),
    RecoveryActionKind(2, "NODE_REBOOT", Action.RESTART_BM),
    # P2P traffic must stop before the GPU is usable again: drained (every stage drains first), then reset
    RecoveryActionKind(3, "DRAIN_P2P", Action.COMPONENT_RESET),
    RecoveryActionKind(4, "DRAIN_AND_RESET", Action.COMPONENT_RESET),
    # the multi-node NVLink (IMEX) domain needs recovering: not something one node can do alone
    RecoveryActionKind(5, "RECOVER_IMEX_DOMAIN", Action.CONTACT_SUPPORT),
    RecoveryActionKind(6, "BUS_RESET", Action.COMPONENT_RESET),
    RecoveryActionKind(7, "SYSTEM_REBOOT", Action.RESTART_BM),
)}
RECOVERY_ACTION_NAMES: Final[Mapping[str, int]] = {k.name: v for v, k in RECOVERY_ACTIONS.items()}


def recovery_action_kind(value: int) -> RecoveryActionKind:
    """The kind of a recovery-action value; an unknown value is a fault of action UNKNOWN."""
    known = RECOVERY_ACTIONS.get(value)
    return known if known is not None else RecoveryActionKind(value, str(value), Action.UNKNOWN)


class ReasonKind(enum.Enum):
    """What failed."""

    XID = "xid"
    ECC_DBE = "ecc-dbe"
    GPU_LOST = "gpu-lost"
    RECOVERY_ACTION = "recovery-action"
    """NVML's recovery action is not NONE; `code` is its name (`GPU_RESET`) or, unknown, its value."""
    UNRESPONSIVE = "unresponsive"
    """An NVML call ran past its deadline: not a fault the catalog knows, and never healthy."""
    SXID = "sxid"
    """An NVSwitch error (SXid) the kernel-log monitor found fatal; `xid` is the SXid number."""
    OTHER = "other"
    """A reason this contract does not define (another provider's): a fault nobody can classify."""


@dataclasses.dataclass(frozen=True, slots=True)
class FaultKind:
    """What a reason means for a HealthEvent: its check, error codes and classification."""

    check_name: str
    error_codes: tuple[str, ...]
    classification: Classification


@dataclasses.dataclass(frozen=True, slots=True)
class Reason:
    """Why a condition is False, as values. Build one with `xid`, `LOST`, `DOUBLE_BIT_ECC`.

    `code` is the error code the detector saw (`145.RLW_SRC_TRACK` for an NVLink5 sub-code);
    the Device API carries only `wire`, so a reason read back from it has the plain XID code.
    """

    kind: ReasonKind
    xid: int | None = None
    code: str = ""
    """Error code: `"79"`, `"145.RLW_SRC_TRACK"`; for OTHER the reason as written."""

    @classmethod
    def for_xid(cls, xid: int, code: str = "") -> Reason:
        return cls(ReasonKind.XID, xid, code or str(xid))

    @classmethod
    def for_recovery_action(cls, value: int) -> Reason:
        return cls(ReasonKind.RECOVERY_ACTION, None, recovery_action_kind(value).name)

    @classmethod
    def for_sxid(cls, sxid: int) -> Reason:
        return cls(ReasonKind.SXID, sxid, f"SXID.{sxid}")

    @classmethod
    def other(cls, text: str) -> Reason:
        return cls(ReasonKind.OTHER, None, text or UNSPECIFIED_REASON)

    @property
    def wire(self) -> str:
        """The condition reason the Device API carries."""
        if self.kind is ReasonKind.XID:
            return f"Xid{self.xid}"
        if self.kind is ReasonKind.ECC_DBE:
            return REASON_DBE
        if self.kind is ReasonKind.GPU_LOST:
            return REASON_LOST
        if self.kind is ReasonKind.RECOVERY_ACTION:
            value = RECOVERY_ACTION_NAMES.get(self.code)
            return "RecoveryAction" + (RECOVERY_ACTIONS[value].camel if value is not None else self.code)
        if self.kind is ReasonKind.UNRESPONSIVE:
            return REASON_UNRESPONSIVE
        if self.kind is ReasonKind.SXID:
            return f"SXid{self.xid}"
        return self.code

    @classmethod
    def from_wire(cls, text: str) -> Reason:
        """The one decoder of a condition reason read from the Device API."""
        m = _XID_WIRE.fullmatch(text)
        if m:
            return cls.for_xid(int(m.group(1)))
        if text == REASON_DBE:
            return DOUBLE_BIT_ECC
        if text == REASON_LOST:
            return LOST
        if text == REASON_UNRESPONSIVE:
            return UNRESPONSIVE
        m = _SXID_WIRE.fullmatch(text)
        if m:
            return cls.for_sxid(int(m.group(1)))
        m = _RA_WIRE.fullmatch(text)
        if m:
            tail = m.group(1)
            if tail.isdigit():
                return cls.for_recovery_action(int(tail))
            for value, kind in RECOVERY_ACTIONS.items():
                if kind.camel == tail and value != 0:
                    return cls.for_recovery_action(value)
        return cls.other(text)

    def kind_of(self, catalog: Catalog) -> FaultKind:
        """Check name, error codes and the catalog's classification (docs/conditions.md)."""
        if self.kind is ReasonKind.XID and self.xid is not None:
            return FaultKind(CHECK_XID, (str(self.xid),), catalog.classify(self.xid))
        if self.kind is ReasonKind.ECC_DBE:
            return FaultKind(CHECK_ECC, (self.code,), catalog.classify(self.xid))
        if self.kind is ReasonKind.GPU_LOST:
            # fallen off the bus is XID 79 to the catalog; its override key is GPU_FALLEN_OFF_BUS
            return FaultKind(CHECK_LOST, (self.code,), catalog.classify(kind="fallen_off_bus"))
        if self.kind is ReasonKind.RECOVERY_ACTION:
            value = RECOVERY_ACTION_NAMES.get(self.code)
            kind = recovery_action_kind(value if value is not None else int(self.code))
            return FaultKind(CHECK_RECOVERY_ACTION, (f"RECOVERY_ACTION.{kind.name}",),
                             Classification(kind.action, True, f"RECOVERY_ACTION_{kind.name}", source="rule"))
        if self.kind is ReasonKind.UNRESPONSIVE:
            # reported so the cluster sees it, not acted on: a slow driver under load looks the same
            return FaultKind(CHECK_RESPONSIVE, ("NVML_UNRESPONSIVE",),
                             Classification(Action.NONE, False, "NVML_UNRESPONSIVE", source="rule"))
        if self.kind is ReasonKind.SXID:
            # the kernel-log monitor writes only SXids it found fatal (the line's severity and the catalog)
            return FaultKind(CHECK_SXID, (self.code,),
                             catalog.classify(self.xid, kind="sxid", error_code=self.code, severity="fatal"))
        # another provider's reason: a False condition is a fault, but the catalog cannot say what to do
        return FaultKind(CHECK_OTHER, (self.code,), Classification(Action.UNKNOWN, True, self.code, source="default"))


#: The XIDs behind the two reasons that do not name one: a double-bit ECC error is XID 48, and a
#: GPU that is lost has fallen off the bus (XID 79).
XID_DOUBLE_BIT_ECC: Final = 48
XID_FALLEN_OFF_BUS: Final = 79
LOST: Final = Reason(ReasonKind.GPU_LOST, XID_FALLEN_OFF_BUS, str(XID_FALLEN_OFF_BUS))
DOUBLE_BIT_ECC: Final = Reason(ReasonKind.ECC_DBE, XID_DOUBLE_BIT_ECC, str(XID_DOUBLE_BIT_ECC))
UNRESPONSIVE: Final = Reason(ReasonKind.UNRESPONSIVE, None, "NVML_UNRESPONSIVE")

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


# ---- detection events --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Xid:
    xid: int
    classification: Classification | None = None
    """The source's own, line-aware classification when it has one (the kernel log: XID 154's
    action from the line, NVLink5 severity); None: classify the XID number with the catalog."""
    code: str = ""
    """The error code as decoded (`145.RLW_SRC_TRACK`); empty: the XID number."""


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


@dataclasses.dataclass(frozen=True)
class RecoveryAction:
    """NVML's recovery action for the GPU as read now (field NVML_FI_DEV_GET_GPU_RECOVERY_ACTION).

    A level, not an event: NONE clears the recovery-action finding, any other value (a known one,
    or one nvsentinel does not know) sets it. The sticky event finding is kept beside it."""

    value: int


@dataclasses.dataclass(frozen=True)
class Unresponsive:
    """NVML gave no answer for this GPU: a call ran past its deadline, or a health read failed.
    The condition is Unknown (never healthy) until a fresh call succeeds (`Responsive`)."""

    detail: str


@dataclasses.dataclass(frozen=True)
class Responsive:
    """A fresh NVML call on this GPU succeeded: the condition says again what the GPU's state says."""


Event = Xid | DoubleBitEcc | SingleBitEcc | Lost | Recovered | Reset | RecoveryAction | Unresponsive | Responsive


# ---- state -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Finding:
    """One fatal finding on a GPU. A wire string given as `reason` is decoded with `Reason.from_wire`."""

    reason: Reason
    message: str
    action: Action

    def __post_init__(self) -> None:
        if isinstance(self.reason, str):
            object.__setattr__(self, "reason", Reason.from_wire(self.reason))
        if not isinstance(self.action, Action):
            object.__setattr__(self, "action", Action(self.action))


@dataclasses.dataclass(frozen=True)
class GpuView:
    """What a detector believes about one GPU.

    Three parts: `finding`, the sticky finding of a fault event (until a recovery signal);
    `recovery`, the level NVML's recovery action says now (None while it is NONE); `unknown`, set
    while NVML does not answer for the GPU. The condition is Unknown while `unknown` is set, else
    False with the worse (by `severity`) of `finding` and `recovery` (the event finding on a tie),
    else True.
    """

    finding: Finding | None = None
    reason_if_healthy: str = REASON_HEALTHY
    message_if_healthy: str = "NVML reports no fatal error"
    sbe_count: int = 0
    recovery: Finding | None = None
    unknown: Finding | None = None

    @property
    def healthy(self) -> bool:
        return self.finding is None and self.recovery is None and self.unknown is None

    @property
    def worst(self) -> Finding | None:
        """The finding the condition shows when NVML answers: the worse of the two, event first on a tie."""
        if self.recovery is None:
            return self.finding
        if self.finding is None or severity(self.recovery.action) > severity(self.finding.action):
            return self.recovery
        return self.finding

    def condition(self) -> tuple[str, str, str]:
        """(status, reason, message) of the condition, as the Device API carries it."""
        if self.unknown is not None:
            return "Unknown", self.unknown.reason.wire, self.unknown.message
        worst = self.worst
        if worst is None:
            return "True", self.reason_if_healthy, self.message_if_healthy
        return "False", worst.reason.wire, worst.message

    @property
    def action(self) -> Action:
        """The action of the worse finding (kept while the condition is Unknown)."""
        worst = self.worst
        return Action.NONE if worst is None else worst.action


@dataclasses.dataclass(frozen=True)
class Decision:
    view: GpuView
    changed: bool
    """True when the condition or the action changed (the status must be written)."""
    note: str
    """Why, for the log: fatal, worse, not-worse, benign, ignored, sbe, lost, recovered, healthy, reset,
    recovery-action, unresponsive, responsive."""


def _xid_finding(
    xid: int, reason: Reason, catalog: Catalog, ignored: Collection[int], cls: Classification | None = None
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
    """The new view of one GPU after `event` (rules 6 and 7: sticky, worse-only, ignored changes nothing)."""
    cat = catalog if catalog is not None else default_catalog()
    if isinstance(event, SingleBitEcc):
        return Decision(dataclasses.replace(view, sbe_count=view.sbe_count + 1), False, "sbe")
    if isinstance(event, Recovered):
        if view.finding is None:
            return Decision(view, False, "healthy")
        new = dataclasses.replace(view, finding=None, reason_if_healthy=REASON_RECOVERED,
                                  message_if_healthy=f"NVML healthy again: {event.detail}")
        return Decision(new, _changed(view, new), "recovered")
    if isinstance(event, Reset):
        # healthy whatever it was: the reset is the recovery signal, and it names who asked for it
        # (the provider reads the recovery action again right after, so a level still set returns)
        new = GpuView(None, REASON_GPU_RESET,
                      f"GPU reset and re-verified (requested by HealthEvent {event.request})", view.sbe_count)
        return Decision(new, _changed(view, new), "reset")
    if isinstance(event, RecoveryAction):
        return _recovery_action(view, event.value)
    if isinstance(event, Unresponsive):
        new = dataclasses.replace(view, unknown=Finding(UNRESPONSIVE, event.detail, Action.NONE))
        return Decision(new, _changed(view, new), "unresponsive")
    if isinstance(event, Responsive):
        if view.unknown is None:
            return Decision(view, False, "responsive")
        new = dataclasses.replace(view, unknown=None)
        return Decision(new, _changed(view, new), "responsive")
    if isinstance(event, Lost):
        cls = cat.classify(kind="fallen_off_bus")
        finding = Finding(LOST, f"GPU is lost: {event.detail}", cls.action)
        if view.finding is not None and view.finding.reason.kind is ReasonKind.GPU_LOST:
            return Decision(view, False, "lost")
        return Decision(dataclasses.replace(view, finding=finding), True, "lost")
    if isinstance(event, Xid):
        finding, note = _xid_finding(event.xid, Reason.for_xid(event.xid, event.code), cat, ignored_xids,
                                     event.classification)
    elif isinstance(event, DoubleBitEcc):
        finding, note = _xid_finding(XID_DOUBLE_BIT_ECC, DOUBLE_BIT_ECC, cat, ignored_xids)
        if finding is not None:
            finding = dataclasses.replace(finding, message="double-bit (uncorrectable) ECC error: " + finding.message)
    else:
        raise TypeError(f"not a detection event: {event!r}")
    if finding is None:
        return Decision(view, False, note)
    if view.finding is not None and severity(finding.action) <= severity(view.finding.action):
        return Decision(view, False, "not-worse")
    new = dataclasses.replace(view, finding=finding)
    return Decision(new, _changed(view, new), "fatal" if view.finding is None else "worse")


def _changed(old: GpuView, new: GpuView) -> bool:
    return old.condition() != new.condition() or old.action != new.action


def _recovery_action(view: GpuView, value: int) -> Decision:
    """The level NVML's recovery action says now; NONE after a value heals unless an event finding is open."""
    kind = recovery_action_kind(value)
    if kind.action is Action.NONE and value in RECOVERY_ACTIONS:
        if view.recovery is None:
            return Decision(view, False, "healthy")
        new = dataclasses.replace(view, recovery=None)
        if view.finding is None:
            was = view.recovery.reason.code
            new = dataclasses.replace(new, reason_if_healthy=REASON_RECOVERED,
                                      message_if_healthy=f"NVML recovery action back to NONE (was {was})")
        return Decision(new, _changed(view, new), "recovered")
    if value in RECOVERY_ACTIONS:
        message = f"NVML recovery action {kind.name} ({value}): recommended {kind.action}"
    else:
        message = f"NVML recovery action {value} is not one nvsentinel knows: a human must look"
    finding = Finding(Reason.for_recovery_action(value), message, kind.action)
    if view.recovery == finding:
        return Decision(view, False, "recovery-action")
    new = dataclasses.replace(view, recovery=finding)
    return Decision(new, _changed(view, new), "recovery-action")


# ---- writing a status --------------------------------------------------------------------------

def find_condition(status: gpu_pb2.GpuStatus, ctype: str) -> gpu_pb2.Condition | None:
    """The first condition of type `ctype`, or None."""
    for cond in status.conditions:
        if cond.type == ctype:
            return cond
    return None


def merge_status(
    current: gpu_pb2.GpuStatus, view: GpuView, now_seconds: int, now_nanos: int = 0,
    *, condition_type: str = CONDITION_TYPE,
) -> gpu_pb2.GpuStatus:
    """`current` with only the `condition_type` condition (default NvmlHealthy) replaced by
    `view`'s; other conditions kept. Every detector writes through it with its own type.

    The transition time changes only when the condition's status changes. `recommended_action`:
    False → our action unless another provider's False condition already asks for something
    worse; True → NONE unless another provider's condition is False (then left alone); Unknown →
    left alone (an open finding's action stands; nothing is raised on a GPU we cannot read).
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
    if status == "False":
        if not (others_false and severity(current.recommended_action) > severity(view.action)):
            out.recommended_action = str(view.action)
    elif status == "True" and not others_false:
        out.recommended_action = str(Action.NONE)
    # Unknown: we cannot tell, so the action stands as it is (an open finding's, or NONE)
    return out
