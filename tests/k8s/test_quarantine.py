"""The quarantine controller on a real kube-apiserver (v1.20.2), run by the real Manager.

Each test labels its Nodes and HealthEvents with a unique value and gives the controller matching
`node_selector`/`event_selector`, so other tests' objects (and their GPU nodes, which would change
the breaker's limit) are invisible to it; the breaker ConfigMap lives in a per-test namespace.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from ctlhelpers import action_count, clean_up, condition, env_fixture, eventually, ownership, phase, running_manager
from kubelet import make_node, make_nodes
from prometheus_client import CollectorRegistry

from nvsentinel import cli
from nvsentinel.cluster.quarantine import logic
from nvsentinel.cluster.quarantine.config import BREAKER_CONFIGMAP, QuarantineConfig
from nvsentinel.cluster.quarantine.controller import QuarantineController
from nvsentinel.k8s import AlreadyExists, Kube, KubeNotFound
from nvsentinel.k8s.resources import CONFIGMAPS, EVENTS, HEALTHEVENTS, NAMESPACES, NODES
from nvsentinel.k8s.runtime.manager import Manager
from nvsentinel.policy.healthevent import (
    HealthEvent, HealthEventSpec, OverrideFlags, Overrides, format_time, parse_time, utcnow,
)

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/quarantine"
OUR_TAINT = {"key": "nvsentinel.nvidia.com/quarantine", "value": "true", "effect": "NoSchedule"}
DEDICATED = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}


class Env:
    """One test's world: its label, namespace, objects (deleted afterwards) and an unthrottled client."""

    def __init__(self, control_plane: Any, unique: str) -> None:
        self.unique = unique
        self.ns = f"q-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)  # setup of hundreds of objects should not crawl
        self.nodes: list[str] = []
        self.events: list[str] = []
        try:
            self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        except AlreadyExists:
            pass

    def config(self, **kw: Any) -> QuarantineConfig:
        return QuarantineConfig(node_selector=f"{LABEL}={self.unique}", event_selector=f"{LABEL}={self.unique}",
                                hold_requeue=kw.pop("hold_requeue", 1.0), node_missing_requeue=1.0, **kw)

    def node(self, name: str, **kw: Any) -> dict:
        self.nodes.append(name)
        return make_node(self.kube, name, labels={LABEL: self.unique}, **kw)

    def many_nodes(self, names: list[str]) -> None:
        self.nodes.extend(names)
        make_nodes(self.kube, names, labels={LABEL: self.unique})

    def event_body(self, name: str, node: str, *, fatal: bool = True, healthy: bool = False, skip: bool = False,
                   force: bool = False) -> dict:
        spec = HealthEventSpec(source="test", node_name=node, component_class="GPU", check_name="xid-error-check",
                               is_fatal=fatal, is_healthy=healthy, detected_at=utcnow(), error_codes=("79",),
                               # non-empty: the 1.20 test server reads "" in a custom resource as null
                               agent="test", message="Xid 79",
                               overrides=Overrides(quarantine=OverrideFlags(force=force, skip=skip)))
        return HealthEvent(name=name, spec=spec, labels={LABEL: self.unique}).create_body()

    def event(self, name: str, node: str, **kw: Any) -> dict:
        self.events.append(name)
        return self.kube.create(HEALTHEVENTS, self.event_body(name, node, **kw))

    def many_events(self, pairs: list[tuple[str, str]]) -> None:
        self.events.extend(n for n, _ in pairs)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda p: self.kube.create(HEALTHEVENTS, self.event_body(*p)), pairs))

    def get_event(self, name: str) -> dict:
        return self.kube.get(HEALTHEVENTS, name)

    def get_node(self, name: str) -> dict:
        return self.kube.get(NODES, name)

    def close(self) -> None:
        clean_up(self.kube, events=self.events, nodes=self.nodes, namespace=self.ns, threads=16)
        self.kube.close()


env = env_fixture(Env)


@contextlib.asynccontextmanager
async def running(env: Env, cfg: QuarantineConfig, *, dry_run: bool = False, workers: int = 4
                  ) -> AsyncIterator[tuple[Manager, CollectorRegistry, QuarantineController]]:
    rec = QuarantineController(cfg)
    async with running_manager(env.kube, [rec], env.ns, dry_run=dry_run, workers=workers) as (mgr, registry):
        yield mgr, registry, rec


def events_about(kube: Kube, name: str) -> list[dict]:
    items, _ = kube.list(EVENTS, "default", field_selector=f"involvedObject.name={name}")
    return items


def action(registry: CollectorRegistry, name: str) -> float:
    return action_count(registry, "quarantine", name)


# ---- the rules ---------------------------------------------------------------------------------------------

async def test_fatal_event_cordons_taints_and_annotates_the_node(env: Env) -> None:
    """Verify a fatal event cordons and taints its node, records ownership, and its status says why."""
    node_name, ev = f"q-fatal-{env.unique}", f"fatal-{env.unique}"
    env.node(node_name)
    env.kube.patch(NODES, node_name, {"spec": {"taints": [DEDICATED]}})
    async with running(env, env.config()) as (_, registry, _rec):
        env.event(ev, node_name)
        obj = await eventually(lambda: (o := env.get_event(ev)) and phase(o) == "Quarantined" and o,
                               what="Quarantined")
        node = env.get_node(node_name)
        assert node["spec"]["unschedulable"] is True
        assert node["spec"]["taints"] == [DEDICATED, OUR_TAINT]
        own = ownership(node)
        assert own["events"] == [ev] and own["cordonedByUs"] is True
        assert abs(parse_time(own["since"]) - utcnow()) < dt.timedelta(minutes=1)

        gen = obj["metadata"]["generation"]
        assert obj["status"]["observedGeneration"] == gen
        det = condition(obj, "Detected")
        assert (det["status"], det["reason"]) == ("True", "Published")
        nq = condition(obj, "NodeQuarantined")
        assert (nq["status"], nq["reason"], nq["observedGeneration"]) == ("True", "Cordoned", gen)
        assert "nvsentinel-quarantine" in nq["message"] and f"cordoned node {node_name}" in nq["message"]
        assert nq["lastTransitionTime"]
        await eventually(lambda: action(registry, "cordon") == 1, what="cordon metric")
        await eventually(lambda: (registry.get_sample_value("nvsentinel_quarantine_controller_latency_seconds_count")
                                  or 0) >= 1, what="latency observed")
        await eventually(lambda: any(e["reason"] == "Cordoned" and f"(HealthEvent {ev})" in e["message"]
                                     for e in events_about(env.kube, node_name)), what="Event on the Node")
        assert events_about(env.kube, ev) == [], "a Normal decision is in the conditions, not an Event on the event"

        # a second event for the same node joins the quarantine: no new cordon, no new breaker count
        ev2 = f"fatal2-{env.unique}"
        env.event(ev2, node_name)
        obj2 = await eventually(lambda: (o := env.get_event(ev2)) and phase(o) == "Quarantined" and o,
                                what="second Quarantined")
        assert condition(obj2, "NodeQuarantined")["reason"] == "AlreadyQuarantined"
        own2 = ownership(env.get_node(node_name))
        assert own2["events"] == [ev, ev2] and own2["since"] == own["since"] and own2["cordonedByUs"] is True
        assert env.get_node(node_name)["spec"]["taints"].count(OUR_TAINT) == 1
        await eventually(lambda: action(registry, "add-event") == 1, what="add-event metric")
        assert action(registry, "cordon") == 1


async def test_non_fatal_and_healthy_events_resolve_without_touching_the_node(env: Env) -> None:
    """Verify non-fatal and healthy events become Resolved (NonFatal, Healthy) and the node stays schedulable."""
    node_name = f"q-nf-{env.unique}"
    rv = env.node(node_name)["metadata"]["resourceVersion"]
    async with running(env, env.config()) as (_, registry, _rec):
        env.event(f"nonfatal-{env.unique}", node_name, fatal=False)
        env.event(f"healthy-{env.unique}", node_name, fatal=False, healthy=True)
        for name, reason in ((f"nonfatal-{env.unique}", "NonFatal"), (f"healthy-{env.unique}", "Healthy")):
            obj = await eventually(lambda n=name: (o := env.get_event(n)) and phase(o) == "Resolved" and o,
                                   what=f"{name} Resolved")
            res = condition(obj, "Resolved")
            assert (res["status"], res["reason"]) == ("True", reason)
            assert obj["status"]["resolvedAt"]
            assert condition(obj, "NodeQuarantined") is None
        await eventually(lambda: action(registry, "resolve-nonfatal") == 2, what="resolve metric")
    node = env.get_node(node_name)
    assert node["metadata"]["resourceVersion"] == rv and not node["spec"].get("unschedulable")


async def test_skip_override_cancels_and_leaves_the_node_as_it_is(env: Env) -> None:
    """Verify skip cancels a New event untouched, and a Quarantined one without uncordoning its node."""
    fresh, held = f"q-skip-a-{env.unique}", f"q-skip-b-{env.unique}"
    rv = env.node(fresh)["metadata"]["resourceVersion"]
    env.node(held)
    async with running(env, env.config()) as (_, registry, _rec):
        env.event(f"skip-{env.unique}", fresh, skip=True)
        obj = await eventually(lambda: (o := env.get_event(f"skip-{env.unique}")) and phase(o) == "Cancelled" and o,
                               what="Cancelled")
        nq = condition(obj, "NodeQuarantined")
        assert (nq["status"], nq["reason"]) == ("False", "SkippedByOverride")
        assert env.get_node(fresh)["metadata"]["resourceVersion"] == rv

        env.event(f"later-skip-{env.unique}", held)
        await eventually(lambda: phase(env.get_event(f"later-skip-{env.unique}")) == "Quarantined", what="Quarantined")
        env.kube.patch(HEALTHEVENTS, f"later-skip-{env.unique}",
                       {"spec": {"overrides": {"quarantine": {"skip": True}}}})
        obj = await eventually(lambda: (o := env.get_event(f"later-skip-{env.unique}")) and phase(o) == "Cancelled"
                               and o, what="Quarantined → Cancelled")
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] >= 2
        node = env.get_node(held)
        assert node["spec"]["unschedulable"] is True and ownership(node)["events"] == [f"later-skip-{env.unique}"]
        await eventually(lambda: action(registry, "cancel") == 2, what="cancel metric")


async def test_node_cordoned_by_someone_else_is_recorded_not_owned(env: Env) -> None:
    """Verify a node an operator cordoned gets our taint and cordonedByUs false, and is not counted by the breaker."""
    node_name, ev = f"q-theirs-{env.unique}", f"theirs-{env.unique}"
    env.node(node_name, unschedulable=True)
    async with running(env, env.config()) as (_, registry, rec):
        env.event(ev, node_name)
        obj = await eventually(lambda: (o := env.get_event(ev)) and phase(o) == "Quarantined" and o, what="Quarantined")
        nq = condition(obj, "NodeQuarantined")
        assert (nq["status"], nq["reason"]) == ("True", "AlreadyCordoned")
        assert "not owned" in nq["message"]
        node = env.get_node(node_name)
        assert ownership(node)["cordonedByUs"] is False and ownership(node)["events"] == [ev]
        assert OUR_TAINT in node["spec"]["taints"]
        await eventually(lambda: action(registry, "already-cordoned") == 1, what="already-cordoned metric")
        assert action(registry, "cordon") == 0
        assert rec._recent == {}  # never reached the breaker


async def test_dry_run_records_the_decision_and_leaves_the_node_untouched(env: Env) -> None:
    """Verify dry-run writes the would-be decision to the status, keeps phase New, and changes no Node."""
    node_name, ev = f"q-dry-{env.unique}", f"dry-{env.unique}"
    rv = env.node(node_name)["metadata"]["resourceVersion"]
    async with running(env, env.config(), dry_run=True) as (_, registry, _rec):
        env.event(ev, node_name)
        obj = await eventually(lambda: (o := env.get_event(ev)) and condition(o, "NodeQuarantined") and o,
                               what="dry-run decision")
        nq = condition(obj, "NodeQuarantined")
        assert (nq["status"], nq["reason"]) == ("False", "DryRunCordoned")
        assert nq["message"].startswith("dry-run: would cordon node")
        assert phase(obj) == "New"
        await eventually(lambda: action(registry, "dry-run-cordon") == 1, what="dry-run metric")
        await anyio.sleep(0.5)
    node = env.get_node(node_name)
    assert node["metadata"]["resourceVersion"] == rv
    assert not node["spec"].get("unschedulable") and ownership(node) is None
    assert OUR_TAINT not in (node["spec"].get("taints") or [])
    assert action(registry, "cordon") == 0


async def test_missing_node_waits_then_quarantines_when_it_appears(env: Env) -> None:
    """Verify an event for an absent Node says NodeNotFound and is quarantined once the Node registers."""
    node_name, ev = f"q-late-{env.unique}", f"late-{env.unique}"
    async with running(env, env.config()) as _:
        env.event(ev, node_name)
        obj = await eventually(lambda: (o := env.get_event(ev)) and condition(o, "NodeQuarantined") and o,
                               what="NodeNotFound")
        assert condition(obj, "NodeQuarantined")["reason"] == "NodeNotFound" and phase(obj) == "New"
        env.node(node_name)
        await eventually(lambda: phase(env.get_event(ev)) == "Quarantined", what="Quarantined after node appears")
    assert env.get_node(node_name)["spec"]["unschedulable"] is True


async def test_crash_between_node_patch_and_status_patch_converges_without_redoing(env: Env) -> None:
    """Verify a node already patched for the event (crash before the status) is not patched again or recounted."""
    node_name, ev = f"q-crash-{env.unique}", f"crash-{env.unique}"
    env.node(node_name)
    env.event(ev, node_name)
    since = utcnow() - dt.timedelta(seconds=30)
    plan = logic.plan_node(env.get_node(node_name), ev, now=since, cfg=QuarantineConfig(),
                           recommend=logic.recommendation_entry(HealthEvent.from_dict(env.get_event(ev))))
    patched = env.kube.patch(NODES, node_name, plan.patch)  # what the crashed run had done
    async with running(env, env.config()) as (mgr, registry, rec):
        obj = await eventually(lambda: (o := env.get_event(ev)) and phase(o) == "Quarantined" and o, what="Quarantined")
        assert condition(obj, "NodeQuarantined")["reason"] == "Cordoned"
        node = env.get_node(node_name)
        assert node["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
        assert ownership(node)["since"] == format_time(since)
        assert rec._recent == {}, "the cordon was not decided (or counted) again"
        await eventually(lambda: action(registry, "cordon") == 1, what="cordon metric")

        # and reconcile run twice more on caught-up caches changes nothing at all
        ctx = mgr.contexts["quarantine"]
        await eventually(lambda: phase(rec._events.get(ev) or {}) == "Quarantined", what="informer caught up")
        ev_rv = env.get_event(ev)["metadata"]["resourceVersion"]
        for _ in range(2):
            assert await rec.reconcile(ev, ctx) is None
        assert env.get_event(ev)["metadata"]["resourceVersion"] == ev_rv
        assert env.get_node(node_name)["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
        assert action(registry, "cordon") == 1


# ---- the circuit breaker -------------------------------------------------------------------------------------

def breaker_cli(env: Env, control_plane: Any, *args: str) -> str:
    parsed = cli.build_parser().parse_args(
        ["breaker", *args, "--kubeconfig", control_plane.kubeconfig, "--namespace", env.ns])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = parsed.func(parsed)
    assert rc == 0, out.getvalue()
    return out.getvalue()


def breaker_data(env: Env) -> dict:
    try:
        return env.kube.get(CONFIGMAPS, BREAKER_CONFIGMAP, env.ns).get("data") or {}
    except KubeNotFound:
        return {}


def census(env: Env, names: list[str]) -> dict[str, int]:
    """How many events are Quarantined, held (CircuitBreakerOpen) or otherwise; how many nodes are cordoned."""
    items, _ = env.kube.list(HEALTHEVENTS, label_selector=f"{LABEL}={env.unique}")
    by_name = {o["metadata"]["name"]: o for o in items}
    out = {"quarantined": 0, "held": 0, "other": 0}
    for n in names:
        o = by_name[n]
        c = condition(o, "NodeQuarantined")
        if phase(o) == "Quarantined":
            out["quarantined"] += 1
        elif phase(o) == "New" and c and c["reason"] == "CircuitBreakerOpen":
            out["held"] += 1
        else:
            out["other"] += 1
    nodes, _ = env.kube.list(NODES, label_selector=f"{LABEL}={env.unique}")
    out["cordoned"] = sum(1 for n in nodes if n["spec"].get("unschedulable"))
    return out


def trip_events(env: Env, names: set[str]) -> list[dict]:
    items, _ = env.kube.list(EVENTS, "default", field_selector="reason=CircuitBreakerTripped")
    return [e for e in items if e["involvedObject"]["name"] in names]


async def test_breaker_caps_a_mass_event_trips_and_resumes_after_reset(env: Env, control_plane: Any) -> None:
    """Verify 150 fatal events on 200 GPU nodes cordon exactly 20, trip, hold the rest; a reset lets exactly 20 more."""
    nodes = [f"q-b-{env.unique}-{i:03d}" for i in range(200)]
    env.many_nodes(nodes)
    names = [f"mass-{env.unique}-{i:03d}" for i in range(150)]
    selector = f"{LABEL}={env.unique}"
    async with running(env, env.config(), workers=8) as (_, registry, _rec):
        env.many_events(list(zip(names, nodes)))
        # settle: every event decided, and the counts stable for a moment
        await eventually(lambda: (c := census(env, names)) and c["quarantined"] + c["held"] == 150 and c,
                         timeout=60, what="all 150 decided")
        await anyio.sleep(2)
        first = await anyio.to_thread.run_sync(census, env, names)
        assert first == {"quarantined": 20, "held": 130, "other": 0, "cordoned": 20}

        data = breaker_data(env)
        assert data["state"] == "Tripped" and data["trippedAt"] and "over the limit of 20" in data["reason"]
        assert data["resetAt"] == ""
        assert registry.get_sample_value("nvsentinel_quarantine_controller_breaker_tripped") == 1
        assert registry.get_sample_value("nvsentinel_quarantine_controller_breaker_limit") == 20
        trips = await eventually(lambda: trip_events(env, set(names)), what="CircuitBreakerTripped Event")
        assert len(trips) == 1 and trips[0]["type"] == "Warning" and trips[0]["count"] == 1
        held = next(env.get_event(n) for n in names if phase(env.get_event(n)) == "New")
        msg = condition(held, "NodeQuarantined")["message"]
        assert "circuit breaker" in msg and "limit" in msg and "10% of 200 GPU nodes, max 50" in msg

        status = json.loads(await anyio.to_thread.run_sync(
            lambda: breaker_cli(env, control_plane, "status", "-o", "json", "--node-selector", selector)))
        assert (status["state"], status["cordoned"], status["limit"], status["gpuNodes"]) == ("Tripped", 20, 20, 200)
        text = await anyio.to_thread.run_sync(
            lambda: breaker_cli(env, control_plane, "status", "--node-selector", selector))
        assert "state:      Tripped" in text and "cordoned:   20 nodes" in text
        assert "limit:      20 (10% of 200 GPU nodes, max 50)" in text

        out = await anyio.to_thread.run_sync(lambda: breaker_cli(env, control_plane, "reset", "--reason", "test"))
        assert "reset at" in out
        await eventually(lambda: (c := census(env, names)) and c["quarantined"] == 40 and c, timeout=60,
                         what="20 more after the reset")
        await eventually(lambda: breaker_data(env).get("state") == "Tripped", what="tripped again")
        await anyio.sleep(2)
        second = await anyio.to_thread.run_sync(census, env, names)
        assert second == {"quarantined": 40, "held": 110, "other": 0, "cordoned": 40}
        data = breaker_data(env)
        assert data["resetAt"] and parse_time(data["trippedAt"]) > parse_time(data["resetAt"])
        assert await eventually(lambda: len(trip_events(env, set(names))) == 2, what="second trip Event")
        status = json.loads(await anyio.to_thread.run_sync(
            lambda: breaker_cli(env, control_plane, "status", "-o", "json", "--node-selector", selector)))
        assert (status["state"], status["cordoned"], status["limit"]) == ("Tripped", 20, 20)
        assert action(registry, "cordon") == 40
        assert action(registry, "hold") >= 130


async def test_force_bypasses_an_open_breaker(env: Env) -> None:
    """Verify a forced event is quarantined while the breaker holds an unforced one, and the bypass is recorded."""
    nodes = [f"q-f-{env.unique}-{i}" for i in range(4)]
    env.many_nodes(nodes)  # 4 GPU nodes at 10 % → limit 1
    async with running(env, env.config()) as (_, registry, _rec):
        env.event(f"f0-{env.unique}", nodes[0])
        await eventually(lambda: phase(env.get_event(f"f0-{env.unique}")) == "Quarantined", what="first")
        env.event(f"f1-{env.unique}", nodes[1])
        await eventually(lambda: (c := condition(env.get_event(f"f1-{env.unique}"), "NodeQuarantined"))
                         and c["reason"] == "CircuitBreakerOpen", what="held")
        env.event(f"f2-{env.unique}", nodes[2], force=True)
        obj = await eventually(lambda: (o := env.get_event(f"f2-{env.unique}")) and phase(o) == "Quarantined" and o,
                               what="forced")
        assert "bypassed by spec.overrides.quarantine.force" in condition(obj, "NodeQuarantined")["message"]
        assert breaker_data(env)["state"] == "Tripped"
        assert phase(env.get_event(f"f1-{env.unique}")) == "New"


async def test_a_trip_survives_a_controller_restart(env: Env) -> None:
    """Verify a fresh controller process reads the stored trip: gauge 1 at start, new cordons still held."""
    nodes = [f"q-r-{env.unique}-{i}" for i in range(4)]
    env.many_nodes(nodes)  # limit 1
    async with running(env, env.config()) as _:
        env.event(f"r0-{env.unique}", nodes[0])
        await eventually(lambda: phase(env.get_event(f"r0-{env.unique}")) == "Quarantined", what="first")
        env.event(f"r1-{env.unique}", nodes[1])
        await eventually(lambda: breaker_data(env).get("state") == "Tripped", what="trip")
    async with running(env, env.config()) as (_, registry, rec):
        await eventually(lambda: registry.get_sample_value("nvsentinel_quarantine_controller_breaker_tripped") == 1,
                         what="gauge from the stored state")
        env.event(f"r2-{env.unique}", nodes[2])
        for name in (f"r1-{env.unique}", f"r2-{env.unique}"):
            await eventually(lambda n=name: (c := condition(env.get_event(n), "NodeQuarantined"))
                             and c["reason"] == "CircuitBreakerOpen", what=f"{name} held after restart")
        assert rec._recent == {}
    cordoned = [n for n in nodes if env.get_node(n)["spec"].get("unschedulable")]
    assert cordoned == [nodes[0]]
    trips = await eventually(lambda: trip_events(env, {f"r{i}-{env.unique}" for i in range(3)}), what="the trip Event")
    assert len(trips) == 1, "one Event per trip, not per process"


def test_breaker_cli_before_any_trip(env: Env, control_plane: Any) -> None:
    """Verify `breaker status` reports Closed when no ConfigMap exists and `breaker reset` creates one, Closed."""
    status = json.loads(breaker_cli(env, control_plane, "status", "-o", "json", "--node-selector",
                                    f"{LABEL}={env.unique}", "--breaker-percent", "50"))
    assert (status["state"], status["cordoned"], status["limit"], status["gpuNodes"]) == ("Closed", 0, 0, 0)
    assert "absent" in status["configMap"]
    breaker_cli(env, control_plane, "reset", "--reason", "pre-emptive")
    data = breaker_data(env)
    assert data["state"] == "Closed" and data["resetAt"] and "pre-emptive" in data["reason"]
    assert abs(parse_time(data["resetAt"]) - utcnow()) < dt.timedelta(minutes=1)
