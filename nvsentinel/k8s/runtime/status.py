"""The one HealthEvent status writer every stage uses: patch, then count, log and announce once.

A stage decides a new status (for most, `nvsentinel.policy.outcome.apply_outcome` of an `Outcome`)
and hands it here. The write is optimistic (the resourceVersion the stage read), skipped when
nothing changed, and a *decision* (a condition's status or reason, or the phase, changed) is counted
in `<controller>_actions_total` and logged once; a message refresh (progress) is written quietly.

Kubernetes Events: the status's conditions already say every decision, with reason, message and
time (`nvsentinel describe` and `kubectl describe` show them), so a Normal decision is not repeated
as an Event on the HealthEvent (that was 7 of the 24 requests a remediated node cost). A decision
that needs a human (a Warning) is announced on the HealthEvent; the actions on other objects that
operators look for (cordon, reboot Job, uncordon) are announced by the stages on the Node. The written object goes into the shared caches at
once (`ControllerContext.observe_write`): the next stage starts from it, and a rerun never patches
from the version it just replaced.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from nvsentinel.k8s.resources import HEALTHEVENTS
from nvsentinel.k8s.runtime.controller import ControllerContext
from nvsentinel.policy.healthevent import HealthEvent, HealthEventStatus
from nvsentinel.policy.outcome import Outcome, changed_conditions

__all__ = ["Written", "write_status", "write_outcome"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Written:
    obj: dict[str, Any] | None
    """The HealthEvent as the server returned it; None when nothing was written."""
    decided: bool
    """A new decision: counted, logged and announced."""


async def write_status(ctx: ControllerContext, event: HealthEvent, status: HealthEventStatus, *,
                       action: str | None, obj: dict[str, Any] | None = None,
                       announce: tuple[str, str, str] | None = None, condition: str | None = None,
                       quiet: bool = False, refresh: bool = True) -> Written:
    """Write `status` if it differs from `event`'s; count, log and announce a new decision once.

    `announce`: the decision's (type, reason, message), announced as an Event on the HealthEvent when
    its type is Warning; `condition` the one decided (default: the first changed one).
    `quiet`: a Warning whose Event someone else makes. `refresh=False`:
    a message refresh is not written now (the stage writes it on its next pass).
    """
    if status.to_dict() == event.status.to_dict():
        return Written(None, False)
    changed = changed_conditions(event.status, status)
    decided = bool(changed) or event.status.phase != status.phase
    if not decided and not refresh:
        return Written(None, False)
    written = await ctx.kube.patch(HEALTHEVENTS, event.name, {
        "metadata": {"resourceVersion": event.resource_version}, "status": status.to_dict()},
        subresource="status")
    ctx.observe_write(HEALTHEVENTS, written, event.resource_version)
    if not decided:
        return Written(written, False)
    if action:
        ctx.metrics.actions.labels(action=action).inc()
    first = changed[0] if changed else None
    logger.info("healthevent decided", extra={"kv": {
        "controller": ctx.name, "healthevent": event.name, "node": event.spec.node_name,
        "phase": str(status.phase), "condition": condition or (str(first.type) if first else ""),
        "reason": announce[1] if announce else (first.reason if first else ""), "dry_run": ctx.dry_run}})
    if not quiet and announce is not None and announce[0] == "Warning":
        await ctx.recorder.event(obj if obj is not None else event.to_dict(), *announce)
    return Written(written, True)


async def write_outcome(ctx: ControllerContext, event: HealthEvent, status: HealthEventStatus, outcome: Outcome, *,
                        obj: dict[str, Any] | None = None, action: str | None = None, quiet: bool = False,
                        refresh: bool = True) -> Written:
    """`write_status` for a status made from `outcome`: counted under its action (or `action`), and
    announced with its reason and message, as a Warning when it says a human should look."""
    return await write_status(
        ctx, event, status, action=action or outcome.action, obj=obj, quiet=quiet, refresh=refresh,
        condition=str(outcome.condition_type),
        announce=("Warning" if outcome.warning else "Normal", outcome.reason, outcome.message))
