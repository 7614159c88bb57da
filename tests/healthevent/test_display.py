"""What `get healthevents` and `describe healthevent` print, from fixed objects and a fixed clock."""
from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml

from nvsentinel.cli.views import display
from nvsentinel.policy.healthevent import API_VERSION, KIND

UTC = dt.timezone.utc
NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def obj(name, created, *, node="node-1", source="nvml-provider", fatal=True, action="RESTART_BM", phase="New",
        errors=("79",), gpus=("GPU-a",), message="Xid 79: fallen off the bus", **extra):
    o = {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": name, "creationTimestamp": created, "uid": f"uid-{name}", "resourceVersion": "42",
                     "managedFields": [{"manager": "x"}], "labels": {"nvsentinel.nvidia.com/node": node}},
        "spec": {"source": source, "agent": "agent-x", "nodeName": node, "componentClass": "GPU",
                 "checkName": "xid-error-check", "isFatal": fatal, "isHealthy": not fatal, "message": message,
                 "recommendedAction": action, "errorCodes": list(errors),
                 "entitiesImpacted": [{"type": "PCI", "value": "0000:3b:00.0"}] + [{"type": "GPU", "value": g} for g in gpus],
                 "detectedAt": created, "overrides": {"quarantine": {"force": False, "skip": False},
                                                      "drain": {"force": True, "skip": False}},
                 "metadata": {}},
        "status": {"phase": phase},
    }
    o.update(extra)
    return o


@pytest.mark.parametrize(("seconds", "want"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (59, "59s"), (119, "119s"), (120, "2m"), (125, "2m5s"),
    (599, "9m59s"), (600, "10m"), (10799, "179m"), (10800, "3h"), (3 * 3600 + 600, "3h10m"), (8 * 3600, "8h"),
    (47 * 3600 + 59, "47h"), (48 * 3600, "2d"), (52 * 3600, "2d4h"), (8 * 86400, "8d"), (729 * 86400, "729d"),
    (730 * 86400, "2y"), (760 * 86400, "2y30d"), (8 * 365 * 86400, "8y"),
])
def test_human_duration_matches_kubectl(seconds, want):
    """Verify ages print with kubectl's HumanDuration cut-offs."""
    assert display.human_duration(seconds) == want


def test_table_columns_sorted_by_creation():
    """Verify the table's columns and that rows are sorted oldest first, then by name."""
    objs = [obj("c", "2024-05-01T11:59:00Z", phase="Quarantined"),
            obj("b", "2024-05-01T10:00:00Z", node="node-2", source="kmsg-monitor", fatal=False, action="NONE"),
            obj("a", "2024-05-01T11:59:00Z")]
    lines = display.render_table(objs, NOW).splitlines()
    assert lines[0].split() == list(display.HEADER) == ["NAME", "NODE", "SOURCE", "FATAL", "ACTION", "PHASE", "AGE"]
    assert [ln.split() for ln in lines[1:]] == [
        ["b", "node-2", "kmsg-monitor", "false", "NONE", "New", "120m"],
        ["a", "node-1", "nvml-provider", "true", "RESTART_BM", "New", "60s"],
        ["c", "node-1", "nvml-provider", "true", "RESTART_BM", "Quarantined", "60s"],
    ]
    # columns line up: every row's NODE starts where the header's does
    col = lines[0].index("NODE")
    assert all(ln[col - 3:col] == "   " and ln[col] != " " for ln in lines[1:])


def test_wide_adds_errors_gpus_message_on_one_line():
    """Verify wide adds ERRORS, GPUS (GPU entities only) and a one-line MESSAGE; empty cells show <none>."""
    objs = [obj("a", "2024-05-01T11:00:00Z", errors=("79", "48"), gpus=("GPU-a", "GPU-b"), message="line one\nline two"),
            obj("b", "2024-05-01T11:30:00Z", errors=(), gpus=(), message="")]
    lines = display.render_table(objs, NOW, wide=True).splitlines()
    assert lines[0].split() == [*display.HEADER, "ERRORS", "GPUS", "MESSAGE"]
    assert lines[1].split()[7:] == ["79,48", "GPU-a,GPU-b", "line", "one", "line", "two"]
    assert lines[1].endswith("line one line two")
    assert lines[2].split()[7:] == ["<none>", "<none>", "<none>"]


def test_odd_objects_degrade_to_placeholders():
    """Verify an object missing status, spec fields or a creation time still prints, as New and <unknown>."""
    odd = {"metadata": {"name": "odd"}, "spec": {"nodeName": "n"}}
    (line,) = display.render_table([odd], NOW).splitlines()[1:]
    assert line.split() == ["odd", "n", "<none>", "<none>", "<none>", "New", "<unknown>"]
    assert not display.is_terminal(odd)


@pytest.mark.parametrize(("phase", "terminal"), [("New", False), ("Drained", False), ("Resolved", True),
                                                 ("Cancelled", True)])
def test_is_terminal(phase, terminal):
    """Verify only Resolved and Cancelled count as finished (hidden by default)."""
    assert display.is_terminal(obj("a", "2024-05-01T11:00:00Z", phase=phase)) is terminal


def test_empty_listing_prints_nothing():
    """Verify no objects gives no table (the command says "No resources found" on stderr)."""
    assert display.render_list([], "table", NOW) == ""


def test_json_and_yaml_lists_drop_managed_fields():
    """Verify -o json/yaml is a kubectl-style List, sorted, with the list RV and without managedFields."""
    objs = [obj("b", "2024-05-01T11:00:00Z"), obj("a", "2024-05-01T10:00:00Z")]
    doc = json.loads(display.render_list(objs, "json", NOW, "77"))
    assert (doc["apiVersion"], doc["kind"], doc["metadata"]) == ("v1", "List", {"resourceVersion": "77"})
    assert [i["metadata"]["name"] for i in doc["items"]] == ["a", "b"]
    assert all("managedFields" not in i["metadata"] for i in doc["items"])
    assert doc["items"][0]["spec"] == objs[1]["spec"]
    assert yaml.safe_load(display.render_list(objs, "yaml", NOW, "77")) == doc
    assert list(doc["items"][0])[:3] == ["apiVersion", "kind", "metadata"]


def test_one_object_outputs():
    """Verify one named object prints as itself in json/yaml and as a one-row table otherwise."""
    o = obj("a", "2024-05-01T11:00:00Z")
    one = json.loads(display.render_one(o, "json", NOW))
    assert one["kind"] == KIND and one["metadata"]["name"] == "a" and "managedFields" not in one["metadata"]
    assert yaml.safe_load(display.render_one(o, "yaml", NOW)) == one
    assert display.render_one(o, "wide", NOW).splitlines()[1].split()[0] == "a"
    with pytest.raises(ValueError, match="unknown output format"):
        display.render_list([o], "xml", NOW)


def conditioned(**kw):
    o = obj("he-1", "2024-05-01T11:50:00Z", phase="Quarantined", **kw)
    o["metadata"]["labels"]["nvsentinel.nvidia.com/source"] = "nvml-provider"
    o["status"] = {"phase": "Quarantined", "observedGeneration": 1, "conditions": [
        {"type": "Detected", "status": "True", "reason": "XidCritical", "message": "xid 79 on GPU-a",
         "lastTransitionTime": "2024-05-01T11:50:00Z", "observedGeneration": 1},
        {"type": "NodeQuarantined", "status": "True", "reason": "FatalEvent", "message": "cordoned and tainted node-1",
         "lastTransitionTime": "2024-05-01T11:55:00Z", "observedGeneration": 1},
    ]}
    return o


def field(text: str, key: str) -> str:
    """The value after `key:` on its line (describe's layout)."""
    for line in text.splitlines():
        if line.strip().startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{key!r} not in:\n{text}")


def test_describe_spec_labels_and_status():
    """Verify describe shows metadata, labels (sorted, aligned), every spec field and the status phase."""
    out = display.describe(conditioned(), [], NOW)
    lines = out.splitlines()
    assert field(out, "Name") == "he-1"
    i = next(n for n, ln in enumerate(lines) if ln.startswith("Labels:"))
    assert lines[i].split(":", 1)[1].strip() == "nvsentinel.nvidia.com/node=node-1"
    assert lines[i + 1].strip() == "nvsentinel.nvidia.com/source=nvml-provider"
    assert lines[i + 1].index("nvsentinel") == lines[i].index("nvsentinel")
    assert field(out, "Created") == "2024-05-01T11:50:00Z (10m ago)"
    assert field(out, "Source") == "nvml-provider" and field(out, "Node Name") == "node-1"
    assert field(out, "Check Name") == "xid-error-check" and field(out, "Component Class") == "GPU"
    assert field(out, "Fatal") == "true" and field(out, "Healthy") == "false"
    assert field(out, "Recommended Action") == "RESTART_BM" and field(out, "Error Codes") == "79"
    assert field(out, "Overrides") == "quarantine: force=false skip=false; drain: force=true skip=false"
    assert field(out, "Phase") == "Quarantined"
    assert "    GPU    GPU-a" in lines and "    PCI    0000:3b:00.0" in lines
    assert field(out, "Annotations") == "<none>" and out.splitlines()[-1] == "Events:  <none>"


def test_describe_conditions_with_reason_message_and_age():
    """Verify each condition prints type, status, reason, age and message, in the status's order."""
    lines = display.describe(conditioned(), [], NOW).splitlines()
    start = lines.index("  Conditions:")
    assert lines[start + 1].split() == ["Type", "Status", "Reason", "Age", "Message"]
    assert lines[start + 3].split() == ["Detected", "True", "XidCritical", "10m", "xid", "79", "on", "GPU-a"]
    assert lines[start + 4].split()[:4] == ["NodeQuarantined", "True", "FatalEvent", "5m"]
    assert lines[start + 4].endswith("cordoned and tainted node-1")


def test_describe_events_sorted_with_repeats():
    """Verify Kubernetes Events print oldest first with type, reason, kubectl's repeat age, source and message."""
    events = [
        {"type": "Warning", "reason": "DrainBlocked", "message": "PDB blocks eviction", "count": 3,
         "firstTimestamp": "2024-05-01T11:56:00Z", "lastTimestamp": "2024-05-01T11:58:00Z",
         "source": {"component": "nvsentinel-drain"}},
        {"type": "Normal", "reason": "Quarantined", "message": "cordoned node-1", "count": 1,
         "firstTimestamp": "2024-05-01T11:55:00Z", "lastTimestamp": "2024-05-01T11:55:00Z",
         "source": {"component": "nvsentinel-quarantine", "host": "ctl-0"}},
        {"type": "Normal", "reason": "Seen", "message": "new-style event", "eventTime": "2024-05-01T11:59:30.000000Z",
         "reportingComponent": "nvsentinel-publisher"},
    ]
    lines = display.describe(conditioned(), events, NOW).splitlines()
    start = lines.index("Events:")
    assert lines[start + 1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert lines[start + 3].split() == ["Normal", "Quarantined", "5m", "nvsentinel-quarantine,", "ctl-0", "cordoned",
                                        "node-1"]
    assert lines[start + 4].split()[:7] == ["Warning", "DrainBlocked", "2m", "(x3", "over", "4m)", "nvsentinel-drain"]
    assert lines[start + 5].split()[:4] == ["Normal", "Seen", "30s", "nvsentinel-publisher"]
    assert len(lines) == start + 6


def test_describe_multiline_message_stays_in_its_column():
    """Verify a multi-line spec message continues under its value column instead of breaking the layout."""
    lines = display.describe(conditioned(message="first\nsecond"), [], NOW).splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith("  Message:"))
    assert lines[i].endswith("first")
    assert lines[i + 1].strip() == "second" and lines[i + 1].index("second") == lines[i].index("first")


def test_describe_maintenance_and_metadata():
    """Verify CSP maintenance and detector metadata appear when present."""
    o = conditioned()
    o["spec"]["metadata"] = {"pci": "0000:3b:00.0", "driver": "550.54"}
    o["spec"]["maintenance"] = {"csp": "aws", "eventId": "ev-1", "maintenanceType": "reboot",
                                "scheduledStartTime": "2024-05-02T00:00:00Z"}
    out = display.describe(o, [], NOW)
    lines = out.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith("  Metadata:"))
    assert lines[i].endswith("driver=550.54") and lines[i + 1].strip() == "pci=0000:3b:00.0"
    assert field(out, "CSP") == "aws" and field(out, "Event ID") == "ev-1"
    assert field(out, "Scheduled Start") == "2024-05-02T00:00:00Z" and field(out, "Scheduled End") == "<none>"


def test_describe_without_pod_mapping_or_drain_record_prints_neither():
    """Verify an event without spec.podMapping or status.drain describes as before (no new lines)."""
    out = display.describe(conditioned(), [], NOW)
    assert "Pod Mapping" not in out and "Drain:" not in out and "Pods Evicted" not in out


def gpu_scoped():
    o = conditioned()
    o["spec"]["podMapping"] = {"resourceName": "nvidia.com/gpu", "readAt": "2024-05-01T11:49:00Z", "pods": [
        {"namespace": "team-a", "name": "train-0", "devices": ["GPU-a"]},
        {"namespace": "team-b", "name": "infer-1", "devices": ["GPU-a", "GPU-b"]}]}
    o["status"]["drain"] = {"scope": "gpu", "gpus": ["GPU-a"], "pods": [{"namespace": "team-a", "name": "train-0"}]}
    return o


def test_describe_shows_the_pod_mapping_and_the_drain_record():
    """Verify describe prints spec.podMapping (resource, read time, pods with their devices) and status.drain
    (scope, GPUs, fallback reason, pods evicted)."""
    out = display.describe(gpu_scoped(), [], NOW)
    lines = out.splitlines()
    i = lines.index("  Pod Mapping:")
    assert lines[i + 1].split() == ["Resource:", "nvidia.com/gpu"]
    assert field(out, "Read At") == "2024-05-01T11:49:00Z (11m ago)"
    assert lines[i + 3].split() == ["Pods:"] and lines[i + 4].split() == ["Namespace", "Name", "Devices"]
    assert lines[i + 5].split() == ["team-a", "train-0", "GPU-a"]
    assert lines[i + 6].split() == ["team-b", "infer-1", "GPU-a,GPU-b"]
    assert lines.index("Status:") > i
    j = lines.index("  Drain:")
    assert j > lines.index("Status:") and j < lines.index("  Conditions:")
    assert field(out, "Scope") == "gpu" and field(out, "GPUs") == "GPU-a" and field(out, "Fallback Reason") == "<none>"
    assert lines[j + 4].split() == ["Pods", "Evicted:"] and lines[j + 5].split() == ["Namespace", "Name"]
    assert lines[j + 6].split() == ["team-a", "train-0"]


def test_describe_shows_a_mapping_error_and_a_fallback():
    """Verify an unreadable mapping shows its error (and no pods), and a fallen-back drain its reason."""
    o = conditioned()
    o["spec"]["podMapping"] = {"resourceName": "nvidia.com/gpu", "error": "connection refused", "pods": []}
    o["status"]["drain"] = {"scope": "node", "gpus": ["GPU-a"], "pods": [],
                            "reason": "the pod mapping could not be read: connection refused"}
    out = display.describe(o, [], NOW)
    assert field(out, "Error") == "connection refused" and field(out, "Read At") == "<none>"
    assert field(out, "Pods") == "<none>" and field(out, "Scope") == "node"
    assert field(out, "Fallback Reason") == "the pod mapping could not be read: connection refused"
    assert field(out, "Pods Evicted") == "<none>"


def test_describe_pod_mapping_and_drain_values_are_printable():
    """Verify values a node's credential wrote (pod names, devices, the error, GPU ids) cannot reach the terminal
    raw: escape sequences and control characters are removed, an extra line cannot be forged in a table."""
    o = gpu_scoped()
    evil = "x\x1b[31mred\x1b[0m\x07"
    o["spec"]["podMapping"]["error"] = "boom\x1b]0;title\x07"
    o["spec"]["podMapping"]["pods"][0] = {"namespace": "team-a", "name": evil, "devices": ["GPU-a\r\nFAKE  LINE"]}
    o["status"]["drain"]["gpus"] = ["GPU-\x1b[2Ja"]
    o["status"]["drain"]["pods"] = [{"namespace": "ns\x00", "name": evil}]
    o["status"]["drain"]["reason"] = "why\x1b[1A"
    out = display.describe(o, [], NOW)
    assert "\x1b" not in out and "\x07" not in out and "\x00" not in out and "\r" not in out
    assert not any(ln.strip().startswith("FAKE") for ln in out.splitlines())
    assert "red" in out and "boom" in out
