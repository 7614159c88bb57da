"""The whole detection → quarantine path as separate processes on a real kube-apiserver.

Fake NVML XID 79 → the NVML provider (embedded in the device API server) → the Device API → the
publisher → a HealthEvent → the quarantine controller → the Node cordoned and tainted. Then the
failure cases: an API server that goes away, two controllers with one killed, a controller killed
mid-work, and write conflicts.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from cluster import ControlPlane, free_port
from kubelet import make_node, make_nodes
from procs import Daemon, http_get, wait_until
from prometheus_client import CollectorRegistry
from rbac import service_account_kubeconfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nvml"))
from apiserver import SubprocessServer  # noqa: E402
from nvml_fake_helpers import BUS_IDS, SERIALS, UUIDS  # noqa: E402

from nvsentinel.xid import Action  # noqa: E402
from nvsentinel.cluster.quarantine.config import QuarantineConfig  # noqa: E402
from nvsentinel.cluster.quarantine.controller import QuarantineController  # noqa: E402
from nvsentinel.k8s.runtime.manager import Manager  # noqa: E402
from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.policy.healthevent import (  # noqa: E402
    LABEL_NODE, Entity, HealthEvent, HealthEventSpec, Phase, utcnow,
)
from nvsentinel.k8s import AlreadyExists, AsyncKube, Forbidden, Kube  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS, JOBS, LEASES, NAMESPACES, NODES  # noqa: E402

TAINT = "nvsentinel.nvidia.com/quarantine"
OWNER = "nvsentinel.nvidia.com/quarantine"


def ensure_namespace(kube: Kube, name: str) -> None:
    try:
        kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except AlreadyExists:
        pass


def events_for(kube: Kube, node: str) -> list[dict]:
    return kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")[0]


def quarantined(kube: Kube, node: str) -> bool:
    n = kube.get(NODES, node)
    return bool(n["spec"].get("unschedulable")) and any(t["key"] == TAINT for t in n["spec"].get("taints") or [])


def controllers(cp: ControlPlane, ns: str, *extra: str, name: str = "controllers", kubeconfig: str = "",
                chain: str = "quarantine") -> Daemon:
    """`nvsentinel controllers`; these tests are about quarantine, so by default only it runs (with
    the whole chain, drain would move the events on from Quarantined)."""
    return Daemon("controllers", [
        "--controllers", chain,
        "--kubeconfig", kubeconfig or cp.kubeconfig, "--namespace", ns, "--health-port", "0", "--metrics-port", "0",
        "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5", "--identity", name,
        # the tests share one cluster, so other tests' cordoned nodes would count: the breaker has its own tests
        "--breaker-percent", "100", "--breaker-max-nodes", "10000", *extra], name=name).start()


def fatal_event(node: str, name: str, gpu: int = 0) -> HealthEvent:
    return HealthEvent(name=name, labels={LABEL_NODE: node}, spec=HealthEventSpec(
        source="test", agent="test", node_name=node, component_class="GPU", check_name="xid-error-check",
        is_fatal=True, is_healthy=False, detected_at=utcnow(), recommended_action=Action.RESTART_BM,
        error_codes=("79",), entities_impacted=(Entity("GPU", UUIDS[gpu]),), message="XID 79"))


@pytest.fixture
def sock_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class NodeAgent:
    """What the DaemonSet runs on one GPU node: device API server + embedded fake NVML, publisher."""

    def __init__(self, cp: ControlPlane, node: str, sock_dir: str, kubeconfig: str = "") -> None:
        self.node = node
        self.control = os.path.join(sock_dir, "fake-nvml.ctl")
        self.server = SubprocessServer.start(sock_dir, "--enable-nvml-provider", "--fake-nvml",
                                             "--fake-nvml-control", self.control, "--node-name", node)
        self.publisher = Daemon("publisher", [
            "--address", self.server.unix, "--kubeconfig", kubeconfig or cp.kubeconfig, "--node-name", node,
            "--health-port", "0", "--metrics-port", "0", "--log-level", "DEBUG"], name=f"publisher-{node}").start()
        self.fault = FaultInjector(self.control)

    def close(self) -> None:
        self.publisher.close()
        self.server.close()


@pytest.fixture
def agent(control_plane: ControlPlane, crd_installed: None, kube: Kube, unique: str, sock_dir: str
          ) -> Iterator[NodeAgent]:
    node = f"gpu-node-{unique}"
    make_node(kube, node)
    a = NodeAgent(control_plane, node, sock_dir)
    try:
        yield a
    finally:
        a.close()


def test_xid79_to_cordoned_node_end_to_end(control_plane: ControlPlane, kube: Kube, agent: NodeAgent,
                                           unique: str) -> None:
    ns = f"chain-{unique}"
    ensure_namespace(kube, ns)
    ctl = controllers(control_plane, ns)
    try:
        ctl.wait_log("leader election: leading")
        time.sleep(1.0)  # the provider registered the GPUs and the publisher saw them healthy
        assert events_for(kube, agent.node) == [], "a healthy node publishes nothing"
        t0 = time.monotonic()
        agent.fault.inject_xid(3, 79)
        evs = wait_until(lambda: events_for(kube, agent.node), what="HealthEvent published",
                         daemons=[agent.publisher, ctl])
        t_event = time.monotonic() - t0
        wait_until(lambda: quarantined(kube, agent.node), what="node cordoned and tainted",
                   daemons=[agent.publisher, ctl])
        t_cordon = time.monotonic() - t0
        (ev,) = evs  # type: ignore[misc]
        he = HealthEvent.from_dict(ev)
        assert he.spec.error_codes == ("79",)
        assert he.spec.recommended_action is Action.RESTART_BM
        assert he.spec.is_fatal and not he.spec.is_healthy
        assert he.spec.entities_impacted == (Entity("GPU", UUIDS[3]), Entity("PCI", BUS_IDS[3]),
                                             Entity("GPU_SERIAL", SERIALS[3]))
        assert he.spec.node_name == agent.node and he.spec.component_class == "GPU"

        def phase_quarantined() -> HealthEvent | None:
            cur = HealthEvent.from_dict(kube.get(HEALTHEVENTS, he.name))
            return cur if cur.status.phase is Phase.QUARANTINED else None

        cur = wait_until(phase_quarantined, what="phase Quarantined", daemons=[ctl])
        cond = cur.status.condition("NodeQuarantined")  # type: ignore[union-attr]
        assert cond is not None and cond.status == "True" and cond.reason and cond.message
        node = kube.get(NODES, agent.node)
        owner = json.loads(node["metadata"]["annotations"][OWNER])
        assert he.name in owner["events"] and owner["cordonedByUs"] is True
        print(f"\nXID 79 injected → HealthEvent {t_event * 1000:.0f} ms → node cordoned {t_cordon * 1000:.0f} ms")
        assert ctl.terminate() == 0
        assert "Traceback" not in ctl.text()
    finally:
        ctl.close()


def test_no_event_lost_while_the_api_server_is_down(control_plane: ControlPlane, kube: Kube, agent: NodeAgent,
                                                    unique: str) -> None:
    ns = f"outage-{unique}"
    ensure_namespace(kube, ns)
    ctl = controllers(control_plane, ns)
    try:
        ctl.wait_log("leader election: leading")
        time.sleep(1.0)
        control_plane.stop_apiserver()
        try:
            agent.fault.inject_xid(5, 79)  # detected while the cluster cannot be told
            time.sleep(3.0)
            agent.publisher.check_alive()
            ctl.check_alive()
        finally:
            control_plane.start_apiserver()
        wait_until(lambda: quarantined(kube, agent.node), timeout=60, what="quarantine after the outage",
                   daemons=[agent.publisher, ctl])
        (ev,) = events_for(kube, agent.node)
        assert HealthEvent.from_dict(ev).spec.entities_impacted == (
            Entity("GPU", UUIDS[5]), Entity("PCI", BUS_IDS[5]), Entity("GPU_SERIAL", SERIALS[5]))
    finally:
        ctl.close()


def test_two_controllers_one_leads_and_a_killed_leader_is_replaced(control_plane: ControlPlane, kube: Kube,
                                                                    crd_installed: None, unique: str) -> None:
    ns = f"ha-{unique}"
    ensure_namespace(kube, ns)
    nodes = [f"ha-{unique}-{i}" for i in range(12)]
    make_nodes(kube, nodes)
    a = controllers(control_plane, ns, name="ctl-a")
    b = controllers(control_plane, ns, name="ctl-b")
    try:
        def holder() -> str:
            return kube.get(LEASES, "nvsentinel-controllers.nvidia.com", ns)["spec"].get("holderIdentity") or ""

        first = wait_until(holder, what="a leader", daemons=[a, b])
        leader, standby = (a, b) if first == "ctl-a" else (b, a)
        time.sleep(1.5)
        assert holder() == first and "leader election: leading" not in standby.text(), "exactly one leads"
        for i, n in enumerate(nodes[:6]):
            kube.create(HEALTHEVENTS, fatal_event(n, f"ha-{unique}-ev{i}").create_body())
        wait_until(lambda: all(quarantined(kube, n) for n in nodes[:6]), what="first batch by the leader",
                   daemons=[a, b])
        killed_at = time.monotonic()
        leader.kill()  # no lease release: the standby must wait the lease out (4 s)
        for i, n in enumerate(nodes[6:], start=6):
            kube.create(HEALTHEVENTS, fatal_event(n, f"ha-{unique}-ev{i}").create_body())
        wait_until(lambda: holder() == standby.name, timeout=15, what="takeover", daemons=[standby])
        took = time.monotonic() - killed_at
        wait_until(lambda: all(quarantined(kube, n) for n in nodes), what="the rest by the new leader",
                   daemons=[standby])
        assert took < 4 + 3, f"takeover within the lease time (+ retry), took {took:.1f} s"
        for n in nodes:
            owner = json.loads(kube.get(NODES, n)["metadata"]["annotations"][OWNER])
            assert len(owner["events"]) == len(set(owner["events"])) == 1
    finally:
        a.close()
        b.close()


def test_killed_mid_work_converges_with_nothing_done_twice(control_plane: ControlPlane, kube: Kube,
                                                           crd_installed: None, unique: str) -> None:
    ns = f"crash-{unique}"
    ensure_namespace(kube, ns)
    nodes = [f"crash-{unique}-{i}" for i in range(20)]
    make_nodes(kube, nodes)
    names = [f"crash-{unique}-ev{i}" for i in range(40)]
    for i, name in enumerate(names):  # two events per node
        kube.create(HEALTHEVENTS, fatal_event(nodes[i % 20], name, gpu=i // 20).create_body())
    rng = random.Random(7)
    for round_ in range(3):  # kill at arbitrary points while it works
        ctl = controllers(control_plane, ns, "--no-leader-elect", name=f"crash-{round_}")
        try:
            ctl.wait_log("informers synced")
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            ctl.close()  # SIGKILL
    ctl = controllers(control_plane, ns, "--no-leader-elect", name="final")
    try:
        wait_until(lambda: all(HealthEvent.from_dict(kube.get(HEALTHEVENTS, n)).status.phase is Phase.QUARANTINED
                               for n in names), timeout=60, what="all Quarantined", daemons=[ctl])
    finally:
        ctl.close()
    for i, n in enumerate(nodes):
        node = kube.get(NODES, n)
        owner = json.loads(node["metadata"]["annotations"][OWNER])
        assert sorted(owner["events"]) == sorted([names[i], names[i + 20]]), owner
        taints = [t for t in node["spec"]["taints"] if t["key"] == TAINT]
        assert len(taints) == 1, "the taint is added once"


class RacingKube(AsyncKube):
    """The controller's client, with another writer that always gets there first: before the first
    write to each object, a second client bumps that object, so the write carries a stale
    resourceVersion and the real API server answers 409 Conflict."""

    def __init__(self, kube: Kube) -> None:
        super().__init__(kube)
        self.raced: set[tuple[str, str]] = set()

    def lane(self, name: str, **kw):  # type: ignore[override]
        return self  # every lane races, the controller's own included

    async def patch(self, res, name, patch, namespace=None, **kw):  # type: ignore[override]
        key = (res.plural, name)
        if key not in self.raced and isinstance(patch, dict) and "resourceVersion" in patch.get("metadata", {}):
            self.raced.add(key)
            await anyio.to_thread.run_sync(lambda: self.sync.patch(
                res, name, {"metadata": {"labels": {"raced": "yes"}}}, namespace))
        return await super().patch(res, name, patch, namespace, **kw)


@pytest.mark.anyio
async def test_write_conflicts_are_retried_and_nothing_is_lost(kube: Kube, crd_installed: None,
                                                               unique: str) -> None:
    ns = f"conflict-{unique}"
    ensure_namespace(kube, ns)
    nodes = [f"cf-{unique}-{i}" for i in range(10)]
    make_nodes(kube, nodes)
    names = [f"cf-{unique}-ev{i}" for i in range(10)]
    reg = CollectorRegistry()
    racing = RacingKube(kube)
    qc = QuarantineController(QuarantineConfig(breaker_percent=100, breaker_max_nodes=10000,
                                               event_selector=f"test-conflict={unique}"))
    mgr = Manager(racing, [qc], namespace=ns, registry=reg, workers=4)
    for n, name in zip(nodes, names):
        body = fatal_event(n, name).create_body()
        body["metadata"]["labels"]["test-conflict"] = unique
        kube.create(HEALTHEVENTS, body)

    def done() -> bool:
        return all(HealthEvent.from_dict(kube.get(HEALTHEVENTS, n)).status.phase is Phase.QUARANTINED for n in names)

    async with anyio.create_task_group() as tg:
        tg.start_soon(mgr.run)
        deadline = time.monotonic() + 60
        while not await anyio.to_thread.run_sync(done):
            assert time.monotonic() < deadline, "not all events quarantined under write conflicts"
            await anyio.sleep(0.1)
        mgr.stop()
    assert all(quarantined(kube, n) for n in nodes)
    assert {("nodes", n) for n in nodes} <= racing.raced and {("healthevents", n) for n in names} <= racing.raced
    conflicts = reg.get_sample_value("nvsentinel_quarantine_controller_failures_total", {"reason": "Conflict"})
    assert conflicts is not None and conflicts >= 20, "every raced write got a 409 and was retried"
    for n, name in zip(nodes, names):
        owner = json.loads(kube.get(NODES, n)["metadata"]["annotations"][OWNER])
        assert owner["events"] == [name], "retried, not done twice"


#: What docs/publisher.md and docs/controllers.md say each needs, and nothing more.
PUBLISHER_RULES = [{"apiGroups": ["nvsentinel.nvidia.com"], "resources": ["healthevents"], "verbs": ["create"]}]
CONTROLLER_CLUSTER_RULES = [
    {"apiGroups": ["nvsentinel.nvidia.com"], "resources": ["healthevents"],
     "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": ["nvsentinel.nvidia.com"], "resources": ["healthevents/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "get", "patch"]},
]
CONTROLLER_NAMESPACE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create"]},
]


def test_the_chain_runs_on_least_privilege_service_accounts(control_plane: ControlPlane, kube: Kube,
                                                            crd_installed: None, unique: str, sock_dir: str,
                                                            tmp_path: Path) -> None:
    ns = f"rbac-{unique}"
    pub_kc = service_account_kubeconfig(kube, control_plane.kubeconfig, ns, "publisher", PUBLISHER_RULES,
                                        out=tmp_path / "publisher.kubeconfig")
    ctl_kc = service_account_kubeconfig(kube, control_plane.kubeconfig, ns, "controllers", CONTROLLER_CLUSTER_RULES,
                                        CONTROLLER_NAMESPACE_RULES, out=tmp_path / "controllers.kubeconfig")
    pub_kube = Kube.connect(pub_kc)
    try:
        with pytest.raises(Forbidden):
            pub_kube.list(HEALTHEVENTS)  # create only: the publisher cannot read or change events
        with pytest.raises(Forbidden):
            pub_kube.get(NODES, "anything")
    finally:
        pub_kube.close()
    node = f"rbac-node-{unique}"
    make_node(kube, node)
    agent = NodeAgent(control_plane, node, sock_dir, kubeconfig=pub_kc)
    # the whole chain, on this node's events only (the session cluster holds other tests' open events)
    ctl = controllers(control_plane, ns, "--event-selector", f"{LABEL_NODE}={node}", kubeconfig=ctl_kc,
                      chain="quarantine,drain,remediation,resolution,ttl")
    try:
        ctl.wait_log("leader election: leading")
        time.sleep(1.0)
        agent.fault.inject_xid(1, 79)
        wait_until(lambda: quarantined(kube, node), what="quarantine with least privilege",
                   daemons=[agent.publisher, ctl])
        (ev,) = events_for(kube, node)
        wait_until(lambda: kube.get(HEALTHEVENTS, ev["metadata"]["name"]).get("status", {}).get("phase")
                   == "Remediating", what="quarantined, drained (no pods), a reboot Job created", daemons=[ctl])
        jobs = wait_until(lambda: kube.list(JOBS, ns)[0], what="the reboot Job (created after the status)",
                          daemons=[ctl])
        assert [j["spec"]["template"]["spec"]["nodeName"] for j in jobs] == [node]
        assert "Forbidden"  not in ctl.text() and "forbidden" not in agent.publisher.text()
    finally:
        ctl.close()
        agent.close()


def test_controllers_daemon_probes_metrics_and_graceful_stop(control_plane: ControlPlane, kube: Kube,
                                                             crd_installed: None, unique: str) -> None:
    ns = f"probes-{unique}"
    ensure_namespace(kube, ns)
    node = f"probes-{unique}"
    make_node(kube, node)
    hp, mp = free_port(), free_port()
    ctl = Daemon("controllers", [
        "--kubeconfig", control_plane.kubeconfig, "--namespace", ns, "--health-port", str(hp), "--metrics-port",
        str(mp), "--identity", "probed", "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5",
        "--breaker-percent", "100", "--breaker-max-nodes", "10000",
        "--event-selector", f"test-probes={unique}"], name="controllers").start()
    try:
        ctl.wait_log("leader election: leading")
        assert http_get(hp, "/healthz") == (200, "ok\n") and http_get(hp, "/livez")[0] == 200
        wait_until(lambda: http_get(hp, "/readyz")[0] == 200, what="ready", daemons=[ctl])
        body = fatal_event(node, f"probes-{unique}").create_body()
        body["metadata"]["labels"]["test-probes"] = unique
        kube.create(HEALTHEVENTS, body)
        wait_until(lambda: quarantined(kube, node), what="cordon", daemons=[ctl])
        text = wait_until(lambda: (t := http_get(mp, "/metrics")[1]) and
                          'nvsentinel_quarantine_controller_actions_total{action="cordon"} 1.0' in t and t,
                          what="cordon counted", daemons=[ctl])
        for needle in ("nvsentinel_controllers_leader 1.0", "nvsentinel_quarantine_controller_latency_seconds_count",
                       "nvsentinel_quarantine_controller_reconciles_total"):
            assert needle in str(text), needle
        assert ctl.terminate() == 0
        lease = kube.get(LEASES, "nvsentinel-controllers.nvidia.com", ns)
        assert lease["spec"]["holderIdentity"] in ("", None), "the lease is released on SIGTERM"
        assert "controllers stopped" in ctl.text() and "Traceback" not in ctl.text()
    finally:
        ctl.close()


def test_controllers_daemon_start_errors(tmp_path: Path) -> None:
    import subprocess

    bad = subprocess.run([sys.executable, "-m", "nvsentinel.daemons.controllers", "--workers", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--workers must be 1..256" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "nvsentinel.daemons.controllers", "--controllers", "quarantine,nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown nope" in bad.stderr
    env = {**os.environ, "CONTROLLERS_WORKERS": "-3"}
    bad = subprocess.run([sys.executable, "-m", "nvsentinel.daemons.controllers"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode == 2 and "--workers" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "nvsentinel.daemons.controllers", "--kubeconfig",
                              str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no kubeconfig at" in missing.stderr
