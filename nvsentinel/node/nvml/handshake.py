"""The NVML provider's side of the gpu-reset handshake, with no I/O (docs/conditions.md).

The remediation agent asks with a `ResetRequested` condition (status True, message = the
HealthEvent's name R); the provider answers with its own `GpuReset` condition whose message starts
with `R + ":"`. That prefix is the handshake's only memory, kept on the Device API and in the
provider: a request whose answer is already there, in either place, is never answered again (so a
provider restart, or a repeated write of the same request, resets nothing).
"""
from __future__ import annotations

import dataclasses
from typing import Final

from nvsentinel._proto import gpu_pb2
from nvsentinel.policy.conditions import (
    GPU_RESET, REASON_RESET_FAILED, REASON_RESET_VERIFIED, RESET_REQUESTED, find_condition,
)

__all__ = [
    "REQUEST_TYPE",
    "ACK_TYPE",
    "REASON_VERIFIED",
    "REASON_FAILED",
    "DISABLED",
    "Ack",
    "request_of",
    "ack_of",
    "pending_request",
    "verified",
    "failed",
    "merge_ack",
]

REQUEST_TYPE: Final = RESET_REQUESTED
"""Owned by the remediation agent."""
ACK_TYPE: Final = GPU_RESET
"""Owned by the NVML provider."""
REASON_VERIFIED: Final = REASON_RESET_VERIFIED
REASON_FAILED: Final = REASON_RESET_FAILED
DISABLED: Final = "resets disabled on this node"


@dataclasses.dataclass(frozen=True)
class Ack:
    """The provider's `GpuReset` condition: one answer to one request."""

    status: str
    reason: str
    message: str
    seconds: int
    nanos: int = 0

    @classmethod
    def from_condition(cls, cond: gpu_pb2.Condition) -> Ack:
        t = cond.last_transition_time
        return cls(cond.status, cond.reason, cond.message, t.seconds, t.nanos)

    def answers(self, request: str) -> bool:
        return self.message.startswith(request + ":")


def request_of(status: gpu_pb2.GpuStatus) -> str | None:
    """R of a `ResetRequested` True condition; None when there is none (or it names nothing)."""
    cond = find_condition(status, REQUEST_TYPE)
    if cond is None or cond.status != "True" or not cond.message:
        return None
    return cond.message


def ack_of(status: gpu_pb2.GpuStatus) -> Ack | None:
    cond = find_condition(status, ACK_TYPE)
    return None if cond is None else Ack.from_condition(cond)


def pending_request(status: gpu_pb2.GpuStatus, remembered: Ack | None = None) -> str | None:
    """The request to act on now: asked in `status` and answered neither there nor in `remembered`
    (the provider's own last answer, which may not have reached the server yet)."""
    request = request_of(status)
    if request is None:
        return None
    for ack in (remembered, ack_of(status)):
        if ack is not None and ack.answers(request):
            return None
    return request


def _split(now: float) -> tuple[int, int]:
    seconds = int(now)
    return seconds, int(round((now - seconds) * 1e9)) % 1_000_000_000


def verified(request: str, now: float) -> Ack:
    return Ack("True", REASON_VERIFIED, f"{request}: GPU reset and re-verified", *_split(now))


def failed(request: str, error: str, now: float) -> Ack:
    one_line = " ".join(error.split()) or "unknown error"
    return Ack("False", REASON_FAILED, f"{request}: {one_line}", *_split(now))


def merge_ack(current: gpu_pb2.GpuStatus, ack: Ack) -> gpu_pb2.GpuStatus:
    """`current` with only the `GpuReset` condition replaced by `ack` (same position if present,
    appended otherwise, duplicates dropped); everything else kept (condition contract rule 2).

    The time is the answer's own: every answer is a new event, and a re-send after a Device API
    restart must not move it.
    """
    out = gpu_pb2.GpuStatus()
    out.CopyFrom(current)
    del out.conditions[:]
    new = None
    for cond in current.conditions:
        if cond.type == ACK_TYPE:
            if new is None:
                new = out.conditions.add()
        else:
            out.conditions.add().CopyFrom(cond)
    if new is None:
        new = out.conditions.add()
    new.type, new.status, new.reason, new.message = ACK_TYPE, ack.status, ack.reason, ack.message
    new.last_transition_time.seconds = ack.seconds
    new.last_transition_time.nanos = ack.nanos
    return out
