"""What the chart runs: every flag a template passes exists in that daemon's own parser and resolves
to valid settings, and the workloads are wired as SPEC §8 and the daemons' docs say."""
from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import Any

import pytest
from helmchart import ALL_FEATURES, CONTROLLERS, Helm, by_kind, containers

from nvsentinel.cli import build_parser
from nvsentinel.cluster.admission.config import ENV_PREFIX as ADMISSION_PREFIX
from nvsentinel.cluster.admission.config import AdmissionSettings
from nvsentinel.cluster.settings import ControllersSettings
from nvsentinel.cluster.settings import ENV_PREFIX as CONTROLLERS_PREFIX
from nvsentinel.daemons.controllers import CONTROLLER_CONFIGS
from nvsentinel.node.api.config import DeviceApiSettings
from nvsentinel.cluster.exporter.config import ENV_PREFIX as EXPORTER_PREFIX
from nvsentinel.cluster.exporter.config import ExporterSettings
from nvsentinel.node.api.config import ENV_PREFIX as DEVICE_API_PREFIX
from nvsentinel.node.kmsg.config import ENV_PREFIX as KMSG_PREFIX
from nvsentinel.node.kmsg.config import KmsgMonitorSettings
from nvsentinel.node.nvml.config import ENV_PREFIX as NVML_PREFIX
from nvsentinel.node.nvml.config import NvmlProviderSettings
from nvsentinel.node.publisher.config import ENV_PREFIX as PUBLISHER_PREFIX
from nvsentinel.node.publisher.config import PublisherSettings
from nvsentinel.node.remediation_agent.config import ENV_PREFIX as AGENT_PREFIX
from nvsentinel.node.remediation_agent.config import RemediationAgentSettings
from nvsentinel.policy.ttl import parse_duration, parse_policy
from nvsentinel.service.settings import resolve

#: subcommand → the settings dataclasses its flags resolve into, with their env prefix
SETTINGS: dict[str, list[tuple[type, str]]] = {
    "device-api-server": [(DeviceApiSettings, DEVICE_API_PREFIX)],
    "nvml-provider": [(NvmlProviderSettings, NVML_PREFIX)],
    "kmsg-monitor": [(KmsgMonitorSettings, KMSG_PREFIX)],
    "publisher": [(PublisherSettings, PUBLISHER_PREFIX)],
    "remediation-agent": [(RemediationAgentSettings, AGENT_PREFIX)],
    "admission-webhook": [(AdmissionSettings, ADMISSION_PREFIX)],
    "controllers": [(ControllersSettings, CONTROLLERS_PREFIX)]
                   + [(cls, CONTROLLERS_PREFIX) for cls in CONTROLLER_CONFIGS.values()],
    "exporter": [(ExporterSettings, EXPORTER_PREFIX)],
}
#: daemons the chart renders only when asked (off by default), and values that turn each on
OPTIONAL = {"exporter": {"exporter": {"enabled": True, "sink": "https://events.example.com/ingest",
                                      "clusterName": "gpu-east-1", "eventSelector": "nvsentinel.nvidia.com/is-fatal=true",
                                      "extraArgs": ["--poison-retries=5"]}}}
#: what the kubelet substitutes for $(VAR) from the downward API
DOWNWARD = {"spec.nodeName": "gpu-node-7", "metadata.name": "pod-abc", "metadata.namespace": "nvsentinel"}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def expanded_args(container: Mapping[str, Any]) -> list[str]:
    env = {e["name"]: DOWNWARD[e["valueFrom"]["fieldRef"]["fieldPath"]] if "valueFrom" in e else e["value"]
           for e in container.get("env", ())}
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]


def flags(container: Mapping[str, Any]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for arg in expanded_args(container):
        name, eq, value = arg.partition("=")
        out[name] = value if eq else True
    return out


@pytest.mark.parametrize("features", ["defaults", "all"])
def test_every_flag_exists_and_every_value_resolves(helm: Helm, features: str) -> None:
    # "all": every optional daemon on too (each has its own RBAC table entry to come, tests/helm/test_chart_rbac.py)
    objs = helm.render({**ALL_FEATURES, **{k: v for on in OPTIONAL.values() for k, v in on.items()}}
                       if features == "all" else None)
    parsers = subparsers()
    seen = set()
    for workload, c in containers(objs):
        where = f"{workload['metadata']['name']}/{c['name']}"
        assert c["command"][0] == "nvsentinel" and len(c["command"]) == 2, where
        sub = c["command"][1]
        seen.add(sub)
        known = {s for a in parsers[sub]._actions for s in a.option_strings}
        args = expanded_args(c)
        for arg in args:
            assert arg.startswith("--"), f"{where}: {arg!r} is not a --flag=value"
            # exact names: argparse would also accept an abbreviation, which a rename would break
            assert arg.partition("=")[0] in known, f"{where}: `nvsentinel {sub}` has no {arg.partition('=')[0]}"
        try:
            ns = build_parser().parse_args([sub, *args])
        except SystemExit as exc:
            raise AssertionError(f"{where}: `nvsentinel {sub}` refuses {args}") from exc
        for cls, prefix in SETTINGS[sub]:
            resolve(cls, ns, environ={}, prefix=prefix)  # raises SettingsError naming a bad value
    assert seen == (set(SETTINGS) if features == "all" else set(SETTINGS) - set(OPTIONAL))


def test_a_bad_extra_flag_would_be_caught(helm: Helm) -> None:
    """A control: the same check refuses a flag the daemon does not have."""
    objs = helm.render(sets=["controllers.drain.extraArgs={--drain-force}"])
    (c,) = [c for w, c in containers(objs) if w["metadata"]["name"] == "nvs-drain-controller"]
    known = {s for a in subparsers()["controllers"]._actions for s in a.option_strings}
    assert "--drain-force" in flags(c) and "--drain-force" not in known


def _probe_ports(c: Mapping[str, Any]) -> set[int]:
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", ())}
    return {ports[c[p]["httpGet"]["port"]] for p in ("livenessProbe", "readinessProbe")}


@pytest.mark.parametrize("name", CONTROLLERS)
def test_one_deployment_per_controller(rendered: list[dict[str, Any]], name: str) -> None:
    d = by_kind(rendered, "Deployment")[f"nvs-{name}-controller"]
    assert d["metadata"]["labels"]["app.kubernetes.io/component"] == f"{name}-controller"
    assert d["spec"]["replicas"] == 2
    spec = d["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    f = flags(c)
    assert c["command"] == ["nvsentinel", "controllers"]
    assert f["--controllers"] == name
    assert f["--lease-name"] == f"nvs-{name}"
    assert f["--namespace"] == "nvsentinel"
    assert f["--bind-address"] == "0.0.0.0"
    assert f["--leader-elect"] is True
    assert f["--no-dry-run"] is True
    assert _probe_ports(c) == {int(f["--health-port"])}
    assert {p["containerPort"] for p in c["ports"]} == {int(f["--health-port"]), int(f["--metrics-port"])}
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]} == {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    pdb = by_kind(rendered, "PodDisruptionBudget")[f"nvs-{name}-controller"]
    assert pdb["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]


def test_controller_specific_flags(rendered_all: list[dict[str, Any]]) -> None:
    deps = by_kind(rendered_all, "Deployment")
    f = {n: flags(deps[f"gpu-health-{n}-controller"]["spec"]["template"]["spec"]["containers"][0]) for n in CONTROLLERS}
    ctl = ALL_FEATURES["controllers"]
    chain = ALL_FEATURES["chain"]
    for n in CONTROLLERS:
        assert f[n]["--lease-name"] == f"gpu-health-{n}"
        assert f[n]["--dry-run"] is True
        assert f[n]["--node-selector"] == chain["nodeSelector"] and f[n]["--event-selector"] == chain["eventSelector"]
        assert f[n]["--workers"] == "8" and f[n]["--kube-burst"] == "200"
        assert f[n]["--log-format"] == "plain" and f[n]["--log-level"] == "DEBUG"
        assert f[n]["--resync-period"] == "120", "controllers.extraArgs reach every controller"
    assert f["quarantine"]["--taint-key"] == f["resolution"]["--taint-key"] == chain["taint"]["key"]
    assert f["quarantine"]["--taint-effect"] == "NoExecute" and f["quarantine"]["--taint-value"] == "yes"
    assert f["quarantine"]["--breaker-percent"] == "5.5" and f["quarantine"]["--breaker-max-nodes"] == "20"
    assert f["quarantine"]["--breaker-configmap"] == "gpu-health-circuit-breaker"
    assert f["drain"]["--drain-skip-namespaces"] == "kube-system,gpu-operator"
    assert f["drain"]["--drain-force-delete"] is True and f["drain"]["--drain-grace-period"] == "60"
    assert f["remediation"]["--reboot-command"] == ctl["remediation"]["rebootCommand"]
    assert f["remediation"]["--escalation-threshold"] == "0" and f["remediation"]["--escalation-window"] == "604800"
    assert f["ttl"]["--policy-configmap"] == "gpu-health-policy"
    assert "--policy-configmap" not in f["quarantine"] and "--breaker-percent" not in f["ttl"]
    assert deps["gpu-health-quarantine-controller"]["spec"]["replicas"] == 3
    assert deps["gpu-health-quarantine-controller"]["spec"]["template"]["spec"]["containers"][0]["resources"] == \
        ctl["quarantine"]["resources"], "a controller's own resources replace the shared ones"


@pytest.mark.parametrize("features", ["defaults", "all"])
def test_policy_configmap_is_what_the_ttl_controller_parses(helm: Helm, features: str) -> None:
    values = ALL_FEATURES if features == "all" else None
    objs = helm.render(values)
    prefix = "gpu-health" if values else "nvs"
    cm = by_kind(objs, "ConfigMap")[f"{prefix}-policy"]
    assert cm["metadata"]["labels"]["app.kubernetes.io/component"] == "policy"
    assert set(cm["data"]) == {"ttlAfterResolved", "retentionMode", "complianceRetention", "batchSize",
                               "cleanupInterval", "maxEventsPerNode", "maxTotalEvents"}
    policy = parse_policy(cm["data"])  # raises PolicyError naming a bad key
    want = (values or {}).get("policy") or {"ttlAfterResolved": "168h", "retentionMode": "standard",
                                            "complianceRetention": "2160h", "batchSize": 100,
                                            "cleanupInterval": "5m", "maxEventsPerNode": 0, "maxTotalEvents": 0}
    assert policy.ttl_after_resolved == parse_duration(want["ttlAfterResolved"])
    assert policy.compliance_retention == parse_duration(want["complianceRetention"])
    assert policy.cleanup_interval == parse_duration(want["cleanupInterval"])
    assert policy.retention_mode == want["retentionMode"]
    assert (policy.batch_size, policy.max_events_per_node, policy.max_total_events) == (
        want["batchSize"], want["maxEventsPerNode"], want["maxTotalEvents"])


def test_node_daemonset(rendered: list[dict[str, Any]]) -> None:
    ds = by_kind(rendered, "DaemonSet")["nvs-node"]
    spec = ds["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvsentinel.nvidia.com/quarantine", "operator": "Exists"} in spec["tolerations"]
    cs = {c["name"]: c for c in spec["containers"]}
    assert [c["command"][1] for c in spec["containers"]] == ["device-api-server", "nvml-provider", "kmsg-monitor",
                                                             "publisher"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["socket-dir"]["hostPath"] == {"path": "/var/run/nvsentinel", "type": "DirectoryOrCreate"}
    dapi = flags(cs["device-api-server"])
    assert dapi["--unix-socket"] == "/var/run/nvsentinel/device.sock"
    assert dapi["--grpc-address"] == "", "TCP off: the API is unauthenticated"
    assert dapi["--node-name"] == DOWNWARD["spec.nodeName"]
    assert _probe_ports(cs["device-api-server"]) == {int(dapi["--health-port"])}
    for name in ("nvml-provider", "kmsg-monitor", "publisher"):
        assert flags(cs[name])["--address"] == "unix:///var/run/nvsentinel/device.sock"
        assert flags(cs[name])["--node-name"] == DOWNWARD["spec.nodeName"]
    for name, c in cs.items():
        # only the server may write the socket's directory: a client that could would squat the socket path
        mount = {"name": "socket-dir", "mountPath": "/var/run/nvsentinel"}
        if name != "device-api-server":
            mount["readOnly"] = True
        assert mount in c["volumeMounts"], name
    nvidia = {n: {e["name"]: e.get("value") for e in c["env"] if e["name"].startswith("NVIDIA_")}
              for n, c in cs.items()}
    assert nvidia == {"device-api-server": {}, "nvml-provider": {"NVIDIA_VISIBLE_DEVICES": "all",
                      "NVIDIA_DRIVER_CAPABILITIES": "utility"}, "kmsg-monitor": {}, "publisher": {}}
    # the kernel log: syslog(2), no device, not privileged, CAP_SYSLOG only; a host cursor file
    kmsg = cs["kmsg-monitor"]
    assert "kmsg" not in volumes
    assert not [m for m in kmsg["volumeMounts"] if m["mountPath"].startswith("/dev")]
    assert flags(kmsg)["--source"] == "syslog"
    assert kmsg["securityContext"] == {"runAsUser": 0, "runAsGroup": 65522, "allowPrivilegeEscalation": False,
                                       "readOnlyRootFilesystem": True,
                                       "capabilities": {"drop": ["ALL"], "add": ["SYSLOG"]}}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert flags(kmsg)["--state-file"] == "/var/lib/nvsentinel/kmsg-monitor.json"
    assert volumes["kmsg-state"]["hostPath"]["path"] == "/var/lib/nvsentinel"
    # nobody else is privileged or keeps a capability
    for name in ("device-api-server", "nvml-provider", "publisher"):
        sc = cs[name]["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, name
        assert "privileged" not in sc
    for name in ("nvml-provider", "publisher"):
        assert _probe_ports(cs[name]) == {int(flags(cs[name])["--health-port"])}


def test_kmsg_monitor_device_mode_is_privileged(helm: Helm) -> None:
    """node.kmsgMonitor.source=kmsg: the old way, /dev/kmsg mounted and the container privileged
    (runtimes admit the device to privileged containers only)."""
    ds = by_kind(helm.render(sets=["node.kmsgMonitor.source=kmsg"]), "DaemonSet")["nvs-node"]
    spec = ds["spec"]["template"]["spec"]
    (kmsg,) = [c for c in spec["containers"] if c["name"] == "kmsg-monitor"]
    assert flags(kmsg)["--source"] == "/dev/kmsg"
    assert kmsg["securityContext"]["privileged"] is True
    assert {"name": "kmsg", "mountPath": "/dev/kmsg", "readOnly": True} in kmsg["volumeMounts"]
    assert {v["name"]: v for v in spec["volumes"]}["kmsg"]["hostPath"] == {"path": "/dev/kmsg", "type": "CharDevice"}
    others = [c for c in spec["containers"] if c["name"] != "kmsg-monitor"]
    assert not [c["name"] for c in others if c["securityContext"].get("privileged")]


@pytest.mark.parametrize("bad", ["node.kmsgMonitor.source=dev", "node.kmsgMonitor.privileged=true"])
def test_kmsg_monitor_values_refused(helm: Helm, bad: str) -> None:
    """An unknown source, or the removed `privileged` switch (now `source: kmsg`), fails the schema."""
    proc = helm.template(sets=[bad], check=False)
    assert proc.returncode != 0
    assert "kmsgMonitor" in proc.stderr


def test_remediation_agent_daemonset(rendered: list[dict[str, Any]]) -> None:
    ds = by_kind(rendered, "DaemonSet")
    agent, node = ds["nvs-remediation-agent"]["spec"]["template"]["spec"], ds["nvs-node"]["spec"]["template"]["spec"]
    assert agent["serviceAccountName"] != node["serviceAccountName"]
    assert agent["nodeSelector"] == node["nodeSelector"] and agent["tolerations"] == node["tolerations"]
    (c,) = agent["containers"]
    f = flags(c)
    assert f["--address"] == "unix:///var/run/nvsentinel/device.sock"
    assert f["--node-name"] == DOWNWARD["spec.nodeName"]
    assert _probe_ports(c) == {int(f["--health-port"])}
    volumes = {v["name"]: v for v in agent["volumes"]}
    assert volumes["socket-dir"]["hostPath"]["path"] == "/var/run/nvsentinel"
    assert {"name": "socket-dir", "mountPath": "/var/run/nvsentinel", "readOnly": True} in c["volumeMounts"]
    # a bound, expiring token (names the pod, so the admission webhook knows the node), never the automounted one
    assert agent["automountServiceAccountToken"] is False
    (token,) = volumes["agent-token"]["projected"]["sources"][:1]
    assert token["serviceAccountToken"]["expirationSeconds"] == 3600
    assert {"name": "agent-token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            "readOnly": True} in c["volumeMounts"]


def test_the_taint_the_controllers_put_is_the_one_the_agents_tolerate(rendered_all: list[dict[str, Any]]) -> None:
    key = ALL_FEATURES["chain"]["taint"]["key"]
    for name in ("gpu-health-node", "gpu-health-remediation-agent"):
        tolerations = by_kind(rendered_all, "DaemonSet")[name]["spec"]["template"]["spec"]["tolerations"]
        assert {"key": key, "operator": "Exists"} in tolerations, name
        assert not any(t.get("key") == "nvsentinel.nvidia.com/quarantine" for t in tolerations)
    deps = by_kind(rendered_all, "Deployment")
    for name in ("quarantine", "resolution"):
        assert flags(deps[f"gpu-health-{name}-controller"]["spec"]["template"]["spec"]["containers"][0])[
            "--taint-key"] == key


def test_each_device_api_client_runs_with_a_group_of_its_own(rendered: list[dict[str, Any]]) -> None:
    """The device API server tells clients in other pid namespaces apart by uid and gid (SO_PEERCRED):
    each client container has its own group, so one cannot spend another's per-client share."""
    groups = {}
    for kind, name in (("DaemonSet", "nvs-node"), ("DaemonSet", "nvs-remediation-agent")):
        for c in by_kind(rendered, kind)[name]["spec"]["template"]["spec"]["containers"]:
            groups[c["name"]] = (c["securityContext"]["runAsUser"], c["securityContext"]["runAsGroup"])
    assert groups["device-api-server"] == (0, 0)
    clients = {k: v for k, v in groups.items() if k != "device-api-server"}
    assert set(clients) == {"nvml-provider", "kmsg-monitor", "publisher", "remediation-agent"}
    assert all(uid == 0 for uid, _ in clients.values())
    assert len({gid for _, gid in clients.values()} | {0}) == len(clients) + 1


# ---- issue 18: conditions, hand-off modes, the drain's GPU scope -------------------------------------------------

def _controller_flags(objs: list[dict[str, Any]], prefix: str, name: str) -> dict[str, str | bool]:
    return flags(by_kind(objs, "Deployment")[f"{prefix}-{name}-controller"]["spec"]["template"]["spec"]["containers"][0])


def test_conditions_mode_and_scope_flags_by_default(rendered: list[dict[str, Any]]) -> None:
    conditions = _controller_flags(rendered, "nvs", "conditions")
    assert conditions["--controllers"] == "conditions" and conditions["--node-condition-mirror"] == "off"
    quarantine = _controller_flags(rendered, "nvs", "quarantine")
    assert (quarantine["--remediation-mode"], quarantine["--remediation-mode-rules"]) == ("nvsentinel", "[]")
    # quarantine decides whether to cordon by the drain's scope: both run with the same one
    assert quarantine["--drain-scope"] == _controller_flags(rendered, "nvs", "drain")["--drain-scope"] == "node"
    for other in ("remediation", "resolution", "ttl", "conditions"):
        assert "--drain-scope" not in _controller_flags(rendered, "nvs", other)


def test_conditions_mode_and_scope_flags_from_values(rendered_all: list[dict[str, Any]]) -> None:
    import json

    from nvsentinel.policy.handoff import parse_mode_rules

    ctl = ALL_FEATURES["controllers"]
    assert _controller_flags(rendered_all, "gpu-health", "conditions")["--node-condition-mirror"] == "always"
    quarantine = _controller_flags(rendered_all, "gpu-health", "quarantine")
    assert quarantine["--remediation-mode"] == "external"
    rules = str(quarantine["--remediation-mode-rules"])
    assert json.loads(rules) == ctl["quarantine"]["remediationModeRules"]
    assert [r.to_dict() for r in parse_mode_rules(rules)] == ctl["quarantine"]["remediationModeRules"]
    assert quarantine["--drain-scope"] == _controller_flags(rendered_all, "gpu-health", "drain")["--drain-scope"] == "gpu"


def _publisher(objs: list[dict[str, Any]], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = by_kind(objs, "DaemonSet")[f"{prefix}-node"]["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == "publisher"]
    return spec, c


@pytest.mark.parametrize("sets, on", [
    ([], False),
    (["node.publisher.podResources.enabled=true"], True),
    (["controllers.drain.scope=gpu"], True),     # the GPU scope needs the mapping
])
def test_the_publisher_reads_pod_resources_when_asked_or_gpu_scoped(helm: Helm, sets: list[str], on: bool) -> None:
    spec, c = _publisher(helm.render(sets=sets), "nvs")
    f = flags(c)
    mounts = [m for m in c["volumeMounts"] if m["name"] == "pod-resources"]
    vols = [v for v in spec["volumes"] if v["name"] == "pod-resources"]
    if not on:
        assert "--pod-resources-socket" not in f and not mounts and not vols
        return
    assert f["--pod-resources-socket"] == "/var/lib/kubelet/pod-resources/kubelet.sock"
    assert f["--pod-resources-resource"] == "nvidia.com/gpu"
    assert mounts == [{"name": "pod-resources", "mountPath": "/var/lib/kubelet/pod-resources", "readOnly": True}]
    assert vols == [{"name": "pod-resources", "hostPath": {"path": "/var/lib/kubelet/pod-resources",
                                                           "type": "Directory"}}]
    # only the publisher sees the kubelet's socket
    others = [m for x in spec["containers"] if x["name"] != "publisher" for m in x.get("volumeMounts", ())]
    assert not [m for m in others if m["name"] == "pod-resources"]


def test_pod_resources_values_from_all_features(rendered_all: list[dict[str, Any]]) -> None:
    _, c = _publisher(rendered_all, "gpu-health")
    f = flags(c)
    assert f["--pod-resources-socket"] == "/var/lib/kubelet/pod-resources/kubelet.sock"
    assert f["--pod-resources-resource"] == "nvidia.com/gpu-shared"


@pytest.mark.parametrize("bad", [
    "controllers.conditions.mirror=on", "controllers.drain.scope=pod", "controllers.quarantine.remediationMode=auto",
    "node.publisher.podResources.socketDir=relative/dir",
])
def test_issue18_values_refused(helm: Helm, bad: str) -> None:
    assert helm.template(sets=[bad], check=False).returncode != 0
