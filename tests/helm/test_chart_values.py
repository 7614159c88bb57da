"""values.schema.json refuses bad values before anything is rendered, and values.yaml documents
and the schema covers every value."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from helmchart import CHART, CONTROLLERS, Helm

VALUES = CHART / "values.yaml"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
SCHEMA_ERROR = "values don't meet the specifications of the schema"


@pytest.mark.parametrize(("sets", "where"), [
    # a wrong type
    (["controllers.replicas=two"], "controllers/replicas"),
    (["node.enabled=maybe"], "node/enabled"),
    (["policy.batchSize=1.5"], "policy/batchSize"),
    # an unknown key (a typo must not be ignored silently)
    (["controllers.replica=3"], "controllers"),
    (["node.publisher.debouce=1"], "node/publisher"),
    (["bogus=1"], ""),
    # a bad enum
    (["logging.format=xml"], "logging/format"),
    (["chain.taint.effect=NoWay"], "chain/taint/effect"),
    (["policy.retentionMode=forever"], "policy/retentionMode"),
    (["image.pullPolicy=Sometimes"], "image/pullPolicy"),
    # out of range, or not in the format the daemon takes
    (["controllers.replicas=0"], "controllers/replicas"),
    (["controllers.quarantine.breaker.percent=150"], "controllers/quarantine/breaker/percent"),
    (["controllers.healthPort=70000"], "controllers/healthPort"),
    (["policy.ttlAfterResolved=1 week"], "policy/ttlAfterResolved"),
    (["node.nvmlProvider.ignoredXids={0}"], "node/nvmlProvider/ignoredXids"),
    (["controllers.extraArgs={dry-run}"], "controllers/extraArgs"),
])
def test_schema_rejects(helm: Helm, sets: list[str], where: str) -> None:
    proc = helm.template(sets=sets, check=False)
    assert proc.returncode != 0, f"{sets} was accepted"
    assert SCHEMA_ERROR in proc.stderr, proc.stderr
    assert f"at '/{where}" in proc.stderr.replace("at ''", "at '/'"), f"the error names the value:\n{proc.stderr}"
    assert proc.stdout == "", "nothing is rendered"


def test_schema_rejects_at_install_time_too(helm: Helm) -> None:
    """lint (what CI and `helm install` share) refuses the same values."""
    proc = helm.lint(sets=["logging.level=LOUD"], check=False)
    assert proc.returncode != 0 and "logging/level" in proc.stdout + proc.stderr


def test_schema_accepts_the_defaults_and_reasonable_changes(helm: Helm) -> None:
    ok = helm.template(sets=["controllers.replicas=1", "policy.ttlAfterResolved=1h30m", "node.maxUnavailable=25%",
                             "chain.taint.effect=NoExecute", "logging.format=plain"])
    assert "kind: Deployment" in ok.stdout


def _leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict) and node and path[-1:] not in (("nodeSelector",), ("requests",), ("limits",)):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path


def _schema_at(path: tuple[str, ...]) -> dict[str, Any]:
    node = SCHEMA
    for key in path:
        if "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
        props = node.get("properties")
        assert props is not None and key in props, f"values.schema.json has no {'.'.join(path)}"
        node = props[key]
    return node


def test_schema_covers_every_value_and_closes_every_object() -> None:
    values = yaml.safe_load(VALUES.read_text())
    leaves = list(_leaves(values))
    assert len(leaves) > 80
    for path in leaves:
        _schema_at(path)

    def closed(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
            for k, v in node["properties"].items():
                closed(v, f"{where}.{k}")
    closed(SCHEMA, "values")


def test_every_value_has_a_comment() -> None:
    """Every key of values.yaml that is a chart value (the schema describes it) has a comment on the
    line above; keys inside data (a nodeSelector's labels, resource quantities) are not values."""
    root = yaml.compose(VALUES.read_text())
    lines = VALUES.read_text().splitlines()
    undocumented: list[str] = []
    checked = 0

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        nonlocal checked
        for key_node, value_node in node.value:
            here = (*path, key_node.value)
            line = key_node.start_mark.line
            if not lines[line - 1].lstrip().startswith("#"):
                undocumented.append(f"line {line + 1}: {'.'.join(here)}")
            checked += 1
            if isinstance(value_node, yaml.MappingNode) and "properties" in _schema_at(here):
                walk(value_node, here)

    walk(root, ())
    assert checked > 100
    assert undocumented == []



def test_more_than_one_replica_needs_leader_election(helm: Helm) -> None:
    proc = helm.template(sets=["controllers.leaderElect=false"], check=False)
    assert proc.returncode != 0 and "controllers.replicas=1" in proc.stderr
    objs = helm.render(sets=["controllers.leaderElect=false", "controllers.replicas=1"])
    deployments = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-controller")]
    assert len(deployments) == len(CONTROLLERS)
    assert all("--no-leader-elect" in d["spec"]["template"]["spec"]["containers"][0]["args"] for d in deployments)
    assert not [o for o in objs if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"].endswith("-controller")], \
        "one replica: no budget to keep"


def test_the_controllers_client_defaults_are_the_flags_defaults(helm: Helm) -> None:
    """The chart runs what the fleet benchmark measured: `nvsentinel controllers`' own defaults."""
    from nvsentinel.cluster.settings import ControllersSettings

    flags = ControllersSettings()
    values = yaml.safe_load(VALUES.read_text())["controllers"]
    assert (values["workers"], values["kubeFlowControl"], values["kubeQps"], values["kubeBurst"],
            values["kubeMaxQps"]) == (flags.workers, flags.kube_flow_control, flags.kube_qps, flags.kube_burst,
                                      flags.kube_max_qps)
    rendered = helm.template().stdout
    for arg in (f"--workers={flags.workers}", f"--kube-flow-control={flags.kube_flow_control}",
                f"--kube-qps={flags.kube_qps:g}", f"--kube-burst={flags.kube_burst}",
                f"--kube-max-qps={flags.kube_max_qps:g}"):
        assert f'"{arg}"' in rendered, arg
