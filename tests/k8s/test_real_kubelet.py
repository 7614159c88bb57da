"""The places where the other tests' kubelet stand-in pretends, run on a real kubelet (tests/k8s/realnode.py).

One real node for the module: kubelet v1.20.2 with containerd and runc, registered with its own control
plane (the job controller on, so a Job's pod really runs and the Job really completes). Pods use the
project image, imported into the node's containerd (nothing is pulled). Each test labels the Node with its
own value and gives the controllers matching selectors; its pods live in a per-test namespace.

- drain: the eviction the drain controller sends makes the kubelet deliver SIGTERM, wait the grace period,
  SIGKILL a pod that ignores it, and delete the pod: the drain completes on that (no stand-in deletes it).
- remediation: the reboot Job's privileged host pod runs on the node and the job controller marks it
  succeeded: the remediation stage sees Remediated.
- PodResources: a fake device plugin gives the kubelet two GPU UUIDs; a pod asks for one; the node's
  PodResources reader sees that pod on that UUID and nothing on the other.
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import ControlPlane
from ctlhelpers import clean_up, condition, eventually, phase, running_manager
from realnode import RealNode

from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.cluster.drain.controller import DrainController
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.quarantine.controller import QuarantineController
from nvsentinel.cluster.remediation import RemediationConfig, RemediationController
from nvsentinel.cluster.remediation.logic import job_name
from nvsentinel.devtools.deviceplugin import FakeGpuPlugin
from nvsentinel.k8s import Kube, KubeNotFound
from nvsentinel.k8s.crd import install_crd
from nvsentinel.k8s.resources import HEALTHEVENTS, JOBS, NAMESPACES, NODES, PODS
from nvsentinel.node.podresources import PodResourcesReader
from nvsentinel.policy.healthevent import (
    Entity, HealthEvent, HealthEventSpec, PodRef, format_time, parse_time, utcnow,
)
from nvsentinel.xid import Action

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/real-kubelet"
GPU_A = "GPU-0000000a-0000-4000-8000-00000000000a"
GPU_B = "GPU-0000000b-0000-4000-8000-00000000000b"
#: seconds: generous, the node shares two cores with the control plane (and, in CI, with CPU hogs)
WAIT = 120.0


@pytest.fixture(scope="module")
def real_cp() -> Iterator[ControlPlane]:
    """Its own control plane: the API server reaches the kubelet by InternalIP, and the job controller runs."""
    with ControlPlane(apiserver_args=("--kubelet-preferred-address-types=InternalIP",),
                      controllers=(*ControlPlane.CONTROLLERS, "job")) as cp:
        k = cp.kube()
        try:
            install_crd(k)
        finally:
            k.close()
        yield cp


@pytest.fixture(scope="module")
def node(real_cp: ControlPlane, image: str) -> Iterator[RealNode]:
    with RealNode(real_cp, f"real-{uuid.uuid4().hex[:6]}", image=image) as n:
        yield n


@pytest.fixture(scope="module")
def gpu_plugin(real_cp: ControlPlane, node: RealNode) -> Iterator[FakeGpuPlugin]:
    """The fake device plugin for the module: the node has nvidia.com/gpu capacity, so it is a GPU node (the
    quarantine stage's breaker counts GPU nodes only)."""
    with FakeGpuPlugin(node.device_plugin_dir, [GPU_A, GPU_B]) as plugin:
        k = real_cp.kube()
        try:
            deadline = time.monotonic() + WAIT
            while (k.get(NODES, node.name)["status"].get("allocatable") or {}).get("nvidia.com/gpu") != "2":
                assert time.monotonic() < deadline, "nvidia.com/gpu: 2 never showed on the Node"
                time.sleep(0.2)
        finally:
            k.close()
        yield plugin


class Env:
    """One test's world on the shared real node: its label on the Node, a namespace, its events."""

    def __init__(self, cp: ControlPlane, node: RealNode, image: str, unique: str) -> None:
        self.unique = unique
        self.node = node.name
        self.image = image
        self.ns = f"rk-{unique}"
        self.kube: Kube = cp.kube(qps=0)
        self.events: list[str] = []
        self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        self.kube.patch(NODES, self.node, {"metadata": {"labels": {LABEL: unique}}})

    def selector(self) -> str:
        return f"{LABEL}={self.unique}"

    def event(self, name: str, *, action: Action = Action.RESTART_BM, gpu: str = GPU_A) -> dict:
        spec = HealthEventSpec(source="test", node_name=self.node, component_class="GPU",
                               check_name="xid-error-check", is_fatal=True, is_healthy=False, detected_at=utcnow(),
                               error_codes=("79",), recommended_action=action, agent="test", message="Xid 79",
                               entities_impacted=(Entity("GPU", gpu),))
        self.events.append(name)
        return self.kube.create(HEALTHEVENTS, HealthEvent(name=name, spec=spec, labels={LABEL: self.unique}).create_body())

    def pod(self, name: str, script: str, *, grace: int = 30, host_pid: bool = False, marks: str | None = None,
            gpus: int = 0) -> dict:
        """A pod of the project image bound to the node, running `script` with python3."""
        container: dict[str, Any] = {"name": "main", "image": self.image, "imagePullPolicy": "Never",
                                     "command": ["python3", "-u", "-c", script]}
        spec: dict[str, Any] = {"nodeName": self.node, "hostNetwork": True, "hostPID": host_pid,
                                "restartPolicy": "Never", "terminationGracePeriodSeconds": grace,
                                "tolerations": [{"operator": "Exists"}], "containers": [container]}
        if marks:
            spec["volumes"] = [{"name": "marks", "hostPath": {"path": marks, "type": "Directory"}}]
            container["volumeMounts"] = [{"name": "marks", "mountPath": "/marks"}]
        if gpus:
            container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
        return self.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod",
                                       "metadata": {"name": name, "namespace": self.ns}, "spec": spec}, self.ns)

    def pod_or_none(self, name: str) -> dict | None:
        try:
            return self.kube.get(PODS, name, self.ns)
        except KubeNotFound:
            return None

    def get(self, name: str) -> dict:
        return self.kube.get(HEALTHEVENTS, name)

    def close(self) -> None:
        clean_up(self.kube, events=self.events, namespace=self.ns)
        # what the quarantine stage left on the shared node goes: the next test starts from a clean node
        node = self.kube.get(NODES, self.node)
        taints = [t for t in node["spec"].get("taints") or [] if not t["key"].startswith("nvsentinel")]
        self.kube.patch(NODES, self.node, {"metadata": {"labels": {LABEL: None}, "annotations": {
            k: None for k in node["metadata"].get("annotations") or {} if k.startswith("nvsentinel")}},
            "spec": {"unschedulable": None, "taints": taints or None}})
        self.kube.close()


@pytest.fixture
def env(real_cp: ControlPlane, node: RealNode, gpu_plugin: FakeGpuPlugin, image: str) -> Iterator[Env]:
    e = Env(real_cp, node, image, uuid.uuid4().hex[:8])
    try:
        yield e
    finally:
        e.close()


def running_pod(env: Env, name: str) -> Any:
    return lambda: (lambda p: p and (p.get("status") or {}).get("phase") == "Running" and p)(env.pod_or_none(name))


def marks_dir(tmp_path: Path) -> Path:
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # the image runs as 65532
    return marks


GRACEFUL = """
import signal, sys, time
def on_term(*_):
    open("/marks/graceful-term", "w").write(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open("/marks/graceful-ready", "w").write("ok")
while True:
    time.sleep(3600)
"""

STUBBORN = """
import os, signal, time
def on_term(*_):
    open("/marks/stubborn-term", "w").write(repr(time.time()))
signal.signal(signal.SIGTERM, on_term)
open("/marks/stubborn-pid", "w").write(str(os.getpid()))
while True:
    time.sleep(3600)
"""


def alive(pid: int, start_time: str) -> bool:
    """The process `pid` still runs (the same one: its start time in /proc/PID/stat is unchanged)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == start_time
    except (OSError, IndexError):
        return False


async def test_drain_evicts_and_the_kubelet_terminates_the_pods(env: Env, tmp_path: Path) -> None:
    """Verify a fatal event on a real node: cordon, evictions, the kubelet's SIGTERM reaches the pod (it writes
    a marker and exits), a pod that ignores SIGTERM is SIGKILLed after the eviction's grace period, the kubelet
    deletes both pods, and the drain completes (Drained, PodsDrained True).

    The eviction's gracePeriodSeconds (--drain-grace-period, 3 here) overrides the pod's own
    terminationGracePeriodSeconds (600 here): the stubborn pod is gone long before its own grace."""
    marks = marks_dir(tmp_path)
    env.pod("graceful", GRACEFUL, marks=str(marks))
    env.pod("stubborn", STUBBORN, grace=600, host_pid=True, marks=str(marks))
    for name in ("graceful", "stubborn"):
        await eventually(running_pod(env, name), timeout=WAIT, what=f"{name} Running")
    await eventually(lambda: (marks / "graceful-ready").exists() and (marks / "stubborn-pid").exists(),
                     timeout=WAIT, what="both pods' signal handlers installed")
    pid = int((marks / "stubborn-pid").read_text())  # hostPID: the host's pid of the stubborn process
    start_time = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    assert alive(pid, start_time)

    sel = env.selector()
    recs = [QuarantineController(QuarantineConfig(node_selector=sel, event_selector=sel, breaker_percent=100)),
            DrainController(DrainConfig(node_selector=sel, event_selector=sel, drain_pdb_retry=0.5, drain_poll=0.5,
                                        drain_grace_period=3))]
    env.event("ev-drain")
    async with running_manager(env.kube, recs, env.ns):
        await eventually(lambda: env.kube.get(NODES, env.node)["spec"].get("unschedulable"), timeout=WAIT,
                         what="the node cordoned")
        # the eviction sets deletionTimestamp = eviction + grace: the SIGKILL may not come before it
        deleting = await eventually(lambda: (lambda p: p and p["metadata"].get("deletionTimestamp"))(
            env.pod_or_none("stubborn")), timeout=WAIT, what="the stubborn pod evicted")
        await eventually(lambda: (marks / "graceful-term").exists(), timeout=WAIT, what="SIGTERM in the graceful pod")
        await eventually(lambda: (marks / "stubborn-term").exists(), timeout=WAIT, what="SIGTERM in the stubborn pod")
        dead_at = await eventually(lambda: not alive(pid, start_time) and time.time(), timeout=WAIT,
                                   what="the stubborn process killed")
        grace_end = parse_time(deleting).timestamp()
        assert dead_at >= grace_end, f"killed {grace_end - dead_at:.1f} s before the grace period ended"
        await eventually(lambda: env.pod_or_none("graceful") is None and env.pod_or_none("stubborn") is None,
                         timeout=WAIT, what="the kubelet deleting both pods")
        done = await eventually(lambda: (lambda o: phase(o) == "Drained" and o)(env.get("ev-drain")), timeout=WAIT,
                                what="Drained")
        drained = condition(done, "PodsDrained") or {}
        assert drained.get("status") == "True" and drained.get("reason") == "Drained", drained


async def test_the_reboot_jobs_pod_runs_on_the_node_and_the_job_succeeds(env: Env, tmp_path: Path) -> None:
    """Verify RESTART_BM on a real node: the reboot Job's pod (privileged, hostPID, pinned by nodeName, the
    project image as --reboot-image, never pulled) runs its command in the host's namespaces (nsenter into
    this test's own process: the node's PID 1 is off limits here), the job controller marks the Job
    succeeded, and the remediation stage says Remediated (RebootSucceeded)."""
    marker = tmp_path / "rebooted"
    command = f"nsenter --target {os.getpid()} --mount --uts --ipc --net --pid -- touch {marker}"
    env.event("ev-reboot")
    env.kube.patch(HEALTHEVENTS, "ev-reboot", {"status": {"phase": "Drained", "conditions": [
        {"type": "PodsDrained", "status": "True", "reason": "Drained", "message": "test",
         "lastTransitionTime": format_time(utcnow())}]}}, subresource="status")
    sel = env.selector()
    cfg = RemediationConfig(namespace=env.ns, node_selector=sel, event_selector=sel, reboot_image=env.image,
                            reboot_command=command, remediation_backoff=0.2, remediation_poll=0.5)
    async with running_manager(env.kube, [RemediationController(cfg)], env.ns):
        done = await eventually(lambda: (lambda o: phase(o) in ("Remediated", "Drained") and condition(
            o, "Remediated") and condition(o, "Remediated").get("reason") != "RebootJobCreated" and o)(
            env.get("ev-reboot")), timeout=WAIT, what="the remediation's outcome")
    assert phase(done) == "Remediated", done["status"]
    assert (condition(done, "Remediated") or {}).get("reason") == "RebootSucceeded"
    assert marker.exists(), "the reboot command did not run in the host's namespaces"
    job = env.kube.get(JOBS, job_name("ev-reboot", 1), env.ns)
    assert job["status"].get("succeeded") == 1
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"].get("conditions") or ())
    template = job["spec"]["template"]["spec"]["containers"][0]
    assert template["image"] == env.image and template["imagePullPolicy"] == "IfNotPresent"
    pods, _ = env.kube.list(PODS, env.ns, label_selector=f"job-name={job_name('ev-reboot', 1)}")
    assert [(p["spec"]["nodeName"], p["status"]["phase"]) for p in pods] == [(env.node, "Succeeded")]


async def test_podresources_names_the_pod_holding_a_device_plugin_gpu(env: Env, node: RealNode,
                                                                     gpu_plugin: FakeGpuPlugin) -> None:
    """Verify the kubelet's real PodResources socket, read by nvsentinel's reader: the pod given one of the fake
    plugin's two GPUs is found for that UUID, with exactly that device, and nothing holds the other."""
    before = len(gpu_plugin.allocations)
    env.pod("gpu-user", "import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
            "print('visible', os.environ.get('NVIDIA_VISIBLE_DEVICES'), flush=True)\n"
            "time.sleep(3600)\n", gpus=1)
    await eventually(running_pod(env, "gpu-user"), timeout=WAIT, what="gpu-user Running")
    allocated = gpu_plugin.allocations[before:]
    assert len(allocated) == 1 and len(allocated[0]) == 1, allocated
    given = allocated[0][0]
    other = GPU_B if given == GPU_A else GPU_A
    assert given in (GPU_A, GPU_B)

    reader = PodResourcesReader(node.pod_resources_socket, timeout=10)
    assert reader.pods_for([given]) == (PodRef(env.ns, "gpu-user", (given,)),)
    assert reader.pods_for([other]) == ()
    assert reader.pods_for([GPU_A, GPU_B]) == (PodRef(env.ns, "gpu-user", (given,)),)
    # the container got what Allocate answered (its log, read through the API server from the kubelet)
    log = await eventually(lambda: _log(env, "gpu-user"), timeout=WAIT, what="the pod's log")
    assert log.split() == ["visible", given]
    env.kube.delete(PODS, "gpu-user", env.ns)
    await eventually(lambda: env.pod_or_none("gpu-user") is None, timeout=WAIT, what="gpu-user deleted")
    assert reader.pods_for([given]) == ()


def _log(env: Env, pod: str) -> str:
    with contextlib.suppress(Exception):
        resp = env.kube.raw("GET", f"/api/v1/namespaces/{env.ns}/pods/{pod}/log", stream=True)
        try:
            return resp.read().decode()
        finally:
            resp.release_conn()
    return ""
