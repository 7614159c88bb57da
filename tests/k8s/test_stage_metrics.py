"""The dashboard's stage metrics on a real kube-apiserver (v1.20.2): the whole chain in one Manager.

time_to_{quarantine,drain,remediate,resolve}_seconds are observed once per event, when the stage's
decision moves it into its phase (never on a message refresh or a rerun), and measure from the fault's
detection (`policy.evidence.observed_at`). The TTL stage's healthevents{phase} gauge follows the events
through the chain, every phase present from the start. No job controller runs: `finish_job` plays it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ctlhelpers import clean_up, env_fixture, eventually, phase, running_manager
from kubelet import finish_job, make_node
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.cluster.drain.controller import DrainController
from nvsentinel.cluster.quarantine.config import QuarantineConfig
from nvsentinel.cluster.quarantine.controller import QuarantineController
from nvsentinel.cluster.remediation import RemediationConfig, RemediationController
from nvsentinel.cluster.remediation.logic import job_name
from nvsentinel.cluster.resolution.config import ResolutionConfig
from nvsentinel.cluster.resolution.controller import RESOLVED_REASONS, ResolutionController
from nvsentinel.cluster.ttl.config import TTLConfig
from nvsentinel.cluster.ttl.controller import TTLController
from nvsentinel.k8s import Kube
from nvsentinel.k8s.resources import HEALTHEVENTS, JOBS, NAMESPACES
from nvsentinel.policy.healthevent import Entity, HealthEvent, HealthEventSpec, Phase, utcnow
from nvsentinel.xid import Action

pytestmark = pytest.mark.anyio

LABEL = "nvsentinel-test/stage-metrics"
GPU = "GPU-00000003-0000-4000-8000-000000000003"
#: how long before the test each fault was detected: every histogram observation is at least this
DETECTED_AGO = 120.0
HISTOGRAMS = {"quarantine": "time_to_quarantine_seconds", "drain": "time_to_drain_seconds",
              "remediation": "time_to_remediate_seconds", "resolution": "time_to_resolve_seconds"}


class Env:
    def __init__(self, control_plane: Any, unique: str) -> None:
        self.unique = unique
        self.ns = f"sm-{unique}"
        self.kube: Kube = control_plane.kube(qps=0)
        self.nodes: list[str] = []
        self.events: list[str] = []
        self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})

    def selector(self) -> str:
        return f"{LABEL}={self.unique}"

    def node(self, name: str) -> None:
        self.nodes.append(name)
        make_node(self.kube, name, labels={LABEL: self.unique})

    def event(self, name: str, node: str, *, healthy: bool = False) -> None:
        detected = utcnow() - _dt.timedelta(seconds=0 if healthy else DETECTED_AGO)
        spec = HealthEventSpec(source="test", node_name=node, component_class="GPU", check_name="xid-error-check",
                               is_fatal=not healthy, is_healthy=healthy, detected_at=detected,
                               error_codes=() if healthy else ("79",),
                               recommended_action=Action.NONE if healthy else Action.RESTART_BM, agent="test",
                               message="recovered" if healthy else "Xid 79", entities_impacted=(Entity("GPU", GPU),))
        self.events.append(name)
        self.kube.create(HEALTHEVENTS, HealthEvent(name=name, spec=spec, labels={LABEL: self.unique}).create_body())

    def phases(self) -> dict[str, int]:
        """The test's HealthEvents by phase, as the server has them."""
        items, _ = self.kube.list(HEALTHEVENTS, label_selector=self.selector())
        out = {str(p): 0 for p in Phase}
        for obj in items:
            out[phase(obj)] += 1
        return out

    def close(self) -> None:
        clean_up(self.kube, events=self.events, nodes=self.nodes, namespace=self.ns)
        self.kube.close()


env = env_fixture(Env)


@contextlib.asynccontextmanager
async def chain(env: Env) -> AsyncIterator[CollectorRegistry]:
    sel = env.selector()
    recs = [QuarantineController(QuarantineConfig(node_selector=sel, event_selector=sel, breaker_percent=100)),
            DrainController(DrainConfig(node_selector=sel, event_selector=sel, drain_pdb_retry=0.5, drain_poll=0.5)),
            RemediationController(RemediationConfig(namespace=env.ns, node_selector=sel, event_selector=sel,
                                                    remediation_backoff=0.2, remediation_poll=0.5)),
            ResolutionController(ResolutionConfig(node_selector=sel, event_selector=sel)),
            TTLController(TTLConfig(event_selector=sel))]
    async with running_manager(env.kube, recs, env.ns) as (_, registry):
        yield registry


def observed(registry: CollectorRegistry, stage: str, what: str = "count", **labels: str) -> float:
    """A stage histogram's _count or _sum (summed over its labels when none are given)."""
    name = f"nvsentinel_{stage}_controller_{HISTOGRAMS[stage]}_{what}"
    if labels or stage != "resolution":
        return registry.get_sample_value(name, labels or None) or 0.0
    return sum(registry.get_sample_value(name, {"reason": r}) or 0.0 for r in RESOLVED_REASONS)


def phase_gauge(registry: CollectorRegistry) -> dict[str, float | None]:
    return {str(p): registry.get_sample_value("nvsentinel_ttl_controller_healthevents", {"phase": str(p)})
            for p in Phase}


async def gauge_matches_server(env: Env, registry: CollectorRegistry, what: str, **want: int) -> None:
    """healthevents{phase} equals the server's count of the test's events by phase, and that is `want`."""
    def check() -> bool:
        server = env.phases()
        return all(server[p] == n for p, n in want.items()) and phase_gauge(registry) == {
            p: float(n) for p, n in server.items()}
    await eventually(check, timeout=60, what=what)


async def test_each_stage_observes_its_decision_once_and_the_phase_gauge_follows(env: Env) -> None:
    """Verify fatal → Quarantined → Drained → Remediated → Resolved counts one observation in each stage's
    histogram, measured from detection, and healthevents{phase} follows the event (all phases at 0 first)."""
    node, fatal, healthy = f"sm-n-{env.unique}", f"sm-f-{env.unique}", f"sm-h-{env.unique}"
    env.node(node)
    started = time.monotonic()
    async with chain(env) as registry:
        assert phase_gauge(registry) == {str(p): 0.0 for p in Phase}, "every phase declared before any event"
        for stage in HISTOGRAMS:
            assert observed(registry, stage) == 0.0, stage
        env.event(fatal, node)
        await eventually(lambda: env.kube.list(JOBS, env.ns)[0], what="reboot Job")
        await gauge_matches_server(env, registry, "gauge at Remediating", Remediating=1)
        assert observed(registry, "quarantine") == 1 and observed(registry, "drain") == 1
        assert observed(registry, "remediation") == 0 and observed(registry, "resolution") == 0

        finish_job(env.kube, env.ns, job_name(fatal, 1), succeeded=True)
        await gauge_matches_server(env, registry, "gauge at Remediated", Remediated=1)
        await eventually(lambda: observed(registry, "remediation") == 1, what="time_to_remediate observed")

        env.event(healthy, node, healthy=True)
        await eventually(lambda: phase(env.kube.get(HEALTHEVENTS, fatal)) == "Resolved", what="Resolved")
        await eventually(lambda: observed(registry, "resolution", reason="HealthyEventReceived") == 1,
                         what="time_to_resolve observed")
        # the healthy event counts under whatever phase the chain leaves it in (the server says which)
        await gauge_matches_server(env, registry, "gauge at Resolved", Remediated=0)
        assert phase_gauge(registry)["Resolved"] >= 1
        elapsed = time.monotonic() - started

        # once per decision: the reruns, refreshes and the healthy event's passes added nothing
        for stage in HISTOGRAMS:
            assert observed(registry, stage) == 1, stage
            total = observed(registry, stage, "sum")
            assert DETECTED_AGO - 1 <= total <= DETECTED_AGO + elapsed + 5, (stage, total)
        assert observed(registry, "resolution", reason="NodeTerminated") == 0

        env.kube.delete(HEALTHEVENTS, fatal)
        env.kube.delete(HEALTHEVENTS, healthy)
        await gauge_matches_server(env, registry, "gauge after deletes", **{str(p): 0 for p in Phase})
