"""The rendered RBAC is exactly the least-privilege table of docs/controllers.md, docs/remediation.md,
docs/publisher.md and docs/remediation-agent.md: per identity, the (apiGroup, resource, verb)
triples granted cluster-wide and in the release namespace, nothing more and nothing less.

Names are predictable (the lead's RBAC test runs each daemon with these identities):
ServiceAccount = ClusterRole = ClusterRoleBinding = Role = RoleBinding = `<release>-<component>`,
each labelled `app.kubernetes.io/component: <component>`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from helmchart import ALL_FEATURES, CONTROLLERS, Helm, by_kind

HE = "nvsentinel.nvidia.com"
NS = "nvsentinel"
Triples = frozenset[tuple[str, str, str]]


def grant(group: str, resources: Iterable[str], verbs: Iterable[str]) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in verbs}


EVERY_CONTROLLER = (grant(HE, ["healthevents", "healthevents/status"], ["get", "list", "watch", "patch"])
                    | grant("", ["events"], ["create", "get", "patch"]))
LEADER_ELECTION = grant("coordination.k8s.io", ["leases"], ["get", "create", "update"])

#: component → (cluster-wide triples or None for no ClusterRole, release-namespace triples or None for no Role).
#: A rule limited by resourceNames shows as resource "configmaps[name]".
TABLE: dict[str, tuple[set[tuple[str, str, str]] | None, set[tuple[str, str, str]] | None]] = {
    "publisher": (grant(HE, ["healthevents"], ["create"]), None),
    # reads go through the node view (admission.nodeView): this node's events only
    "remediation-agent": (grant(HE, ["healthevents"], ["create"]), None),
    "quarantine-controller": (
        EVERY_CONTROLLER | grant("", ["nodes"], ["get", "list", "watch", "patch"]),
        LEADER_ELECTION | grant("", ["configmaps[nvs-circuit-breaker]"], ["get", "list", "watch", "update", "patch"])
        | grant("", ["configmaps"], ["create"])),  # create cannot be limited by name: admission limits it
    # reads events (writes none of them) and patches only nodes/status: the only identity that may (admission S4
    # holds it to its own condition types)
    "conditions-controller": (
        grant(HE, ["healthevents"], ["get", "list", "watch"]) | grant("", ["events"], ["create", "get", "patch"])
        | grant("", ["nodes"], ["get", "list", "watch"]) | grant("", ["nodes/status"], ["patch"]),
        LEADER_ELECTION),
    "drain-controller": (
        EVERY_CONTROLLER | grant("", ["pods"], ["get", "list", "watch"]) | grant("", ["pods/eviction"], ["create"])
        | grant("", ["nodes"], ["get", "list", "watch"]),
        LEADER_ELECTION),
    "remediation-controller": (
        EVERY_CONTROLLER | grant("", ["nodes"], ["get", "list", "watch", "delete"]),
        LEADER_ELECTION | grant("batch", ["jobs"], ["get", "list", "watch", "create"])),
    "resolution-controller": (
        EVERY_CONTROLLER | grant("", ["nodes"], ["get", "list", "watch", "patch"]),
        LEADER_ELECTION),
    "ttl-controller": (
        EVERY_CONTROLLER | grant(HE, ["healthevents"], ["delete"]),
        LEADER_ELECTION | grant("", ["configmaps"], ["get", "list", "watch"])),
    # the admission webhook reads the pod a node's bound token names (its node) and the Node a stage changes;
    # the node view reviews an agent's token and reads HealthEvents for it
    "admission": (grant("", ["nodes"], ["get"]) | grant(HE, ["healthevents"], ["get", "list", "watch"])
                  | grant("authentication.k8s.io", ["tokenreviews"], ["create"]), grant("", ["pods"], ["get"])),
}


#: The exporter's identity (exporter.enabled, off by default): reads HealthEvents and nothing else cluster-wide; its
#: Lease and its checkpoint ConfigMap by name.
EXPORTER = (
    grant(HE, ["healthevents"], ["get", "list", "watch"]),
    grant("coordination.k8s.io", ["leases[nvs-exporter]"], ["get", "update"])
    | grant("coordination.k8s.io", ["leases"], ["create"])
    | grant("", ["configmaps[nvs-exporter-checkpoint]"], ["get", "update"]) | grant("", ["configmaps"], ["create"]))


def with_prefix(table: Mapping[str, tuple[set | None, set | None]], prefix: str) -> dict[str, tuple]:
    """The table with resourceNames under another release prefix."""
    def fix(triples: set | None) -> set | None:
        return None if triples is None else {(g, r.replace("[nvs-", f"[{prefix}-"), v) for g, r, v in triples}
    return {comp: (fix(c), fix(n)) for comp, (c, n) in table.items()}


def expand(rules: Iterable[Mapping[str, Any]]) -> Triples:
    out = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, f"unexpected rule fields: {rule}"
        names = rule.get("resourceNames")
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    assert "*" not in (g, r, v), f"wildcard in {rule}"
                    if names:
                        out |= {(g, f"{r}[{n}]", v) for n in names}
                    else:
                        out.add((g, r, v))
    return frozenset(out)


def component(obj: Mapping[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def rbac_by_component(objs: list[dict[str, Any]], prefix: str = "nvs") -> dict[str, dict[str, Any]]:
    """component → {kind: object}, checking each identity's five objects share the predictable name."""
    out: dict[str, dict[str, Any]] = {}
    for o in objs:
        if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            comp = component(o)
            assert o["metadata"]["name"] == f"{prefix}-{comp}", o["metadata"]
            assert o["kind"] not in out.setdefault(comp, {}), f"two {o['kind']}s for {comp}"
            out[comp][o["kind"]] = o
    return out


def check_table(objs: list[dict[str, Any]], table: Mapping[str, tuple[set, set | None]], prefix: str = "nvs",
                namespace: str = NS) -> None:
    got = rbac_by_component(objs, prefix)
    assert set(got) == set(table), "one identity per daemon, no other"
    for comp, (cluster, namespaced) in table.items():
        kinds = got[comp]
        name = f"{prefix}-{comp}"
        assert kinds["ServiceAccount"]["metadata"]["namespace"] == namespace
        if cluster is None:
            assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds, comp
        else:
            assert expand(kinds["ClusterRole"]["rules"]) == cluster, comp
            binding = kinds["ClusterRoleBinding"]
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                          "name": name}
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
        if namespaced is None:
            assert "Role" not in kinds and "RoleBinding" not in kinds, comp
            continue
        assert kinds["Role"]["metadata"]["namespace"] == namespace
        assert expand(kinds["Role"]["rules"]) == namespaced, comp
        rb = kinds["RoleBinding"]
        assert rb["metadata"]["namespace"] == namespace
        assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]


def test_rbac_is_exactly_the_least_privilege_table(rendered: list[dict[str, Any]]) -> None:
    check_table(rendered, TABLE)


def test_force_delete_adds_pod_delete_to_drain_only(helm: Helm) -> None:
    objs = helm.render(sets=["controllers.drain.forceDelete=true"])
    table = dict(TABLE)
    cluster, ns = table["drain-controller"]
    table["drain-controller"] = (cluster | grant("", ["pods"], ["delete"]), ns)
    check_table(objs, table)


def test_rbac_follows_the_prefix_and_the_namespace(rendered_all: list[dict[str, Any]]) -> None:
    table = dict(TABLE)
    cluster, ns = table["drain-controller"]
    table["drain-controller"] = (cluster | grant("", ["pods"], ["delete"]), ns)  # ALL_FEATURES force-deletes
    table["exporter"] = EXPORTER  # and exports
    check_table(rendered_all, with_prefix(table, ALL_FEATURES["fullnameOverride"]),
                prefix=ALL_FEATURES["fullnameOverride"])


def test_the_exporter_adds_exactly_its_own_identity(helm: Helm) -> None:
    objs = helm.render(sets=["exporter.enabled=true", "exporter.sink=https://sink.example.com/"])
    check_table(objs, {**TABLE, "exporter": EXPORTER})


def test_without_the_node_view_the_agent_reads_from_the_api_server(helm: Helm) -> None:
    table = dict(TABLE)
    table["remediation-agent"] = (grant(HE, ["healthevents"], ["get", "list", "watch", "create"]), None)
    table["admission"] = (grant("", ["nodes"], ["get"]), grant("", ["pods"], ["get"]))
    check_table(helm.render(sets=["admission.nodeView=false"]), table)


@pytest.mark.parametrize("disabled", CONTROLLERS)
def test_a_disabled_controller_gets_no_identity(helm: Helm, disabled: str) -> None:
    objs = helm.render(sets=[f"controllers.{disabled}.enabled=false"])
    comps = set(rbac_by_component(objs))
    assert f"{disabled}-controller" not in comps
    assert comps == set(TABLE) - {f"{disabled}-controller"}
    assert f"nvs-{disabled}-controller" not in by_kind(objs, "Deployment")


def test_each_workload_runs_as_its_own_identity(rendered: list[dict[str, Any]]) -> None:
    sa = {name: o["spec"]["template"]["spec"].get("serviceAccountName")
          for kind in ("DaemonSet", "Deployment") for name, o in by_kind(rendered, kind).items()}
    assert sa == {
        "nvs-node": "nvs-publisher",
        "nvs-remediation-agent": "nvs-remediation-agent",
        "nvs-admission": "nvs-admission",
        **{f"nvs-{c}-controller": f"nvs-{c}-controller" for c in CONTROLLERS},
    }


def test_only_the_publisher_container_holds_a_token(rendered: list[dict[str, Any]]) -> None:
    """SPEC §8: the device API server needs no Kubernetes access, so the node pod mounts no token;
    the publisher alone gets a projected token of its create-only ServiceAccount."""
    node = by_kind(rendered, "DaemonSet")["nvs-node"]["spec"]["template"]["spec"]
    assert node["automountServiceAccountToken"] is False
    assert by_kind(rendered, "ServiceAccount")["nvs-publisher"]["automountServiceAccountToken"] is False
    token_volumes = {v["name"] for v in node["volumes"]
                     if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources", ()))}
    assert token_volumes == {"publisher-token"}
    mounts = {c["name"]: {m["name"]: m for m in c.get("volumeMounts", ())} for c in node["containers"]}
    assert set(mounts) == {"device-api-server", "nvml-provider", "kmsg-monitor", "publisher"}
    holders = {name for name, m in mounts.items() if "publisher-token" in m}
    assert holders == {"publisher"}
    mount = mounts["publisher"]["publisher-token"]
    assert mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" and mount["readOnly"] is True
    for name, m in mounts.items():
        assert not any(x["mountPath"].startswith("/var/run/secrets") for x in m.values() if name != "publisher")
