"""The demo's script and report (pure): what each scenario must end in, and how the summary judges it."""
from __future__ import annotations

from nvsentinel.devtools.demo.script import SCENARIOS, Observed, summary_table, verdict

BY_KEY = {s.key: s for s in SCENARIOS}


def test_the_script_covers_the_issue_faults() -> None:
    assert [s.key for s in SCENARIOS] == ["reboot", "benign", "gpu-reset", "human"]
    assert BY_KEY["reboot"].pdb_workload and BY_KEY["benign"].source == "kmsg"
    assert BY_KEY["benign"].expect_phase is None


def test_verdict_needs_the_phase_the_reason_and_the_path() -> None:
    s = BY_KEY["reboot"]
    full = [(0.1, p) for p in ("New", "Quarantined", "Draining", "Drained", "Remediating", "Remediated", "Resolved")]
    assert verdict(s, Observed("e", full, "RebootSucceeded"))[0]
    assert not verdict(s, Observed("e", full, "GpuResetVerified"))[0]                      # wrong remediation
    assert not verdict(s, Observed("e", [p for p in full if p[1] != "Draining"], "RebootSucceeded"))[0]  # no drain
    assert not verdict(s, Observed("e", full[:-1], "RebootSucceeded"))[0]                  # never resolved
    benign = BY_KEY["benign"]
    assert verdict(benign, Observed())[0] and not verdict(benign, Observed("e", [(0, "New")]))[0]


def test_node_only_and_dry_run_verdicts() -> None:
    assert verdict(BY_KEY["gpu-reset"], Observed(condition="Xid48"), node_only=True)[0]
    assert not verdict(BY_KEY["gpu-reset"], Observed(), node_only=True)[0]
    assert verdict(BY_KEY["benign"], Observed(), node_only=True)[0]
    assert verdict(BY_KEY["human"], Observed("e", [(0, "New")], "DryRunCordon"), dry_run=True)[0]
    assert not verdict(BY_KEY["human"], Observed("e", [(0, "Quarantined")], "Cordoned"), dry_run=True)[0]


def test_summary_table_rows_and_overall_result() -> None:
    rows = [(BY_KEY["benign"], Observed(seconds=4.0)),
            (BY_KEY["human"], Observed("e", [(0.0, "Quarantined"), (0.1, "Drained")], "ManualRemediationRequired",
                                       seconds=0.1))]
    text, ok = summary_table(rows)
    lines = text.splitlines()
    assert ok and lines[0].split() == ["scenario", "fault", "expected", "got", "time", "ok"]
    assert "no HealthEvent" in lines[1] and lines[1].rstrip().endswith("yes")
    assert "Drained (ManualRemediationRequired)" in lines[2]
    _, bad = summary_table([(BY_KEY["human"], Observed("e", [(0.0, "Quarantined")], "", seconds=1))])
    assert not bad
