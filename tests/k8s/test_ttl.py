"""The TTL controller on a real kube-apiserver (v1.20.2), run by the real Manager.

Each test labels its HealthEvents with a unique value and gives the controller a matching
`event_selector`, so other tests' events are invisible to it (it would delete them otherwise); the
policy ConfigMap lives in a per-test namespace.
"""
from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ctlhelpers import action_count, clean_up, env_fixture, eventually, running_manager
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.ttl.config import TTLConfig
from nvsentinel.cluster.ttl.controller import TTLController
from nvsentinel.k8s import AlreadyExists, Kube, KubeNotFound
from nvsentinel.k8s.resources import CONFIGMAPS, EVENTS, HEALTHEVENTS, NAMESPACES
from nvsentinel.k8s.runtime.manager import Manager
from nvsentinel.policy.healthevent import HealthEvent, HealthEventSpec, HealthEventStatus, Phase, utcnow

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/ttl"
POLICY = "ttl-test-policy"


class Env:
    """One test's world: its label, namespace, events (deleted afterwards) and an unthrottled client."""

    def __init__(self, control_plane: Any, unique: str) -> None:
        self.unique = unique
        self.ns = f"ttl-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)
        self.events: list[str] = []
        with contextlib.suppress(AlreadyExists):
            self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})

    def config(self) -> TTLConfig:
        return TTLConfig(policy_configmap=POLICY, event_selector=f"{LABEL}={self.unique}")

    def policy(self, **data: str) -> dict:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": POLICY, "namespace": self.ns},
                "data": data}
        try:
            return self.kube.create(CONFIGMAPS, body, self.ns)
        except AlreadyExists:
            return self.kube.replace(CONFIGMAPS, POLICY, body, self.ns)

    def event(self, name: str, node: str, *, phase: Phase = Phase.NEW,
              resolved_ago: dt.timedelta | None = None) -> str:
        """A HealthEvent in `phase`, finished `resolved_ago` before now (for Resolved/Cancelled)."""
        full = f"{name}-{self.unique}"
        spec = HealthEventSpec(source="test", node_name=node, component_class="GPU", check_name="xid-error-check",
                               is_fatal=True, is_healthy=False, detected_at=utcnow(), error_codes=("79",),
                               agent="test", message="Xid 79")  # never "": 1.20 reads it as null
        self.events.append(full)
        obj = self.kube.create(HEALTHEVENTS, HealthEvent(name=full, spec=spec,
                                                         labels={LABEL: self.unique}).create_body())
        if phase is not Phase.NEW:
            status = HealthEventStatus(phase=phase, resolved_at=utcnow() - (resolved_ago or dt.timedelta()))
            self.kube.patch(HEALTHEVENTS, full, {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                                 "status": status.to_dict()}, subresource="status")
        return full

    def exists(self, name: str) -> bool:
        try:
            self.kube.get(HEALTHEVENTS, name)
        except KubeNotFound:
            return False
        return True

    def policy_events(self) -> list[dict]:
        items, _ = self.kube.list(EVENTS, self.ns, field_selector=f"involvedObject.name={POLICY}")
        return items

    def close(self) -> None:
        clean_up(self.kube, events=self.events, namespace=self.ns)
        self.kube.close()


env = env_fixture(Env)


@contextlib.asynccontextmanager
async def running(env: Env, *, dry_run: bool = False
                  ) -> AsyncIterator[tuple[Manager, CollectorRegistry, TTLController]]:
    rec = TTLController(env.config())
    async with running_manager(env.kube, [rec], env.ns, dry_run=dry_run, workers=1) as (mgr, registry):
        yield mgr, registry, rec


def action(registry: CollectorRegistry, name: str) -> float:
    return action_count(registry, "ttl", name)


def passes(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("nvsentinel_ttl_controller_reconciles_total") or 0.0


async def test_expired_finished_events_go_open_ones_stay_and_a_policy_change_applies_live(env: Env) -> None:
    """Verify expired Resolved/Cancelled events are deleted, fresh and open ones kept, and a new TTL applies at once."""
    env.policy(ttlAfterResolved="1h", cleanupInterval="1s")
    old = env.event("old", "n1", phase=Phase.RESOLVED, resolved_ago=dt.timedelta(hours=2))
    cancelled = env.event("cancelled", "n1", phase=Phase.CANCELLED, resolved_ago=dt.timedelta(hours=3))
    fresh = env.event("fresh", "n1", phase=Phase.RESOLVED)
    open_ = env.event("open", "n1")
    async with running(env) as (_, registry, rec):
        await eventually(lambda: not env.exists(old) and not env.exists(cancelled), what="expired events deleted")
        # counted once the delete's answer is back, which can be just after another client sees it gone
        await eventually(lambda: action(registry, "delete") == 2, what="two deletes counted")
        # several more passes (every 1s) leave the fresh and the open event alone
        seen = passes(registry)
        await eventually(lambda: passes(registry) >= seen + 2, what="two more passes")
        assert env.exists(fresh) and env.exists(open_)
        assert registry.get_sample_value("nvsentinel_ttl_controller_events_total") == 2

        env.policy(ttlAfterResolved="2s", cleanupInterval="1s")
        await eventually(lambda: not env.exists(fresh), what="fresh event deleted under the new 2s TTL")
        assert rec.policy.ttl_after_resolved == 2
        await eventually(lambda: action(registry, "delete") == 3, what="the third delete counted")

        # a bad value: announced on the ConfigMap, the last good policy stays
        env.policy(ttlAfterResolved="soon", cleanupInterval="1s")
        await eventually(lambda: any(e["reason"] == "InvalidPolicy" and e["type"] == "Warning"
                                     and "ttlAfterResolved" in e["message"] for e in env.policy_events()),
                         what="InvalidPolicy Warning Event")
        assert rec.policy.ttl_after_resolved == 2
        seen = passes(registry)
        await eventually(lambda: passes(registry) >= seen + 2, what="two more passes")
        assert env.exists(open_), "an open event is never deleted"


async def test_max_events_per_node_deletes_oldest_finished_and_warns_when_only_open_events_exceed(env: Env) -> None:
    """Verify the per-node bound removes the node's oldest finished events and never an open one."""
    env.policy(ttlAfterResolved="1000h", cleanupInterval="1s", maxEventsPerNode="2")
    a1 = env.event("a1", "node-a", phase=Phase.RESOLVED, resolved_ago=dt.timedelta(minutes=30))
    a2 = env.event("a2", "node-a", phase=Phase.RESOLVED, resolved_ago=dt.timedelta(minutes=20))
    a3 = env.event("a3", "node-a", phase=Phase.RESOLVED, resolved_ago=dt.timedelta(minutes=10))
    a_open = env.event("a-open", "node-a")
    b_open = [env.event(f"b{i}", "node-b") for i in range(3)]
    async with running(env) as (_, registry, _rec):
        await eventually(lambda: not env.exists(a1) and not env.exists(a2), what="two oldest on node-a deleted")
        await eventually(lambda: any(e["reason"] == "OpenEventsOverBound" and "node node-b" in e["message"]
                                     for e in env.policy_events()), what="OpenEventsOverBound Warning Event")
        seen = passes(registry)
        await eventually(lambda: passes(registry) >= seen + 2, what="two more passes")
        assert env.exists(a3) and env.exists(a_open)
        assert all(env.exists(b) for b in b_open)
        assert action(registry, "delete") == 2


async def test_dry_run_counts_and_deletes_nothing(env: Env) -> None:
    """Verify dry-run counts each would-be delete once and leaves the event in place."""
    env.policy(ttlAfterResolved="1h", cleanupInterval="1s")
    old = env.event("old", "n1", phase=Phase.RESOLVED, resolved_ago=dt.timedelta(hours=2))
    async with running(env, dry_run=True) as (_, registry, _rec):
        await eventually(lambda: action(registry, "dry-run-delete") == 1, what="dry-run-delete counted")
        seen = passes(registry)
        await eventually(lambda: passes(registry) >= seen + 2, what="two more passes")
        assert env.exists(old)
        assert action(registry, "dry-run-delete") == 1 and action(registry, "delete") == 0
