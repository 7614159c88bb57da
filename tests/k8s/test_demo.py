"""`nvsentinel demo`, run as a user runs it (a subprocess of the installed command), non-interactively.

- the whole demo on its own local control plane: every scripted fault reaches its expected end;
- `--kubeconfig` against an existing cluster (the session's test API server): dry-run, the node is not
  touched, the demo's events are removed afterwards;
- `--no-cluster`: the node side alone;
- Ctrl-C in the middle: exit 130, and no process or file of the demo is left behind.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubelet import delete_nodes, make_node

from nvsentinel.k8s import Kube
from nvsentinel.k8s.resources import HEALTHEVENTS, NODES
from nvsentinel.policy.healthevent import LABEL_NODE

DEMO = [sys.executable, "-m", "nvsentinel", "demo"]
ENV = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}


def run_demo(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEMO, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def summary(out: str) -> dict[str, list[str]]:
    """scenario → its summary row's cells."""
    block = out.split("\nSummary\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return {row.split()[0]: re.split(r"\s{2,}", row.strip()) for row in block}


def dirs_of(out: str) -> list[str]:
    return re.findall(r"files: (\S+) \(removed at the end\)", out)


def processes_using(paths: list[str]) -> list[str]:
    hits = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(p in cmd for p in paths):
            hits.append(f"{pid}: {cmd[:200]}")
    return hits


def test_demo_every_scripted_fault_reaches_its_expected_end() -> None:
    proc = run_demo("--pace", "0.2")
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    rows = summary(out)
    assert set(rows) == {"reboot", "benign", "gpu-reset", "human"}
    assert all(r[-1] == "yes" for r in rows.values()), rows
    assert rows["reboot"][3] == "Resolved (RebootSucceeded)"
    assert rows["benign"][3] == "no HealthEvent"
    assert rows["gpu-reset"][3] == "Resolved (GpuResetVerified)"
    assert rows["human"][3] == "Drained (ManualRemediationRequired)"
    # the live timeline showed the PDB holding the drain, the reboot, and the verification
    for needle in ("blocked by a disruption budget", "the operator removes it", "reboot Job", "RebootSucceeded",
                   "HealthyEventReceived", "GpuResetRequested", "ManualRemediationRequired"):
        assert needle in out, needle
    assert "every scripted fault reached its expected end" in out
    ds = dirs_of(out)
    assert len(ds) == 2 and not any(Path(d).exists() for d in ds), "the demo removed its files"
    assert processes_using(ds) == []


def test_demo_against_an_existing_cluster_is_dry_run(control_plane, crd_installed, kube: Kube, unique: str) -> None:
    node = f"demo-real-{unique}"
    make_node(kube, node)
    try:
        proc = run_demo("--kubeconfig", control_plane.kubeconfig, "--node", node, "--pace", "0.2")
        out = proc.stdout
        assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
        assert "dry-run: decisions are recorded, nothing is changed" in out
        rows = summary(out)
        assert all(r[-1] == "yes" for r in rows.values()), rows
        assert "DryRun" in rows["reboot"][3]
        n = kube.get(NODES, node)
        assert not n["spec"].get("unschedulable"), "dry-run cordoned the node"
        assert not [t for t in n["spec"].get("taints") or () if t["key"].startswith("nvsentinel")], "dry-run tainted it"
        items, _ = kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")
        assert [i for i in items if i["spec"]["isFatal"]] == [], "the demo removed its events"
    finally:
        delete_nodes(kube, [node])


def test_demo_node_side_only() -> None:
    proc = run_demo("--no-cluster", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = summary(proc.stdout)
    assert rows["reboot"][3] == "Xid79" and rows["benign"][3] == "no change" and rows["human"][3] == "Xid999"
    assert "control plane" not in proc.stdout


def test_demo_flag_errors() -> None:
    bad = run_demo("--kubeconfig", "/nonexistent", timeout=60)
    assert bad.returncode == 2 and "--kubeconfig needs --node" in bad.stderr
    bad = run_demo("--live", timeout=60)
    assert bad.returncode == 2 and "--kubeconfig only" in bad.stderr


def test_ctrl_c_stops_everything_and_removes_every_file() -> None:
    proc = subprocess.Popen([*DEMO, "--pace", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    seen: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        seen.append(line)
        if "Draining" in line or time.monotonic() > deadline:
            break
    out_so_far = "".join(seen)
    ds = dirs_of(out_so_far)
    assert len(ds) == 2, out_so_far
    assert processes_using(ds), "the demo's processes run while it does"
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: stopped every process and removed the demo's files" in err
    time.sleep(0.5)
    assert processes_using(ds) == []
    assert not any(Path(d).exists() for d in ds)
