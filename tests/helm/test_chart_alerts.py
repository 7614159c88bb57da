"""The PrometheusRule alerts on metrics that exist: every metric name (and every label value it
matches on) is looked up in the registries the daemons really build, so an alert cannot watch a
series that never moves or was renamed."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helmchart import ALL_FEATURES, CONTROLLERS, Helm, by_kind
from prometheus_client import CollectorRegistry

#: PromQL words that are not metric names (functions, aggregations, modifiers).
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "delta", "absent", "by",
                "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
#: labels Prometheus adds at scrape time (ServiceMonitor target labels), not the code
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "app_kubernetes_io_component"}


def _families(registry: CollectorRegistry) -> Iterator[Any]:
    yield from registry.collect()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, set[str]]]:
    """Exposition name → {label: values seen} over every registry the daemons build."""
    from nvsentinel.node.api.metrics import ServerMetrics
    from nvsentinel.cluster.app import build_manager
    from nvsentinel.cluster.settings import ControllersSettings
    from nvsentinel.daemons.controllers import CONTROLLER_CONFIGS
    from nvsentinel.k8s import Kube
    from nvsentinel.node.publisher.publisher import PublisherMetrics
    from nvsentinel.node.remediation_agent.agent import RemediationAgentMetrics
    from nvsentinel.store import GpuStore

    # the controllers' metrics are registered by the Manager and each controller's setup(); build
    # them as `nvsentinel controllers` does (a kubeconfig is needed, the server is never contacted)
    kubeconfig: Path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    kube = Kube.connect(str(kubeconfig))
    try:
        controllers = CollectorRegistry()
        build_manager(ControllersSettings(controllers=CONTROLLERS), {n: c() for n, c in CONTROLLER_CONFIGS.items()},
                      kube, controllers)
    finally:
        kube.close()
    registries = [controllers, ServerMetrics(GpuStore()).registry, PublisherMetrics(lambda: 0.0).registry,
                  RemediationAgentMetrics().registry]
    out: dict[str, dict[str, set[str]]] = {}
    for registry in registries:
        for fam in _families(registry):
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(fam.type, [""])
            for suffix in suffixes:
                out.setdefault(fam.name + suffix, {})
            for sample in fam.samples:
                labels = out.setdefault(sample.name, {})
                for k, v in sample.labels.items():
                    labels.setdefault(k, set()).add(v)
    return out


def rule_exprs(objs: list[dict[str, Any]]) -> dict[str, str]:
    (rule,) = by_kind(objs, "PrometheusRule").values()
    return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def metric_refs(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) for each selector in a PromQL expression."""
    refs = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", re.sub(r"\[[^\]]*\]", "", expr)):
        name, matchers = m.group(1), m.group(2) or ""
        before = expr[:m.start()].rstrip()
        if name in PROMQL_WORDS or before.endswith(("by (", "by(")) or re.fullmatch(r"[0-9.]+", name):
            continue
        if re.search(r"\b(by|without)\s*\([^)]*$", expr[:m.start()]):
            continue  # a grouping label
        labels = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers))
        refs.append((name, labels))
    return refs


def test_every_alert_watches_an_exported_metric(helm: Helm, exported: dict[str, dict[str, set[str]]]) -> None:
    exprs = rule_exprs(helm.render(ALL_FEATURES))
    assert {"NVSentinelCircuitBreakerTripped", "NVSentinelControllerWithoutLeader", "NVSentinelDrainStuck",
            "NVSentinelRemediationFailed", "NVSentinelDeviceApiNotReady"} <= set(exprs)
    assert {f"NVSentinel{c.title()}ControllerFailing" for c in CONTROLLERS} <= set(exprs)
    used = set()
    for alert, expr in exprs.items():
        refs = metric_refs(expr)
        assert refs, f"{alert}: no metric found in {expr!r}"
        for name, labels in refs:
            assert name in exported, f"{alert}: {name} is not exported by any daemon"
            used.add(name)
            for label, value in labels.items():
                if label in TARGET_LABELS:
                    continue
                assert value in exported[name].get(label, set()), f"{alert}: {name} has no {label}={value!r}"
    assert {"nvsentinel_quarantine_controller_breaker_tripped", "nvsentinel_controllers_leader",
            "nvsentinel_drain_controller_pods_pending", "nvsentinel_remediation_controller_actions_total"} <= used


def test_the_check_catches_a_renamed_metric(exported: dict[str, dict[str, set[str]]]) -> None:
    """A control for the parser and the registry lookup."""
    refs = metric_refs('max by (x) (rate(nvsentinel_quarantine_controller_breaker_trippd{a="b"}[5m])) > 0')
    assert refs == [("nvsentinel_quarantine_controller_breaker_trippd", {"a": "b"})]
    assert refs[0][0] not in exported
    assert "remediation-failed" in exported["nvsentinel_remediation_controller_actions_total"]["action"]


def test_monitoring_objects_are_off_by_default_and_select_the_metrics_services(
        rendered: list[dict[str, Any]], rendered_all: list[dict[str, Any]]) -> None:
    assert not by_kind(rendered, "ServiceMonitor") and not by_kind(rendered, "PrometheusRule")
    services = by_kind(rendered_all, "Service")
    (sm,) = by_kind(rendered_all, "ServiceMonitor").values()
    assert sm["metadata"]["labels"]["release"] == "prom"
    selected = [s for s in services.values()
                if all(s["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())]
    assert {s["metadata"]["name"] for s in selected} == {
        "gpu-health-node-metrics", "gpu-health-remediation-agent-metrics", "gpu-health-controllers-metrics"}
    ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
    assert ports == {e["port"] for e in sm["spec"]["endpoints"]}
    # each Service's selector matches the pods that serve the port it names
    pods = [o["spec"]["template"] for kind in ("DaemonSet", "Deployment") for o in by_kind(rendered_all, kind).values()]
    for s in selected:
        selector = s["spec"]["selector"].items()
        matching = [p for p in pods if all(p["metadata"]["labels"].get(k) == v for k, v in selector)]
        assert matching, s["metadata"]["name"]
        for port in s["spec"]["ports"]:
            for p in matching:
                names = {cp["name"] for c in p["spec"]["containers"] for cp in c.get("ports", ())}
                assert port["targetPort"] in names, (s["metadata"]["name"], port)
    controllers = [p for p in pods if p["metadata"]["labels"].get("nvsentinel.nvidia.com/role") == "controller"]
    assert len(controllers) == len(CONTROLLERS)
