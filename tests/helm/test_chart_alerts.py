"""The PrometheusRule alerts on metrics that exist: every metric name (and every label value it
matches on) is looked up in the registries the daemons really build, so an alert cannot watch a
series that never moves or was renamed; and every alert links its runbook, a section of docs/runbooks.md.

The PromQL tokenizer (`parse`, `check_expr`) and the `exported` fixture are shared with the dashboard's test.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helmchart import ALL_FEATURES, CONTROLLERS, Helm, by_kind
from prometheus_client import CollectorRegistry

#: labels Prometheus adds at scrape time (ServiceMonitor target labels), not the code
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "endpoint", "container",
                 "app_kubernetes_io_component"}
#: series Prometheus makes itself for every target (label values are target labels)
PROMETHEUS_SERIES = {"up"}
#: PromQL functions and aggregations a query here may call
FUNCTIONS = {"sum", "max", "min", "avg", "count", "topk", "bottomk", "quantile", "count_values", "stddev", "group",
             "rate", "irate", "increase", "delta", "idelta", "deriv", "absent", "absent_over_time", "vector",
             "scalar", "histogram_quantile", "clamp_min", "clamp_max", "abs", "ceil", "floor", "round",
             "max_over_time", "min_over_time", "avg_over_time", "sum_over_time", "changes", "resets", "time",
             "label_replace", "sort", "sort_desc"}
#: words that modify an operator or group: `by (...)`, `on (...)` etc. take label names
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset"} | GROUPING

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=,(){}])
""", re.VERBOSE)


class PromQLError(ValueError):
    """The expression does not parse (an unknown character, an unknown function, unbalanced brackets)."""


@dataclasses.dataclass(frozen=True)
class Ref:
    """One series selector: the metric and its label matchers (label, operator, value)."""
    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()

    @property
    def labels(self) -> dict[str, str]:
        """The exact (=) matchers."""
        return {k: v for k, op, v in self.matchers if op == "="}


@dataclasses.dataclass(frozen=True)
class Parsed:
    refs: tuple[Ref, ...]
    grouping: frozenset[str]
    """label names in by/without/on/ignoring/group_left/group_right clauses"""


def tokenize(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromQLError(f"unexpected {expr[pos:pos + 10]!r} at {pos} in {expr!r}")
        pos = m.end()
        if m.lastgroup != "space":
            out.append((str(m.lastgroup), m.group()))
    return out


def parse(expr: str) -> Parsed:
    """The selectors and grouping labels of a PromQL expression; PromQLError when it does not parse."""
    toks = tokenize(expr)
    refs, grouping, depth, i = [], set(), 0, 0

    def matchers(j: int) -> tuple[list[tuple[str, str, str]], int]:
        """`{label op "value", ...}` from toks[j] == "{"; the matchers and the index after "}"."""
        found, j = [], j + 1
        while j < len(toks) and toks[j][1] != "}":
            if toks[j][1] == ",":
                j += 1
                continue
            if j + 2 >= len(toks) or toks[j][0] != "ident" or toks[j + 1][1] not in ("=", "!=", "=~", "!~") \
                    or toks[j + 2][0] != "string":
                raise PromQLError(f"bad label matcher in {expr!r}")
            found.append((toks[j][1], toks[j + 1][1], toks[j + 2][1][1:-1]))
            j += 3
        if j >= len(toks):
            raise PromQLError(f"unclosed {{ in {expr!r}")
        return found, j + 1

    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in GROUPING:
            i += 1
            if i < len(toks) and toks[i][1] == "(":
                j = i + 1
                while j < len(toks) and toks[j][1] != ")":
                    if toks[j][0] == "ident":
                        grouping.add(toks[j][1])
                    elif toks[j][1] != ",":
                        raise PromQLError(f"bad grouping clause in {expr!r}")
                    j += 1
                if j >= len(toks):
                    raise PromQLError(f"unclosed ( in {expr!r}")
                i = j + 1
            continue
        if kind == "ident" and text in KEYWORDS:
            i += 1
            continue
        if kind == "ident" and (nxt == "(" or (i + 1 < len(toks) and toks[i + 1][1] in GROUPING
                                               and text in FUNCTIONS)):
            if text not in FUNCTIONS:
                raise PromQLError(f"unknown function {text!r} in {expr!r}")
            i += 1
            continue
        if kind == "ident":
            found: list[tuple[str, str, str]] = []
            i += 1
            if nxt == "{":
                found, i = matchers(i)
            refs.append(Ref(text, tuple(found)))
            continue
        if text == "{":  # a selector by __name__ only
            found, i = matchers(i)
            names = [v for k, op, v in found if k == "__name__" and op == "="]
            if not names:
                raise PromQLError(f"selector without a metric name in {expr!r}")
            refs.append(Ref(names[0], tuple(m for m in found if m[0] != "__name__")))
            continue
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth < 0:
                raise PromQLError(f"unbalanced ) in {expr!r}")
        elif text == "}":
            raise PromQLError(f"unbalanced }} in {expr!r}")
        i += 1
    if depth:
        raise PromQLError(f"unbalanced ( in {expr!r}")
    if not refs:
        raise PromQLError(f"no metric in {expr!r}")
    return Parsed(tuple(refs), frozenset(grouping))


def metric_refs(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) for each selector in a PromQL expression (exact matchers)."""
    return [(r.metric, r.labels) for r in parse(expr).refs]


def check_expr(expr: str, exported: dict[str, dict[str, set[str]]]) -> list[str]:
    """What is wrong with `expr` against the exported metrics: each selector's metric must be exported, each
    matcher must name a label the code sets with a value it sets (a regex: each alternative, or at least one
    value), and each grouping label must be one of the selected series' labels. Empty: nothing."""
    errors: list[str] = []
    parsed = parse(expr)
    labels_seen: set[str] = set(TARGET_LABELS)
    for ref in parsed.refs:
        if ref.metric in PROMETHEUS_SERIES:
            known: dict[str, set[str]] = {}
        elif ref.metric not in exported:
            errors.append(f"{ref.metric} is not exported by any daemon")
            continue
        else:
            known = exported[ref.metric]
        labels_seen |= set(known) | ({"le"} if ref.metric.endswith("_bucket") else set())
        for label, op, value in ref.matchers:
            if label in TARGET_LABELS:
                continue
            values = known.get(label)
            if values is None:
                errors.append(f"{ref.metric} has no label {label!r}")
            elif op in ("=", "!="):
                if value not in values:
                    errors.append(f"{ref.metric} has no {label}={value!r}")
            elif re.fullmatch(r"[\w.-]+(\|[\w.-]+)*", value):
                errors += [f"{ref.metric} has no {label}={v!r}" for v in value.split("|") if v not in values]
            elif not any(re.fullmatch(value, v) for v in values):
                errors.append(f"{ref.metric}: no {label} value matches {value!r}")
    errors += [f"grouping label {g!r} is on none of the selected series" for g in sorted(parsed.grouping)
               if g not in labels_seen]
    return errors


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
                  RemediationAgentMetrics().registry, _nvml_registry(), _kmsg_registry()]
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


def _nvml_registry() -> CollectorRegistry:
    """The NVML provider's metrics, with one GPU's per-GPU series and one call's, as a running provider has them."""
    from nvsentinel.node.nvml.metrics import NvmlMetrics

    m = NvmlMetrics()
    m.gpu_health.labels(gpu="0", uuid="GPU-0").set(1)
    m.recovery_action.labels(gpu="0", uuid="GPU-0").set(0)
    m.recovery_action_supported.labels(gpu="0").set(1)
    m.call_seconds.labels(call="nvmlDeviceGetUUID").observe(0.001)
    m.call_timeouts.labels(call="nvmlDeviceGetUUID", gpu="0")
    return m.registry


def _kmsg_registry() -> CollectorRegistry:
    """The kernel-log monitor's metrics, with one GPU's gauge, as a running monitor has them."""
    from nvsentinel.node.kmsg.metrics import KmsgMetrics

    m = KmsgMetrics()
    m.gpu_healthy.labels(gpu="0").set(1)
    return m.registry


def rule_exprs(objs: list[dict[str, Any]]) -> dict[str, str]:
    (rule,) = by_kind(objs, "PrometheusRule").values()
    return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def test_every_alert_watches_an_exported_metric(helm: Helm, exported: dict[str, dict[str, set[str]]]) -> None:
    exprs = rule_exprs(helm.render(ALL_FEATURES))
    assert {"NVSentinelCircuitBreakerTripped", "NVSentinelControllerWithoutLeader", "NVSentinelDrainStuck",
            "NVSentinelRemediationFailed", "NVSentinelDeviceApiNotReady"} <= set(exprs)
    assert {f"NVSentinel{c.title()}ControllerFailing" for c in CONTROLLERS} <= set(exprs)
    used = set()
    for alert, expr in exprs.items():
        assert not check_expr(expr, exported), (alert, check_expr(expr, exported))
        used |= {ref.metric for ref in parse(expr).refs}
    assert {"nvsentinel_quarantine_controller_breaker_tripped", "nvsentinel_controllers_leader",
            "nvsentinel_drain_controller_pods_pending", "nvsentinel_remediation_controller_actions_total"} <= used


def test_the_check_catches_a_renamed_metric(exported: dict[str, dict[str, set[str]]]) -> None:
    """A control for the parser and the registry lookup."""
    refs = metric_refs('max by (x) (rate(nvsentinel_quarantine_controller_breaker_trippd{a="b"}[5m])) > 0')
    assert refs == [("nvsentinel_quarantine_controller_breaker_trippd", {"a": "b"})]
    assert refs[0][0] not in exported
    assert "remediation-failed" in exported["nvsentinel_remediation_controller_actions_total"]["action"]
    actions = "nvsentinel_remediation_controller_actions_total"
    assert check_expr(f'sum(increase({actions}{{namespace="x", action="remediation-failed"}}[5m]))', exported) == []
    assert check_expr(f'sum(increase({actions}{{action="remediation-faild"}}[5m]))', exported) == [
        f"{actions} has no action='remediation-faild'"]
    assert check_expr(f'sum({actions}{{action=~"reboot|rebot"}})', exported) == [f"{actions} has no action='rebot'"]
    assert check_expr(f'sum({actions}{{action=~"reboot-.*"}})', exported) == []
    assert check_expr(f'sum({actions}{{action=~"nothing-.*"}})', exported) == [
        f"{actions}: no action value matches 'nothing-.*'"]
    assert check_expr(f'sum by (phase) ({actions})', exported) == [
        "grouping label 'phase' is on none of the selected series"]
    assert check_expr(f'{actions}{{gpu="0"}}', exported) == [f"{actions} has no label 'gpu'"]
    for bad in (f"sum(rate({actions}[5m])", f"summ({actions})", f"{actions}{{action=reboot}}", f"{actions} @ 1",
                "1 + 2"):
        with pytest.raises(PromQLError):
            parse(bad)


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """docs/runbooks.md: anchor → the text of its `## ` section."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "runbooks.md").read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {_github_slug(title): body for title, body in zip(parts[1::2], parts[2::2])}


def test_every_alert_has_a_runbook_section_and_every_section_an_alert(helm: Helm) -> None:
    (rule,) = by_kind(helm.render(ALL_FEATURES), "PrometheusRule").values()
    alerts = {r["alert"]: r["annotations"] for g in rule["spec"]["groups"] for r in g["rules"]}
    sections = runbook_sections()
    base = ALL_FEATURES["metrics"]["prometheusRule"]["runbookBaseUrl"]
    for alert, notes in alerts.items():
        url = notes.get("runbook_url", "")
        assert url.startswith(base + "#"), (alert, url)
        anchor = url[len(base) + 1:]
        assert anchor == _github_slug(alert), (alert, anchor)
        assert anchor in sections, f"{alert}: docs/runbooks.md has no section #{anchor}"
        body = sections[anchor]
        for must in ("nvsentinel status", "What it means", "Confirm", "What to do"):
            assert must in body, f"#{anchor} does not say {must!r}"
    assert set(sections) == {_github_slug(a) for a in alerts}, "a runbook section names no alert"
    # the default base is the project's docs/runbooks.md
    (default,) = by_kind(helm.render({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule").values()
    urls = {r["annotations"]["runbook_url"] for g in default["spec"]["groups"] for r in g["rules"]}
    assert all(u.startswith("https://github.com/nvsentinel/nvsentinel/blob/main/docs/runbooks.md#") for u in urls)


def test_github_slug_control() -> None:
    assert _github_slug("NVSentinelDrainStuck") == "nvsentineldrainstuck"
    assert _github_slug("Dashboards and alerts: the `why`") == "dashboards-and-alerts-the-why"


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
