"""`nvsentinel status` against the real apiserver, as an operator runs it.

The cluster is shared: this test's Nodes and HealthEvents carry a unique label, and every run passes
it as `--node-selector`/`--event-selector` (the controllers' own flags) so no other test's objects
count; the breaker ConfigMap lives in a namespace of its own. No controller runs here: the objects
are written in the states the controllers leave them in.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from ctlhelpers import clean_up
from kubelet import make_node
from rbac import CLUSTERROLEBINDINGS, CLUSTERROLES, service_account_kubeconfig

from nvsentinel.cluster.quarantine.config import BREAKER_CONFIGMAP
from nvsentinel.cluster.quarantine.logic import ANNOTATION
from nvsentinel.k8s import AlreadyExists, Kube
from nvsentinel.k8s.resources import CONFIGMAPS, HEALTHEVENTS, NAMESPACES, NODES
from nvsentinel.policy.healthevent import LABEL_NODE, format_time, utcnow

LABEL = "nvsentinel-test/status"
TAINT = {"key": "nvsentinel.nvidia.com/quarantine", "value": "true", "effect": "NoSchedule"}
# Runs the real `nvsentinel` entry point; registers the command first only while cli.py does not list it yet.
_MAIN = ("import sys\nfrom nvsentinel import cli\n"
         "if 'status' not in cli.COMMAND_MODULES:\n    cli.COMMAND_MODULES += ('status',)\n"
         "sys.exit(cli.main(sys.argv[1:]))")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _MAIN, *args], capture_output=True, text=True, timeout=timeout)


def event_body(name: str, node: str, tag: str) -> dict[str, Any]:
    return {"apiVersion": "nvsentinel.nvidia.com/v1alpha1", "kind": "HealthEvent",
            "metadata": {"name": name, "labels": {LABEL_NODE: node, LABEL: tag}},
            "spec": {"source": "test", "agent": "test", "nodeName": node, "componentClass": "GPU",
                     "checkName": "xid-error-check", "isFatal": True, "isHealthy": False, "message": "Xid 79",
                     "recommendedAction": "RESTART_BM", "errorCodes": ["79"],
                     "entitiesImpacted": [{"type": "GPU", "value": "GPU-a"}], "detectedAt": format_time(utcnow())}}


def condition(ctype: str, status: str, reason: str, when: dt.datetime) -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": reason, "message": f"{reason} by test",
            "lastTransitionTime": format_time(when)}


class World:
    """Ten GPU nodes and a CPU node; two cordoned by nvsentinel, one by someone else; events in every
    open phase, two of them parked for a human; a tripped breaker."""

    def __init__(self, kube: Kube, kubeconfig: str, tag: str) -> None:
        self.kube, self.kubeconfig, self.tag = kube, kubeconfig, tag
        self.ns = f"status-{tag}"
        self.selector = f"{LABEL}={tag}"
        self.nodes = [f"st-{tag}-{i}" for i in range(10)] + [f"st-{tag}-cpu"]
        self.events: list[str] = []
        kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        now = utcnow()
        self.now = now
        for n in self.nodes:
            make_node(kube, n, gpus=0 if n.endswith("cpu") else 8, labels={LABEL: tag})
        self.ours = self.nodes[:2]
        self.other = self.nodes[2]
        for n in self.ours:
            record = {"events": [f"{n}-fault"], "since": format_time(now), "cordonedByUs": True}
            kube.patch(NODES, n, {"metadata": {"annotations": {ANNOTATION: json.dumps(record)}},
                                  "spec": {"unschedulable": True, "taints": [TAINT]}})
        kube.patch(NODES, self.other, {"spec": {"unschedulable": True}})
        kube.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": BREAKER_CONFIGMAP, "namespace": self.ns},
                                 "data": {"state": "Tripped", "trippedAt": format_time(now),
                                          "reason": "cordoning node x would make 2 nodes in 600s, over the limit",
                                          "resetAt": "", "percent": "10", "maxNodes": "50",
                                          "windowSeconds": "600"}}, self.ns)
        a, b = self.ours
        day_ago = now - dt.timedelta(days=2)
        # (name, node, status); created a second apart so the human's list has a defined order
        plan: list[tuple[str, str, dict[str, Any]]] = [
            ("held", self.nodes[3], {"phase": "New", "conditions": [
                condition("NodeQuarantined", "False", "CircuitBreakerOpen", now)]}),
            ("quarantined", a, {"phase": "Quarantined", "conditions": [
                condition("NodeQuarantined", "True", "Cordoned", now)]}),
            ("manual", b, {"phase": "Drained", "conditions": [
                condition("PodsDrained", "True", "Drained", now),
                condition("Remediated", "False", "ManualRemediationRequired", now)]}),
            ("rebooting", a, {"phase": "Remediating", "conditions": [
                condition("Remediated", "Unknown", "RebootJobCreated", now)]}),
            ("blocked", a, {"phase": "Draining", "conditions": [
                condition("PodsDrained", "False", "DrainTimeout", now)]}),
            ("fixed", self.nodes[4], {"phase": "Resolved", "resolvedAt": format_time(now), "conditions": [
                condition("Resolved", "True", "HealthyEventReceived", now)]}),
            ("old-fix", self.nodes[4], {"phase": "Resolved", "resolvedAt": format_time(day_ago), "conditions": [
                condition("Resolved", "True", "HealthyEventReceived", day_ago)]}),
            ("skipped", self.nodes[5], {"phase": "Cancelled", "conditions": [
                condition("NodeQuarantined", "False", "SkippedByOverride", now)]}),
        ]
        for i, (short, node, status) in enumerate(plan):
            if i:
                time.sleep(1.05)  # creation times have 1 s resolution
            name = f"st-{tag}-{short}"
            self.events.append(name)
            kube.create(HEALTHEVENTS, event_body(name, node, tag))
            kube.patch(HEALTHEVENTS, name, {"status": status}, subresource="status")
        self.name = {short: f"st-{tag}-{short}" for short, _, _ in plan}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli("status", *args, "--namespace", self.ns, "--node-selector", self.selector,
                   "--event-selector", self.selector, "--kubeconfig", self.kubeconfig)

    def close(self) -> None:
        clean_up(self.kube, events=self.events, nodes=self.nodes, namespace=self.ns)


@pytest.fixture(scope="module")
def world(control_plane, crd_installed) -> Iterator[World]:
    import uuid

    kube = control_plane.kube()
    w = World(kube, control_plane.kubeconfig, uuid.uuid4().hex[:8])
    try:
        yield w
    finally:
        w.close()
        kube.close()


def test_json_counts_nodes_breaker_and_events(world):
    """Verify -o json: node split by who cordoned, the tripped breaker's count and limit, phases, the
    24 h counts, and the two events that need a human, oldest first."""
    out = world.run("-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["selectors"] == {"nodes": world.selector, "events": world.selector}
    assert doc["nodes"] == {
        "total": 11, "gpu": 10, "cordoned": 3, "quarantined": 2, "cordonedByNvsentinel": 2, "cordonedByOthers": 1,
        "quarantinedUncordoned": 0, "quarantinedNodes": world.ours, "cordonedByNvsentinelNodes": world.ours,
        "cordonedByOthersNodes": [world.other], "quarantinedUncordonedNodes": [],
        "byOwner": {"nvsentinel": 2, "external": 0, "approve": 0},
        "owners": [{"node": n, "owner": "nvsentinel", "scope": "node", "cordon": "nvsentinel", "events": 1,
                    "since": format_time(world.now)} for n in world.ours]}
    b = doc["breaker"]
    assert (b["state"], b["cordoned"], b["limit"], b["gpuNodes"], b["windowSeconds"]) == ("Tripped", 2, 1, 10, 600)
    assert b["nodes"] == world.ours and b["heldEvents"] == 1
    assert (b["configMap"], b["configMapFound"]) == (f"{world.ns}/{BREAKER_CONFIGMAP}", True)
    assert b["trippedAt"] == format_time(world.now) and "over the limit" in b["reason"]
    e = doc["healthEvents"]
    assert (e["total"], e["open"], e["resolvedLast24h"], e["cancelledLast24h"], e["heldByBreaker"]) == (8, 5, 1, 1, 1)
    assert e["byPhase"] == {"New": 1, "Quarantined": 1, "Draining": 1, "Drained": 1, "Remediating": 1,
                            "Remediated": 0, "Resolved": 2, "Cancelled": 1}
    humans = [(h["name"], h["node"], h["phase"], h["condition"], h["reason"]) for h in e["needsHuman"]]
    assert humans == [(world.name["manual"], world.ours[1], "Drained", "Remediated", "ManualRemediationRequired"),
                      (world.name["blocked"], world.ours[0], "Draining", "PodsDrained", "DrainTimeout")]
    assert e["needsHuman"][0]["message"] == "ManualRemediationRequired by test"
    assert e["awaitingApproval"] == [] and e["handedOff"] == []


def test_table_is_one_screen(world):
    """Verify the default text names the same facts: counts, breaker state and limit, phases, the human's list."""
    out = world.run()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    value = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in lines
             if ":" in ln and not ln.startswith("    ")}
    assert value["Nodes"] == f"11 (10 GPU), selector {world.selector}"
    assert value["Cordoned"] == "3"
    assert value["Cordoned by nvsentinel"] == f"2 ({world.ours[0]}, {world.ours[1]})"
    assert value["Cordoned by others"] == f"1 ({world.other})"
    assert value["Circuit breaker"] == "Tripped"
    assert value["Cordoned in window"] == "2" and value["Limit"] == "1 (10% of 10 GPU nodes, max 50)"
    assert value["Window"] == "600s" and value["Held events"] == "1 in New (CircuitBreakerOpen)"
    assert value["ConfigMap"] == f"{world.ns}/{BREAKER_CONFIGMAP}"
    assert value["HealthEvents"] == f"5 open, 8 in all, selector {world.selector}"
    assert (value["Resolved (24h)"], value["Cancelled (24h)"], value["Needs a human"]) == ("1", "1", "2")
    at = lines.index("  New   Quarantined   Draining   Drained   Remediating   Remediated")
    assert lines[at + 1].split() == ["1", "1", "1", "1", "1", "0"]
    head = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["NAME", "NODE"])
    assert [ln.split()[:4] for ln in lines[head + 1:head + 3]] == [
        [world.name["manual"], world.ours[1], "Drained", "ManualRemediationRequired"],
        [world.name["blocked"], world.ours[0], "Draining", "DrainTimeout"]]
    assert all(ln.split()[4].endswith("s") for ln in lines[head + 1:head + 3])  # waiting seconds: just written
    assert lines[head + 3:] == ["Awaiting approval:         none", "Handed off:                none"]
    assert value["Owners"] == "nvsentinel 2"
    owners = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["NODE", "OWNER"])
    assert [ln.split()[:4] for ln in lines[owners + 1:owners + 3]] == [
        [n, "nvsentinel", "node", "nvsentinel"] for n in world.ours]


def test_absent_breaker_configmap_reads_closed(world, kube):
    """Verify a namespace without the breaker ConfigMap (never tripped) shows Closed, not an error."""
    ns = f"{world.ns}-empty"
    with contextlib.suppress(AlreadyExists):
        kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    try:
        for namespace in (ns, f"{world.ns}-missing"):  # and a namespace that does not exist at all
            out = cli("status", "-o", "json", "--namespace", namespace, "--node-selector", world.selector,
                      "--event-selector", world.selector, "--kubeconfig", world.kubeconfig)
            assert out.returncode == 0, out.stderr
            b = json.loads(out.stdout)["breaker"]
            assert (b["state"], b["configMapFound"], b["cordoned"], b["limit"]) == ("Closed", False, 2, 1)
    finally:
        kube.delete(NAMESPACES, ns)


def test_selectors_isolate(world):
    """Verify an event selector matching nothing empties the events part only, and a node selector the nodes."""
    out = cli("status", "-o", "json", "--namespace", world.ns, "--node-selector", world.selector,
              "--event-selector", f"{LABEL}=none-{world.tag}", "--kubeconfig", world.kubeconfig)
    doc = json.loads(out.stdout)
    assert doc["healthEvents"]["total"] == 0 and doc["healthEvents"]["needsHuman"] == []
    assert doc["nodes"]["total"] == 11
    out = cli("status", "-o", "json", "--namespace", world.ns, "--node-selector", f"{LABEL}=none-{world.tag}",
              "--event-selector", world.selector, "--kubeconfig", world.kubeconfig)
    doc = json.loads(out.stdout)
    assert doc["nodes"]["total"] == 0 and doc["breaker"]["limit"] == 0 and doc["healthEvents"]["total"] == 8


# ---- errors: one line, exit 1 -----------------------------------------------------------------------

def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_no_kubeconfig_is_one_line(tmp_path):
    """Verify a missing kubeconfig file prints one line naming the path and exits 1."""
    path = tmp_path / "nope"
    line = one_line_error(cli("status", "--kubeconfig", str(path)))
    assert str(path) in line


def test_unreachable_server_is_one_line(control_plane, tmp_path):
    """Verify a kubeconfig pointing at a closed port prints one line naming the server and exits 1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = yaml.safe_load(pathlib.Path(control_plane.kubeconfig).read_text())
    for cluster in cfg["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    dead = tmp_path / "kubeconfig"
    dead.write_text(yaml.safe_dump(cfg))
    line = one_line_error(cli("status", "--kubeconfig", str(dead), "--request-timeout", "5"))
    assert line.startswith(f"error: cannot reach the Kubernetes API server at https://127.0.0.1:{port}")


def test_forbidden_is_one_line(control_plane, kube, unique, tmp_path):
    """Verify an identity that may list nodes but not HealthEvents gets one `forbidden` line and exit 1."""
    ns = f"status-rbac-{unique}"
    cfg = service_account_kubeconfig(kube, control_plane.kubeconfig, ns, "viewer",
                                     cluster_rules=[{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}],
                                     out=tmp_path / "kubeconfig")
    try:
        line = one_line_error(cli("status", "--kubeconfig", cfg, "--namespace", ns))
        assert line.startswith("error: forbidden: ") and "healthevents" in line
    finally:
        kube.delete(NAMESPACES, ns)
        kube.delete(CLUSTERROLEBINDINGS, f"{ns}-viewer")
        kube.delete(CLUSTERROLES, f"{ns}-viewer")
