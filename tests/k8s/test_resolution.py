"""The resolution controller on a real kube-apiserver (v1.20.2), run with the quarantine controller in one Manager.

Each test labels its Nodes and HealthEvents with a unique value and gives both controllers matching
selectors, so objects of other tests sharing the cluster are invisible to them.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from ctlhelpers import action_count, clean_up, condition, env_fixture, eventually, ownership, phase, running_manager
from kubelet import make_node
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.quarantine.controller import QuarantineController
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.cluster.resolution.controller import ResolutionController
from nvsentinel.k8s import AlreadyExists, Kube
from nvsentinel.k8s.resources import EVENTS, HEALTHEVENTS, NAMESPACES, NODES
from nvsentinel.policy.healthevent import Entity, HealthEvent, HealthEventSpec, utcnow

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/resolution"
OUR_TAINT = {"key": "nvsentinel.nvidia.com/quarantine", "value": "true", "effect": "NoSchedule"}


class Env:
    """One test's world: its label, namespace and objects (deleted afterwards)."""

    def __init__(self, control_plane: Any, unique: str) -> None:
        self.unique = unique
        self.ns = f"r-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)
        self.nodes: list[str] = []
        self.events: list[str] = []
        with contextlib.suppress(AlreadyExists):
            self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})

    def node(self, name: str, **kw: Any) -> dict:
        self.nodes.append(name)
        return make_node(self.kube, name, labels={LABEL: self.unique}, **kw)

    def event(self, name: str, node: str, gpu: str, *, healthy: bool = False) -> dict:
        spec = HealthEventSpec(source="test", node_name=node, component_class="GPU", check_name="xid-error-check",
                               is_fatal=not healthy, is_healthy=healthy, detected_at=utcnow(),
                               error_codes=() if healthy else ("79",), entities_impacted=(Entity("GPU", gpu),),
                               # non-empty: the 1.20 test server reads "" in a custom resource as null
                               agent="test", message="recovered" if healthy else "Xid 79")
        self.events.append(name)
        return self.kube.create(HEALTHEVENTS, HealthEvent(name=name, spec=spec,
                                                          labels={LABEL: self.unique}).create_body())

    def get_event(self, name: str) -> dict:
        return self.kube.get(HEALTHEVENTS, name)

    def get_node(self, name: str) -> dict:
        return self.kube.get(NODES, name)

    def close(self) -> None:
        clean_up(self.kube, events=self.events, nodes=self.nodes, namespace=self.ns)
        self.kube.close()


env = env_fixture(Env)


@contextlib.asynccontextmanager
async def running(env: Env, *, dry_run: bool = False) -> AsyncIterator[CollectorRegistry]:
    sel = f"{LABEL}={env.unique}"
    recs = [QuarantineController(QuarantineConfig(node_selector=sel, event_selector=sel, breaker_percent=100)),
            ResolutionController(ResolutionConfig(node_selector=sel, event_selector=sel))]
    async with running_manager(env.kube, recs, env.ns, dry_run=dry_run) as (_, registry):
        yield registry


def node_event_reasons(kube: Kube, name: str) -> set[str]:
    items, _ = kube.list(EVENTS, "default", field_selector=f"involvedObject.name={name}")
    return {e["reason"] for e in items}


def action(registry: CollectorRegistry, name: str) -> float:
    return action_count(registry, "resolution", name)


async def test_healthy_event_resolves_the_fault_and_releases_the_node(env: Env) -> None:
    """Verify fatal → quarantined → healthy for the same GPU → Resolved, node uncordoned and untainted."""
    node_name, fatal, healthy = f"r-n-{env.unique}", f"r-fatal-{env.unique}", f"r-healthy-{env.unique}"
    env.node(node_name)
    async with running(env) as registry:
        env.event(fatal, node_name, "GPU-a")
        await eventually(lambda: env.get_node(node_name)["spec"].get("unschedulable"), what="cordoned")
        await eventually(lambda: phase(env.get_event(fatal)) == "Quarantined", what="Quarantined")
        env.event(healthy, node_name, "GPU-a", healthy=True)
        obj = await eventually(lambda: (o := env.get_event(fatal)) and phase(o) == "Resolved" and o, what="Resolved")
        res = condition(obj, "Resolved")
        assert (res["status"], res["reason"]) == ("True", "HealthyEventReceived")
        assert healthy in res["message"] and res["observedGeneration"] == obj["metadata"]["generation"]
        assert obj["status"]["resolvedAt"] and res["lastTransitionTime"]
        node = await eventually(lambda: (n := env.get_node(node_name)) and ownership(n) is None and n,
                                what="annotation removed")
        assert not node["spec"].get("unschedulable")
        assert OUR_TAINT not in (node["spec"].get("taints") or [])
        await eventually(lambda: "Uncordoned" in node_event_reasons(env.kube, node_name), what="Uncordoned Event")
        await eventually(lambda: action(registry, "resolve") == 1 and action(registry, "uncordon") == 1,
                         what="metrics")
        assert action(registry, "remove-taint") == 0


async def test_someone_elses_cordon_is_kept(env: Env) -> None:
    """Verify a node cordoned by someone else loses only our taint and record when its fault is resolved."""
    node_name, fatal, healthy = f"r-t-{env.unique}", f"r-tf-{env.unique}", f"r-th-{env.unique}"
    env.node(node_name, unschedulable=True)
    async with running(env) as registry:
        env.event(fatal, node_name, "GPU-a")
        await eventually(lambda: (o := ownership(env.get_node(node_name))) and o["cordonedByUs"] is False,
                         what="quarantined, not owned")
        await eventually(lambda: phase(env.get_event(fatal)) == "Quarantined", what="Quarantined")
        env.event(healthy, node_name, "GPU-a", healthy=True)
        await eventually(lambda: phase(env.get_event(fatal)) == "Resolved", what="Resolved")
        node = await eventually(lambda: (n := env.get_node(node_name)) and ownership(n) is None and n,
                                what="annotation removed")
        assert node["spec"]["unschedulable"] is True
        assert OUR_TAINT not in (node["spec"].get("taints") or [])
        await eventually(lambda: "TaintRemoved" in node_event_reasons(env.kube, node_name), what="TaintRemoved Event")
        await eventually(lambda: action(registry, "remove-taint") == 1, what="metric")
        assert action(registry, "uncordon") == 0


async def test_node_stays_cordoned_until_every_gpu_is_healthy(env: Env) -> None:
    """Verify a healthy event for one GPU resolves only its fault; the node is released after the second GPU's."""
    node_name = f"r-2-{env.unique}"
    fa, fb, ha, hb = (f"r-{x}-{env.unique}" for x in ("fa", "fb", "ha", "hb"))
    env.node(node_name)
    async with running(env) as _registry:
        env.event(fa, node_name, "GPU-a")
        env.event(fb, node_name, "GPU-b")
        await eventually(lambda: (o := ownership(env.get_node(node_name))) and sorted(o["events"]) == sorted([fa, fb]),
                         what="both quarantined")
        await eventually(lambda: phase(env.get_event(fb)) == "Quarantined", what="fb Quarantined")
        env.event(ha, node_name, "GPU-a", healthy=True)
        await eventually(lambda: phase(env.get_event(fa)) == "Resolved", what="fa Resolved")
        await anyio.sleep(1.0)  # give a wrong release the time to happen
        assert phase(env.get_event(fb)) == "Quarantined"
        node = env.get_node(node_name)
        assert node["spec"]["unschedulable"] is True and OUR_TAINT in node["spec"]["taints"] and ownership(node)
        env.event(hb, node_name, "GPU-b", healthy=True)
        await eventually(lambda: phase(env.get_event(fb)) == "Resolved", what="fb Resolved")
        node = await eventually(lambda: (n := env.get_node(node_name)) and ownership(n) is None and n,
                                what="released")
        assert not node["spec"].get("unschedulable") and OUR_TAINT not in (node["spec"].get("taints") or [])


async def test_operator_uncordon_is_recorded_not_fought(env: Env) -> None:
    """Verify an operator's uncordon with the fault open marks it UncordonedByOperator and stays schedulable."""
    node_name, fatal = f"r-op-{env.unique}", f"r-opf-{env.unique}"
    env.node(node_name)
    async with running(env) as registry:
        env.event(fatal, node_name, "GPU-a")
        await eventually(lambda: phase(env.get_event(fatal)) == "Quarantined", what="Quarantined")
        env.kube.patch(NODES, node_name, {"spec": {"unschedulable": False}})
        obj = await eventually(lambda: (o := env.get_event(fatal)) and (c := condition(o, "NodeQuarantined"))
                               and c["reason"] == "UncordonedByOperator" and o, what="UncordonedByOperator")
        assert condition(obj, "NodeQuarantined")["status"] == "False" and phase(obj) == "Quarantined"
        await eventually(lambda: action(registry, "operator-uncordon") == 1, what="metric")
        await anyio.sleep(1.0)
        node = env.get_node(node_name)
        assert not node["spec"].get("unschedulable") and ownership(node) is not None
        assert action(registry, "operator-uncordon") == 1, "recorded once, not on every reconcile"


@pytest.mark.parametrize("first_cordon", ["ours", "someone else's"])
async def test_replay_operator_uncordons_with_our_taint_on_then_a_second_fault(env: Env, first_cordon: str) -> None:
    """Replay (issue 17): a fault quarantines a node; an operator uncordons it while our taint is still on; a second
    fault arrives. The quarantine stage cordons again, and that cordon is ours whoever made the first one, so once
    both faults are healthy resolution lifts it: never a node left cordoned with no open event."""
    node_name, f1, f2, h1, h2 = (f"r-rp-{x}-{env.unique}" for x in ("n", "f1", "f2", "h1", "h2"))
    env.node(node_name, unschedulable=first_cordon != "ours")
    async with running(env) as registry:
        for resource in ("healthevents", "nodes"):  # the shared informers' first lists, counted
            assert (registry.get_sample_value("nvsentinel_controllers_informer_relists_total",
                                              {"resource": resource}) or 0) >= 1, resource
        env.event(f1, node_name, "GPU-a")
        await eventually(lambda: (o := ownership(env.get_node(node_name))) and o["events"] == [f1]
                         and o["cordonedByUs"] is (first_cordon == "ours"), what="the first fault quarantined")
        await eventually(lambda: phase(env.get_event(f1)) == "Quarantined", what="f1 Quarantined")
        env.kube.patch(NODES, node_name, {"spec": {"unschedulable": False}})  # the operator; our taint stays
        await eventually(lambda: not env.get_node(node_name)["spec"].get("unschedulable"), what="uncordoned")
        env.event(f2, node_name, "GPU-b")
        node = await eventually(lambda: (n := env.get_node(node_name)) and n["spec"].get("unschedulable")
                                and (o := ownership(n)) and f2 in o["events"] and n, what="cordoned again")
        assert ownership(node)["cordonedByUs"] is True, "a cordon nvsentinel made is nvsentinel's"
        env.event(h1, node_name, "GPU-a", healthy=True)
        env.event(h2, node_name, "GPU-b", healthy=True)
        await eventually(lambda: phase(env.get_event(f2)) == "Resolved", what="f2 Resolved")
        node = await eventually(lambda: (n := env.get_node(node_name)) and ownership(n) is None and n,
                                what="released")
        assert not node["spec"].get("unschedulable"), "our cordon is lifted with the last open fault"
        assert OUR_TAINT not in (node["spec"].get("taints") or [])


async def test_dry_run_records_and_leaves_the_node(env: Env) -> None:
    """Verify dry-run writes the would-be resolution and leaves the node cordoned (a pre-quarantined node)."""
    node_name, fatal, healthy = f"r-d-{env.unique}", f"r-df-{env.unique}", f"r-dh-{env.unique}"
    env.node(node_name)
    env.event(fatal, node_name, "GPU-a")
    async with running(env) as _:
        await eventually(lambda: phase(env.get_event(fatal)) == "Quarantined", what="Quarantined")
    rv = env.get_node(node_name)["metadata"]["resourceVersion"]
    env.event(healthy, node_name, "GPU-a", healthy=True)
    async with running(env, dry_run=True) as registry:
        obj = await eventually(lambda: (o := env.get_event(fatal)) and condition(o, "Resolved") and o,
                               what="dry-run decision")
        res = condition(obj, "Resolved")
        assert (res["status"], res["reason"]) == ("False", "DryRunHealthyEventReceived")
        assert phase(obj) == "Quarantined"
        await eventually(lambda: action(registry, "dry-run-uncordon") == 1, what="dry-run metric")
        await anyio.sleep(0.5)
        assert action(registry, "dry-run-uncordon") == 1
    node = env.get_node(node_name)
    assert node["metadata"]["resourceVersion"] == rv and node["spec"]["unschedulable"] is True
