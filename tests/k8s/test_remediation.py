"""The remediation controller on a real kube-apiserver (v1.20.2): reboot Jobs, terminate, gpu-reset, manual.

Each test labels its Node and HealthEvents with a unique value and gives the controllers matching
selectors. Events start in phase Drained (the stages before are tested on their own). No job
controller runs here: the fake kubelet's `finish_job` plays it, stamping the Job's outcome.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ctlhelpers import action_count, clean_up, condition, env_fixture, eventually, phase, running_manager
from kubelet import finish_job, make_node
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.remediation import RemediationConfig, RemediationController
from nvsentinel.cluster.remediation.logic import STRATEGY_ANNOTATION, job_name
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.cluster.resolution.controller import ResolutionController
from nvsentinel.k8s import Kube, KubeNotFound
from nvsentinel.k8s.resources import EVENTS, HEALTHEVENTS, JOBS, NAMESPACES, NODES
from nvsentinel.policy.healthevent import Entity, HealthEvent, HealthEventSpec, format_time, utcnow
from nvsentinel.xid import Action

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/remediation"
GPU3 = "GPU-00000003-0000-4000-8000-000000000003"
GPU5 = "GPU-00000005-0000-4000-8000-000000000005"


class Env:
    def __init__(self, control_plane: Any, unique: str, *, provider_id: str | None = None) -> None:
        self.unique = unique
        self.ns = f"r-{unique}"
        self.node = f"remed-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)
        self.events: list[str] = []
        self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        make_node(self.kube, self.node, labels={LABEL: unique}, provider_id=provider_id)

    def selector(self) -> str:
        return f"{LABEL}={self.unique}"

    def event(self, name: str, action: Action = Action.RESTART_BM, *, gpu: str | None = GPU3,
              phase_: str = "Drained", annotations: dict[str, str] | None = None, healthy: bool = False,
              detected_at: _dt.datetime | None = None, last_remediation: _dt.datetime | None = None) -> dict:
        spec = HealthEventSpec(source="test", node_name=self.node, component_class="GPU",
                               check_name="xid-error-check", is_fatal=not healthy, is_healthy=healthy,
                               detected_at=detected_at or utcnow(), error_codes=() if healthy else ("79",),
                               recommended_action=Action.NONE if healthy else action, agent="test",
                               message="test fault", entities_impacted=(Entity("GPU", gpu),) if gpu else ())
        self.events.append(name)
        self.kube.create(HEALTHEVENTS, HealthEvent(name=name, spec=spec, labels={LABEL: self.unique},
                                                   annotations=annotations or {}).create_body())
        if healthy:
            return self.kube.get(HEALTHEVENTS, name)
        status: dict = {"phase": phase_, "conditions": [
            {"type": "PodsDrained", "status": "True", "reason": "Drained", "message": "test",
             "lastTransitionTime": format_time(utcnow())}]}
        if last_remediation is not None:
            status["lastRemediationTime"] = format_time(last_remediation)
        return self.kube.patch(HEALTHEVENTS, name, {"status": status}, subresource="status")

    def get(self, name: str) -> dict:
        return self.kube.get(HEALTHEVENTS, name)

    def jobs(self) -> dict[str, dict]:
        items, _ = self.kube.list(JOBS, self.ns)
        return {j["metadata"]["name"]: j for j in items}

    def event_reasons(self, involved: str, namespace: str = "default") -> set[str]:
        items, _ = self.kube.list(EVENTS, namespace, field_selector=f"involvedObject.name={involved}")
        return {e["reason"] for e in items}

    def close(self) -> None:
        clean_up(self.kube, events=self.events, nodes=[self.node], namespace=self.ns)
        self.kube.close()


env = env_fixture(Env)


@contextlib.asynccontextmanager
async def running(env: Env, *, dry_run: bool = False, resolution: bool = False, **cfg: Any
                  ) -> AsyncIterator[CollectorRegistry]:
    sel = env.selector()
    opts: dict[str, Any] = {"remediation_backoff": 0.2, "remediation_poll": 0.5} | cfg
    recs: list[Any] = [RemediationController(RemediationConfig(namespace=env.ns, node_selector=sel,
                                                               event_selector=sel, **opts))]
    if resolution:
        recs.append(ResolutionController(ResolutionConfig(node_selector=sel, event_selector=sel)))
    async with running_manager(env.kube, recs, env.ns, dry_run=dry_run) as (_, registry):
        yield registry


def remediated(obj: dict) -> dict:
    return condition(obj, "Remediated") or {}


async def counted(registry: CollectorRegistry, **want: float) -> None:
    """The actions counted reach `want` (the counter moves just after the status write a test sees)."""
    await eventually(lambda: all(action(registry, k.replace("_", "-")) == n for k, n in want.items()),
                     what=f"actions {want}")


def action(registry: CollectorRegistry, name: str) -> float:
    return action_count(registry, "remediation", name)


async def until(env: Env, name: str, pred: Any, what: str, timeout: float = 30.0) -> dict:
    return await eventually(lambda: (lambda o: pred(o) and o)(env.get(name)), what=what, timeout=timeout)


async def test_reboot_job_pinned_privileged_and_remediated_only_when_it_succeeds(env: Env) -> None:
    """Verify RESTART_BM → one privileged host Job pinned to the node → Remediated only after it succeeded."""
    ev = env.event("ev-reboot")
    async with running(env) as registry:
        rem = await until(env, "ev-reboot", lambda o: phase(o) == "Remediating", "Remediating")
        assert remediated(rem)["status"] == "False" and remediated(rem)["reason"] == "RebootJobCreated"
        assert rem["status"]["lastRemediationTime"]
        name = job_name("ev-reboot", 1)
        job = (await eventually(lambda: env.jobs().get(name), what="the reboot Job"))
        pod = job["spec"]["template"]["spec"]
        assert pod["nodeName"] == env.node and pod["hostPID"] is True and pod["restartPolicy"] == "Never"
        assert pod["containers"][0]["securityContext"]["privileged"] is True
        assert pod["containers"][0]["command"][-2:] == ["systemctl", "reboot"]
        assert {"operator": "Exists"} in pod["tolerations"]
        assert job["spec"]["backoffLimit"] == 0
        owner = job["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "HealthEvent" and owner["uid"] == ev["metadata"]["uid"]
        assert phase(env.get("ev-reboot")) == "Remediating"  # running: not yet
        finish_job(env.kube, env.ns, name, succeeded=True)
        done = await until(env, "ev-reboot", lambda o: phase(o) == "Remediated", "Remediated")
        assert remediated(done)["status"] == "True" and remediated(done)["reason"] == "RebootSucceeded"
        assert list(env.jobs()) == [name]
        await counted(registry, reboot=1, reboot_succeeded=1)
        # the Job is announced on the Node (naming the event); Normal decisions stay in the conditions
        await eventually(lambda: "RebootJobCreated" in env.event_reasons(env.node), what="RebootJobCreated on the Node")
        assert env.event_reasons("ev-reboot") == set()


async def test_failed_reboot_retries_with_backoff_then_asks_a_human(env: Env) -> None:
    """Verify a failed Job → a second attempt (new fixed name) → after the limit: Drained, RemediationFailed."""
    env.event("ev-fail")
    async with running(env, remediation_max_attempts=2) as registry:
        first = job_name("ev-fail", 1)
        await eventually(lambda: first in env.jobs(), what="attempt 1")
        finish_job(env.kube, env.ns, first, succeeded=False)
        second = job_name("ev-fail", 2)
        await eventually(lambda: second in env.jobs(), what="attempt 2 after the backoff")
        assert phase(env.get("ev-fail")) == "Remediating"
        finish_job(env.kube, env.ns, second, succeeded=False)
        held = await until(env, "ev-fail", lambda o: remediated(o).get("reason") == "RemediationFailed",
                           "RemediationFailed")
        assert phase(held) == "Drained" and remediated(held)["status"] == "False"
        assert "a human is needed" in remediated(held)["message"]
        assert sorted(env.jobs()) == sorted([first, second])
        await counted(registry, remediation_failed=1, reboot=2)
        await eventually(lambda: "RemediationFailed" in env.event_reasons(env.node),  # on the Node, where operators look
                         what="RemediationFailed on the Node")
    async with running(env, remediation_max_attempts=2):
        await until(env, "ev-fail", lambda o: phase(o) == "Drained", "still held after a restart")
        assert len(env.jobs()) == 2  # held: a restart starts nothing


async def test_a_restarted_controller_never_creates_a_second_reboot_job(env: Env) -> None:
    """Verify stopping the controller mid-reboot and starting a new one: the same Job is followed, not re-made."""
    env.event("ev-restart")
    name = job_name("ev-restart", 1)
    async with running(env):
        await eventually(lambda: name in env.jobs(), what="the reboot Job")
    first_uid = env.jobs()[name]["metadata"]["uid"]
    async with running(env) as registry:
        await until(env, "ev-restart", lambda o: phase(o) == "Remediating", "still Remediating")
        finish_job(env.kube, env.ns, name, succeeded=True)
        await until(env, "ev-restart", lambda o: phase(o) == "Remediated", "Remediated")
        assert action(registry, "reboot") == 0  # the new leader created nothing
    assert list(env.jobs()) == [name] and env.jobs()[name]["metadata"]["uid"] == first_uid


async def test_contact_support_stays_drained_awaiting_a_human(env: Env) -> None:
    """Verify CONTACT_SUPPORT → manual: phase stays Drained, condition + Warning Events say a human is needed."""
    env.event("ev-manual", Action.CONTACT_SUPPORT)
    async with running(env) as registry:
        held = await until(env, "ev-manual", lambda o: remediated(o).get("reason") == "ManualRemediationRequired",
                           "ManualRemediationRequired")
        assert phase(held) == "Drained" and remediated(held)["status"] == "False"
        assert "recommendedAction CONTACT_SUPPORT" in remediated(held)["message"]
        assert env.jobs() == {}
        await counted(registry, manual=1)
        await eventually(lambda: "ManualRemediationRequired" in env.event_reasons("ev-manual"),
                         what="a Warning on the HealthEvent")


async def test_annotation_overrides_the_recommended_action_and_a_bad_one_goes_to_a_human(env: Env) -> None:
    """Verify the strategy annotation wins over recommendedAction; an unknown strategy is held (InvalidStrategy)."""
    env.event("ev-ann", Action.CONTACT_SUPPORT, annotations={STRATEGY_ANNOTATION: "reboot"})
    env.event("ev-bad", Action.RESTART_BM, annotations={STRATEGY_ANNOTATION: "explode"})
    async with running(env):
        await eventually(lambda: job_name("ev-ann", 1) in env.jobs(), what="reboot chosen by annotation")
        bad = await until(env, "ev-bad", lambda o: remediated(o).get("reason") == "InvalidStrategy", "held")
        assert "'explode' is not one of" in remediated(bad)["message"] and phase(bad) == "Drained"
        assert job_name("ev-bad", 1) not in env.jobs()


async def test_escalation_after_repeated_remediations_of_the_same_gpu(env: Env) -> None:
    """Verify a GPU remediated N times in the window → EscalatedToSupport; another GPU on the node is not."""
    recent = utcnow() - _dt.timedelta(minutes=10)
    env.event("ev-old-1", phase_="Remediated", last_remediation=recent)
    env.event("ev-old-2", phase_="Remediated", last_remediation=recent + _dt.timedelta(minutes=1))
    env.event("ev-ancient", phase_="Remediated", last_remediation=utcnow() - _dt.timedelta(days=3))
    env.event("ev-again")
    env.event("ev-other-gpu", gpu=GPU5)
    async with running(env, escalation_threshold=2) as registry:
        esc = await until(env, "ev-again", lambda o: remediated(o).get("reason") == "EscalatedToSupport",
                          "EscalatedToSupport")
        assert phase(esc) == "Drained" and "CONTACT_SUPPORT" in remediated(esc)["message"]
        assert "ev-old-1" in remediated(esc)["message"] and "ev-ancient" not in remediated(esc)["message"]
        await eventually(lambda: job_name("ev-other-gpu", 1) in env.jobs(), what="the other GPU rebooted")
        assert job_name("ev-again", 1) not in env.jobs()
        await counted(registry, escalate=1)


async def test_gpu_reset_waits_for_a_verified_healthy_event_then_resolution_resolves(env: Env) -> None:
    """Verify COMPONENT_RESET → Remediating/GpuResetRequested; an older healthy event does not count; a healthy
    event after the request → Remediated/GpuResetVerified → Resolved and uncordoned by resolution."""
    env.kube.patch(NODES, env.node, {"spec": {"unschedulable": True}})
    env.event("ev-reset", Action.COMPONENT_RESET)
    async with running(env, resolution=True) as registry:
        req = await until(env, "ev-reset", lambda o: phase(o) == "Remediating", "Remediating")
        assert remediated(req)["reason"] == "GpuResetRequested" and GPU3 in remediated(req)["message"]
        asked = _dt.datetime.fromisoformat(req["status"]["lastRemediationTime"].replace("Z", "+00:00"))
        env.event("he-stale", healthy=True, detected_at=asked - _dt.timedelta(seconds=5))
        env.event("he-other-gpu", healthy=True, gpu=GPU5)
        await eventually(lambda: registry.get_sample_value(
            "nvsentinel_remediation_controller_reconciles_total") or 0, what="reconciles")
        assert phase(env.get("ev-reset")) == "Remediating"  # neither counts (and resolution waits)
        env.event("he-verified", healthy=True)
        done = await until(env, "ev-reset", lambda o: phase(o) == "Resolved", "Resolved")
        assert remediated(done)["status"] == "True" and remediated(done)["reason"] == "GpuResetVerified"
        assert "he-verified" in remediated(done)["message"]
        assert condition(done, "Resolved")["reason"] == "HealthyEventReceived"
        await counted(registry, gpu_reset_requested=1, gpu_reset_verified=1)
        assert env.jobs() == {}


async def test_gpu_reset_not_verified_in_time_asks_a_human(env: Env) -> None:
    """Verify a reset never verified → Drained with RemediationFailed after --gpu-reset-timeout."""
    env.event("ev-slow", Action.COMPONENT_RESET)
    async with running(env, gpu_reset_timeout=1.0):
        held = await until(env, "ev-slow", lambda o: remediated(o).get("reason") == "RemediationFailed",
                           "RemediationFailed")
        assert phase(held) == "Drained" and "not verified healthy within 1s" in remediated(held)["message"]


async def test_terminate_deletes_only_a_node_with_a_provider_id(control_plane, crd_installed, unique) -> None:
    """Verify REPLACE_VM: a node with providerID is deleted → Remediated, then Resolved; without one → held."""
    env = Env(control_plane, unique, provider_id=f"aws:///us-east-1a/i-{unique}")
    bare = Env(control_plane, unique + "b")
    try:
        env.event("ev-term", Action.REPLACE_VM)
        bare.event("ev-noid", Action.REPLACE_VM)
        async with running(env, resolution=True) as registry:
            done = await until(env, "ev-term", lambda o: phase(o) == "Resolved", "Resolved after terminate")
            assert remediated(done)["reason"] == "NodeTerminated" and condition(done, "Resolved")["reason"] == \
                "NodeTerminated"
            with pytest.raises(KubeNotFound):
                env.kube.get(NODES, env.node)
            await counted(registry, terminate=1)
        async with running(bare):
            held = await until(bare, "ev-noid", lambda o: remediated(o).get("reason") == "TerminateNotPossible",
                               "TerminateNotPossible")
            assert phase(held) == "Drained" and "no spec.providerID" in remediated(held)["message"]
            assert bare.kube.get(NODES, bare.node)  # still there
    finally:
        env.close()
        bare.close()


async def test_dry_run_records_the_strategy_and_runs_nothing(env: Env) -> None:
    """Verify dry-run: the condition says what would run; phase stays Drained, no Job."""
    env.event("ev-dry")
    async with running(env, dry_run=True) as registry:
        ev = await until(env, "ev-dry", lambda o: remediated(o).get("reason") == "DryRunRemediation", "dry-run")
        assert "would remediate" in remediated(ev)["message"] and "reboot" in remediated(ev)["message"]
        assert phase(ev) == "Drained" and env.jobs() == {}
        await counted(registry, dry_run=1)
