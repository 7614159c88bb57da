"""The drain stage's GPU scope (pure): what a GPU-scoped snapshot takes, the fallbacks, the record and messages."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from nvsentinel.cluster.drain import logic
from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.policy.drainscope import gpu_scope
from nvsentinel.policy.handoff import STRATEGY_ANNOTATION
from nvsentinel.policy.healthevent import (
    ENTITY_GPU, MAX_MAPPED_PODS, ConditionType, DrainRecord, DrainScope, Entity, HealthEvent, HealthEventSpec,
    HealthEventStatus, Phase, PodMapping, PodRef,
)
from nvsentinel.xid import Action

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
GPU = DrainConfig(drain_scope="gpu")
NODE = DrainConfig()
SKIP = NODE.skip_namespaces
A, B, C = "GPU-a", "GPU-b", "GPU-c"
MAPPING = PodMapping("nvidia.com/gpu", (PodRef("work", "on-a", (A,)), PodRef("work", "on-b", (B,)),
                                        PodRef("work", "elsewhere", (A,)), PodRef("kube-system", "agent", (A,))),
                     read_at=T0)


def event(*, gpus: tuple[str, ...] = (A,), action: Action = Action.COMPONENT_RESET,
          mapping: PodMapping | None = MAPPING, strategy: str = "", phase: Phase = Phase.QUARANTINED,
          drain: DrainRecord | None = None) -> HealthEvent:
    spec = HealthEventSpec(source="test", node_name="n1", component_class="GPU", check_name="xid-error-check",
                           is_fatal=True, is_healthy=False, detected_at=T0, recommended_action=action,
                           entities_impacted=tuple(Entity(ENTITY_GPU, g) for g in gpus), pod_mapping=mapping)
    return HealthEvent(name="ev-1", spec=spec, status=HealthEventStatus(phase=phase, drain=drain),
                       annotations={STRATEGY_ANNOTATION: strategy} if strategy else {}, generation=1,
                       resource_version="9")


def pod(name: str, *, ns: str = "work", node: str = "n1", owner: str | None = None) -> dict:
    meta: dict = {"name": name, "namespace": ns, "uid": f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o"}]
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": "Running"}}


#: The node's own pods (the controller passes only those): "elsewhere" is on another node, so absent here.
NODE_PODS = [pod("on-a"), pod("on-b"), pod("on-c"), pod("agent", ns="kube-system"), pod("ds", owner="DaemonSet")]


def test_node_scope_is_the_default_and_records_nothing() -> None:
    """Verify --drain-scope node: every evictable pod, no status.drain, messages as before the GPU scope."""
    scope = logic.scope_of(event(), NODE)
    assert scope == logic.NODE_SCOPE and scope.keys is None and not scope.recorded
    assert set(logic.snapshot(NODE_PODS, SKIP, scope.keys)) == {("work", "on-a"), ("work", "on-b"), ("work", "on-c")}
    assert logic.drain_record(scope, [("work", "on-a")], None) is None
    ev = event()
    assert logic.drained_outcome(ev, 3, scope=scope).message == \
        "all 3 pod(s) evicted from node n1 are gone; nvsentinel-drain"
    assert logic.drained_outcome(ev, 3).message == logic.drained_outcome(ev, 3, scope=scope).message


def test_gpu_scope_snapshot_takes_only_the_nodes_mapped_pods_on_the_gpu() -> None:
    """Verify the snapshot is the mapping ∩ the node's evictable pods: B's and C's pods stay, the mapping's pod
    on another node never appears, a mapped pod in a skipped namespace is not evicted."""
    scope = logic.scope_of(event(), GPU)
    assert (scope.scope, scope.gpus, scope.fallback, scope.reason, scope.recorded) == (
        DrainScope.GPU, (A,), logic.Fallback.NONE, "", True)
    assert scope.keys == {("work", "on-a"), ("work", "elsewhere"), ("kube-system", "agent")}
    snap = logic.snapshot(NODE_PODS, SKIP, scope.keys)
    assert snap == {("work", "on-a"): "uid-on-a"}
    # the mapping names "elsewhere", but it is not among the node's pods the controller passes (its pods-by-node
    # index; tests/k8s/test_drain_gpu_scope.py proves that end to end): it never enters
    other_node = [pod("elsewhere", node="n2")]
    assert logic.others_left(NODE_PODS, SKIP, scope) == 2  # on-b, on-c (agent and ds are never evicted)
    assert logic.others_left(NODE_PODS + other_node, SKIP, logic.NODE_SCOPE) == 0


@pytest.mark.parametrize(("kw", "fallback", "needle"), [
    ({"gpus": ()}, logic.Fallback.NO_GPU, "names no GPU"),
    ({"action": Action.RESTART_BM}, logic.Fallback.NODE_WIDE_ACTION, "RESTART_BM acts on the whole node"),
    ({"strategy": "reboot"}, logic.Fallback.NODE_WIDE_ACTION, "strategy reboot"),
    ({"mapping": None}, logic.Fallback.NO_MAPPING, "no pod mapping"),
    ({"mapping": PodMapping(error="connection refused")}, logic.Fallback.MAPPING_ERROR, "connection refused"),
    ({"action": Action.RESTART_BM, "mapping": None}, logic.Fallback.NODE_WIDE_ACTION, "RESTART_BM"),
    ({"gpus": (), "mapping": PodMapping(error="x")}, logic.Fallback.NO_GPU, "names no GPU"),
])
def test_fallbacks_drain_the_whole_node_and_say_why(kw: dict, fallback: logic.Fallback, needle: str) -> None:
    """Verify each fallback: the node's every evictable pod, the label, the reason in every message and the record."""
    ev = event(**kw)
    scope = logic.scope_of(ev, GPU)
    assert scope.scope is DrainScope.NODE and scope.keys is None and scope.recorded
    assert scope.fallback is fallback and needle in scope.reason
    assert (scope.reason == gpu_scope(ev, "gpu")[1])
    assert len(logic.snapshot(NODE_PODS, SKIP, scope.keys)) == 3
    note = f"GPU scope: falling back to the whole node: {scope.reason}"
    draining = logic.draining_outcome(ev, [pod("on-a")], {}, GPU, scope=scope)
    assert draining.message.startswith("draining node n1: 1 pod(s) left") and note in draining.message
    done = logic.drained_outcome(ev, 3, scope=scope)
    assert done.message.startswith("all 3 pod(s) evicted from node n1 are gone") and note in done.message
    assert note in logic.timeout_outcome(ev, [pod("on-a")], GPU, scope=scope).message
    assert note in logic.dry_run_outcome(ev, 3, scope=scope).message
    record = logic.drain_record(scope, [("work", "on-b"), ("work", "on-a")], None)
    assert record == DrainRecord("node", ev.gpu_uuids, (PodRef("work", "on-a"), PodRef("work", "on-b")), scope.reason)


def test_fallback_of_agrees_with_gpu_scope() -> None:
    """Verify the metric label is none exactly when gpu_scope gives a scope, over every combination of inputs."""
    for gpus in ((), (A,)):
        for action in (Action.COMPONENT_RESET, Action.RESTART_VM, Action.NONE):
            for strategy in ("", "reboot", "component-reset"):
                for mapping in (None, MAPPING, PodMapping(error="e"), PodMapping()):
                    ev = event(gpus=gpus, action=action, strategy=strategy, mapping=mapping)
                    found, why = gpu_scope(ev, "gpu")
                    assert (found is not None) == (logic.fallback_of(ev) is logic.Fallback.NONE), ev
                    assert (why == "") == (found is not None)


def test_gpu_scope_messages_name_the_gpu_and_the_pods_left_running() -> None:
    """Verify Draining/Drained/timeout/dry-run messages in GPU scope; Drained says how many other pods stayed."""
    ev = event()
    scope = logic.scope_of(ev, GPU)
    done = logic.drained_outcome(ev, 1, scope=scope, others=2)
    assert (done.phase, done.status, done.reason, done.action) == (Phase.DRAINED, "True", "Drained", "drained")
    assert done.message == "all 1 pod(s) on GPU GPU-a evicted from node n1 are gone (GPU scope; 2 other pod(s) " \
                           "left running); nvsentinel-drain"
    empty = logic.drained_outcome(ev, 0, scope=scope, others=3)
    assert empty.phase is Phase.DRAINED and empty.message.startswith("no pod on GPU GPU-a of node n1")
    assert "3 other pod(s) left running" in empty.message
    draining = logic.draining_outcome(ev, [pod("on-a")], {}, GPU, scope=scope)
    assert draining.message == "draining GPU GPU-a of node n1: 1 pod(s) left (work/on-a); nvsentinel-drain"
    assert logic.timeout_outcome(ev, [pod("on-a")], GPU, scope=scope).message.startswith(
        "drain of GPU GPU-a of node n1 exceeded")
    assert logic.dry_run_outcome(ev, 1, scope=scope).message == \
        "dry-run: would evict 1 pod(s) on GPU GPU-a from node n1; nvsentinel-drain"
    many = logic.scope_of(event(gpus=("g1", "g2", "g3", "g4", "g5", "g6")), GPU)
    assert "GPU g1, g2, g3, g4 and 2 more of node n1" in logic.draining_outcome(ev, [], {}, GPU, scope=many).message


def test_the_record_keeps_pods_of_an_earlier_record_and_is_bounded() -> None:
    """Verify status.drain names the scope's pods, keeps those an earlier record of the same scope named (a new
    leader's snapshot only holds pods still there), drops another scope's, and stays within the CRD's bound."""
    scope = logic.scope_of(event(), GPU)
    first = logic.drain_record(scope, [("work", "on-a")], None)
    assert first == DrainRecord("gpu", (A,), (PodRef("work", "on-a"),), "")
    assert first.to_dict() == {"scope": "gpu", "gpus": [A], "pods": [{"namespace": "work", "name": "on-a"}]}
    later = logic.drain_record(scope, [], first)
    assert later == first
    node_record = DrainRecord("node", (A,), (PodRef("work", "x"),), "why")
    assert logic.drain_record(scope, [("work", "on-a")], node_record) == first
    big = logic.drain_record(scope, [("work", f"p{i:04d}") for i in range(MAX_MAPPED_PODS + 10)], None)
    assert big is not None and len(big.pods) == MAX_MAPPED_PODS


def test_the_status_carries_the_record_and_the_start_is_counted_once() -> None:
    """Verify drain_status puts status.drain into the status written (and keeps the event's otherwise), and
    starts_drain is true only for the write that leaves Quarantined."""
    ev = event()
    scope = logic.scope_of(ev, GPU)
    record = logic.drain_record(scope, [("work", "on-a")], None)
    status = logic.drain_status(ev, logic.draining_outcome(ev, [pod("on-a")], {}, GPU, scope=scope), T0, record)
    assert status.drain == record and status.to_dict()["drain"]["scope"] == "gpu"
    assert status.condition(ConditionType.PODS_DRAINED).reason == "Draining"
    assert logic.starts_drain(ev, status)
    draining = dataclasses.replace(ev, status=status)
    done = logic.drain_status(draining, logic.drained_outcome(draining, 1, scope=scope), T0)
    assert done.drain == record and not logic.starts_drain(draining, done)
    assert logic.starts_drain(ev, logic.drain_status(ev, logic.drained_outcome(ev, 0, scope=scope), T0, record))
    dry = logic.drain_status(ev, logic.dry_run_outcome(ev, 1, scope=scope), T0)
    assert not logic.starts_drain(ev, dry) and dry.drain is None


def test_scope_labels_are_bounded() -> None:
    """Verify the scope metric's label pairs: gpu only without fallback, node with each fallback; no other."""
    assert set(logic.SCOPE_LABELS) == {("node", "none"), ("gpu", "none"), ("node", "no-gpu"),
                                       ("node", "node-wide-action"), ("node", "no-mapping"),
                                       ("node", "mapping-error")}


def test_a_drains_scope_is_kept_from_its_start_and_only_widens() -> None:
    """Verify the controller keeps the scope a drain started with, widens it to the node when the event comes to
    need the whole node (a reboot strategy set mid-drain), and never narrows a node drain back to a GPU."""
    from nvsentinel.cluster.drain.controller import DrainController

    ctl = DrainController(GPU)
    started = ctl._scope(event())
    assert started.gpu
    widened = ctl._scope(event(strategy="reboot"))
    assert widened.scope is DrainScope.NODE and widened.fallback is logic.Fallback.NODE_WIDE_ACTION
    assert ctl._scope(event()) == widened, "a node drain is never narrowed back"
    ctl._forget("ev-1")
    assert ctl._scope(event()).gpu
