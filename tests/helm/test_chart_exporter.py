"""The exporter in the chart: off by default, renders from its values, least-privilege RBAC, and
every flag it passes resolves in `nvsentinel exporter`."""
from __future__ import annotations

from typing import Any

import pytest
from helmchart import ALL_FEATURES, Helm, by_kind

from nvsentinel.cli import build_parser
from nvsentinel.cluster.exporter.config import ENV_PREFIX, ExporterSettings
from nvsentinel.service.settings import resolve

ON = {"exporter": {"enabled": True, "sink": "http://sink.example:8080/events"}}


def _exporter(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(objs, "Deployment")["nvs-exporter"]


def _settings(dep: dict[str, Any]) -> ExporterSettings:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["nvsentinel", "exporter"]
    ns = build_parser().parse_args(["exporter", *c["args"]])
    return resolve(ExporterSettings, ns, environ={}, prefix=ENV_PREFIX)


def test_off_by_default(rendered: list[dict[str, Any]]) -> None:
    assert not [o for o in rendered if "exporter" in o["metadata"]["name"]]


def test_renders_and_its_flags_resolve(helm: Helm) -> None:
    objs = helm.render(ON)
    dep = _exporter(objs)
    s = _settings(dep)
    assert s.sink == "http://sink.example:8080/events" and s.cluster_name == "nvs"  # the release name
    assert s.lease_name == "nvs-exporter" and s.checkpoint_configmap == "nvs-exporter-checkpoint"
    assert s.namespace == "nvsentinel" and s.leader_elect and dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "nvs-exporter" and pod["securityContext"]["runAsNonRoot"]
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]


ALL_ON = {"enabled": True, "sink": "https://events.example.com/ingest", "clusterName": "gpu-east-1",
          "replicas": 3, "concurrency": 32, "maxRetryBackoff": 60, "timeout": 5,
          "eventSelector": "nvsentinel.nvidia.com/is-fatal=true", "extraArgs": ["--poison-retries=5"]}


def test_all_features(helm: Helm) -> None:
    e = ALL_ON
    objs = helm.render({**ALL_FEATURES, "exporter": ALL_ON})  # with every other feature on: lint-clean together
    dep = by_kind(objs, "Deployment")["gpu-health-exporter"]
    s = _settings(dep)
    assert (s.sink, s.cluster_name, s.concurrency, s.max_retry_backoff, s.timeout, s.event_selector,
            s.poison_retries) == (e["sink"], e["clusterName"], 32, 60, 5, e["eventSelector"], 5)
    assert dep["spec"]["replicas"] == 3 and s.lease_name == "gpu-health-exporter"


def test_rbac_is_minimal(helm: Helm) -> None:
    objs = helm.render(ON)
    (cr,) = [o for o in by_kind(objs, "ClusterRole").values() if o["metadata"]["name"] == "nvs-exporter"]
    assert cr["rules"] == [{"apiGroups": ["nvsentinel.nvidia.com"], "resources": ["healthevents"],
                            "verbs": ["get", "list", "watch"]}]
    role = by_kind(objs, "Role")["nvs-exporter"]
    named = {(r["resources"][0], tuple(r.get("resourceNames", ()))): r["verbs"] for r in role["rules"]}
    assert named == {("leases", ("nvs-exporter",)): ["get", "update"], ("leases", ()): ["create"],
                     ("configmaps", ("nvs-exporter-checkpoint",)): ["get", "update"], ("configmaps", ()): ["create"]}
    crb = by_kind(objs, "ClusterRoleBinding")["nvs-exporter"]
    rb = by_kind(objs, "RoleBinding")["nvs-exporter"]
    for b in (crb, rb):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "nvs-exporter", "namespace": "nvsentinel"}]


@pytest.mark.parametrize("values,message", [
    ({"exporter": {"enabled": True}}, "exporter.enabled=true needs exporter.sink"),
    ({"exporter": {"enabled": True, "sink": "http://s", "leaderElect": False}}, "set exporter.replicas=1"),
])
def test_refused_with_a_clear_message(helm: Helm, values: dict[str, Any], message: str) -> None:
    proc = helm.template(values, check=False)
    assert proc.returncode != 0 and message in proc.stderr


@pytest.mark.parametrize("sink", ["ftp://x", "sink.example", "http://"])
def test_a_bad_sink_fails_the_schema(helm: Helm, sink: str) -> None:
    proc = helm.template({"exporter": {"enabled": True, "sink": sink}}, check=False)
    assert proc.returncode != 0 and "sink" in proc.stderr


def test_one_replica_without_leader_election(helm: Helm) -> None:
    dep = _exporter(helm.render({"exporter": {**ON["exporter"], "leaderElect": False, "replicas": 1}}))
    assert dep["spec"]["replicas"] == 1 and not _settings(dep).leader_elect


def test_lint_strict_with_the_exporter_on(helm: Helm) -> None:
    helm.lint(ON)
    helm.lint({**ALL_FEATURES, "exporter": ALL_ON})
