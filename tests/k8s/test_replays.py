"""Replays (issue 17) of what happens to a fleet, on the real kube-apiserver (v1.20.2): the whole chain
(quarantine, drain, remediation, resolution; TTL where it matters) in one Manager, and where the node's side
matters the remediation agent against a real Device API server.

Each test labels its Nodes and HealthEvents with a unique value and gives the stages matching selectors, so
other tests' objects sharing the cluster are invisible to them. No job controller runs: `finish_job` plays it.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ctlhelpers import action_count, clean_up, condition, env_fixture, eventually, ownership, phase, running_manager
from kubelet import finish_job, make_node
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from apiserver import ThreadServer, make_settings, temp_socket_dir  # noqa: E402

from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.cluster.drain.config import DrainConfig  # noqa: E402
from nvsentinel.cluster.drain.controller import DrainController  # noqa: E402
from nvsentinel.cluster.quarantine.config import BREAKER_CONFIGMAP, QuarantineConfig  # noqa: E402
from nvsentinel.cluster.quarantine.controller import QuarantineController  # noqa: E402
from nvsentinel.cluster.remediation import RemediationConfig, RemediationController  # noqa: E402
from nvsentinel.cluster.remediation.logic import STALE_ANNOTATION, job_name  # noqa: E402
from nvsentinel.cluster.resolution.config import ResolutionConfig  # noqa: E402
from nvsentinel.cluster.resolution.controller import ResolutionController  # noqa: E402
from nvsentinel.cluster.ttl.config import TTLConfig  # noqa: E402
from nvsentinel.cluster.ttl.controller import TTLController  # noqa: E402
from nvsentinel.k8s import AlreadyExists, Kube  # noqa: E402
from nvsentinel.k8s.resources import CONFIGMAPS, EVENTS, HEALTHEVENTS, JOBS, NAMESPACES, NODES  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.node.remediation_agent.agent import RemediationAgent  # noqa: E402
from nvsentinel.policy.healthevent import (  # noqa: E402
    LABEL_NODE, Entity, HealthEvent, HealthEventSpec, format_time, utcnow,
)
from nvsentinel.policy.naming import label_value  # noqa: E402
from nvsentinel.xid import Action  # noqa: E402

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/replay"
GPU_A = "GPU-aaaaaaaa-0000-4000-8000-00000000005d"
GPU_B = "GPU-bbbbbbbb-0000-4000-8000-00000000005d"
GPU_C = "GPU-cccccccc-0000-4000-8000-00000000003b"
SLOT_5D_NVML, SLOT_5D_KERNEL, SLOT_3B = "00000000:5D:00.0", "0000:5d:00.0", "00000000:3B:00.0"


class Env:
    """One test's world: its label, namespace, Nodes and HealthEvents (deleted afterwards)."""

    def __init__(self, control_plane: Any, unique: str) -> None:
        self.unique = unique
        self.ns = f"rp-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)
        self.nodes: list[str] = []
        self.events: list[str] = []
        with contextlib.suppress(AlreadyExists):
            self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})

    @property
    def selector(self) -> str:
        return f"{LABEL}={self.unique}"

    def node(self, name: str, *, selected: bool = True) -> str:
        self.nodes.append(name)
        make_node(self.kube, name, labels={LABEL: self.unique} if selected else {})
        return name

    def event(self, name: str, node: str, *, gpu: str | None = GPU_A, pci: str = "", serial: str = "",
              action: Action = Action.RESTART_BM, healthy: bool = False, detected_at: dt.datetime | None = None,
              annotations: dict[str, str] | None = None) -> str:
        entities = [Entity("GPU", gpu)] if gpu else []
        entities += [Entity("PCI", pci)] if pci else []
        entities += [Entity("GPU_SERIAL", serial)] if serial else []
        spec = HealthEventSpec(source="test", agent="test", node_name=node, component_class="GPU",
                               check_name="xid-error-check", is_fatal=not healthy, is_healthy=healthy,
                               detected_at=detected_at or utcnow(), error_codes=() if healthy else ("79",),
                               recommended_action=Action.NONE if healthy else action,
                               entities_impacted=tuple(entities), message="recovered" if healthy else "Xid 79")
        self.events.append(name)
        self.kube.create(HEALTHEVENTS, HealthEvent(
            name=name, spec=spec, labels={LABEL: self.unique, LABEL_NODE: label_value(node)},
            annotations=annotations or {}).create_body())
        return name

    def get(self, name: str) -> dict:
        return self.kube.get(HEALTHEVENTS, name)

    def get_node(self, name: str) -> dict:
        return self.kube.get(NODES, name)

    def jobs(self) -> dict[str, dict]:
        items, _ = self.kube.list(JOBS, self.ns)
        return {j["metadata"]["name"]: j for j in items}

    def node_event_reasons(self, name: str) -> set[str]:
        items, _ = self.kube.list(EVENTS, "default", field_selector=f"involvedObject.name={name}")
        return {e["reason"] for e in items}

    def close(self) -> None:
        for node in self.nodes:  # the remediation agent's events too
            items, _ = self.kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={label_value(node)}")
            self.events += [i["metadata"]["name"] for i in items]
        clean_up(self.kube, events=self.events, nodes=self.nodes, namespace=self.ns)
        self.kube.close()


env = env_fixture(Env)


@contextlib.asynccontextmanager
async def chain(env: Env, *, ttl: bool = False, node_gone_grace: float = 300.0, event_selector: str = "",
                resolution: bool = True, **remediation: Any) -> AsyncIterator[CollectorRegistry]:
    """The chain, as `nvsentinel controllers` wires it, on this test's Nodes and HealthEvents (`event_selector`:
    another selector, e.g. the node label, which the agent's own events carry too)."""
    sel = env.selector
    ev_sel = event_selector or sel
    opts: dict[str, Any] = {"remediation_backoff": 0.2, "remediation_poll": 0.5} | remediation
    recs: list[Any] = [
        QuarantineController(QuarantineConfig(node_selector=sel, event_selector=ev_sel, breaker_percent=100,
                                               breaker_max_nodes=10000, hold_requeue=1.0, node_missing_requeue=1.0)),
        DrainController(DrainConfig(node_selector=sel, event_selector=ev_sel)),
        RemediationController(RemediationConfig(namespace=env.ns, node_selector=sel, event_selector=ev_sel, **opts)),
    ]
    if resolution:
        recs.append(ResolutionController(ResolutionConfig(node_selector=sel, event_selector=ev_sel,
                                                          node_gone_grace=node_gone_grace)))
    if ttl:
        recs.append(TTLController(TTLConfig(policy_configmap=f"policy-{env.unique}", event_selector=ev_sel)))
    async with running_manager(env.kube, recs, env.ns) as (_, registry):
        yield registry


async def until(env: Env, name: str, pred: Any, what: str, timeout: float = 60.0) -> dict:
    return await eventually(lambda: (lambda o: pred(o) and o)(env.get(name)), what=what, timeout=timeout)


def remediated(obj: dict) -> dict:
    return condition(obj, "Remediated") or {}


def cordoned(node: dict) -> bool:
    return bool(node["spec"].get("unschedulable")) and ownership(node) is not None


async def released(env: Env, node: str) -> dict:
    n = await eventually(lambda: (x := env.get_node(node)) and ownership(x) is None and x, what=f"{node} released",
                         timeout=60)
    assert not n["spec"].get("unschedulable"), "our cordon is lifted with the last open fault"
    return n


# ---- 1. the GPU is replaced across the reboot ------------------------------------------------------------------

def gpu(uuid: str, slot: str, serial: str, healthy: bool, when: dt.datetime) -> gpu_pb2.Gpu:
    g = gpu_pb2.Gpu()
    g.metadata.name = g.spec.uuid = uuid
    g.spec.pci_bus_id, g.spec.serial = slot, serial
    c = g.status.conditions.add(type="NvmlHealthy", status="True" if healthy else "False",
                                reason="NvmlOk" if healthy else "Xid79", message="the NVML provider's view")
    c.last_transition_time.FromDatetime(when.astimezone(dt.timezone.utc).replace(tzinfo=None))
    return g


def register(client: DeviceApiClient, g: gpu_pb2.Gpu) -> None:
    """As the NVML provider does on start: create the GPU, then write its status."""
    status = gpu_pb2.GpuStatus()
    status.CopyFrom(g.status)
    bare = gpu_pb2.Gpu()
    bare.CopyFrom(g)
    bare.ClearField("status")
    created, _ = client.create_gpu(bare)
    client.update_gpu_status(g.metadata.name, status, created.resource_version)


def agent_reconciles(agent: RemediationAgent) -> float:
    return agent.metrics.registry.get_sample_value("nvsentinel_remediation_agent_reconciles_total",
                                                   {"result": "ok"}) or 0.0


async def test_replay_gpu_replaced_across_reboot(env: Env) -> None:
    """Replay: XID 79 on GPU A in slot 5D → quarantine, drain, reboot Job. The board is swapped during the reboot:
    the Device API comes back with GPU B (another UUID, another serial) in slot 5D. A healthy GPU in another slot
    proves nothing; GPU B in slot 5D is verified (by the agent, by PCI slot), its healthy event says the GPU was
    replaced, and it resolves the fault, so the node is uncordoned."""
    node = env.node(f"rp-swap-{env.unique}")
    with temp_socket_dir() as d:
        server = ThreadServer(make_settings(d)).start()
        client = DeviceApiClient(server.tcp, timeout=5)
        agent = RemediationAgent(env.kube, client, node_name=node, resync_period=1.0, backoff_max=1.0)
        try:
            register(client, gpu(GPU_A, SLOT_5D_NVML, "S-A", False, utcnow()))
            agent.start()
            async with chain(env, event_selector=f"{LABEL_NODE}={label_value(node)}") as registry:
                fault = env.event(f"rp-swap-f-{env.unique}", node, gpu=GPU_A, pci=SLOT_5D_NVML, serial="S-A")
                await eventually(lambda: job_name(fault, 1) in env.jobs(), what="the reboot Job")
                assert cordoned(env.get_node(node))
                # the reboot: the old board's GPU is gone; first a healthy GPU in another slot comes up
                client.delete_gpu(GPU_A)
                register(client, gpu(GPU_C, SLOT_3B, "S-C", True, utcnow()))
                finish_job(env.kube, env.ns, job_name(fault, 1), succeeded=True)
                await until(env, fault, lambda o: phase(o) == "Remediated", "Remediated")
                seen = agent_reconciles(agent)
                await eventually(lambda: agent_reconciles(agent) >= seen + 2,
                                 what="the agent judged the Remediated event against GPU C")
                assert [e.name for e in agent.events() if e.spec.source == "remediation-agent"] == []
                assert phase(env.get(fault)) == "Remediated" and cordoned(env.get_node(node)), \
                    "a healthy GPU in another slot does not verify the fault"
                # the new board in slot 5D (the kernel's spelling of the same slot) comes up healthy
                register(client, gpu(GPU_B, SLOT_5D_KERNEL, "S-B", True, utcnow()))
                done = await until(env, fault, lambda o: phase(o) == "Resolved", "Resolved by GPU B's verification")
                res = condition(done, "Resolved")
                assert res["reason"] == "HealthyEventReceived" and "0000:5d:00.0" in res["message"]
                (verified,) = [e for e in agent.events() if e.spec.source == "remediation-agent"]
                assert verified.name in res["message"]
                assert verified.gpu_uuids == (GPU_B,) and verified.pci_slots == ("0000:5d:00.0",)
                assert Entity("GPU_SERIAL", "S-B") in verified.spec.entities_impacted
                assert f"{GPU_A} → {GPU_B}" in verified.spec.message and "S-A → S-B" in verified.spec.message
                assert verified.spec.metadata["replacedUuid"] == GPU_A
                await released(env, node)
                assert list(env.jobs()) == [job_name(fault, 1)]
                assert action_count(registry, "resolution", "uncordon") == 1
        finally:
            agent.stop()
            client.close()
            server.stop()


# ---- 2. a fault arrives while an equivalent event is being remediated -------------------------------------------

async def test_replay_fault_arrives_mid_remediation(env: Env) -> None:
    """Replay: XID 79 on GPU A → reboot Job running; an XID on the same GPU (and one on the whole node) arrives
    meanwhile. Neither is lost and nothing runs twice: they wait (RemediationInProgress), the one reboot counts for
    them (RemediatedWithEvent), the node stays cordoned while any is open, and one healthy event releases it."""
    node = env.node(f"rp-mid-{env.unique}")
    async with chain(env) as registry:
        first = env.event(f"rp-mid-1-{env.unique}", node)
        await eventually(lambda: job_name(first, 1) in env.jobs(), what="the first reboot Job")
        started = await until(env, first, lambda o: phase(o) == "Remediating", "Remediating")
        second = env.event(f"rp-mid-2-{env.unique}", node)                 # the same GPU
        third = env.event(f"rp-mid-3-{env.unique}", node, gpu=None)        # the whole node
        for name in (second, third):
            waiting = await until(env, name, lambda o: remediated(o).get("reason") == "RemediationInProgress",
                                  f"{name} waits for the running reboot")
            assert phase(waiting) == "Drained" and first in remediated(waiting)["message"]
        assert sorted(ownership(env.get_node(node))["events"]) == sorted([first, second, third])
        assert list(env.jobs()) == [job_name(first, 1)], "no second reboot Job for the node"

        finish_job(env.kube, env.ns, job_name(first, 1), succeeded=True)
        await until(env, first, lambda o: phase(o) == "Remediated", "the first Remediated")
        for name in (second, third):
            done = await until(env, name, lambda o: remediated(o).get("reason") == "RemediatedWithEvent",
                               f"{name} remediated with the first")
            assert phase(done) == "Remediated" and remediated(done)["status"] == "True"
            assert done["status"]["lastRemediationTime"] == started["status"]["lastRemediationTime"]
        assert list(env.jobs()) == [job_name(first, 1)], "the one reboot counted for all three"
        assert cordoned(env.get_node(node)), "never schedulable with an open fatal event we own"

        # the node agent's verification after the reboot (GPU A healthy): every event resolves, the node is released
        env.event(f"rp-mid-h-{env.unique}", node, healthy=True)
        for name in (first, second):
            await until(env, name, lambda o: phase(o) == "Resolved", f"{name} Resolved")
        assert phase(env.get(third)) != "Resolved" and cordoned(env.get_node(node)), \
            "a GPU's recovery does not clear a fault of the whole node"
        # (a vague healthy event clears nothing without --resolve-nodewide-healthy): the operator closes it
        env.kube.patch(HEALTHEVENTS, third, {"status": {"phase": "Resolved"}}, subresource="status")
        await released(env, node)
        assert action_count(registry, "remediation", "reboot") == 1
        assert action_count(registry, "remediation", "remediated-with") == 2


# ---- 3. cold start after a long outage --------------------------------------------------------------------------

async def test_replay_cold_start_after_long_outage(env: Env) -> None:
    """Replay: the controllers were down for 30 h; a fault from then is found at start. It is quarantined and
    drained, but not remediated on 30-hour-old evidence (StaleEvidence, Warning on the Node). A fresh fault on the
    same GPU (by PCI slot) is remediated; the stale one counts as remediated with it, and both resolve.

    Then the breaker case: a fault held for hours by a tripped breaker is quarantined once the breaker is reset,
    waits as stale, and the operator's annotation lets it proceed."""
    node, held_node = env.node(f"rp-cold-{env.unique}"), env.node(f"rp-brk-{env.unique}")
    long_ago = utcnow() - dt.timedelta(hours=30)
    stale = env.event(f"rp-cold-old-{env.unique}", node, pci=SLOT_5D_NVML, detected_at=long_ago)
    async with chain(env, max_event_age=86400) as registry:
        waiting = await until(env, stale, lambda o: remediated(o).get("reason") == "StaleEvidence", "StaleEvidence")
        assert phase(waiting) == "Drained" and remediated(waiting)["status"] == "False"
        assert "--max-event-age" in remediated(waiting)["message"] and STALE_ANNOTATION in remediated(waiting)["message"]
        assert cordoned(env.get_node(node)), "quarantined (and drained) all the same"
        await eventually(lambda: "StaleEvidence" in env.node_event_reasons(node), what="a Warning on the Node")
        assert env.jobs() == {}, "never remediated on stale evidence alone"

        fresh = env.event(f"rp-cold-new-{env.unique}", node, gpu=GPU_B, pci=SLOT_5D_KERNEL)  # same slot, new UUID
        await eventually(lambda: job_name(fresh, 1) in env.jobs(), what="the fresh fault's reboot Job")
        await until(env, stale, lambda o: remediated(o).get("reason") == "RemediationInProgress",
                    "the stale one waits for it")
        finish_job(env.kube, env.ns, job_name(fresh, 1), succeeded=True)
        await until(env, stale, lambda o: remediated(o).get("reason") == "RemediatedWithEvent", "remediated with it")
        env.event(f"rp-cold-h-{env.unique}", node, gpu=GPU_B, pci=SLOT_5D_NVML, healthy=True)
        for name in (stale, fresh):
            await until(env, name, lambda o: phase(o) == "Resolved", f"{name} Resolved")
        await released(env, node)
        assert list(env.jobs()) == [job_name(fresh, 1)]

        # the breaker was tripped for hours: the fault waited in New
        env.kube.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": BREAKER_CONFIGMAP, "namespace": env.ns},
                                     "data": {"state": "Tripped", "trippedAt": format_time(utcnow()),
                                              "reason": "test", "resetAt": ""}}, env.ns)
        late = env.event(f"rp-brk-{env.unique}", held_node, detected_at=long_ago)
        await until(env, late, lambda o: (condition(o, "NodeQuarantined") or {}).get("reason") == "CircuitBreakerOpen",
                    "held by the breaker")
        env.kube.delete(CONFIGMAPS, BREAKER_CONFIGMAP, env.ns)  # the operator resets it
        await until(env, late, lambda o: remediated(o).get("reason") == "StaleEvidence",
                    "quarantined late, then stale", timeout=90)
        assert cordoned(env.get_node(held_node)) and job_name(late, 1) not in env.jobs()
        env.kube.patch(HEALTHEVENTS, late, {"metadata": {"annotations": {STALE_ANNOTATION: "true"}}})
        await eventually(lambda: job_name(late, 1) in env.jobs(), what="remediated on the operator's decision")
        assert action_count(registry, "remediation", "stale-evidence") >= 2


# ---- 4. the Node is gone ---------------------------------------------------------------------------------------

async def test_replay_node_gone(env: Env) -> None:
    """Replay: a node with an open fault (held for a human) is deleted, and a fault names a node that never
    registered. Both are closed once the API server says 404 (Cancelled, NodeGone), after the grace, and TTL
    collects them. A node the stages' selector hides (in the server, not in the cache) closes nothing."""
    node = env.node(f"rp-gone-{env.unique}")
    hidden = env.node(f"rp-hidden-{env.unique}", selected=False)
    env.kube.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": f"policy-{env.unique}", "namespace": env.ns},
                                 "data": {"ttlAfterResolved": "3s", "cleanupInterval": "1s"}}, env.ns)
    async with chain(env, ttl=True, node_gone_grace=2.0) as registry:
        held = env.event(f"rp-gone-held-{env.unique}", node, action=Action.CONTACT_SUPPORT)
        await until(env, held, lambda o: remediated(o).get("reason") == "ManualRemediationRequired", "held")
        hidden_fault = env.event(f"rp-gone-hidden-{env.unique}", hidden)
        never = env.event(f"rp-gone-never-{env.unique}", f"rp-never-{env.unique}")
        await until(env, never, lambda o: (condition(o, "NodeQuarantined") or {}).get("reason") == "NodeNotFound",
                    "NodeNotFound, requeued")
        env.kube.delete(NODES, node)
        for name in (held, never):
            gone = await until(env, name, lambda o: phase(o) == "Cancelled", f"{name} Cancelled")
            res = condition(gone, "Resolved")
            assert (res["status"], res["reason"]) == ("False", "NodeGone") and "404" in res["message"]
            assert gone["status"]["resolvedAt"]
        # the hidden node's reconcile asked the server (200) and closed nothing
        await eventually(lambda: (registry.get_sample_value("nvsentinel_kube_requests_total", {
            "lane": "resolution", "verb": "GET", "code": "2xx"}) or 0) >= 1, what="the server asked about a hidden node")
        assert phase(env.get(hidden_fault)) == "New"
        assert action_count(registry, "resolution", "cancel-node-gone") == 2
        for name in (held, never):  # finished: TTL deletes them after ttlAfterResolved
            await eventually(lambda n=name: not env.kube.list(HEALTHEVENTS, field_selector=f"metadata.name={n}")[0],
                             what=f"{name} deleted by TTL")
        assert phase(env.get(hidden_fault)) == "New", "TTL never deletes an open event"


# ---- 5. the GPU recovered before its remediation began -----------------------------------------------------

async def test_replay_gpu_recovered_before_remediation_runs_nothing(env: Env) -> None:
    """NVML's recovery action went back to NONE (a healthy event for the GPU) while the fault was still on its
    way through the chain: nothing is rebooted. Without resolution running, the remediation stage itself must
    see it (FaultCleared); with it, the event resolves and the node is released, still with no Job."""
    node = env.node(f"rp-clr-{env.unique}")
    t = utcnow()
    fault = env.event(f"{node}.fault", node, detected_at=t - dt.timedelta(seconds=5))
    healthy = env.event(f"{node}.healthy", node, healthy=True, detected_at=t)
    async with chain(env, resolution=False) as registry:
        obj = await until(env, fault, lambda o: remediated(o).get("reason") == "FaultCleared", "FaultCleared")
        assert obj["status"]["phase"] == "Drained" and healthy in remediated(obj)["message"]
        assert action_count(registry, "remediation", "fault-cleared") >= 1
        assert cordoned(env.get_node(node)), "quarantined as any fault; only the remediation is not run"
    assert env.jobs() == {}
    async with chain(env):
        await until(env, fault, lambda o: o["status"].get("phase") == "Resolved", "Resolved")
        await released(env, node)
    assert env.jobs() == {}, "no reboot for a GPU that had recovered"
