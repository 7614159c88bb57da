"""The chart's RBAC is real: every component runs with the token of the ServiceAccount the chart gives
it, does its whole job, and is refused (403) what it must not do.

`helm install` puts the chart's ServiceAccounts, ClusterRoles, Roles and bindings into the test API
server. Each daemon then runs as a process with exactly the arguments the chart renders for its
container (plus test-only ports, timings and a selector that keeps it to this test's node), and a
kubeconfig holding a TokenRequest token of its chart ServiceAccount:

XID 79 → publisher (create only) → quarantine → drain → remediation (reboot Job) → the Job succeeds →
the node agent restarts ("reboot") → the remediation agent verifies the GPU → resolution uncordons →
TTL deletes; no daemon logs a refusal. Then each identity is shown the door for what it must not do.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from cluster import ControlPlane
from kubelet import delete_nodes, finish_job, make_node
from procs import Daemon, wait_until
from rbac import token_kubeconfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helm"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from apiserver import SubprocessServer  # noqa: E402
from helmchart import CHART, Helm  # noqa: E402

from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.policy.healthevent import LABEL_NODE  # noqa: E402
from nvsentinel.k8s import Forbidden, Kube, KubeNotFound  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS, JOBS, NAMESPACES, NODES, PODS  # noqa: E402

CONTROLLERS = ("quarantine", "drain", "remediation", "resolution", "ttl")
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

    def kubeconfig(self, component: str) -> str:
        sa = self.identity[component]
        assert sa, f"{component} has no ServiceAccount in the chart"
        if sa not in self._kubeconfigs:
            self._kubeconfigs[sa] = token_kubeconfig(self.kube, self.cp.kubeconfig, self.ns, sa,
                                                     out=self.tmp / f"{sa}.kubeconfig")
        return self._kubeconfigs[sa]

    def client(self, component: str) -> Kube:
        return Kube.connect(self.kubeconfig(component))

    def close(self) -> None:
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
        self.agent = Daemon("remediation_agent", [*self._args("remediation-agent", drop), *local, "--resync-period",
                                                  "1", "--kubeconfig", self.rel.kubeconfig("remediation-agent")],
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
        side = NodeSide(rel, str(tmp))
        ctls = [controller(rel, c) for c in CONTROLLERS]
        for d in ctls:
            d.wait_log("leader election: leading")
        daemons = [side.publisher, side.agent, *ctls]
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
        node = kube.get(NODES, rel.node)
        assert node["spec"]["unschedulable"] and any(t["key"] == TAINT for t in node["spec"]["taints"])
        (job,) = wait_until(lambda: kube.list(JOBS, rel.ns)[0], what="the Job in the release namespace",
                            daemons=daemons)
        finish_job(kube, rel.ns, job["metadata"]["name"], succeeded=True)
        wait_until(lambda: phase() == "Remediated", what="Remediated", daemons=daemons)
        side.reboot()
        daemons = [side.publisher, side.agent, *ctls]
        wait_until(lambda: phase() in ("Resolved", "Deleted"), what="verified and resolved", daemons=daemons)
        wait_until(lambda: not kube.get(NODES, rel.node)["spec"].get("unschedulable"), what="uncordoned",
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
                "remediation-agent": [("patch healthevents", lambda: agent.patch(HEALTHEVENTS, "x", {})),
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
            allowed = [f"{who}: {what}" for who, calls in checks.items() for what, call in calls if not refused(call)]
            assert allowed == [], f"the chart grants more than each component needs: {allowed}"
            assert kube.get(NODES, other)["metadata"]["name"] == other
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
