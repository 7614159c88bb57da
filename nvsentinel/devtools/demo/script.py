"""The demo's script and its report, pure: which faults, what each must end in, and how it is shown.

No I/O: the runner feeds observations in (phase changes with their times, GPU conditions) and prints
what `timeline_line` and `summary_table` return, so both are unit-tested on plain values.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["Scenario", "SCENARIOS", "Observed", "verdict", "timeline_line", "summary_table"]


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    gpu: int
    xid: int
    source: str
    """"nvml" (the fake NVML raises the XID) or "kmsg" (a line in the generated kernel log)"""
    expect_phase: str | None
    """the HealthEvent's final phase; None: no HealthEvent at all (a benign XID)"""
    expect_reason: str = ""
    """the Remediated condition's reason at the end ("" = any)"""
    expect_path: tuple[str, ...] = ()
    """phases that must have been seen on the way"""
    pdb_workload: bool = False
    """the node runs a PodDisruptionBudget-protected pod that holds the drain until the demo frees it"""
    expect_condition: str = ""
    """node-only mode (--no-cluster): the GPU condition reason the Device API must show"""


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("reboot", "fatal XID 79 (fell off the bus), PDB-protected workload", gpu=3, xid=79, source="nvml",
             expect_phase="Resolved", expect_reason="RebootSucceeded",
             expect_path=("Quarantined", "Draining", "Drained", "Remediating", "Remediated", "Resolved"),
             pdb_workload=True, expect_condition="Xid79"),
    Scenario("benign", "benign XID 13 in the kernel log", gpu=1, xid=13, source="kmsg", expect_phase=None),
    Scenario("gpu-reset", "XID 48 (double-bit ECC): GPU reset", gpu=2, xid=48, source="nvml",
             expect_phase="Resolved", expect_reason="GpuResetVerified",
             expect_path=("Quarantined", "Drained", "Remediating", "Remediated", "Resolved"),
             expect_condition="Xid48"),
    Scenario("human", "unknown XID 999: CONTACT_SUPPORT, a human is needed", gpu=6, xid=999, source="nvml",
             expect_phase="Drained", expect_reason="ManualRemediationRequired",
             expect_path=("Quarantined", "Drained"), expect_condition="Xid999"),
)


@dataclasses.dataclass
class Observed:
    """What one scenario produced: its HealthEvent (if any), the phases seen and when."""

    event: str = ""
    phases: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    """(seconds since the injection, phase), in order"""
    reason: str = ""
    """the Remediated condition's reason at the end"""
    condition: str = ""
    """node-only mode: the GPU condition reason seen"""
    seconds: float = 0.0

    @property
    def final(self) -> str:
        return self.phases[-1][1] if self.phases else ""


def verdict(s: Scenario, o: Observed, *, node_only: bool = False, dry_run: bool = False) -> tuple[bool, str]:
    """(ok, what was expected) for the summary."""
    if node_only:
        if s.expect_condition:
            return o.condition == s.expect_condition, f"GPU condition {s.expect_condition}"
        return o.condition == "", "no GPU condition change"
    if s.expect_phase is None:
        return o.event == "", "no HealthEvent (benign)"
    if dry_run:
        return bool(o.event) and o.reason.startswith("DryRun"), "recorded, nothing changed (dry-run)"
    seen = [p for _, p in o.phases]
    path_ok = all(p in seen for p in s.expect_path) and \
        [p for p in seen if p in s.expect_path] == [p for p in s.expect_path if p in seen]
    ok = o.final == s.expect_phase and (not s.expect_reason or o.reason == s.expect_reason) and path_ok
    want = s.expect_phase + (f" ({s.expect_reason})" if s.expect_reason else "")
    return ok, want


def timeline_line(t: float, scenario: Scenario, event: str, phase: str, why: str) -> str:
    return f"  {t:7.2f} s  {scenario.key:<10} {phase:<12} {why[:90]}"


def summary_table(rows: Sequence[tuple[Scenario, Observed]], *, node_only: bool = False,
                  dry_run: bool = False) -> tuple[str, bool]:
    """The closing table, and whether every scenario reached what it was expected to."""
    head = ("scenario", "fault", "expected", "got", "time", "ok")
    lines = []
    all_ok = True
    for s, o in rows:
        ok, want = verdict(s, o, node_only=node_only, dry_run=dry_run)
        all_ok &= ok
        if node_only:
            got = o.condition or "no change"
        elif s.expect_phase is None and not o.event:
            got = "no HealthEvent"
        else:
            got = (o.final or "no HealthEvent") + (f" ({o.reason})" if o.reason else "")
        lines.append((s.key, f"XID {s.xid} on GPU {s.gpu} ({s.source})", want, got, f"{o.seconds:.1f} s",
                      "yes" if ok else "NO"))
    widths = [max(len(str(r[i])) for r in (head, *lines)) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    text = "\n".join(fmt.format(*r) for r in (head, *lines))
    return text, all_ok
