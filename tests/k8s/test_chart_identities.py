"""The chart's RBAC is real: every component runs with the token of the ServiceAccount the chart gives
it, does its whole job, and is refused (403) what it must not do.

`helm install` puts the chart's ServiceAccounts, ClusterRoles, Roles and bindings into the test API
server. Each daemon then runs as a process with exactly the arguments the chart renders for its
container (plus test-only ports, timings and a selector that keeps it to this test's node), and a
kubeconfig holding a TokenRequest token of its chart ServiceAccount:

The chart's admission webhook runs too (tests/k8s/webhook.py), and the node identities hold tokens bound to
pods on their node, as the kubelet's projected tokens are:

XID 79 → publisher (create only) → quarantine → drain → remediation (reboot Job) → the Job succeeds →
the node agent restarts ("reboot") → the remediation agent verifies the GPU → resolution uncordons →
TTL deletes; no daemon logs a refusal. Then each identity is shown the door for what it must not do: RBAC
refuses with 403, and what RBAC cannot express (whose node, which fields, which ConfigMap, which Job) the
webhook refuses, each by its rule (docs/security.md).
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import ControlPlane
from kubelet import delete_nodes, finish_job, make_node
from procs import Daemon, wait_until
from rbac import token_kubeconfig
from webhook import route_to, start_webhook

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helm"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from apiserver import SubprocessServer  # noqa: E402
from helmchart import CHART, Helm  # noqa: E402

from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.xid import Action  # noqa: E402
from nvsentinel.policy.healthevent import (  # noqa: E402
    LABEL_NODE, Entity, HealthEvent, HealthEventSpec, OverrideFlags, Overrides, utcnow,
)
from nvsentinel.k8s import Forbidden, Kube, KubeNotFound  # noqa: E402
from nvsentinel.cluster.remediation.config import RemediationConfig  # noqa: E402
from nvsentinel.cluster.remediation.logic import job_body as reboot_job_body  # noqa: E402
from nvsentinel.k8s.resources import CONFIGMAPS, HEALTHEVENTS, JOBS, NAMESPACES, NODES, PODS, Resource  # noqa: E402

DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet", True)

CONTROLLERS = ("quarantine", "conditions", "drain", "remediation", "resolution", "ttl")
TAINT = "nvsentinel.nvidia.com/quarantine"


class Release:
    """The chart installed (RBAC and all); each component's rendered args and a kubeconfig per identity."""

    def __init__(self, helm: Helm, cp: ControlPlane, kube: Kube, unique: str, tmp: Path) -> None:
        self.helm, self.cp, self.kube = helm, cp, kube
        self.name, self.ns = f"rb{unique}", f"rbac-chart-{unique}"
        self.node = f"rbac-gpu-{unique}"
        self.tmp = tmp
        sets = ["policy.ttlAfterResolved=4s", "policy.cleanupInterval=1s",
                f"chain.eventSelector={LABEL_NODE}={self.node}"]
        argv = ["install", self.name, str(CHART), "--namespace", self.ns, "--create-namespace", "--skip-crds",
                "--kubeconfig", cp.kubeconfig]
        for s in sets:
            argv += ["--set", s]
        helm.run(*argv, timeout=180)
        out = helm.run("get", "manifest", self.name, "--namespace", self.ns, "--kubeconfig", cp.kubeconfig).stdout
        self.objects = [d for d in yaml.safe_load_all(out) if d]
        self.args: dict[str, list[str]] = {}
        self.identity: dict[str, str] = {}  # component → its ServiceAccount
        for o in self.objects:
            if o["kind"] not in ("DaemonSet", "Deployment"):
                continue
            pod = o["spec"]["template"]["spec"]
            for c in pod["containers"]:
                key = c["name"] if o["kind"] == "DaemonSet" else o["metadata"]["name"]
                self.args[key] = [a.replace("$(NODE_NAME)", self.node) for a in c.get("args") or []]
                self.identity[key] = pod.get("serviceAccountName", "")
        self._kubeconfigs: dict[str, str] = {}
        self.webhook: Daemon | None = None
        #: the node agents' pods (no kubelet runs them): what their bound tokens name, and so their node
        self.pods = {sa: self._node_pod(ds, sa) for ds, sa in ((f"{self.name}-node", f"{self.name}-publisher"), (
            f"{self.name}-remediation-agent", f"{self.name}-remediation-agent"))}

    def _node_pod(self, daemonset: str, sa: str) -> dict[str, Any]:
        ds = self.kube.get(DAEMONSETS, daemonset, self.ns)
        return self.kube.create(PODS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{daemonset}-{self.node}"[:63], "namespace": self.ns, "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "DaemonSet", "name": daemonset, "uid": ds["metadata"]["uid"],
                "controller": True}]},
            "spec": {"nodeName": self.node, "serviceAccountName": sa, "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "nvsentinel"}]}}, self.ns)

    def kubeconfig(self, component: str) -> str:
        sa = self.identity[component]
        assert sa, f"{component} has no ServiceAccount in the chart"
        if sa not in self._kubeconfigs:
            self._kubeconfigs[sa] = token_kubeconfig(self.kube, self.cp.kubeconfig, self.ns, sa,
                                                     out=self.tmp / f"{sa}.kubeconfig", bound_pod=self.pods.get(sa))
        return self._kubeconfigs[sa]

    def start_webhook(self) -> None:
        """The chart's webhook process, and the chart's configuration pointed at it; returns once it answers."""
        name = f"{self.name}-admission"
        self.webhook, ca, port = start_webhook(self.args[name], self.kubeconfig(name), self.tmp)
        self.view_url, self.view_ca = f"https://127.0.0.1:{port}", str(ca)
        route_to(self.kube, name, port, ca)
        # the API server picks the configuration up through its own informer: wait until it calls the webhook
        pub = self.client("publisher")
        try:
            wait_until(lambda: denied_by("N2", lambda: pub.create(HEALTHEVENTS, attack_event(self.node, node="x"),
                                                                  dry_run=True)),
                       what="the API server calling the webhook", daemons=[self.webhook])
        finally:
            pub.close()

    def flag(self, component: str, name: str) -> str:
        (value,) = [a.partition("=")[2] for a in self.args[component] if a.partition("=")[0] == name]
        return value

    def client(self, component: str) -> Kube:
        return Kube.connect(self.kubeconfig(component))

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.close()
        self.helm.run("uninstall", self.name, "--namespace", self.ns, "--kubeconfig", self.cp.kubeconfig,
                      check=False, timeout=120)
        with contextlib.suppress(KubeNotFound):
            self.kube.delete(NAMESPACES, self.ns)


class NodeSide:
    """The node DaemonSets' processes with the chart's args; the NVML provider on the fake library."""

    def __init__(self, rel: Release, sock_dir: str) -> None:
        self.rel, self.sock_dir, self.boot = rel, sock_dir, 0
        self.procs: list[Any] = []
        self.start()

    def _args(self, component: str, drop: tuple[str, ...]) -> list[str]:
        """The chart's args minus the in-pod paths and ports (replaced by the test's own)."""
        return [a for a in self.rel.args[component] if not a.startswith(drop)]

    def start(self) -> None:
        self.boot += 1
        self.control = os.path.join(self.sock_dir, f"boot{self.boot}.ctl")
        # the test's server also listens on loopback TCP (its harness finds it by port)
        server_args = self._args("device-api-server", ("--unix-socket", "--grpc-address", "--health-port",
                                                       "--metrics-port", "--http-bind-address", "--log-format"))
        # the chart runs the NVML provider as a sidecar; here it is embedded on the fake (same code)
        self.server = SubprocessServer.start(self.sock_dir, *server_args, "--enable-nvml-provider", "--fake-nvml",
                                             "--fake-nvml-control", self.control)
        drop = ("--address", "--health-port", "--metrics-port", "--http-bind-address", "--log-format")
        local = ["--address", self.server.unix, "--health-port", "0", "--metrics-port", "0"]
        self.publisher = Daemon("publisher", [*self._args("publisher", drop), *local,
                                              "--kubeconfig", self.rel.kubeconfig("publisher")],
                                name=f"publisher-{self.boot}").start()
        # the agent reads through the node view, here the webhook process on loopback instead of its Service
        view = ["--healthevents-server", self.rel.view_url, "--healthevents-ca-file", self.rel.view_ca]
        self.agent = Daemon("remediation_agent", [*self._args("remediation-agent", (*drop, "--healthevents-")), *local,
                                                  *view, "--resync-period", "1",
                                                  "--kubeconfig", self.rel.kubeconfig("remediation-agent")],
                            name=f"agent-{self.boot}").start()
        self.procs = [self.agent, self.publisher, self.server]
        self.fault = FaultInjector(self.control)

    def reboot(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        for p in self.procs:
            p.close()


def controller(rel: Release, c: str) -> Daemon:
    drop = ("--health-port", "--metrics-port", "--bind-address", "--log-format")
    args = [a for a in rel.args[f"{rel.name}-{c}-controller"] if not a.startswith(drop)]
    return Daemon("controllers", [
        *args, "--kubeconfig", rel.kubeconfig(f"{rel.name}-{c}-controller"), "--health-port", "0",
        "--metrics-port", "0", "--identity", f"{c}-1", "--lease-duration", "4", "--renew-deadline", "3",
        "--retry-period", "0.5",
        # test-only: the shared session cluster holds other tests' nodes and events
        "--breaker-percent", "100", "--breaker-max-nodes", "100000", "--drain-poll", "0.3",
        "--remediation-poll", "0.3"], name=f"{c}-controller").start()


def refused(call: Callable[[], Any]) -> bool:
    try:
        call()
    except Forbidden:
        return True
    return False


def denied_by(rule: str, call: Callable[[], Any]) -> bool:
    """Refused by the admission webhook's `rule` (a 403 whose message names it), not merely by RBAC."""
    try:
        call()
    except Forbidden as exc:
        return f"nvsentinel admission {rule}:" in str(exc)
    return False


def attack_event(own: str, *, node: str | None = None, healthy: bool = False, gpu: bool = True,
                 at: _dt.datetime | None = None, labels: dict[str, str] | None = None,
                 annotations: dict[str, str] | None = None, overrides: Overrides = Overrides()) -> dict[str, Any]:
    """A HealthEvent body as a node's credential could send it; defaults are a valid fault of `own`."""
    target = node or own
    ev = HealthEvent(
        name=f"attack.{target}.{uuid.uuid4().hex[:8]}", labels=labels if labels is not None else {LABEL_NODE: target},
        annotations=annotations or {},
        spec=HealthEventSpec(source="nvml-provider", agent="nvsentinel-publisher", node_name=target,
                             component_class="GPU", check_name="xid-error-check", is_fatal=not healthy,
                             is_healthy=healthy, detected_at=at or utcnow(), recommended_action=Action.RESTART_BM,
                             error_codes=() if healthy else ("79",),
                             entities_impacted=(Entity("GPU", "GPU-00000000-0000-0000-0000-000000000003"),)
                             if gpu else (), overrides=overrides, message="attack"))
    return ev.create_body()


def test_each_component_does_its_job_with_the_chart_identity_and_nothing_more(
        control_plane: ControlPlane, kube: Kube, crd_installed: None, helm: Helm, unique: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nvs-rbac-", dir="/tmp"))
    rel = Release(helm, control_plane, kube, unique, tmp)
    make_node(kube, rel.node)
    node = side = None
    ctls: list[Daemon] = []
    try:
        assert set(rel.args) >= {"device-api-server", "publisher", "remediation-agent",
                                 *(f"{rel.name}-{c}-controller" for c in CONTROLLERS)}
        assert rel.identity["device-api-server"] == rel.identity["publisher"]  # one pod; the token is
        # mounted only into the publisher container (tests/helm checks the volume mounts)
        rel.start_webhook()
        side = NodeSide(rel, str(tmp))
        ctls = [controller(rel, c) for c in CONTROLLERS]
        for d in ctls:
            d.wait_log("leader election: leading")
        daemons = [side.publisher, side.agent, *ctls, rel.webhook]
        side.fault.inject_xid(3, 79)

        def fatal() -> dict | None:
            items, _ = kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={rel.node}")
            return next((e for e in items if e["spec"]["isFatal"]), None)

        ev = wait_until(fatal, what="published by the create-only publisher", daemons=daemons)
        name = ev["metadata"]["name"]

        def phase() -> str:
            try:
                return (kube.get(HEALTHEVENTS, name).get("status") or {}).get("phase") or "New"
            except KubeNotFound:
                return "Deleted"

        wait_until(lambda: phase() == "Remediating", what="quarantined, drained, a reboot Job", daemons=daemons)

        def gpu_condition() -> dict | None:
            conds = (kube.get(NODES, rel.node).get("status") or {}).get("conditions") or []
            return next((c for c in conds if c["type"] == "NVSentinelGPUHealthy"), None)

        # written through the chart's nodes/status grant and past the webhook's S4 check
        wait_until(lambda: (c := gpu_condition()) and c["status"] == "False" and c["reason"] == "GpuXid79",
                   what="NVSentinelGPUHealthy False on the node", daemons=daemons)
        node = kube.get(NODES, rel.node)
        assert node["spec"]["unschedulable"] and any(t["key"] == TAINT for t in node["spec"]["taints"])
        (job,) = wait_until(lambda: kube.list(JOBS, rel.ns)[0], what="the Job in the release namespace",
                            daemons=daemons)
        finish_job(kube, rel.ns, job["metadata"]["name"], succeeded=True)
        wait_until(lambda: phase() == "Remediated", what="Remediated", daemons=daemons)
        side.reboot()
        daemons = [side.publisher, side.agent, *ctls, rel.webhook]
        wait_until(lambda: phase() in ("Resolved", "Deleted"), what="verified and resolved", daemons=daemons)
        wait_until(lambda: not kube.get(NODES, rel.node)["spec"].get("unschedulable"), what="uncordoned",
                   daemons=daemons)
        wait_until(lambda: (c := gpu_condition()) and c["status"] == "True", what="NVSentinelGPUHealthy True again",
                   daemons=daemons)
        wait_until(lambda: phase() == "Deleted", timeout=30, what="deleted by TTL", daemons=daemons)
        logs = "".join(d.text() for d in daemons)
        assert "Forbidden" not in logs and "forbidden" not in logs, "every call was allowed"

        # and nothing more: each identity is refused what it must not do
        other = f"rbac-victim-{unique}"
        make_node(kube, other)
        pod_ns = rel.ns
        clients = {c: rel.client(f"{rel.name}-{c}-controller") for c in CONTROLLERS}
        pub, agent = rel.client("publisher"), rel.client("remediation-agent")
        try:
            job_body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}
            checks: dict[str, list[tuple[str, Callable[[], Any]]]] = {
                "publisher": [("list healthevents", lambda: pub.list(HEALTHEVENTS)),
                              ("patch healthevent status", lambda: pub.patch(HEALTHEVENTS, name, {}, subresource="status")),
                              ("get nodes", lambda: pub.get(NODES, other))],
                "remediation-agent": [("list healthevents", lambda: agent.list(HEALTHEVENTS)),
                                      ("watch healthevents", lambda: agent.watch(HEALTHEVENTS, resource_version="0")),
                                      ("get a healthevent", lambda: agent.get(HEALTHEVENTS, name)),
                                      ("patch healthevents", lambda: agent.patch(HEALTHEVENTS, "x", {})),
                                      ("delete healthevents", lambda: agent.delete(HEALTHEVENTS, "x")),
                                      ("get nodes", lambda: agent.get(NODES, other))],
                "quarantine": [("delete nodes", lambda: clients["quarantine"].delete(NODES, other)),
                               ("create jobs", lambda: clients["quarantine"].create(JOBS, job_body, pod_ns)),
                               ("list pods", lambda: clients["quarantine"].list(PODS))],
                "drain": [("delete nodes", lambda: clients["drain"].delete(NODES, other)),
                          ("patch nodes", lambda: clients["drain"].patch(NODES, other, {})),
                          ("create jobs", lambda: clients["drain"].create(JOBS, job_body, pod_ns)),
                          ("delete healthevents", lambda: clients["drain"].delete(HEALTHEVENTS, "x"))],
                "remediation": [("patch nodes", lambda: clients["remediation"].patch(NODES, other, {})),
                                ("list pods", lambda: clients["remediation"].list(PODS)),
                                ("delete healthevents", lambda: clients["remediation"].delete(HEALTHEVENTS, "x"))],
                "resolution": [("delete nodes", lambda: clients["resolution"].delete(NODES, other)),
                               ("list pods", lambda: clients["resolution"].list(PODS)),
                               ("create jobs", lambda: clients["resolution"].create(JOBS, job_body, pod_ns))],
                "ttl": [("get nodes", lambda: clients["ttl"].get(NODES, other)),
                        ("patch nodes", lambda: clients["ttl"].patch(NODES, other, {})),
                        ("list pods", lambda: clients["ttl"].list(PODS))],
            }
            checks["quarantine"] += [
                ("read another ConfigMap", lambda: clients["quarantine"].get(CONFIGMAPS, f"{rel.name}-policy", pod_ns)),
                ("patch another ConfigMap", lambda: clients["quarantine"].patch(CONFIGMAPS, f"{rel.name}-policy", {},
                                                                                pod_ns))]
            allowed = [f"{who}: {what}" for who, calls in checks.items() for what, call in calls if not refused(call)]
            assert allowed == [], f"the chart grants more than each component needs: {allowed}"
            assert kube.get(NODES, other)["metadata"]["name"] == other

            # what RBAC cannot say, admission does: each attack of a compromised node, and of a stolen stage
            # credential, refused by its rule (policy/admission.py); dry-run, so an admitted one would leave nothing
            own, quarantine, resolution = rel.node, clients["quarantine"], clients["resolution"]
            remediation = clients["remediation"]
            unbound = Kube.connect(token_kubeconfig(kube, control_plane.kubeconfig, rel.ns, f"{rel.name}-publisher",
                                                    out=tmp / "unbound.kubeconfig"))
            rcfg = RemediationConfig(reboot_image=rel.flag(f"{rel.name}-remediation-controller", "--reboot-image"),
                                     reboot_command=rel.flag(f"{rel.name}-remediation-controller",
                                                             "--reboot-command"), namespace=pod_ns)
            fake_fault = HealthEvent.from_dict({**attack_event(other), "metadata": {"name": "victim-fault",
                                                                                    "uid": "0"}})
            template = reboot_job_body(fake_fault, 1, rcfg)
            evil_image = copy.deepcopy(template)
            evil_image["spec"]["template"]["spec"]["containers"][0]["image"] = "attacker/rootkit:1"
            evil_mount = copy.deepcopy(template)
            evil_mount["spec"]["template"]["spec"]["volumes"] = [{"name": "root", "hostPath": {"path": "/"}}]
            cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "not-the-breaker"}, "data": {}}
            try:
                attacks: list[tuple[str, str, Callable[[], Any]]] = [
                    ("N2", "a fault for another node", lambda: pub.create(HEALTHEVENTS, attack_event(own, node=other),
                                                                          dry_run=True)),
                    ("N2", "the agent: a recovery for another node",
                     lambda: agent.create(HEALTHEVENTS, attack_event(own, node=other, healthy=True), dry_run=True)),
                    ("N2", "a token bound to no pod", lambda: unbound.create(HEALTHEVENTS, attack_event(own),
                                                                            dry_run=True)),
                    ("N3", "its own node, another node's label",
                     lambda: pub.create(HEALTHEVENTS, attack_event(own, labels={LABEL_NODE: other}), dry_run=True)),
                    ("N4", "overrides.quarantine.force past the breaker", lambda: pub.create(HEALTHEVENTS, attack_event(
                        own, overrides=Overrides(quarantine=OverrideFlags(force=True))), dry_run=True)),
                    ("N4", "overrides.drain.skip", lambda: pub.create(HEALTHEVENTS, attack_event(
                        own, overrides=Overrides(drain=OverrideFlags(skip=True))), dry_run=True)),
                    ("N5", "remediation-strategy: terminate", lambda: pub.create(HEALTHEVENTS, attack_event(
                        own, annotations={"nvsentinel.nvidia.com/remediation-strategy": "terminate"}), dry_run=True)),
                    ("N6", "a recovery dated 2099", lambda: agent.create(HEALTHEVENTS, attack_event(
                        own, healthy=True, at=_dt.datetime(2099, 1, 1, tzinfo=_dt.timezone.utc)), dry_run=True)),
                    ("N7", "a recovery naming no GPU", lambda: agent.create(HEALTHEVENTS, attack_event(
                        own, healthy=True, gpu=False), dry_run=True)),
                    ("S1", "quarantine labels another node", lambda: quarantine.patch(NODES, other, {
                        "metadata": {"labels": {"attacker": "was-here"}}}, dry_run=True)),
                    ("S1", "resolution changes a node's spec", lambda: resolution.patch(NODES, other, {
                        "spec": {"taints": [{"key": "other", "effect": "NoExecute"}]}}, dry_run=True)),
                    ("S2", "quarantine writes another ConfigMap", lambda: quarantine.create(CONFIGMAPS, cm, pod_ns,
                                                                                           dry_run=True)),
                    ("S3", "remediation: another image", lambda: remediation.create(JOBS, evil_image, pod_ns,
                                                                                   dry_run=True)),
                    ("S3", "remediation: the host's / mounted", lambda: remediation.create(JOBS, evil_mount, pod_ns,
                                                                                          dry_run=True)),
                    ("S4", "conditions marks a node NotReady", lambda: clients["conditions"].patch(NODES, other, {
                        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}},
                        subresource="status", kind="strategic", dry_run=True)),
                    ("S4", "conditions zeroes the GPU capacity", lambda: clients["conditions"].patch(NODES, other, {
                        "status": {"capacity": {"nvidia.com/gpu": "0"}}}, subresource="status", kind="strategic",
                        dry_run=True)),
                ]
                admitted = [f"{rule}: {what}" for rule, what, call in attacks if not denied_by(rule, call)]
                assert admitted == [], f"admission let through: {admitted}"
                # and the legitimate writes still pass (dry-run): the webhook refuses the attack, not the job
                pub.create(HEALTHEVENTS, attack_event(own), dry_run=True)
                agent.create(HEALTHEVENTS, attack_event(own, healthy=True), dry_run=True)
                taints = kube.get(NODES, other)["spec"].get("taints") or []
                quarantine.patch(NODES, other, {"spec": {"unschedulable": True, "taints": [
                    *taints, {"key": TAINT, "value": "true", "effect": "NoSchedule"}]}, "metadata": {"annotations": {
                        "nvsentinel.nvidia.com/quarantine": "{}"}}}, dry_run=True)
                remediation.create(JOBS, template, pod_ns, dry_run=True)
                clients["conditions"].patch(NODES, other, {"status": {"conditions": [{
                    "type": "NVSentinelGPUHealthy", "status": "False", "reason": "GpuXid79", "message": "x; nvsentinel"}]}},
                    subresource="status", kind="strategic", dry_run=True)
                # reads: the agent sees its own node's events through the node view, and nothing of another node's
                theirs = kube.create(HEALTHEVENTS, attack_event(other))["metadata"]["name"]
                mine = kube.create(HEALTHEVENTS, attack_event(own))["metadata"]["name"]
                view = agent.via(rel.view_url, rel.view_ca)
                admin_view = kube.via(rel.view_url, rel.view_ca)
                try:
                    seen, _ = view.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={own}")
                    assert mine in {e["metadata"]["name"] for e in seen}
                    assert {e["spec"]["nodeName"] for e in seen} == {own}
                    assert view.get(HEALTHEVENTS, mine)["spec"]["nodeName"] == own
                    for what, call in [
                            ("list all", lambda: view.list(HEALTHEVENTS)),
                            ("list another node's", lambda: view.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={other}")),
                            ("watch another node's", lambda: view.watch(HEALTHEVENTS, resource_version="0",
                                                                        label_selector=f"{LABEL_NODE}={other}")),
                            ("a token bound to no pod", lambda: unbound.via(rel.view_url, rel.view_ca).list(
                                HEALTHEVENTS, label_selector=f"{LABEL_NODE}={own}")),
                            ("an operator (not a node identity)", lambda: admin_view.list(HEALTHEVENTS))]:
                        assert refused(call), f"the node view served {what}"
                    with pytest.raises(KubeNotFound):  # not 403: another node's event names do not leak either
                        view.get(HEALTHEVENTS, theirs)
                finally:
                    view.close()
                    admin_view.close()
                    for n in (theirs, mine):
                        kube.delete(HEALTHEVENTS, n)
            finally:
                unbound.close()
        finally:
            for k in (*clients.values(), pub, agent):
                k.close()
            delete_nodes(kube, [other])
    finally:
        for d in ctls:
            d.close()
        if side is not None:
            side.close()
        delete_nodes(kube, [rel.node])
        rel.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_only_the_conditions_controller_may_patch_node_status(
        control_plane: ControlPlane, kube: Kube, crd_installed: None, helm: Helm, unique: str) -> None:
    """nodes/status is the conditions controller's alone (RBAC, 403 for every other stage), and it may not touch the
    Node itself. Dry-run: RBAC answers before the write would happen."""
    tmp = Path(tempfile.mkdtemp(prefix="nvs-cond-", dir="/tmp"))
    rel = Release(helm, control_plane, kube, unique, tmp)
    victim = f"cond-victim-{unique}"
    make_node(kube, victim)
    clients: dict[str, Kube] = {}
    try:
        status = {"status": {"conditions": [{"type": "NVSentinelGPUHealthy", "status": "False", "reason": "GpuXid79",
                                             "message": "1 open fatal HealthEvent(s): x (XID 79); nvsentinel"}]}}
        clients = {c: rel.client(f"{rel.name}-{c}-controller") for c in (*CONTROLLERS, "conditions")}
        cond = clients["conditions"]
        written = cond.patch(NODES, victim, status, subresource="status", kind="strategic", dry_run=True)
        assert any(c["type"] == "NVSentinelGPUHealthy" for c in written["status"]["conditions"])
        assert cond.get(NODES, victim)["metadata"]["name"] == victim  # its informer reads Nodes
        refused_calls = {
            **{f"{c}: patch nodes/status": (lambda k=k: k.patch(NODES, victim, status, subresource="status",
                                                                  kind="strategic", dry_run=True))
               for c, k in clients.items() if c != "conditions"},
            "conditions: patch a Node's spec": lambda: cond.patch(NODES, victim, {"spec": {"unschedulable": True}},
                                                                  dry_run=True),
            "conditions: patch a Node's labels": lambda: cond.patch(NODES, victim, {"metadata": {"labels": {
                "x": "y"}}}, dry_run=True),
            "conditions: patch a HealthEvent's status": lambda: cond.patch(HEALTHEVENTS, "x", {}, subresource="status"),
            "conditions: delete nodes": lambda: cond.delete(NODES, victim),
        }
        allowed = [what for what, call in refused_calls.items() if not refused(call)]
        assert allowed == [], f"granted beyond the table: {allowed}"
        assert not (kube.get(NODES, victim)["status"].get("conditions") or [{}])[-1].get("type") == \
            "NVSentinelGPUHealthy", "dry-run: nothing was written"
    finally:
        for k in clients.values():
            k.close()
        delete_nodes(kube, [victim])
        rel.close()
        shutil.rmtree(tmp, ignore_errors=True)
