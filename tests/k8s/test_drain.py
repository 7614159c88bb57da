"""The drain controller on a real kube-apiserver (v1.20.2) with the disruption controller computing PDBs.

Each test labels its Node and HealthEvents with a unique value and gives the controllers matching
selectors; its pods live in a per-test namespace. There is no kubelet: a background loop completes
the deletions evictions start (`finish_deletions`), as the kubelet would.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from ctlhelpers import DeletionFinisher, action_count, clean_up, env_fixture, eventually, phase, running_manager
from kubelet import make_node, run_pod
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.cluster.drain.controller import DrainController
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.quarantine.controller import QuarantineController
from nvsentinel.k8s import Kube
from nvsentinel.k8s.resources import EVENTS, HEALTHEVENTS, NAMESPACES, PDBS_V1BETA1, PODS, Resource
from nvsentinel.policy.healthevent import HealthEvent, HealthEventSpec, OverrideFlags, Overrides, utcnow

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/drain"
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet", True)


class Env:
    """One test's world: a node, a namespace of pods bound to it, events; a kubelet stand-in loop."""

    def __init__(self, control_plane: Any, unique: str) -> None:
        self.unique = unique
        self.ns = f"d-{unique}"
        self.node = f"drain-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)
        self.events: list[str] = []
        self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        make_node(self.kube, self.node, labels={LABEL: unique})
        self.kubelet = DeletionFinisher(self.kube, self.ns)

    def selector(self) -> str:
        return f"{LABEL}={self.unique}"

    def pod(self, name: str, *, labels: dict | None = None, owner: dict | None = None) -> dict:
        meta: dict = {"name": name, "namespace": self.ns, "labels": labels or {"app": name}}
        if owner:
            meta["ownerReferences"] = [owner]
        self.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
            "nodeName": self.node, "containers": [{"name": "c", "image": "busybox"}]}}, self.ns)
        return run_pod(self.kube, self.ns, name)

    def daemonset_owner(self) -> dict:
        """A real (never reconciled) DaemonSet, so the garbage collector keeps its pod."""
        ds = self.kube.create(DAEMONSETS, {"apiVersion": "apps/v1", "kind": "DaemonSet",
                                           "metadata": {"name": "agent", "namespace": self.ns}, "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}, self.ns)
        return {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": ds["metadata"]["uid"],
                "controller": True}

    def pdb(self, name: str, app: str) -> None:
        self.kube.create(PDBS_V1BETA1, {"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                                        "metadata": {"name": name, "namespace": self.ns},
                                        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}}},
                         self.ns)

    def event(self, name: str, *, skip: bool = False) -> dict:
        spec = HealthEventSpec(source="test", node_name=self.node, component_class="GPU",
                               check_name="xid-error-check", is_fatal=True, is_healthy=False, detected_at=utcnow(),
                               error_codes=("79",), agent="test", message="Xid 79",
                               overrides=Overrides(drain=OverrideFlags(skip=skip)))
        self.events.append(name)
        return self.kube.create(HEALTHEVENTS, HealthEvent(name=name, spec=spec, labels={LABEL: self.unique}).create_body())

    def pod_names(self) -> set[str]:
        items, _ = self.kube.list(PODS, self.ns)
        return {p["metadata"]["name"] for p in items}

    def close(self) -> None:
        self.kubelet.stop()
        clean_up(self.kube, events=self.events, nodes=[self.node], namespace=self.ns)
        self.kube.close()


env = env_fixture(Env)


@contextlib.asynccontextmanager
async def running(env: Env, *, dry_run: bool = False, quarantine: bool = True, **drain: Any
                  ) -> AsyncIterator[CollectorRegistry]:
    sel = env.selector()
    recs: list[Any] = [DrainController(DrainConfig(node_selector=sel, event_selector=sel, drain_pdb_retry=0.5,
                                                   drain_poll=0.5, **drain))]
    if quarantine:
        recs.insert(0, QuarantineController(QuarantineConfig(node_selector=sel, event_selector=sel,
                                                             breaker_percent=100)))
    async with running_manager(env.kube, recs, env.ns, dry_run=dry_run) as (_, registry):
        yield registry


def drained_cond(obj: dict) -> dict:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c["type"] == "PodsDrained":
            return c
    return {}


def action(registry: CollectorRegistry, name: str) -> float:
    return action_count(registry, "drain", name)


async def test_drain_evicts_respects_the_pdb_and_finishes_when_freed(env: Env) -> None:
    """Verify Quarantined → Draining (PDB blocks one pod, DaemonSet pod stays) → Drained once the PDB goes."""
    env.pod("web-1")
    env.pod("web-2")
    env.pod("guarded")
    env.pod("agent-x", labels={"app": "agent"}, owner=env.daemonset_owner())
    env.pdb("guard", "guarded")
    await eventually(lambda: (env.kube.get(PDBS_V1BETA1, "guard", env.ns).get("status") or {}).get(
        "expectedPods") == 1, what="the disruption controller computing the PDB")
    env.event("ev-drain")
    async with running(env) as registry:
        blocked = await eventually(lambda: (lambda o: phase(o) == "Draining" and "disruption budget" in
                                            drained_cond(o).get("message", "") and o)(
            env.kube.get(HEALTHEVENTS, "ev-drain")), what="Draining, blocked by the PDB")
        assert drained_cond(blocked)["status"] == "False" and drained_cond(blocked)["reason"] == "Draining"
        await eventually(lambda: env.pod_names() == {"guarded", "agent-x"}, what="unguarded pods evicted")
        ev = env.kube.get(HEALTHEVENTS, "ev-drain")
        assert phase(ev) == "Draining" and "guard" in drained_cond(ev)["message"]
        assert action(registry, "evict") == 2 and action(registry, "evict-blocked") >= 1
        await eventually(lambda: registry.get_sample_value("nvsentinel_drain_controller_pods_pending") == 1,
                         what="pods_pending gauge at 1")

        env.kube.delete(PDBS_V1BETA1, "guard", env.ns)
        done = await eventually(lambda: (lambda o: phase(o) == "Drained" and o)(
            env.kube.get(HEALTHEVENTS, "ev-drain")), what="Drained")
        assert drained_cond(done)["status"] == "True" and drained_cond(done)["reason"] == "Drained"
        assert env.pod_names() == {"agent-x"}  # the DaemonSet pod stays
        assert action(registry, "evict") == 3 and action(registry, "drained") == 1
        assert registry.get_sample_value("nvsentinel_drain_controller_pods_pending") == 0
        # the Normal decisions (Draining, Drained) are in the conditions, not Events on the event
        items, _ = env.kube.list(EVENTS, "default", field_selector="involvedObject.name=ev-drain")
        assert [e for e in items if e["type"] == "Normal"] == []


def lane_reads(registry: CollectorRegistry, lane: str) -> float:
    """Successful GETs (lists included) the lane sent to the API server."""
    return registry.get_sample_value("nvsentinel_kube_requests_total",
                                     {"lane": lane, "verb": "GET", "code": "2xx"}) or 0.0


async def test_the_drain_reads_pods_from_the_cache_and_asks_the_server_only_on_a_quiet_watch(env: Env) -> None:
    """No pod list per drain: a node with pods drains from the pods cache (its own evictions prove the
    cache current); only a drain that saw no pod, on a pods watch that did not move, lists once."""
    async with running(env) as registry:
        env.event("ev-empty")
        await eventually(lambda: phase(env.kube.get(HEALTHEVENTS, "ev-empty")) == "Drained", what="empty node Drained")
        assert lane_reads(registry, "drain") == 1, "a node without pods is confirmed by one list"
        env.pod("web-1")
        env.pod("web-2")
        env.event("ev-pods")
        await eventually(lambda: phase(env.kube.get(HEALTHEVENTS, "ev-pods")) == "Drained", what="Drained from the cache")
        assert env.pod_names() == set()
        assert action(registry, "evict") == 2
        assert lane_reads(registry, "drain") == 1, "the pods came from the cache: no list"


async def test_skip_override_marks_drained_without_evicting(env: Env) -> None:
    """Verify spec.overrides.drain.skip → Drained with DrainSkipped, and the pods stay."""
    env.pod("web-1")
    env.event("ev-skip", skip=True)
    async with running(env) as registry:
        done = await eventually(lambda: (lambda o: phase(o) == "Drained" and o)(
            env.kube.get(HEALTHEVENTS, "ev-skip")), what="Drained by skip")
        assert drained_cond(done)["reason"] == "DrainSkipped" and drained_cond(done)["status"] == "True"
        assert env.pod_names() == {"web-1"}
        assert action(registry, "skip") == 1 and action(registry, "evict") == 0


async def test_dry_run_records_what_it_would_evict_and_evicts_nothing(env: Env) -> None:
    """Verify dry-run: the condition says "would evict N pods", the phase and the pods stay."""
    env.pod("web-1")
    env.pod("web-2")
    env.event("ev-dry")
    # the quarantine stage has run (dry-run would not advance it): set the phase it would have set
    env.kube.patch(HEALTHEVENTS, "ev-dry", {"status": {"phase": "Quarantined", "conditions": []}},
                   subresource="status")
    async with running(env, dry_run=True, quarantine=False) as registry:
        ev = await eventually(lambda: (lambda o: drained_cond(o).get("reason") == "DryRunDraining" and o)(
            env.kube.get(HEALTHEVENTS, "ev-dry")), what="dry-run condition")
        assert "would evict 2 pod(s)" in drained_cond(ev)["message"]
        assert phase(ev) == "Quarantined"
        await anyio.sleep(1.5)
        assert env.pod_names() == {"web-1", "web-2"}
        assert action(registry, "evict") == 0
        assert phase(env.kube.get(HEALTHEVENTS, "ev-dry")) == "Quarantined"


async def _guarded(env: Env) -> None:
    env.pod("guarded")
    env.pdb("guard", "guarded")
    await eventually(lambda: (env.kube.get(PDBS_V1BETA1, "guard", env.ns).get("status") or {}).get(
        "expectedPods") == 1, what="the disruption controller computing the PDB")


async def test_timeout_without_force_waits_with_a_warning(env: Env) -> None:
    """Verify a drain past --drain-timeout stays Draining with DrainTimeout, one Warning Event, pod kept."""
    await _guarded(env)
    env.event("ev-late")
    async with running(env, drain_timeout=1.0) as registry:
        ev = await eventually(lambda: (lambda o: drained_cond(o).get("reason") == "DrainTimeout" and o)(
            env.kube.get(HEALTHEVENTS, "ev-late")), what="DrainTimeout")
        assert phase(ev) == "Draining" and drained_cond(ev)["status"] == "False"
        await anyio.sleep(1.5)
        assert env.pod_names() == {"guarded"}
        assert action(registry, "force-delete") == 0
        items = await eventually(lambda: [e for e in env.kube.list(
            EVENTS, "default", field_selector="involvedObject.name=ev-late")[0] if e["reason"] == "DrainTimeout"],
            what="the DrainTimeout Warning")
        warnings = [e for e in items if e["reason"] == "DrainTimeout"]
        assert len(warnings) == 1 and warnings[0]["type"] == "Warning" and warnings[0].get("count", 1) == 1


async def test_timeout_with_force_delete_removes_the_blocked_pod(env: Env) -> None:
    """Verify --drain-force-delete deletes a PDB-blocked pod after the timeout, and the drain completes."""
    await _guarded(env)
    env.event("ev-force")
    async with running(env, drain_timeout=1.0, drain_force_delete=True) as registry:
        done = await eventually(lambda: (lambda o: phase(o) == "Drained" and o)(
            env.kube.get(HEALTHEVENTS, "ev-force")), what="Drained after force delete")
        assert drained_cond(done)["reason"] == "Drained"
        assert env.pod_names() == set()
        assert action(registry, "force-delete") == 1 and action(registry, "evict") == 0
