"""The conditions controller on a real kube-apiserver (v1.20.2), with quarantine and resolution in one Manager:
our condition read back from the Node, other writers' conditions untouched, lastTransitionTime moved only by a
real transition, and the AcceleratedHardwareReady mirror (off by default, external on a handed-off node, never
over another writer's).

Each test labels its Nodes and HealthEvents with a unique value and gives the controllers matching selectors, so
objects of other tests sharing the cluster are invisible to them.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ctlhelpers import action_count, clean_up, env_fixture, eventually, phase, running_manager
from kubelet import make_node
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.conditions.config import NodeConditionsConfig
from nvsentinel.cluster.conditions.controller import NodeConditionsController
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.quarantine.controller import QuarantineController
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.cluster.resolution.controller import ResolutionController
from nvsentinel.k8s import AlreadyExists, Kube
from nvsentinel.k8s.resources import HEALTHEVENTS, NAMESPACES, NODES
from nvsentinel.policy.healthevent import Entity, HealthEvent, HealthEventSpec, format_time, utcnow

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/conditions"
OURS, MIRROR = "NVSentinelGPUHealthy", "AcceleratedHardwareReady"


class Env:
    def __init__(self, control_plane: Any, unique: str) -> None:
        self.unique = unique
        self.ns = f"c-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)
        self.nodes: list[str] = []
        self.events: list[str] = []
        with contextlib.suppress(AlreadyExists):
            self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})

    def node(self, name: str, **kw: Any) -> dict:
        self.nodes.append(name)
        return make_node(self.kube, name, labels={LABEL: self.unique, **kw.pop("labels", {})}, **kw)

    def event(self, name: str, node: str, gpu: str, *, healthy: bool = False, code: str = "79") -> dict:
        spec = HealthEventSpec(source="test", node_name=node, component_class="GPU", check_name="xid-error-check",
                               is_fatal=not healthy, is_healthy=healthy, detected_at=utcnow(),
                               error_codes=() if healthy else (code,), entities_impacted=(Entity("GPU", gpu),),
                               agent="test", message="recovered" if healthy else f"Xid {code}")
        self.events.append(name)
        return self.kube.create(HEALTHEVENTS, HealthEvent(name=name, spec=spec,
                                                          labels={LABEL: self.unique}).create_body())

    def write_condition(self, node: str, cond: dict) -> None:
        """Another writer (the kubelet, Node Problem Detector, the EKS agent) sets its own condition."""
        self.kube.patch(NODES, node, {"status": {"conditions": [cond]}}, subresource="status", kind="strategic")

    def condition(self, node: str, type_: str) -> dict | None:
        conds = (self.kube.get(NODES, node).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), None)

    def close(self) -> None:
        clean_up(self.kube, events=self.events, nodes=self.nodes, namespace=self.ns)
        self.kube.close()


env = env_fixture(Env)


@contextlib.asynccontextmanager
async def running(env: Env, *, mirror: str | None = None, mode: str = "nvsentinel") -> AsyncIterator[CollectorRegistry]:
    sel = f"{LABEL}={env.unique}"
    conditions = NodeConditionsConfig(node_selector=sel, event_selector=sel) if mirror is None else \
        NodeConditionsConfig(node_condition_mirror=mirror, node_selector=sel, event_selector=sel)
    recs = [QuarantineController(QuarantineConfig(node_selector=sel, event_selector=sel, breaker_percent=100,
                                                  remediation_mode=mode)),
            NodeConditionsController(conditions),
            ResolutionController(ResolutionConfig(node_selector=sel, event_selector=sel))]
    async with running_manager(env.kube, recs, env.ns) as (_, registry):
        yield registry


def unhealthy_nodes(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("nvsentinel_conditions_controller_unhealthy_nodes") or 0.0


async def clock_past(stamp: str) -> None:
    """Until the wall clock, in a condition's second precision, is past `stamp`."""
    await eventually(lambda: format_time(utcnow().replace(microsecond=0)) > stamp, what=f"the clock past {stamp}")


KERNEL_DEADLOCK = {"type": "KernelDeadlock", "status": "False", "reason": "KernelHasNoDeadlock",
                   "message": "kernel has no deadlock", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                   "lastTransitionTime": "2026-01-01T00:00:00Z"}


async def test_quarantine_sets_the_condition_and_resolve_clears_it(env: Env) -> None:
    """Our condition read back from the Node; Ready and an NPD condition untouched; transition time moves only on
    resolve; the mirror stays off by default."""
    n, first, second, healthy = (f"c-n-{env.unique}", f"c-a-{env.unique}", f"c-b-{env.unique}",
                                 f"c-h-{env.unique}")
    env.node(n)
    env.write_condition(n, KERNEL_DEADLOCK)
    async with running(env) as registry:
        env.event(first, n, "GPU-a")
        cond = await eventually(lambda: (c := env.condition(n, OURS)) and c["status"] == "False" and c,
                                what="NVSentinelGPUHealthy False")
        assert cond["reason"] == "GpuXid79" and cond["message"].endswith("; nvsentinel")
        assert f"1 open fatal HealthEvent(s): {first} (XID 79, GPU GPU-a)" in cond["message"]
        assert cond["lastHeartbeatTime"] and cond["lastTransitionTime"]
        assert phase(env.kube.get(HEALTHEVENTS, first)) == "Quarantined"
        # the other writers' conditions, as they wrote them
        assert env.condition(n, "Ready")["reason"] == "KubeletReady"
        assert {k: v for k, v in env.condition(n, "KernelDeadlock").items()} == KERNEL_DEADLOCK
        assert env.condition(n, MIRROR) is None, "the mirror is off by default"
        await eventually(lambda: unhealthy_nodes(registry) == 1, what="gauge")

        # a second fault on the same node: message updated, transition time kept (times have second
        # precision: wait for the clock to pass the first transition, so a moved time would show)
        await clock_past(cond["lastTransitionTime"])
        env.event(second, n, "GPU-b", code="48")
        again = await eventually(lambda: (c := env.condition(n, OURS)) and "2 open fatal" in c["message"] and c,
                                 what="second fault named")
        assert again["status"] == "False" and again["reason"] == "GpuXid79"
        assert again["lastTransitionTime"] == cond["lastTransitionTime"]
        assert second in again["message"]

        # both GPUs recover: resolved, condition True NoOpenFaults, transition time moved
        await clock_past(again["lastHeartbeatTime"])
        env.event(healthy, n, "GPU-a", healthy=True)
        env.event(f"{healthy}-b", n, "GPU-b", healthy=True)
        clear = await eventually(lambda: (c := env.condition(n, OURS)) and c["status"] == "True" and c,
                                 what="NVSentinelGPUHealthy True", timeout=60)
        assert clear["reason"] == "NoOpenFaults" and clear["lastTransitionTime"] != cond["lastTransitionTime"]
        assert {phase(env.kube.get(HEALTHEVENTS, e)) for e in (first, second)} == {"Resolved"}
        assert env.condition(n, "KernelDeadlock") == KERNEL_DEADLOCK
        assert env.condition(n, MIRROR) is None
        await eventually(lambda: unhealthy_nodes(registry) == 0, what="gauge back to 0")
        await eventually(lambda: action_count(registry, "conditions", "set-false") == 1
                         and action_count(registry, "conditions", "set-true") == 1
                         and action_count(registry, "conditions", "update") >= 1, what="actions counted")
        assert action_count(registry, "conditions", "mirror-false") == 0


async def test_a_node_without_faults_gets_no_condition(env: Env) -> None:
    n, other = f"c-quiet-{env.unique}", f"c-busy-{env.unique}"
    env.node(n)
    env.node(other)
    async with running(env, mirror="always"):
        env.event(f"c-e-{env.unique}", other, "GPU-a")
        await eventually(lambda: env.condition(other, OURS) is not None, what="the faulty node's condition")
        assert env.condition(n, OURS) is None and env.condition(n, MIRROR) is None


async def test_mirror_external_on_a_handed_off_node(env: Env) -> None:
    """Mode external: quarantined, handed off; the mirror tells the external repairer; cleared when resolved."""
    n, fault, healthy = f"c-x-{env.unique}", f"c-xf-{env.unique}", f"c-xh-{env.unique}"
    env.node(n)
    async with running(env, mirror="external", mode="external") as registry:
        env.event(fault, n, "GPU-a", code="31")
        mirror = await eventually(lambda: (c := env.condition(n, MIRROR)) and c["status"] == "False" and c,
                                  what="AcceleratedHardwareReady False")
        assert mirror["reason"] == "NvidiaXID31Error" and mirror["message"].endswith("; nvsentinel")
        assert env.kube.get(HEALTHEVENTS, fault)["status"]["remediationMode"] == "external"
        assert env.condition(n, OURS)["reason"] == "GpuXid31"
        env.event(healthy, n, "GPU-a", healthy=True)
        back = await eventually(lambda: (c := env.condition(n, MIRROR)) and c["status"] == "True" and c,
                                what="AcceleratedHardwareReady back to True", timeout=60)
        assert back["reason"] == "NoOpenFaults"
        await eventually(lambda: action_count(registry, "conditions", "mirror-false") == 1
                         and action_count(registry, "conditions", "mirror-true") == 1, what="mirror actions")


async def test_mirror_external_leaves_a_node_nvsentinel_repairs_alone(env: Env) -> None:
    n = f"c-own-{env.unique}"
    env.node(n)
    async with running(env, mirror="external"):
        env.event(f"c-of-{env.unique}", n, "GPU-a")
        await eventually(lambda: (c := env.condition(n, OURS)) and c["status"] == "False", what="our condition")
        assert env.condition(n, MIRROR) is None, "nvsentinel repairs it: no second repairer is called"


async def test_a_foreign_accelerated_hardware_ready_is_never_overwritten(env: Env) -> None:
    """The EKS node monitoring agent owns its AcceleratedHardwareReady: not set False over it, not cleared."""
    n, fault, healthy = f"c-f-{env.unique}", f"c-ff-{env.unique}", f"c-fh-{env.unique}"
    theirs = {"type": MIRROR, "status": "False", "reason": "NvidiaXID13Error",
              "message": "detected XID-13 on the instance", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
              "lastTransitionTime": "2026-01-01T00:00:00Z"}
    env.node(n)
    env.write_condition(n, theirs)
    async with running(env, mirror="always"):
        env.event(fault, n, "GPU-a")
        await eventually(lambda: (c := env.condition(n, OURS)) and c["status"] == "False", what="our condition")
        assert env.condition(n, MIRROR) == theirs
        env.event(healthy, n, "GPU-a", healthy=True)
        await eventually(lambda: (c := env.condition(n, OURS)) and c["status"] == "True", what="cleared",
                         timeout=60)
        assert env.condition(n, MIRROR) == theirs, "someone else's condition, left as they wrote it"
