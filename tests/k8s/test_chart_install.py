"""The Helm chart against a real kube-apiserver (1.20): `helm install` creates everything it renders,
the server accepts every object (server-side dry-run), and `helm uninstall` leaves nothing of
ours behind but the CRD.

No kubelet, scheduler or workload controllers run here, so no pod ever starts: these tests prove
the objects, not the daemons (the daemons are tested as processes elsewhere in tests/k8s).
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import ControlPlane
from rbac import CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES, SERVICEACCOUNTS

from nvsentinel.k8s import Invalid, Kube, KubeNotFound
from nvsentinel.k8s.resources import CONFIGMAPS, CRDS, HEALTHEVENTS, NAMESPACES, PDBS_V1BETA1, Resource
from nvsentinel.policy.healthevent import LABEL_NODE, Entity, HealthEvent, HealthEventSpec, utcnow
from nvsentinel.xid import Action

# the helm driver lives with the offline chart tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helm"))
from helmchart import ALL_FEATURES, CHART, Helm  # noqa: E402

DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet", True)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment", True)
SERVICES = Resource("", "v1", "services", "Service", True)
SECRETS = Resource("", "v1", "secrets", "Secret", True)
SERVICEMONITORS = Resource("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", True)
PROMETHEUSRULES = Resource("monitoring.coreos.com", "v1", "prometheusrules", "PrometheusRule", True)
VWCS = Resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                "ValidatingWebhookConfiguration", False)
#: every kind the chart can render, by (apiVersion, kind)
RESOURCES = {(r.api_version, r.kind): r for r in (
    DAEMONSETS, DEPLOYMENTS, SERVICES, SERVICEACCOUNTS, CLUSTERROLES, CLUSTERROLEBINDINGS, ROLES, ROLEBINDINGS,
    CONFIGMAPS, PDBS_V1BETA1, SERVICEMONITORS, PROMETHEUSRULES, CRDS, SECRETS, VWCS)}
CRD_NAME = "healthevents.nvsentinel.nvidia.com"


def helm_on(helm: Helm, cp: ControlPlane, *argv: str, **kw: Any) -> Any:
    return helm.run(*argv, "--kubeconfig", cp.kubeconfig, **kw)


def manifest(helm: Helm, cp: ControlPlane, release: str, ns: str) -> list[dict[str, Any]]:
    out = helm_on(helm, cp, "get", "manifest", release, "--namespace", ns).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def resource(obj: dict[str, Any]) -> Resource:
    key = (obj["apiVersion"], obj["kind"])
    assert key in RESOURCES, f"the chart made a {key} this test does not know how to find"
    return RESOURCES[key]


def ours(kube: Kube, res: Resource, ns: str, release: str) -> list[str]:
    items, _ = kube.list(res, ns if res.namespaced else None, label_selector=f"app.kubernetes.io/instance={release}")
    return [i["metadata"]["name"] for i in items]


def install(helm: Helm, cp: ControlPlane, release: str, ns: str, *extra: str) -> None:
    helm_on(helm, cp, "install", release, str(CHART), "--namespace", ns, "--create-namespace", *extra, timeout=180)


def assert_uninstalled(helm: Helm, cp: ControlPlane, kube: Kube, release: str, ns: str,
                       made: list[dict[str, Any]]) -> None:
    helm_on(helm, cp, "uninstall", release, "--namespace", ns, "--wait=watcher", "--timeout", "60s", timeout=120)
    for res in {resource(o) for o in made} | {DAEMONSETS, DEPLOYMENTS, CONFIGMAPS, CLUSTERROLES}:
        assert ours(kube, res, ns, release) == [], f"{res.kind}s of {release} left behind"
    for o in made:
        with pytest.raises(KubeNotFound):
            kube.get(resource(o), o["metadata"]["name"], o["metadata"].get("namespace"))
    secrets, _ = kube.list(SECRETS, ns, label_selector=f"owner=helm,name={release}")
    assert secrets == [], "helm's release record is gone too"
    assert kube.get(CRDS, CRD_NAME)["metadata"]["name"] == CRD_NAME, "the CRD stays: deleting it deletes every event"


def sample_event(name: str) -> dict[str, Any]:
    return HealthEvent(name=name, labels={LABEL_NODE: "gpu-node-1"}, spec=HealthEventSpec(
        source="nvml-provider", agent="nvsentinel-publisher", node_name="gpu-node-1", component_class="GPU",
        check_name="xid-error-check", is_fatal=True, is_healthy=False, detected_at=utcnow(),
        recommended_action=Action.RESTART_BM, error_codes=("79",),
        entities_impacted=(Entity("GPU", "GPU-12345678-1234-1234-1234-123456789abc"),), message="XID 79")).create_body()


def test_install_dry_run_and_uninstall(control_plane: ControlPlane, kube: Kube, crd_installed: None, helm: Helm,
                                       unique: str) -> None:
    release, ns = f"nvs-{unique}", f"chart-{unique}"
    # the session already installed the CRD (crd_installed): helm must not try to own it
    assert kube.get(CRDS, CRD_NAME)
    # nothing routes to the webhook's Service here (no kube-proxy): Ignore lets this test's own creates through
    # (tests/k8s/test_chart_identities.py runs the webhook and points the configuration at it)
    install(helm, control_plane, release, ns, "--skip-crds", "--set", "admission.webhook.failurePolicy=Ignore")
    try:
        made = manifest(helm, control_plane, release, ns)
        kinds = {o["kind"] for o in made}
        # 1.20 serves no ValidatingAdmissionPolicy: admission mode auto installs the webhook
        assert kinds == {"DaemonSet", "Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                         "RoleBinding", "ConfigMap", "Service", "PodDisruptionBudget", "Secret",
                         "ValidatingWebhookConfiguration"}
        # everything rendered was created, under the release's labels
        for o in made:
            got = kube.get(resource(o), o["metadata"]["name"], o["metadata"].get("namespace"))
            assert got["metadata"]["labels"]["app.kubernetes.io/instance"] == release
        # the server has no policy/v1 (1.20): the chart asked it and fell back
        pdbs = [o for o in made if o["kind"] == "PodDisruptionBudget"]
        assert len(pdbs) == 7 and {p["apiVersion"] for p in pdbs} == {"policy/v1beta1"}
        assert sorted(ours(kube, DEPLOYMENTS, ns, release)) == sorted(
            [f"{release}-admission", *(f"{release}-{c}-controller"
                                       for c in ("quarantine", "conditions", "drain", "remediation", "resolution",
                                                 "ttl"))])
        assert kube.get(CONFIGMAPS, f"{release}-policy", ns)["data"]["ttlAfterResolved"] == "168h"

        # server-side dry-run of a second rendering (server capabilities, another release name):
        # the API server validates and admits every object and persists none
        dry = f"dry-{unique}"
        rendered = json.loads(helm_on(helm, control_plane, "install", dry, str(CHART), "--namespace", ns,
                                      "--dry-run=server", "--skip-crds", "--set", "admission.webhook.failurePolicy=Ignore",
                                      "-o", "json").stdout)["manifest"]
        objs = [d for d in yaml.safe_load_all(rendered) if d]
        assert len(objs) == len(made)
        for o in objs:
            res = resource(o)
            echoed = kube.create(res, o, ns if res.namespaced else None, dry_run=True)
            assert echoed["metadata"]["name"] == o["metadata"]["name"]
        for res in {resource(o) for o in objs}:
            assert ours(kube, res, ns, dry) == [], "a dry run persists nothing"

        # the CRD the chart relies on accepts a publisher's event and refuses a malformed one
        event = sample_event(f"gpu-node-1.12345678.xid79.{unique}")
        assert kube.create(HEALTHEVENTS, event, dry_run=True)["spec"]["nodeName"] == "gpu-node-1"
        del event["spec"]["nodeName"]
        with pytest.raises(Invalid):
            kube.create(HEALTHEVENTS, event, dry_run=True)
        with pytest.raises(KubeNotFound):
            kube.get(HEALTHEVENTS, event["metadata"]["name"])

        assert_uninstalled(helm, control_plane, kube, release, ns, made)
    finally:
        helm_on(helm, control_plane, "uninstall", release, "--namespace", ns, "--ignore-not-found", check=False)
        with contextlib.suppress(KubeNotFound):
            kube.delete(NAMESPACES, ns)


#: prometheus-operator's two kinds, as schema-less stand-ins: the test server has no operator, and the
#: point is that the chart's objects are created under the right group, version and kind
MONITORING_CRDS = [{
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{plural}.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
} for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules"))]


def test_install_with_its_crd_and_every_feature_on_a_fresh_server(helm: Helm, unique: str) -> None:
    """A private API server without the CRD: the chart installs it from crds/, every optional feature
    renders and is created, and uninstall removes all of it but the CRD."""
    with ControlPlane(controller_manager=True) as cp:
        kube = cp.kube()
        try:
            with pytest.raises(KubeNotFound):
                kube.get(CRDS, CRD_NAME)
            for crd in MONITORING_CRDS:
                kube.create(CRDS, crd)
            release, ns = "gpu", "nvsentinel"
            install(helm, cp, release, ns, "-f", helm.values_file(ALL_FEATURES))
            crd = kube.get(CRDS, CRD_NAME)
            assert crd["spec"]["names"]["kind"] == "HealthEvent"
            made = manifest(helm, cp, release, ns)
            kinds = {o["kind"] for o in made}
            assert {"ServiceMonitor", "PrometheusRule", "PodDisruptionBudget", "DaemonSet", "Deployment"} <= kinds
            prefix = ALL_FEATURES["fullnameOverride"]
            for o in made:
                assert o["metadata"]["name"].startswith(prefix)
                kube.get(resource(o), o["metadata"]["name"], o["metadata"].get("namespace"))
            # the CRD is established: events can be created right after the install
            kube.create(HEALTHEVENTS, sample_event(f"n.x.xid79.{unique}"))
            assert_uninstalled(helm, cp, kube, release, ns, made)
            # uninstall keeps the CRD and so the events (deleting a CRD deletes every object of it)
            assert kube.get(HEALTHEVENTS, f"n.x.xid79.{unique}")
        finally:
            kube.close()
