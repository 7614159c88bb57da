"""The GPU-scoped drain (`--drain-scope gpu`) on a real kube-apiserver (v1.20.2), quarantine and drain stages running.

A node holds pods on GPUs A, B and C; a HealthEvent names GPU A and carries the pod mapping the publisher would
record (`spec.podMapping`). The mapping also names a pod bound to ANOTHER node (a node's credential may write any
name): the drain intersects with the node's own pods, so that pod is never touched. No kubelet runs: a background
loop completes the deletions evictions start (`finish_deletions`), and the tests set the Node's status (GPU
capacity and allocatable) as the kubelet would.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from ctlhelpers import DeletionFinisher, action_count, clean_up, condition, eventually, phase, running_manager
from kubelet import make_node, run_pod
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.cluster.drain.controller import DrainController
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.quarantine.controller import QuarantineController
from nvsentinel.k8s import Kube
from nvsentinel.k8s.resources import HEALTHEVENTS, NAMESPACES, NODES, PDBS_V1BETA1, PODS
from nvsentinel.policy.healthevent import ENTITY_GPU, Entity, HealthEvent, HealthEventSpec, PodMapping, PodRef, utcnow
from nvsentinel.xid import Action

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/drain-gpu"
GPU_A, GPU_B, GPU_C = (f"GPU-{c * 8}-1111-2222-3333-444444444444" for c in "abc")
TAINT_KEY = QuarantineConfig().taint_key


class Env:
    """One test's world: the GPU node and a second node, a namespace of pods bound to them, events."""

    def __init__(self, control_plane: Any, unique: str, *, allocatable: int) -> None:
        self.unique = unique
        self.ns = f"dg-{unique}"
        self.node = f"gpuscope-{unique}"
        self.other = f"gpuscope-other-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)
        self.events: list[str] = []
        self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        make_node(self.kube, self.node, labels={LABEL: unique})
        make_node(self.kube, self.other)  # not under the controllers' selector: only its pod matters
        # the device plugin withdrew the bad GPU (allocatable < capacity), or not yet (equal)
        self.kube.patch(NODES, self.node, {"status": {"allocatable": {"nvidia.com/gpu": str(allocatable)}}},
                        subresource="status")
        for name, node in (("train-a-0", self.node), ("train-b-0", self.node), ("train-c-0", self.node),
                           ("train-a-1", self.other)):
            self.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": name, "namespace": self.ns, "labels": {"app": name}},
                                    "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}},
                             self.ns)
            run_pod(self.kube, self.ns, name)
        self.kubelet = DeletionFinisher(self.kube, self.ns)

    def selector(self) -> str:
        return f"{LABEL}={self.unique}"

    def mapping(self, *, error: str = "") -> PodMapping:
        """What the node's publisher would record: the node's pods per GPU, plus a pod of the same pattern that is
        bound to another node, named on GPU A (a forged or stale entry the drain must not act on)."""
        if error:
            return PodMapping("nvidia.com/gpu", (), error=error, read_at=utcnow())
        return PodMapping("nvidia.com/gpu", (
            PodRef(self.ns, "train-a-0", (GPU_A,)), PodRef(self.ns, "train-b-0", (GPU_B,)),
            PodRef(self.ns, "train-c-0", (GPU_C,)), PodRef(self.ns, "train-a-1", (GPU_A,))), read_at=utcnow())

    def event(self, name: str, *, action: Action = Action.COMPONENT_RESET, error: str = "") -> dict:
        spec = HealthEventSpec(source="test", node_name=self.node, component_class="GPU",
                               check_name="xid-error-check", is_fatal=True, is_healthy=False, detected_at=utcnow(),
                               error_codes=("79",), agent="test", message="Xid 79", recommended_action=action,
                               entities_impacted=(Entity(ENTITY_GPU, GPU_A),), pod_mapping=self.mapping(error=error))
        self.events.append(name)
        return self.kube.create(HEALTHEVENTS,
                                HealthEvent(name=name, spec=spec, labels={LABEL: self.unique}).create_body())

    def pods_on(self, node: str) -> set[str]:
        items, _ = self.kube.list(PODS, self.ns)
        return {p["metadata"]["name"] for p in items if p["spec"].get("nodeName") == node}

    def untouched(self, name: str) -> bool:
        pod = self.kube.get(PODS, name, self.ns)
        return not pod["metadata"].get("deletionTimestamp") and pod["status"].get("phase") == "Running"

    def pdb(self, name: str, app: str) -> None:
        self.kube.create(PDBS_V1BETA1, {"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                                        "metadata": {"name": name, "namespace": self.ns},
                                        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}}},
                         self.ns)

    def close(self) -> None:
        self.kubelet.stop()
        clean_up(self.kube, events=self.events, nodes=[self.node, self.other], namespace=self.ns)
        self.kube.close()


@contextlib.contextmanager
def world(control_plane: Any, unique: str, *, allocatable: int) -> Iterator[Env]:
    e = Env(control_plane, unique, allocatable=allocatable)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def env(control_plane, crd_installed, unique) -> Iterator[Env]:
    """A node of 8 GPUs with 7 allocatable: the kubelet withholds the bad one."""
    with world(control_plane, unique, allocatable=7) as e:
        yield e


@pytest.fixture
def env_all_allocatable(control_plane, crd_installed, unique) -> Iterator[Env]:
    """A node of 8 GPUs, all 8 still allocatable: the scheduler could still hand out the bad one."""
    with world(control_plane, unique, allocatable=8) as e:
        yield e


@contextlib.asynccontextmanager
async def running(env: Env) -> AsyncIterator[CollectorRegistry]:
    sel = env.selector()
    recs: list[Any] = [
        QuarantineController(QuarantineConfig(node_selector=sel, event_selector=sel, breaker_percent=100,
                                              drain_scope="gpu")),
        DrainController(DrainConfig(node_selector=sel, event_selector=sel, drain_pdb_retry=0.5, drain_poll=0.5,
                                    drain_scope="gpu")),
    ]
    async with running_manager(env.kube, recs, env.ns) as (_, registry):
        yield registry


def scope_count(registry: CollectorRegistry, scope: str, fallback: str) -> float:
    return registry.get_sample_value("nvsentinel_drain_controller_scope_total",
                                     {"scope": scope, "fallback": fallback}) or 0.0


def drained(env: Env, name: str) -> Any:
    return eventually(lambda: (lambda o: phase(o) == "Drained" and o)(env.kube.get(HEALTHEVENTS, name)),
                      what=f"{name} Drained")


def our_taints(node: dict) -> list[tuple[str, str]]:
    return [(t.get("value"), t["effect"]) for t in node["spec"].get("taints") or () if t["key"] == TAINT_KEY]


async def test_gpu_scope_evicts_only_the_pods_on_the_faulty_gpu_and_leaves_the_node_schedulable(env: Env) -> None:
    """Verify --drain-scope gpu: only the pod on GPU A leaves (a PDB holds it in Draining first, with the record
    written); B's and C's pods keep running, the mapping's pod on another node is untouched; the node is not
    cordoned (allocatable < capacity) and carries our PreferNoSchedule taint; status.drain and the metric say so."""
    env.pdb("guard", "train-a-0")
    await eventually(lambda: (env.kube.get(PDBS_V1BETA1, "guard", env.ns).get("status") or {}).get(
        "expectedPods") == 1, what="the disruption controller computing the PDB")
    env.event("ev-gpu")
    async with running(env) as registry:
        held = await eventually(lambda: (lambda o: phase(o) == "Draining" and "disruption budget" in (
            condition(o, "PodsDrained") or {}).get("message", "") and o)(env.kube.get(HEALTHEVENTS, "ev-gpu")),
            what="Draining, the pod on GPU A held by its PDB")
        msg = condition(held, "PodsDrained")["message"]
        assert msg.startswith(f"draining GPU {GPU_A} of node {env.node}: 1 pod(s) left"), msg
        assert held["status"]["drain"] == {"scope": "gpu", "gpus": [GPU_A],
                                           "pods": [{"namespace": env.ns, "name": "train-a-0"}]}
        assert condition(held, "NodeQuarantined")["reason"] == "GpuScoped"
        env.kube.delete(PDBS_V1BETA1, "guard", env.ns)
        done = await drained(env, "ev-gpu")
        cond = condition(done, "PodsDrained")
        assert (cond["status"], cond["reason"]) == ("True", "Drained")
        assert cond["message"] == (f"all 1 pod(s) on GPU {GPU_A} evicted from node {env.node} are gone (GPU scope; 2 "
                                   f"other pod(s) left running); nvsentinel-drain")
        assert done["status"]["drain"] == held["status"]["drain"]
        assert env.pods_on(env.node) == {"train-b-0", "train-c-0"}
        assert env.untouched("train-b-0") and env.untouched("train-c-0")
        assert env.untouched("train-a-1"), "the mapping named a pod of another node: never evicted"
        node = env.kube.get(NODES, env.node)
        assert not node["spec"].get("unschedulable"), "allocatable < capacity: the node stays schedulable"
        assert our_taints(node) == [("gpu", "PreferNoSchedule")]
        assert action_count(registry, "drain", "evict") == 1 and action_count(registry, "drain", "drained") == 1
        assert scope_count(registry, "gpu", "none") == 1
        assert scope_count(registry, "node", "none") == 0


async def test_gpu_scope_on_a_node_whose_gpus_are_all_allocatable_cordons_but_evicts_only_gpu_a(
        env_all_allocatable: Env) -> None:
    """Verify allocatable == capacity: the node is cordoned (the scheduler could still give the bad GPU out), yet
    only the pod on GPU A is evicted."""
    env = env_all_allocatable
    env.event("ev-cordon")
    async with running(env) as registry:
        done = await drained(env, "ev-cordon")
        node = env.kube.get(NODES, env.node)
        assert node["spec"].get("unschedulable") is True
        assert ("gpu", "PreferNoSchedule") not in our_taints(node)
        assert condition(done, "NodeQuarantined")["reason"] == "Cordoned"
        assert env.pods_on(env.node) == {"train-b-0", "train-c-0"}
        assert env.untouched("train-a-1")
        assert done["status"]["drain"]["scope"] == "gpu"
        assert done["status"]["drain"]["pods"] == [{"namespace": env.ns, "name": "train-a-0"}]
        assert scope_count(registry, "gpu", "none") == 1 and action_count(registry, "drain", "evict") == 1


async def test_an_unreadable_mapping_drains_the_whole_node_saying_why(env: Env) -> None:
    """Verify a mapping error: the node is cordoned and every pod of it evicted (not the other node's), the
    PodsDrained message, status.drain and the metric carry the fallback."""
    env.event("ev-err", error="rpc error: code = Unavailable desc = connection refused")
    async with running(env) as registry:
        done = await drained(env, "ev-err")
        cond = condition(done, "PodsDrained")
        assert "GPU scope: falling back to the whole node: the pod mapping could not be read: rpc error" in \
            cond["message"], cond
        assert cond["message"].startswith(f"all 3 pod(s) evicted from node {env.node} are gone")
        assert done["status"]["drain"]["scope"] == "node"
        assert "could not be read" in done["status"]["drain"]["reason"]
        assert {p["name"] for p in done["status"]["drain"]["pods"]} == {"train-a-0", "train-b-0", "train-c-0"}
        assert env.pods_on(env.node) == set()
        assert env.untouched("train-a-1")
        assert env.kube.get(NODES, env.node)["spec"].get("unschedulable") is True
        assert scope_count(registry, "node", "mapping-error") == 1 and scope_count(registry, "gpu", "none") == 0


async def test_a_node_wide_action_drains_the_whole_node(env: Env) -> None:
    """Verify recommendedAction RESTART_BM (a reboot takes every GPU's pods): the whole node, with the reason."""
    env.event("ev-reboot", action=Action.RESTART_BM)
    async with running(env) as registry:
        done = await drained(env, "ev-reboot")
        assert "recommended action RESTART_BM acts on the whole node" in condition(done, "PodsDrained")["message"]
        assert done["status"]["drain"]["scope"] == "node"
        assert env.pods_on(env.node) == set()
        assert env.untouched("train-a-1")
        assert scope_count(registry, "node", "node-wide-action") == 1
