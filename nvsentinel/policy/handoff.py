"""Who remediates a node: nvsentinel, an external repairer, or nvsentinel after an operator's approval.

The mode is chosen per node selector (`--remediation-mode-rules`, the first matching rule wins, else
`--remediation-mode`) once, by the quarantine stage, and recorded on the HealthEvent (`status.remediationMode`) and
the Node (ownership annotation, `OWNER_LABEL`); every later stage reads the record, never the rules, so a relabelled
node does not change hands halfway. An operator approves or rejects an event with an annotation
(`nvsentinel approve|reject`); a node's credential cannot set it (admission rule N5).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from nvsentinel.policy.healthevent import LABEL_PREFIX, HealthEvent, RemediationMode
from nvsentinel.policy.selectors import Selector, parse_selector

__all__ = ["RemediationMode", "ModeRule", "parse_mode_rules", "mode_for", "mode_of", "APPROVAL_ANNOTATION",
           "APPROVAL_BY_ANNOTATION", "APPROVAL_REASON_ANNOTATION", "APPROVED", "REJECTED", "approval_of"]

#: An operator's decision on an event: `approved` (remediation may run) or `rejected` (close it, act no further).
APPROVAL_ANNOTATION = f"{LABEL_PREFIX}approval"
#: Who decided, and why (free text, shown in the status message): written by `nvsentinel approve|reject`.
APPROVAL_BY_ANNOTATION = f"{LABEL_PREFIX}approval-by"
APPROVAL_REASON_ANNOTATION = f"{LABEL_PREFIX}approval-reason"
APPROVED = "approved"
REJECTED = "rejected"
_MAX_RULES = 64


@dataclasses.dataclass(frozen=True, slots=True)
class ModeRule:
    selector: Selector
    mode: RemediationMode

    def to_dict(self) -> dict[str, str]:
        return {"nodeSelector": self.selector.text, "mode": str(self.mode)}


def _mode(value: Any, where: str) -> RemediationMode:
    try:
        return RemediationMode(str(value))
    except ValueError:
        raise ValueError(f"{where}: mode {value!r} is not one of "
                         f"{', '.join(m.value for m in RemediationMode)}") from None


def parse_mode_rules(text: str) -> tuple[ModeRule, ...]:
    """`[{"nodeSelector": "pool=aws", "mode": "external"}, ...]` (JSON, as the chart renders it); "" is none."""
    if not text.strip():
        return ()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--remediation-mode-rules is not JSON: {exc}") from None
    if not isinstance(raw, list) or len(raw) > _MAX_RULES:
        raise ValueError(f"--remediation-mode-rules must be a JSON list of at most {_MAX_RULES} "
                         '{"nodeSelector": ..., "mode": ...} objects')
    rules = []
    for i, item in enumerate(raw):
        where = f"--remediation-mode-rules[{i}]"
        if not isinstance(item, dict) or set(item) - {"nodeSelector", "mode"} or "mode" not in item:
            raise ValueError(f'{where}: want {{"nodeSelector": SELECTOR, "mode": MODE}}, got {item!r}')
        selector = item.get("nodeSelector", "")
        if not isinstance(selector, str):
            raise ValueError(f"{where}: nodeSelector must be a string")
        try:
            parsed = parse_selector(selector)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        rules.append(ModeRule(parsed, _mode(item["mode"], where)))
    return tuple(rules)


def mode_for(labels: Mapping[str, str] | None, rules: Sequence[ModeRule],
             default: RemediationMode = RemediationMode.NVSENTINEL) -> RemediationMode:
    """The mode of a node with these labels: the first rule whose selector matches, else `default`."""
    for rule in rules:
        if rule.selector.matches(labels):
            return rule.mode
    return default


def mode_of(event: HealthEvent) -> RemediationMode:
    """The mode the quarantine stage recorded on the event; nvsentinel when none was (events from before modes)."""
    try:
        return RemediationMode(event.status.remediation_mode or RemediationMode.NVSENTINEL)
    except ValueError:
        return RemediationMode.NVSENTINEL


def approval_of(event: HealthEvent) -> str:
    """`approved`, `rejected`, or "" (no decision, or a value that is neither: not a decision)."""
    value = (event.annotations.get(APPROVAL_ANNOTATION) or "").strip().lower()
    return value if value in (APPROVED, REJECTED) else ""


#: Names the remediation strategy of one event, overriding its recommendedAction (docs/remediation.md).
STRATEGY_ANNOTATION = f"{LABEL_PREFIX}remediation-strategy"
__all__ += ["STRATEGY_ANNOTATION"]
