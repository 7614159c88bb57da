"""What `nvsentinel approve|reject` may do to one HealthEvent, and what it tells the operator: pure.

The commands read the event, ask `check` whether the decision may be written (a refusal is one line, exit 1; a
warning is printed and the decision written all the same), write the annotations of `annotations`, and print
`next_step`. Raw dicts, as the server returns them; the rules are the controllers' own (imported, not copied).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from nvsentinel.cluster.remediation.logic import ACTING, ACTION_STRATEGY, AWAITING_APPROVAL, STRATEGY_ANNOTATION
from nvsentinel.policy.handoff import (
    APPROVAL_ANNOTATION, APPROVAL_BY_ANNOTATION, APPROVAL_REASON_ANNOTATION, APPROVED, REJECTED,
)
from nvsentinel.policy.healthevent import ConditionType, Phase, RemediationMode
from nvsentinel.service.sanitize import printable
from nvsentinel.xid import Action

__all__ = ["DECISIONS", "EVENT_REASONS", "Check", "check", "annotations", "next_step", "would_run", "mode_of_obj"]

#: The verb of each decision (the command's name).
DECISIONS = {APPROVED: "approve", REJECTED: "reject"}
#: The reason of the Kubernetes Event each decision records on the HealthEvent.
EVENT_REASONS = {APPROVED: "Approved", REJECTED: "Rejected"}
_OPPOSITE = {APPROVED: REJECTED, REJECTED: APPROVED}


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    refusal: str = ""
    """why the decision is not written ("" : it may be)"""
    warning: str = ""
    """said, and the decision written all the same"""


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _phase(obj: Mapping[str, Any]) -> str:
    return str(_status(obj).get("phase") or Phase.NEW)


def _terminal(phase: str) -> bool:
    try:
        return Phase(phase).terminal
    except ValueError:
        return False


def mode_of_obj(obj: Mapping[str, Any]) -> str:
    """The remediation mode the quarantine stage recorded (`status.remediationMode`), "" before it decided."""
    return str(_status(obj).get("remediationMode") or "")


def _current(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(decision, who) already on the event: ("", "") when none."""
    ann = _meta(obj).get("annotations") or {}
    value = str(ann.get(APPROVAL_ANNOTATION) or "").strip().lower()
    return (value if value in DECISIONS else ""), str(ann.get(APPROVAL_BY_ANNOTATION) or "someone")


def would_run(obj: Mapping[str, Any]) -> str:
    """The remediation strategy the event asks for (the strategy annotation, else its recommendedAction)."""
    named = str((_meta(obj).get("annotations") or {}).get(STRATEGY_ANNOTATION) or "").strip().lower()
    if named:
        return named
    try:
        return str(ACTION_STRATEGY[Action(str((obj.get("spec") or {}).get("recommendedAction") or "UNKNOWN"))])
    except ValueError:
        return "manual"


def check(obj: Mapping[str, Any], decision: str, *, force: bool = False) -> Check:
    """Whether `decision` (approved | rejected) may be written on this event now."""
    name = printable(str(_meta(obj).get("name") or ""), 253)
    phase = _phase(obj)
    spec = obj.get("spec") or {}
    verb = DECISIONS[decision]
    if not spec.get("isFatal") or spec.get("isHealthy"):
        return Check(refusal=f"healthevent {name} is not a fatal fault: nothing to {verb}")
    if _terminal(phase):
        return Check(refusal=f"healthevent {name} is {phase}: it is closed, nothing to {verb}")
    if decision == REJECTED and phase == Phase.REMEDIATING:
        return Check(refusal=f"healthevent {name} is Remediating: its {would_run(obj)} is under way and is not "
                     "abandoned halfway; wait until it is Remediated (a healthy event then resolves it)")
    current, who = _current(obj)
    if current == _OPPOSITE[decision] and not force:
        return Check(refusal=f"healthevent {name} was already {current} by {printable(who, 128)}; pass --force to "
                     f"{verb} it instead")
    mode = mode_of_obj(obj)
    if mode != RemediationMode.APPROVE:
        shown = mode or "not decided yet (not quarantined)"
        if decision == APPROVED:
            return Check(warning=f"healthevent {name} is in remediation mode {shown}, not approve: it does not wait "
                         "for an approval (recorded as a pre-approval, harmless)")
        return Check(warning=f"healthevent {name} is in remediation mode {shown}, not approve: rejecting cancels "
                     "it all the same")
    return Check()


def annotations(decision: str, who: str, reason: str) -> dict[str, str | None]:
    """The merge patch's annotations: the decision, who, and why (removed when no reason is given)."""
    return {APPROVAL_ANNOTATION: decision, APPROVAL_BY_ANNOTATION: " ".join(who.split())[:128] or "unknown",
            APPROVAL_REASON_ANNOTATION: " ".join(reason.split())[:256] or None}


def _awaiting(obj: Mapping[str, Any]) -> bool:
    for c in _status(obj).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == ConditionType.REMEDIATED:
            return c.get("status") == "False" and c.get("reason") == AWAITING_APPROVAL
    return False


def next_step(obj: Mapping[str, Any], decision: str) -> str:
    """One line: what the controllers do next with the event just decided."""
    name = printable(str(_meta(obj).get("name") or ""), 253)
    node = printable(str((obj.get("spec") or {}).get("nodeName") or "?"), 253)
    what = would_run(obj)
    if decision == REJECTED:
        return (f"rejected healthevent {name}: the resolution controller cancels it (Resolved False Rejected) and "
                f"releases node {node} once no other fault holds it")
    if what not in {str(s) for s in ACTING}:
        return f"approved healthevent {name}: its strategy is {what}, which nvsentinel never runs by itself"
    if _phase(obj) in (Phase.REMEDIATING, Phase.REMEDIATED):
        return f"approved healthevent {name}: its remediation already started (phase {_phase(obj)}): nothing changes"
    if mode_of_obj(obj) != RemediationMode.APPROVE:
        return f"approved healthevent {name} (pre-approval): if it ever waits for approval, its {what} starts at once"
    if _awaiting(obj):
        return f"approved healthevent {name}: the remediation controller starts its {what} of node {node} now"
    return (f"approved healthevent {name}: its {what} of node {node} starts without waiting once it is drained "
            f"(phase {_phase(obj)} now)")
