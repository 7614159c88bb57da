"""The whole system, end to end, as separate processes on a real kube-apiserver + controller-manager.

One GPU node runs what the DaemonSet runs: the device API server with the NVML provider on the fake
libnvidia-ml (8 GPUs), the publisher and the remediation agent. The controllers run the whole chain.
The fake kubelet completes pod deletions and plays the job controller. A watch records every
change of the node's HealthEvents, so the timeline printed at the end is exact, not sampled.

- XID 79 on GPU 3 → HealthEvent → cordon + taint → evictions (a PDB holds one pod until the test frees
  it) → Drained → reboot Job → it succeeds → "reboot": the node agent restarts on a fresh boot →
  the GPU is verified healthy → Resolved → uncordoned and untainted → deleted by TTL.
- XID 48 → the gpu-reset handshake (controller → agent → provider resets the fake GPU → publisher's
  healthy event) → Remediated → Resolved → uncordoned.
- An unknown XID (CONTACT_SUPPORT) → stays Drained awaiting a human; the node stays cordoned.
- The controllers killed (SIGKILL) at every phase: converges, exactly one reboot Job, nothing lost.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import ControlPlane, free_port
from kubelet import delete_nodes, finish_deletions, finish_job, make_node, run_pod
from procs import Daemon, http_get, wait_until
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nvml"))
from apiserver import SubprocessServer  # noqa: E402
from nvml_fake_helpers import BUS_IDS, SERIALS, UUIDS  # noqa: E402

from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.cluster.remediation.logic import job_name  # noqa: E402
from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.policy.healthevent import LABEL_NODE  # noqa: E402
from nvsentinel.k8s import Kube, KubeNotFound  # noqa: E402
from nvsentinel.k8s.resources import (  # noqa: E402
    CONFIGMAPS, EVENTS, HEALTHEVENTS, JOBS, NAMESPACES, NODES, PDBS_V1BETA1, PODS,
)

TAINT = "nvsentinel.nvidia.com/quarantine"
CHAIN_ORDER = ["Quarantined", "Draining", "Drained", "Remediating", "Remediated", "Resolved"]


class GpuNode:
    """The node side, as the DaemonSet runs it; `reboot()` restarts it all on a fresh fake boot."""

    def __init__(self, cp: ControlPlane, node: str, sock_dir: str) -> None:
        self.cp, self.node, self.sock_dir = cp, node, sock_dir
        self.boot = 0
        self.procs: list[Any] = []
        self._start()

    def _start(self) -> None:
        self.boot += 1
        # a fresh control file is a fresh boot: the fake replays a control file from its start
        self.control = os.path.join(self.sock_dir, f"fake-nvml-boot{self.boot}.ctl")
        self.server = SubprocessServer.start(self.sock_dir, "--enable-nvml-provider", "--fake-nvml",
                                             "--fake-nvml-control", self.control, "--node-name", self.node,
                                             "--nvml-health-poll-interval", "1", "--nvml-call-timeout", "3")
        common = ["--kubeconfig", self.cp.kubeconfig, "--node-name", self.node, "--health-port", "0",
                  "--metrics-port", "0"]
        self.publisher = Daemon("publisher", ["--address", self.server.unix, *common],
                                name=f"publisher-{self.boot}").start()
        self.agent = Daemon("remediation_agent", ["--address", self.server.unix, "--resync-period", "1", *common],
                            name=f"agent-{self.boot}").start()
        self.procs = [self.agent, self.publisher, self.server]
        self.fault = FaultInjector(self.control)
        with DeviceApiClient(self.server.unix) as c:
            wait_until(lambda: len(c.list_gpus()[1]) == 8 if _ready(c) else False, what="8 GPUs registered",
                       daemons=[self.publisher, self.agent])
        time.sleep(1.0)  # the publisher and the agent saw the healthy GPUs

    def reboot(self) -> None:
        self.close()
        self._start()

    def daemons(self) -> list[Daemon]:
        return [self.publisher, self.agent]

    def close(self) -> None:
        for p in self.procs:
            p.close()


def _ready(c: DeviceApiClient) -> bool:
    try:
        c.list_gpus()
        return True
    except Exception:  # noqa: BLE001 - not ready yet (UNAVAILABLE before the first GPU)
        return False


class Timeline:
    """Every change of the node's HealthEvents, from a watch (no sampling gaps)."""

    def __init__(self, kube: Kube, node: str) -> None:
        self.kube, self.node = kube, node
        self.t0 = time.monotonic()
        self.changes: list[tuple[float, str, str, str]] = []  # (t, event, phase, latest condition reason)
        self.phases: dict[str, list[str]] = {}
        self._stream: Any = None
        self._stop = False
        _, rv = kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")
        self._rv = rv
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self._stream = self.kube.watch(HEALTHEVENTS, resource_version=self._rv,
                                               label_selector=f"{LABEL_NODE}={self.node}", timeout_seconds=60)
                for etype, obj in self._stream:
                    if etype == "BOOKMARK":
                        self._rv = obj["metadata"]["resourceVersion"]
                        continue
                    self._rv = obj["metadata"]["resourceVersion"]
                    name = obj["metadata"]["name"]
                    status = obj.get("status") or {}
                    phase = "Deleted" if etype == "DELETED" else status.get("phase") or "New"
                    conds = sorted(status.get("conditions") or (), key=lambda c: c["lastTransitionTime"])
                    reason = conds[-1]["reason"] if conds else ""
                    seen = self.phases.setdefault(name, [])
                    if not seen or seen[-1] != phase:
                        seen.append(phase)
                        self.changes.append((time.monotonic() - self.t0, name, phase, reason))
            except Exception:  # noqa: BLE001 - an ended watch is resumed from the last RV
                time.sleep(0.1)

    def mark(self) -> None:
        self.t0 = time.monotonic()

    def print(self, title: str) -> None:
        print(f"\n{title}")
        for t, name, phase, reason in self.changes:
            print(f"  {t * 1000:8.0f} ms  {name:<60.60}  {phase:<12} {reason}")

    def close(self) -> None:
        self._stop = True
        if self._stream is not None:
            self._stream.close()


class World:
    """One test's cluster side: namespace, node, workload pods, TTL policy, the controllers, a kubelet loop."""

    def __init__(self, cp: ControlPlane, unique: str, sock_dir: str, *, ttl: str = "8s") -> None:
        self.cp = cp
        self.kube = cp.kube(qps=0)
        self.ns = f"hl-{unique}"
        self.node = f"gpu-hl-{unique}"
        self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        make_node(self.kube, self.node)
        self.kube.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "nvsentinel-policy", "namespace": self.ns},
                                      "data": {"ttlAfterResolved": ttl, "cleanupInterval": "1s"}}, self.ns)
        self._stop = threading.Event()
        self._kubelet = threading.Thread(target=self._kubelet_loop, daemon=True)
        self._kubelet.start()
        self.gpu = GpuNode(cp, self.node, sock_dir)
        self.timeline = Timeline(self.kube, self.node)
        self.ctl: Daemon | None = None
        self.ctl_runs = 0

    def _kubelet_loop(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(Exception):
                finish_deletions(self.kube, self.ns)

    def start_controllers(self) -> Daemon:
        if self.ctl is not None:
            self.ctl.close()  # a killed one keeps its pipes until closed
        self.ctl_runs += 1
        sel = f"{LABEL_NODE}={self.node}"
        self.metrics_port = free_port()
        self.ctl = Daemon("controllers", [
            "--kubeconfig", self.cp.kubeconfig, "--namespace", self.ns, "--health-port", "0",
            "--metrics-port", str(self.metrics_port),
            "--identity", f"ctl-{self.ctl_runs}", "--lease-duration", "3", "--renew-deadline", "2",
            "--retry-period", "0.3", "--event-selector", sel, "--node-selector", f"kubernetes.io/hostname={self.node}",
            "--breaker-percent", "100", "--drain-pdb-retry", "0.5", "--drain-poll", "0.3",
            "--remediation-poll", "0.3", "--remediation-backoff", "0.5"], name=f"controllers-{self.ctl_runs}").start()
        self.ctl.wait_log("leader election: leading", timeout=30)
        return self.ctl

    def daemons(self) -> list[Daemon]:
        return [*self.gpu.daemons(), *([self.ctl] if self.ctl else [])]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The controllers' /metrics, parsed: (sample name, sorted labels) → value."""
        _, text = http_get(self.metrics_port, "/metrics")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def pod(self, name: str, app: str) -> None:
        self.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": name, "namespace": self.ns, "labels": {"app": app}},
                                "spec": {"nodeName": self.node, "containers": [{"name": "c", "image": "cuda"}]}},
                         self.ns)
        run_pod(self.kube, self.ns, name)

    def pod_names(self) -> set[str]:
        return {p["metadata"]["name"] for p in self.kube.list(PODS, self.ns)[0]}

    def events(self) -> list[dict]:
        return self.kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={self.node}")[0]

    def fatal(self) -> dict | None:
        return next((e for e in self.events() if e["spec"]["isFatal"]), None)

    def get(self, name: str) -> dict | None:
        try:
            return self.kube.get(HEALTHEVENTS, name)
        except KubeNotFound:
            return None

    def phase_of(self, name: str) -> str:
        ev = self.get(name)
        return "Deleted" if ev is None else (ev.get("status") or {}).get("phase") or "New"

    def wait_phase(self, name: str, phase: str, timeout: float = 60.0) -> dict:
        return wait_until(lambda: (ev := self.get(name)) and (ev.get("status") or {}).get("phase") == phase and ev,
                          timeout=timeout, what=f"{name} {phase}", daemons=self.daemons())

    def node_obj(self) -> dict:
        return self.kube.get(NODES, self.node)

    def quarantined(self) -> bool:
        n = self.node_obj()
        return bool(n["spec"].get("unschedulable")) and any(t["key"] == TAINT for t in n["spec"].get("taints") or [])

    def released(self) -> bool:
        n = self.node_obj()
        return not n["spec"].get("unschedulable") and not any(t["key"] == TAINT for t in n["spec"].get("taints") or [])

    def jobs(self) -> dict[str, dict]:
        return {j["metadata"]["name"]: j for j in self.kube.list(JOBS, self.ns)[0]}

    def close(self) -> None:
        self._stop.set()
        self.timeline.close()
        if self.ctl is not None:
            self.ctl.close()
        self.gpu.close()
        for ev in self.events():
            with contextlib.suppress(KubeNotFound):
                self.kube.delete(HEALTHEVENTS, ev["metadata"]["name"])
        delete_nodes(self.kube, [self.node])
        with contextlib.suppress(KubeNotFound):
            self.kube.delete(NAMESPACES, self.ns)
        self.kube.close()


@pytest.fixture
def world(control_plane: ControlPlane, crd_installed: None, unique: str) -> Iterator[World]:
    d = tempfile.mkdtemp(prefix="nvs-hl-", dir="/tmp")
    w = World(control_plane, unique, d)
    try:
        yield w
    finally:
        w.close()
        shutil.rmtree(d, ignore_errors=True)


def cond(ev: dict, type_: str) -> dict:
    return next(c for c in ev["status"]["conditions"] if c["type"] == type_)


def test_headline_xid79_to_reboot_to_resolved_to_ttl(world: World) -> None:
    """XID 79 on GPU 3 → … → reboot Job → healthy after the reboot → Resolved → uncordoned → TTL-deleted."""
    w = world
    for name in ("train-0", "train-1", "train-2"):
        w.pod(name, "train")
    w.pod("guarded", "guarded")
    w.kube.create(PDBS_V1BETA1, {"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                                 "metadata": {"name": "guard", "namespace": w.ns},
                                 "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}, w.ns)
    wait_until(lambda: (w.kube.get(PDBS_V1BETA1, "guard", w.ns).get("status") or {}).get("expectedPods") == 1,
               what="the disruption controller computing the PDB")
    w.start_controllers()
    w.timeline.mark()

    w.gpu.fault.inject_xid(3, 79)
    ev = wait_until(w.fatal, what="the HealthEvent", daemons=w.daemons())
    name = ev["metadata"]["name"]
    assert ev["spec"]["errorCodes"] == ["79"] and ev["spec"]["recommendedAction"] == "RESTART_BM"
    assert ev["spec"]["entitiesImpacted"] == [{"type": "GPU", "value": UUIDS[3]}, {"type": "PCI", "value": BUS_IDS[3]},
                                              {"type": "GPU_SERIAL", "value": SERIALS[3]}]
    wait_until(w.quarantined, what="cordon + taint", daemons=w.daemons())
    blocked = wait_until(lambda: (e := w.get(name)) and e["status"].get("phase") == "Draining" and
                         "disruption budget" in cond(e, "PodsDrained")["message"] and e,
                         what="Draining, held by the PDB", daemons=w.daemons())
    assert "guard" in cond(blocked, "PodsDrained")["message"]
    wait_until(lambda: w.pod_names() == {"guarded"}, what="the unguarded pods evicted", daemons=w.daemons())
    time.sleep(1.0)
    assert w.phase_of(name) == "Draining" and w.jobs() == {}, "the PDB holds the drain: no reboot yet"
    assert w.metric("nvsentinel_drain_controller_pods_pending") == 1  # the drain queue: the guarded pod
    assert w.metric("nvsentinel_drain_controller_actions_total", action="evict-blocked") >= 1
    assert w.metric("nvsentinel_quarantine_controller_breaker_cordoned_nodes") >= 1
    assert w.metric("nvsentinel_quarantine_controller_breaker_tripped") == 0

    w.kube.delete(PDBS_V1BETA1, "guard", w.ns)  # the test frees it
    rem = w.wait_phase(name, "Remediating")
    job = job_name(name, 1)
    assert cond(rem, "Remediated")["reason"] == "RebootJobCreated"
    # the status is written before the Job is created (a crash in between repeats the create, never a reboot)
    wait_until(lambda: set(w.jobs()) == {job}, what="exactly the one reboot Job", daemons=w.daemons())
    assert w.jobs()[job]["spec"]["template"]["spec"]["nodeName"] == w.node
    wait_until(lambda: w.metric("nvsentinel_remediation_controller_in_progress") == 1, what="in_progress gauge")
    finish_job(w.kube, w.ns, job, succeeded=True)
    done = w.wait_phase(name, "Remediated")
    assert cond(done, "Remediated")["reason"] == "RebootSucceeded"
    time.sleep(1.5)
    assert w.phase_of(name) == "Remediated" and w.quarantined(), \
        "the node stays quarantined until the GPU is verified after the reboot"

    w.gpu.reboot()  # the node comes back: fresh NVML view, the provider registers 8 healthy GPUs
    res = w.wait_phase(name, "Resolved")
    wait_until(w.released, what="uncordoned and untainted", daemons=w.daemons())
    assert "nvsentinel.nvidia.com/quarantine" not in (w.node_obj()["metadata"].get("annotations") or {})
    healthy = [e for e in w.events() if e["spec"]["isHealthy"]]
    assert [e["spec"]["source"] for e in healthy] == ["remediation-agent"]
    assert healthy[0]["spec"]["entitiesImpacted"] == [{"type": "GPU", "value": UUIDS[3]},
                                                      {"type": "PCI", "value": BUS_IDS[3]},
                                                      {"type": "GPU_SERIAL", "value": SERIALS[3]}]
    assert cond(res, "Resolved")["reason"] == "HealthyEventReceived"
    assert healthy[0]["metadata"]["name"] in cond(res, "Resolved")["message"]

    # every condition, in chain order, each stamped no earlier than the one before
    times = [cond(res, t)["lastTransitionTime"] for t in ("NodeQuarantined", "PodsDrained", "Remediated", "Resolved")]
    assert [cond(res, t)["status"] for t in ("NodeQuarantined", "PodsDrained", "Remediated", "Resolved")] == \
        ["True"] * 4
    assert times == sorted(times), times
    assert times[1] <= res["status"]["lastRemediationTime"] <= times[2] <= res["status"]["resolvedAt"]
    seen = [p for p in w.timeline.phases[name] if p in CHAIN_ORDER]
    assert seen == CHAIN_ORDER, w.timeline.phases[name]

    wait_until(lambda: w.get(name) is None, timeout=30, what="deleted by TTL", daemons=w.daemons())
    wait_until(lambda: w.jobs() == {}, timeout=30, what="the reboot Job garbage-collected with its event")
    # the test's own watch may still be delivering the deletion the GET above already saw
    wait_until(lambda: w.timeline.phases[name][-1] == "Deleted", timeout=30, what="the deletion on the watch")
    assert list(w.jobs()) == [] and len(w.timeline.phases) == 2  # the fault and its verification
    # every controller's metrics moved: actions, reconciles, latency histograms, the gauges back at rest
    m = w.metric
    for c, actions in {"quarantine": {"cordon": 1, "resolve-nonfatal": 1}, "drain": {"evict": 4, "drained": 1},
                       "remediation": {"reboot": 1, "reboot-succeeded": 1}, "resolution": {"resolve": 1, "uncordon": 1},
                       "ttl": {"delete": 2}}.items():
        for a, n in actions.items():
            assert m(f"nvsentinel_{c}_controller_actions_total", action=a) == n, (c, a)
        assert m(f"nvsentinel_{c}_controller_reconciles_total") > 0 and \
            m(f"nvsentinel_{c}_controller_latency_seconds_count") > 0, c
    assert m("nvsentinel_drain_controller_pods_pending") == 0
    assert m("nvsentinel_remediation_controller_in_progress") == 0
    assert "Traceback" not in "".join(d.text() for d in w.daemons())
    w.timeline.print("XID 79 on GPU 3 → reboot → Resolved → TTL (ms since the injection):")


def test_xid48_gpu_reset_handshake_end_to_end(world: World) -> None:
    """XID 48 → Drained → gpu-reset requested → agent → provider resets the fake GPU → healthy → Resolved."""
    w = world
    w.start_controllers()
    w.timeline.mark()
    w.gpu.fault.inject_xid(2, 48)
    ev = wait_until(w.fatal, what="the HealthEvent", daemons=w.daemons())
    name = ev["metadata"]["name"]
    assert ev["spec"]["recommendedAction"] == "COMPONENT_RESET"
    res = w.wait_phase(name, "Resolved")
    assert cond(res, "Remediated")["reason"] == "GpuResetVerified"
    wait_until(w.released, what="uncordoned", daemons=w.daemons())
    assert w.jobs() == {}, "a GPU reset reboots nothing"
    seen = [p for p in w.timeline.phases[name] if p in CHAIN_ORDER]
    assert seen == ["Quarantined", "Drained", "Remediating", "Remediated", "Resolved"] or seen == CHAIN_ORDER, seen
    with DeviceApiClient(w.gpu.server.unix) as c:
        gpu = c.get_gpu(UUIDS[2])
        conds = {x.type: x for x in gpu.status.conditions}
        assert conds["NvmlHealthy"].status == "True" and conds["NvmlHealthy"].reason == "GpuReset"
        assert conds["GpuReset"].reason == "ResetVerified" and conds["GpuReset"].message.startswith(name + ":")
        wait_until(lambda: "ResetRequested" not in {x.type for x in c.get_gpu(UUIDS[2]).status.conditions},
                   what="the agent withdrew its answered request")
    w.timeline.print("XID 48 on GPU 2 → gpu-reset → Resolved (ms since the injection):")


def test_recovery_action_gpu_reset_end_to_end(world: World) -> None:
    """NVML's recovery action (field 230) says GPU_RESET on GPU 1, with no XID at all: the level alone is a
    fatal HealthEvent (COMPONENT_RESET) → the gpu-reset handshake (the fake's reset sets it back to NONE) →
    verified healthy → Resolved → uncordoned."""
    w = world
    w.start_controllers()
    w.gpu.fault.recovery_action(1, "GPU_RESET")
    ev = wait_until(w.fatal, what="the HealthEvent", daemons=w.daemons())
    name = ev["metadata"]["name"]
    spec = ev["spec"]
    assert (spec["checkName"], spec["errorCodes"], spec["recommendedAction"], spec["source"]) == (
        "gpu-recovery-action-check", ["RECOVERY_ACTION.GPU_RESET"], "COMPONENT_RESET", "nvml-provider")
    assert spec["entitiesImpacted"][0] == {"type": "GPU", "value": UUIDS[1]}
    res = w.wait_phase(name, "Resolved")
    assert cond(res, "Remediated")["reason"] == "GpuResetVerified"
    wait_until(w.released, what="uncordoned", daemons=w.daemons())
    assert w.jobs() == {}, "a GPU reset reboots nothing"
    with DeviceApiClient(w.gpu.server.unix) as c:
        nvml = {x.type: x for x in c.get_gpu(UUIDS[1]).status.conditions}["NvmlHealthy"]
        assert (nvml.status, nvml.reason) == ("True", "GpuReset")


def test_a_hung_gpu_is_seen_in_the_cluster_and_cordons_nothing(world: World) -> None:
    """NVML calls on GPU 5 hang: the provider reports it Unknown (NvmlUnresponsive) within its call deadline,
    the publisher makes it a non-fatal HealthEvent the cluster sees, nothing is cordoned, and when the hang
    ends the GPU is healthy again (a healthy event closes it)."""
    w = world
    w.start_controllers()
    w.gpu.fault.hang(5, 600)
    ev = wait_until(lambda: next((e for e in w.events() if e["spec"]["checkName"] == "nvml-responsive-check"), None),
                    what="the unresponsive HealthEvent", daemons=w.daemons())
    spec = ev["spec"]
    assert (spec["isFatal"], spec["errorCodes"], spec["recommendedAction"]) == (False, ["NVML_UNRESPONSIVE"], "NONE")
    assert spec["entitiesImpacted"][0] == {"type": "GPU", "value": UUIDS[5]}
    w.wait_phase(ev["metadata"]["name"], "Resolved")  # non-fatal: recorded, nothing done
    assert not w.node_obj()["spec"].get("unschedulable"), "a hang is reported, not acted on"
    w.gpu.fault.hang(5, 0)
    wait_until(lambda: any(e["spec"]["isHealthy"] for e in w.events()), what="healthy again", daemons=w.daemons())
    assert w.fatal() is None and w.jobs() == {}


def test_contact_support_stays_drained_and_the_node_cordoned(world: World) -> None:
    """An XID outside the catalog (CONTACT_SUPPORT) → Drained, ManualRemediationRequired; nothing runs."""
    w = world
    w.start_controllers()
    w.gpu.fault.inject_xid(6, 999)
    ev = wait_until(w.fatal, what="the HealthEvent", daemons=w.daemons())
    name = ev["metadata"]["name"]
    assert ev["spec"]["recommendedAction"] == "CONTACT_SUPPORT"
    held = wait_until(lambda: (e := w.get(name)) and (e["status"].get("conditions") and any(
        c["reason"] == "ManualRemediationRequired" for c in e["status"]["conditions"])) and e,
        what="held for a human", daemons=w.daemons())
    assert held["status"]["phase"] == "Drained"
    time.sleep(1.5)
    assert w.phase_of(name) == "Drained" and w.quarantined() and w.jobs() == {}
    wait_until(lambda: "ManualRemediationRequired" in {e["reason"] for e in w.kube.list(
        EVENTS, "default", field_selector=f"involvedObject.name={w.node}")[0]}, what="the Warning on the Node",
        daemons=w.daemons())


def test_controllers_killed_at_every_phase_converge_with_one_reboot(world: World) -> None:
    """SIGKILL the controllers as soon as each phase appears; each restart continues: one Job, one event."""
    w = world
    w.pod("train-0", "train")
    w.start_controllers()
    w.gpu.fault.inject_xid(4, 79)
    ev = wait_until(w.fatal, what="the HealthEvent", daemons=w.daemons())
    name = ev["metadata"]["name"]
    killed_at: list[str] = []
    for phase in ("Quarantined", "Drained", "Remediating"):
        wait_until(lambda p=phase: CHAIN_ORDER.index(w.phase_of(name)) >= CHAIN_ORDER.index(p) if
                   w.phase_of(name) in CHAIN_ORDER else False, what=phase, daemons=w.daemons())
        assert w.ctl is not None
        w.ctl.kill()
        killed_at.append(w.phase_of(name))
        w.start_controllers()
    job = job_name(name, 1)
    wait_until(lambda: job in w.jobs(), what="the reboot Job", daemons=w.daemons())
    w.ctl.kill()  # killed with the Job running
    finish_job(w.kube, w.ns, job, succeeded=True)
    w.start_controllers()
    w.wait_phase(name, "Remediated")
    w.ctl.kill()  # and once more before the verification
    w.gpu.reboot()
    w.start_controllers()
    w.wait_phase(name, "Resolved")
    wait_until(w.released, what="uncordoned", daemons=w.daemons())
    assert list(w.jobs()) == [job], "exactly one reboot Job across five controller lifetimes"
    assert [e["metadata"]["name"] for e in w.events() if e["spec"]["isFatal"]] == [name], "nothing lost or doubled"
    print(f"\ncontrollers killed at phases {killed_at}, with the Job running, and at Remediated; converged")
