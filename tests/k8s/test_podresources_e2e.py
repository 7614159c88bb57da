"""The per-GPU drain end to end on the real kube-apiserver: which pods use the faulty GPU, from the kubelet's
PodResources API to the evictions.

The node side runs as separate processes, as the DaemonSet runs them: the Device API server with the NVML
provider on the fake libnvidia-ml (8 GPUs) and the publisher, which reads the stand-in kubelet's PodResources
socket (`nvsentinel.devtools.podresources`: a real gRPC server speaking the kubelet's v1 wire format). The test
plays the rest of the kubelet: the Node (8 GPUs, 7 allocatable once the device plugin withdrew the bad one), its
pods Running, and finishing the deletions evictions start. The controllers (quarantine and drain,
`--drain-scope gpu`) run as the controllers daemon.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster import free_port
from kubelet import finish_deletions, make_node, run_pod
from procs import Daemon, http_get, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nvml"))
from apiserver import SubprocessServer, temp_socket_dir  # noqa: E402
from nvml_fake_helpers import UUIDS  # noqa: E402

from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.devtools.podresources import PodResourcesServer  # noqa: E402
from nvsentinel.k8s import Kube, KubeNotFound  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS, NAMESPACES, NODES, PODS  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.policy.healthevent import LABEL_NODE, HealthEvent, PodRef  # noqa: E402

GPU = "nvidia.com/gpu"
X, Y, Z = UUIDS[3], UUIDS[5], UUIDS[6]
TAINT = "nvsentinel.nvidia.com/quarantine"


class GpuNode:
    """The node's processes: Device API server (embedded fake NVML), the publisher, and the stand-in kubelet."""

    def __init__(self, kubeconfig: str, node: str, sock_dir: str, *publisher_flags: str) -> None:
        self.node = node
        self.kubelet = PodResourcesServer(os.path.join(sock_dir, "kubelet.sock")).start()
        self.control = os.path.join(sock_dir, "fake-nvml.ctl")
        self.server = SubprocessServer.start(sock_dir, "--enable-nvml-provider", "--fake-nvml",
                                             "--fake-nvml-control", self.control, "--node-name", node,
                                             "--nvml-health-poll-interval", "1", "--nvml-call-timeout", "3")
        self.health_port, self.metrics_port = free_port(), free_port()
        self.publisher = Daemon("publisher", [
            "--address", self.server.unix, "--kubeconfig", kubeconfig, "--node-name", node, "--debounce", "0.5",
            "--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port),
            "--pod-resources-socket", self.kubelet.socket_path, *publisher_flags]).start()
        self.fault = FaultInjector(self.control)
        with DeviceApiClient(self.server.unix, timeout=5) as c:
            wait_until(lambda: len(c.list_gpus()[1]) == 8, timeout=60, what="8 GPUs registered",
                       daemons=[self.publisher])
        # /readyz: the publisher's informer has listed the (healthy) GPUs
        wait_until(lambda: http_get(self.health_port, "/readyz")[0] == 200, timeout=60, what="publisher ready",
                   daemons=[self.publisher])

    def metric(self, sample: str) -> float:
        for line in http_get(self.metrics_port, "/metrics")[1].splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        return 0.0

    def close(self) -> None:
        self.publisher.close()
        self.server.kill()
        self.kubelet.stop()


@contextlib.contextmanager
def gpu_node(control_plane: Any, node: str, *flags: str) -> Iterator[GpuNode]:
    with temp_socket_dir() as sock_dir:
        g = GpuNode(control_plane.kubeconfig, node, sock_dir, *flags)
        try:
            yield g
        finally:
            g.close()


def events_of(kube: Kube, node: str, gpu: str) -> list[HealthEvent]:
    items, _ = kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")
    return [e for e in map(HealthEvent.from_dict, items) if gpu in e.gpu_uuids and e.spec.is_fatal]


def drop_events(kube: Kube, node: str) -> None:
    items, _ = kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")
    for i in items:
        with contextlib.suppress(KubeNotFound):
            kube.delete(HEALTHEVENTS, i["metadata"]["name"])


def test_publisher_records_the_pods_on_the_faulty_gpu(control_plane, crd_installed, kube, unique):
    """Verify a fatal XID on GPU X with pods on X and Y → the HealthEvent on the API server names only X's pods;
    with the kubelet stopped, then hanging, the next faults' events are still published, with the reason."""
    node = f"pr-pub-{unique}"
    with gpu_node(control_plane, node, "--pod-resources-timeout", "1") as g:
        try:
            g.kubelet.set_pod("ml", "train-x", {"main": {GPU: [X]}})
            g.kubelet.set_pod("ml", "train-y", {"main": {GPU: [Y]}})
            g.kubelet.set_pod("ml", "train-xz", {"init": {GPU: [Z]}, "main": {GPU: [X]}, "nic": {"rdma/hca": ["m0"]}})
            g.kubelet.set_pod("web", "frontend", {"main": {}})
            g.fault.inject_xid(3, 48)
            (ev,) = wait_until(lambda: events_of(kube, node, X), timeout=60, what="the XID 48 event on X",
                               daemons=[g.publisher])
            m = ev.spec.pod_mapping
            assert m is not None and m.error == "" and m.resource_name == GPU and m.read_at is not None
            assert m.pods == (PodRef("ml", "train-x", (X,)), PodRef("ml", "train-xz", (X,)))
            assert ev.spec.recommended_action == "COMPONENT_RESET"
            assert g.metric('nvsentinel_publisher_pod_mapping_reads_total{result="ok"}') == 1

            # the kubelet is gone (restarting, or its directory not mounted): the event goes out with the reason
            g.kubelet.stop()
            g.fault.inject_xid(5, 48)
            (ev,) = wait_until(lambda: events_of(kube, node, Y), timeout=60, what="the XID 48 event on Y",
                               daemons=[g.publisher])
            m = ev.spec.pod_mapping
            assert m is not None and m.pods == ()
            assert m.error == f"no PodResources socket at {g.kubelet.socket_path}"
            assert g.metric('nvsentinel_publisher_pod_mapping_reads_total{result="error"}') == 1

            # a kubelet that accepts but never answers: the deadline, and the event all the same
            g.kubelet.start()
            g.kubelet.hang()
            g.fault.inject_xid(6, 48)
            (ev,) = wait_until(lambda: events_of(kube, node, Z), timeout=60, what="the XID 48 event on Z",
                               daemons=[g.publisher])
            assert ev.spec.pod_mapping.pods == ()
            assert ev.spec.pod_mapping.error == "the kubelet did not answer List within 1s"
            assert g.kubelet.calls("List") >= 1
            g.kubelet.heal()
            # the healthy GPUs were never mapped, and every fault has exactly one event
            assert g.metric('nvsentinel_publisher_pod_mapping_reads_total{result="error"}') == 2
            assert [len(events_of(kube, node, u)) for u in (X, Y, Z)] == [1, 1, 1]
        finally:
            drop_events(kube, node)


class Cluster:
    """The test's cluster side: a namespace, the Node, its pods, the controllers, a kubelet loop for deletions."""

    def __init__(self, control_plane: Any, unique: str) -> None:
        self.cp = control_plane
        self.kube: Kube = control_plane.kube(qps=0)
        self.ns = f"prd-{unique}"
        self.node = f"pr-drain-{unique}"
        self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        make_node(self.kube, self.node)
        # the device plugin withdrew the faulty GPU: 7 of 8 allocatable, so the node may stay schedulable
        self.kube.patch(NODES, self.node, {"status": {"allocatable": {GPU: "7"}}}, subresource="status")
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._kubelet_loop, daemon=True)
        self._loop.start()
        self.ctl: Daemon | None = None

    def _kubelet_loop(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(Exception):
                finish_deletions(self.kube, self.ns)

    def pod(self, name: str) -> None:
        self.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": name, "namespace": self.ns, "labels": {"app": name}},
                                "spec": {"nodeName": self.node, "containers": [{"name": "c", "image": "cuda"}]}},
                         self.ns)
        run_pod(self.kube, self.ns, name)

    def running(self) -> set[str]:
        items, _ = self.kube.list(PODS, self.ns)
        return {p["metadata"]["name"] for p in items
                if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"}

    def start_controllers(self) -> Daemon:
        self.ctl = Daemon("controllers", [
            "--kubeconfig", self.cp.kubeconfig, "--namespace", self.ns, "--health-port", "0", "--metrics-port", "0",
            "--controllers", "quarantine,drain", "--drain-scope", "gpu",
            "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3",
            "--event-selector", f"{LABEL_NODE}={self.node}", "--node-selector", f"kubernetes.io/hostname={self.node}",
            "--breaker-percent", "100", "--drain-pdb-retry", "0.5", "--drain-poll", "0.3"], name="controllers").start()
        self.ctl.wait_log("leader election: leading", timeout=60)
        return self.ctl

    def close(self) -> None:
        self._stop.set()
        self._loop.join(5)
        if self.ctl is not None:
            self.ctl.close()
        drop_events(self.kube, self.node)
        items, _ = self.kube.list(PODS, self.ns)
        for p in items:
            with contextlib.suppress(KubeNotFound):
                self.kube.delete(PODS, p["metadata"]["name"], self.ns, grace_period_seconds=0)
        with contextlib.suppress(KubeNotFound):
            self.kube.delete(NODES, self.node)
        with contextlib.suppress(KubeNotFound):
            self.kube.delete(NAMESPACES, self.ns)
        self.kube.close()


def test_gpu_scoped_drain_evicts_exactly_the_pods_on_the_faulty_gpu(control_plane, crd_installed, unique):
    """Verify XID 48 (COMPONENT_RESET) on GPU X: the publisher records X's pods from the kubelet's PodResources
    API, the drain (--drain-scope gpu) evicts exactly those, the pods on the other GPUs and the CPU-only pod keep
    running, and the node is not cordoned (tainted PreferNoSchedule instead)."""
    c = Cluster(control_plane, unique)
    try:
        pods = {"train-x": [X], "train-x2": [X], "train-y": [Y], "train-yz": [Y, Z]}
        for name in [*pods, "web"]:
            c.pod(name)
        with gpu_node(control_plane, c.node) as g:
            for name, gpus in pods.items():
                g.kubelet.set_pod(c.ns, name, {"main": {GPU: gpus}})
            g.kubelet.set_pod(c.ns, "web", {"main": {}})
            ctl = c.start_controllers()
            daemons = [g.publisher, ctl]

            g.fault.inject_xid(3, 48)
            (ev,) = wait_until(lambda: events_of(c.kube, c.node, X), timeout=60, what="the XID 48 event",
                               daemons=daemons)
            assert ev.spec.recommended_action == "COMPONENT_RESET"
            assert {p.name for p in ev.spec.pod_mapping.pods} == {"train-x", "train-x2"}
            done = wait_until(lambda: (o := c.kube.get(HEALTHEVENTS, ev.name)) and (
                o.get("status") or {}).get("phase") == "Drained" and o, timeout=90, what="the event Drained",
                daemons=daemons)
            assert done["status"]["drain"]["scope"] == "gpu"
            assert done["status"]["drain"]["gpus"] == [X]
            assert sorted(p["name"] for p in done["status"]["drain"]["pods"]) == ["train-x", "train-x2"]
            wait_until(lambda: c.running() == {"train-y", "train-yz", "web"}, timeout=60,
                       what="exactly the pods on GPU X gone", daemons=daemons)
            items, _ = c.kube.list(PODS, c.ns)
            assert {p["metadata"]["name"] for p in items} == {"train-y", "train-yz", "web"}
            node = c.kube.get(NODES, c.node)
            assert not node["spec"].get("unschedulable"), "GPU scope with a withdrawn GPU: the node is not cordoned"
            assert [(t.get("value"), t["effect"]) for t in node["spec"].get("taints") or () if t["key"] == TAINT] == [
                ("gpu", "PreferNoSchedule")]
    finally:
        c.close()
