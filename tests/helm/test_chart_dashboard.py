"""The Grafana dashboard: valid Grafana JSON whose every query names only what the code exports, shipped
as a ConfigMap for the dashboard sidecar when asked for (and only then).

charts/nvsentinel/dashboards/nvsentinel.json is the source; the chart puts the file itself in the ConfigMap.
Each panel's PromQL goes through the alerts test's tokenizer and is checked against the registries the
daemons really build (`exported`): metric names (with _bucket/_count/_sum for histograms), the label values
matched on, and the labels grouped by.
"""
from __future__ import annotations

import json
import re
from typing import Any

import pytest
from helmchart import ALL_FEATURES, CHART, Helm, by_kind
from test_chart_alerts import PromQLError, check_expr, parse
from test_chart_alerts import exported as exported  # noqa: F401, F811 - the registries fixture, shared

DASHBOARD = CHART / "dashboards" / "nvsentinel.json"
#: what the dashboard is for (issue 19): each of these must be on it
REQUIRED = {
    "nvsentinel_nvml_gpu_health", "nvsentinel_kmsg_gpu_healthy", "nvsentinel_conditions_controller_unhealthy_nodes",
    "nvsentinel_ttl_controller_healthevents",
    "nvsentinel_quarantine_controller_time_to_quarantine_seconds_bucket",
    "nvsentinel_drain_controller_time_to_drain_seconds_bucket",
    "nvsentinel_remediation_controller_time_to_remediate_seconds_bucket",
    "nvsentinel_resolution_controller_time_to_resolve_seconds_bucket",
    "nvsentinel_quarantine_controller_breaker_tripped", "nvsentinel_quarantine_controller_breaker_cordoned_nodes",
    "nvsentinel_quarantine_controller_breaker_limit", "nvsentinel_drain_controller_pods_pending",
    "nvsentinel_drain_controller_actions_total", "nvsentinel_remediation_controller_actions_total",
    "up", "device_api_server_ready", "nvsentinel_publisher_pending", "nvsentinel_remediation_agent_errors_total",
    "nvsentinel_nvml_recovery_action", "nvsentinel_nvml_call_timeouts_total",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out += p.get("panels") or []
    return out


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels(dash) for t in p.get("targets") or ()]


def test_the_dashboard_is_valid_grafana_json(dashboard: dict[str, Any]) -> None:
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]) and dashboard["title"] == "NVSentinel"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["type"] == "query"
    ids, cells = set(), set()
    for p in panels(dashboard):
        assert p["id"] not in ids, f"panel id {p['id']} twice"
        ids.add(p["id"])
        assert p["type"] and p["title"], p
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            assert "targets" not in p
            continue
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == "${datasource}", p["title"]
            assert 'namespace="$namespace"' in t["expr"], f"{p['title']}: not scoped to $namespace"


def test_every_panel_queries_only_what_the_code_exports(dashboard: dict[str, Any],
                                                        exported: dict[str, dict[str, set[str]]]) -> None:  # noqa: F811
    used = set()
    for title, expr in queries(dashboard):
        problems = check_expr(expr, exported)
        assert not problems, (title, expr, problems)
        used |= {ref.metric for ref in parse(expr).refs}
    assert REQUIRED <= used, f"not on the dashboard: {sorted(REQUIRED - used)}"
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", v["definition"])
            assert m and m.group(1) in exported and v["query"]["query"] == v["definition"], v["name"]


def test_the_check_catches_a_broken_panel(dashboard: dict[str, Any],
                                          exported: dict[str, dict[str, set[str]]]) -> None:  # noqa: F811
    """A control: the dashboard's own queries, broken the ways a rename or a typo breaks them."""
    exprs: dict[str, str] = {}
    for title, expr in queries(dashboard):
        exprs.setdefault(title, expr)  # each panel's first query
    quarantine = exprs["Time to quarantine"]
    assert check_expr(quarantine.replace("time_to_quarantine", "time_to_cordon"), exported)
    assert check_expr(quarantine.replace("_bucket", ""), exported), "a histogram is queried by its series"
    assert check_expr(exprs["HealthEvents by phase"].replace("(phase)", "(state)"), exported)
    blocked = exprs["Evictions blocked by PodDisruptionBudgets"]
    assert check_expr(blocked.replace("evict-blocked", "evict-blockd"), exported)
    with pytest.raises(PromQLError):
        parse(quarantine[:-1])


def test_the_configmap_is_off_by_default_and_carries_the_file(helm: Helm, rendered: list[dict[str, Any]],
                                                               rendered_all: list[dict[str, Any]]) -> None:
    assert not any(o["kind"] == "ConfigMap" and "nvsentinel.json" in (o.get("data") or {}) for o in rendered)
    (cm,) = [o for o in by_kind(rendered_all, "ConfigMap").values() if "nvsentinel.json" in (o.get("data") or {})]
    assert cm["metadata"]["name"] == "gpu-health-dashboard" and cm["metadata"]["namespace"] == "nvsentinel"
    want = ALL_FEATURES["metrics"]["grafanaDashboard"]
    assert {want["label"]: want["labelValue"], **want["labels"]}.items() <= cm["metadata"]["labels"].items()
    assert "grafana_dashboard" not in cm["metadata"]["labels"], "the sidecar label is the configured one"
    assert cm["metadata"]["annotations"] == want["annotations"]
    assert cm["data"]["nvsentinel.json"] == DASHBOARD.read_text().rstrip("\n")
    # enabled alone: the sidecar's default label, no annotations
    (cm,) = [o for o in helm.render({"metrics": {"grafanaDashboard": {"enabled": True}}})
             if o["kind"] == "ConfigMap" and "nvsentinel.json" in (o.get("data") or {})]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and "annotations" not in cm["metadata"]
    assert json.loads(cm["data"]["nvsentinel.json"]) == json.loads(DASHBOARD.read_text())
