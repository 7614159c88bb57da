"""`nvsentinel get healthevents` and `describe healthevent` against the real apiserver, as a user runs them.

The cluster is shared with other tests, so every listing here is narrowed to this test's own node
(`--node`, the label the publisher sets) and names carry a uuid suffix.
"""
from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from nvsentinel.k8s import KubeNotFound
from nvsentinel.k8s.resources import EVENTS, HEALTHEVENTS
from nvsentinel.policy.healthevent import LABEL_NODE, LABEL_SOURCE


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvsentinel", *args], capture_output=True, text=True,
                          timeout=timeout)


def body(name: str, node: str, *, fatal: bool = True, action: str = "RESTART_BM", source: str = "nvml-provider",
         message: str = "Xid 79 on GPU-a", gpus: tuple[str, ...] = ("GPU-a",)) -> dict:
    return {"apiVersion": "nvsentinel.nvidia.com/v1alpha1", "kind": "HealthEvent",
            "metadata": {"name": name, "labels": {LABEL_NODE: node, LABEL_SOURCE: source}},
            "spec": {"source": source, "nodeName": node, "componentClass": "GPU", "checkName": "xid-error-check",
                     "isFatal": fatal, "isHealthy": not fatal, "message": message, "recommendedAction": action,
                     "errorCodes": ["79"] if fatal else [],
                     "entitiesImpacted": [{"type": "GPU", "value": g} for g in gpus],
                     "detectedAt": "2024-05-01T12:00:00Z"}}


@pytest.fixture
def world(kube, crd_installed):
    """Three events on one fresh node, created a second apart (creation times have 1 s resolution).

    Names run against creation order (z, m, a) so a name sort and a creation sort disagree. No Node
    object exists for them, so no controller another test starts will act on them.
    """
    tag = uuid.uuid4().hex[:8]
    node = f"cli-node-{tag}"
    names = [f"z-{tag}", f"m-{tag}", f"a-{tag}"]
    specs = [dict(fatal=True), dict(fatal=False, action="NONE", source="kmsg-monitor", gpus=()),
             dict(fatal=True, action="COMPONENT_RESET", message="line one\nline two", gpus=("GPU-b", "GPU-c"))]
    objs = []
    for i, (n, kw) in enumerate(zip(names, specs)):
        if i:
            time.sleep(1.05)
        objs.append(kube.create(HEALTHEVENTS, body(n, node, **kw)))
    kube.patch(HEALTHEVENTS, names[1], {"status": {"phase": "Resolved"}}, subresource="status")
    kube.patch(HEALTHEVENTS, names[0], {"status": {"phase": "Quarantined", "conditions": [
        {"type": "Detected", "status": "True", "reason": "XidCritical", "message": "xid 79 decoded",
         "lastTransitionTime": objs[0]["metadata"]["creationTimestamp"]},
        {"type": "NodeQuarantined", "status": "True", "reason": "FatalEvent", "message": f"cordoned {node}",
         "lastTransitionTime": objs[0]["metadata"]["creationTimestamp"]}]}}, subresource="status")
    yield {"node": node, "names": names, "objs": objs}
    for n in names:
        try:
            kube.delete(HEALTHEVENTS, n)
        except KubeNotFound:
            pass


def test_get_lists_open_events_sorted_by_creation(control_plane, world):
    """Verify the table shows this node's open events oldest first; Resolved ones are hidden without --all."""
    z, m, a = world["names"]
    out = cli("get", "healthevents", "--node", world["node"], "--kubeconfig", control_plane.kubeconfig)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "NODE", "SOURCE", "FATAL", "ACTION", "PHASE", "AGE"]
    rows = [ln.split() for ln in lines[1:]]
    assert [r[:6] for r in rows] == [
        [z, world["node"], "nvml-provider", "true", "RESTART_BM", "Quarantined"],
        [a, world["node"], "nvml-provider", "true", "COMPONENT_RESET", "New"],
    ]
    assert all(r[6].endswith("s") for r in rows)  # ages in seconds: just created


def test_get_all_includes_resolved_and_aliases_work(control_plane, world):
    """Verify --all adds the Resolved event in creation order, and he/hevt/healthevent are the same command."""
    z, m, a = world["names"]
    for kind in ("he", "hevt", "healthevent"):
        out = cli("get", kind, "--all", "--node", world["node"], "--kubeconfig", control_plane.kubeconfig)
        assert out.returncode == 0, out.stderr
        assert [ln.split()[0] for ln in out.stdout.splitlines()[1:]] == [z, m, a]
        assert out.stdout.splitlines()[2].split()[5] == "Resolved"


def test_get_wide(control_plane, world):
    """Verify -o wide adds ERRORS, GPUS and the message on one line."""
    out = cli("get", "he", "-o", "wide", "--node", world["node"], "--kubeconfig", control_plane.kubeconfig)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[-3:] == ["ERRORS", "GPUS", "MESSAGE"]
    assert lines[2].split()[7:] == ["79", "GPU-b,GPU-c", "line", "one", "line", "two"]


def test_get_label_selector_combines_with_node(control_plane, world):
    """Verify -l narrows further and ANDs with --node (the kmsg-monitor event only, with --all)."""
    out = cli("get", "he", "--all", "--node", world["node"], "-l", f"{LABEL_SOURCE}=kmsg-monitor",
              "--kubeconfig", control_plane.kubeconfig)
    assert out.returncode == 0, out.stderr
    assert [ln.split()[0] for ln in out.stdout.splitlines()[1:]] == [world["names"][1]]


def test_get_json_yaml_and_by_name(control_plane, world):
    """Verify -o json/yaml give a List of the objects, and NAME gets one object."""
    z, m, a = world["names"]
    doc = json.loads(cli("get", "he", "--all", "-o", "json", "--node", world["node"],
                         "--kubeconfig", control_plane.kubeconfig).stdout)
    assert doc["kind"] == "List" and doc["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in doc["items"]] == [z, m, a]
    assert all("managedFields" not in i["metadata"] for i in doc["items"])
    assert doc["items"][0]["status"]["conditions"][1]["reason"] == "FatalEvent"
    ydoc = yaml.safe_load(cli("get", "he", "--all", "-o", "yaml", "--node", world["node"],
                              "--kubeconfig", control_plane.kubeconfig).stdout)
    assert [i["spec"] for i in ydoc["items"]] == [i["spec"] for i in doc["items"]]
    one = json.loads(cli("get", "he", m, "-o", "json", "--kubeconfig", control_plane.kubeconfig).stdout)
    assert one["metadata"]["name"] == m and one["status"]["phase"] == "Resolved"
    row = cli("get", "healthevents", m, "--kubeconfig", control_plane.kubeconfig)
    assert row.returncode == 0 and row.stdout.splitlines()[1].split()[0] == m


def test_get_empty_says_so(control_plane, crd_installed):
    """Verify a node without events prints nothing on stdout and "No resources found" on stderr, exit 0."""
    out = cli("get", "he", "--node", f"empty-{uuid.uuid4().hex[:8]}", "--kubeconfig", control_plane.kubeconfig)
    assert (out.returncode, out.stdout) == (0, "")
    assert out.stderr.strip() == "No resources found."


def test_get_hidden_hint(control_plane, world, kube):
    """Verify an empty default listing says how many finished events it hid."""
    for n in (world["names"][0], world["names"][2]):
        kube.patch(HEALTHEVENTS, n, {"status": {"phase": "Cancelled"}}, subresource="status")
    out = cli("get", "he", "--node", world["node"], "--kubeconfig", control_plane.kubeconfig)
    assert out.returncode == 0 and out.stdout == ""
    assert "3 resolved or cancelled hidden; --all shows them" in out.stderr


def test_describe_shows_spec_status_conditions_and_events(control_plane, world, kube):
    """Verify describe prints spec, labels, phase, each condition and only this object's Kubernetes Events."""
    z = world["names"][0]
    obj = world["objs"][0]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    events = []
    for i, (target, uid, reason) in enumerate([(z, obj["metadata"]["uid"], "Quarantined"),
                                               (z, "another-uid", "StaleOldObject"),
                                               (world["names"][2], world["objs"][2]["metadata"]["uid"], "Other")]):
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": f"{target}.{uuid.uuid4().hex[:8]}", "namespace": "default"},
              "involvedObject": {"apiVersion": "nvsentinel.nvidia.com/v1alpha1", "kind": "HealthEvent", "name": target,
                                 "uid": uid},
              "reason": reason, "message": f"cordoned {world['node']} ({i})", "type": "Normal", "count": 1,
              "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "nvsentinel-quarantine"}}
        events.append(kube.create(EVENTS, ev, "default"))
    try:
        for kind in ("healthevent", "he"):
            out = cli("describe", kind, z, "--kubeconfig", control_plane.kubeconfig)
            assert out.returncode == 0, out.stderr
            text = out.stdout
            lines = text.splitlines()
            assert lines[0].split() == ["Name:", z]
            assert f"{LABEL_NODE}={world['node']}" in text
            assert any(ln.split() == ["Node", "Name:", world["node"]] for ln in lines)
            assert any(ln.split() == ["Recommended", "Action:", "RESTART_BM"] for ln in lines)
            assert any(ln.split() == ["Phase:", "Quarantined"] for ln in lines)
            cond = lines.index("  Conditions:")
            assert lines[cond + 3].split()[:3] == ["Detected", "True", "XidCritical"]
            assert lines[cond + 4].split()[:3] == ["NodeQuarantined", "True", "FatalEvent"]
            ev_at = lines.index("Events:")
            assert lines[ev_at + 1].split() == ["Type", "Reason", "Age", "From", "Message"]
            assert [ln.split()[1] for ln in lines[ev_at + 3:]] == ["Quarantined"]
            assert "nvsentinel-quarantine" in lines[ev_at + 3] and lines[ev_at + 3].endswith("(0)")
    finally:
        for ev in events:
            kube.delete(EVENTS, ev["metadata"]["name"], "default")


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_not_found_is_one_line(control_plane, crd_installed):
    """Verify get/describe of a missing name print one line naming it and exit 1."""
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    for args in (("get", "he", missing), ("describe", "healthevent", missing)):
        line = one_line_error(cli(*args, "--kubeconfig", control_plane.kubeconfig))
        assert line == f'error: healthevent "{missing}" not found'


def test_no_kubeconfig_is_one_line(tmp_path):
    """Verify a missing kubeconfig file prints one line naming the path and exits 1."""
    path = tmp_path / "nope"
    for args in (("get", "he"), ("describe", "he", "x")):
        line = one_line_error(cli(*args, "--kubeconfig", str(path)))
        assert str(path) in line and "kubeconfig" in line


def test_unreachable_server_is_one_line(control_plane, tmp_path):
    """Verify a kubeconfig pointing at a closed port prints one line naming the server and exits 1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    cfg = yaml.safe_load(pathlib.Path(control_plane.kubeconfig).read_text())
    for cluster in cfg["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    dead = tmp_path / "kubeconfig"
    dead.write_text(yaml.safe_dump(cfg))
    for args in (("get", "he"), ("describe", "he", "x")):
        line = one_line_error(cli(*args, "--kubeconfig", str(dead), "--request-timeout", "5"))
        assert line.startswith(f"error: cannot reach the Kubernetes API server at https://127.0.0.1:{port}")


def test_name_with_selectors_is_refused(control_plane):
    """Verify a NAME with --node/-l/--all is refused like kubectl does, before any request."""
    line = one_line_error(cli("get", "he", "x", "--all", "--kubeconfig", control_plane.kubeconfig))
    assert "cannot be used with a NAME" in line


def test_gpu_subcommands_still_parse():
    """Verify adding healthevents kept `get gpus`/`get gpu` (their behaviour is tested in tests/api)."""
    out = cli("get", "--help")
    assert out.returncode == 0
    for kind in ("gpus", "gpu", "healthevents", "he"):
        assert kind in out.stdout
