"""The remediation agent end to end: the daemon (`python -m nvsentinel.daemons.remediation_agent`)
against the real kube-apiserver v1.20.2 and a real Device API server. The test plays the other two
parties of the gpu-reset handshake: the remediation controller (it patches HealthEvent status) and
the NVML provider (it writes GPU conditions through the Device API client).

Isolated by node name (a unique suffix per test): the control plane is shared by the session.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import ControlPlane, free_port
from procs import Daemon, http_get, wait_until
from rbac import service_account_kubeconfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from apiserver import ThreadServer, make_settings, temp_socket_dir  # noqa: E402

from nvsentinel import errors  # noqa: E402
from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.policy.healthevent import (  # noqa: E402
    LABEL_COMPONENT_CLASS, LABEL_IS_FATAL, LABEL_NODE, LABEL_SOURCE, Condition, HealthEvent, HealthEventStatus,
    Phase, format_time, utcnow,
)
from nvsentinel.k8s import Forbidden, Kube  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS  # noqa: E402

UUIDS = [
    "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb",
    "GPU-976baef6-3b1f-dc48-2908-168925b1cdbf",
    "GPU-0d1b0f43-1453-595a-d607-8ca6a707ec5e",
]
#: Exactly what docs/remediation-agent.md says the agent needs, and nothing more.
AGENT_RULES = [{"apiGroups": ["nvsentinel.nvidia.com"], "resources": ["healthevents"],
                "verbs": ["get", "list", "watch", "create"]}]


# ---- the remediation controller's side (HealthEvents) ----

def fatal_event(kube: Kube, node: str, name: str, *uuids: str, codes: tuple[str, ...] = ("48",)) -> str:
    """Create a fatal HealthEvent of `node` as the publisher would (labels included)."""
    kube.create(HEALTHEVENTS, {
        "apiVersion": "nvsentinel.nvidia.com/v1alpha1", "kind": "HealthEvent",
        "metadata": {"name": name, "labels": {LABEL_NODE: node, LABEL_COMPONENT_CLASS: "GPU",
                                              LABEL_IS_FATAL: "true", LABEL_SOURCE: "nvml-provider"}},
        "spec": {"source": "nvml-provider", "agent": "nvsentinel-publisher", "nodeName": node,
                 "componentClass": "GPU", "checkName": "xid-error-check", "isFatal": True, "isHealthy": False,
                 "recommendedAction": "COMPONENT_RESET", "errorCodes": list(codes),
                 "entitiesImpacted": [{"type": "GPU", "value": u} for u in uuids],
                 "detectedAt": format_time(utcnow() - dt.timedelta(minutes=10)),
                 "message": "XID 48: Double Bit ECC Error", "metadata": {"conditionType": "NvmlHealthy",
                                                                         "reason": "Xid48"}},
    })
    return name


def set_phase(kube: Kube, name: str, phase: Phase, reason: str, remediated_at: dt.datetime) -> None:
    """Patch the status like the remediation controller (phase, lastRemediationTime, Remediated)."""
    status = HealthEventStatus(
        phase=phase, last_remediation_time=remediated_at,
        conditions=(Condition("Remediated", "True" if phase == Phase.REMEDIATED else "False", reason,
                              "set by the test", utcnow()),))
    kube.patch(HEALTHEVENTS, name, {"status": status.to_dict()}, subresource="status")


def node_events(kube: Kube, node: str) -> list[HealthEvent]:
    items, _ = kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")
    return [HealthEvent.from_dict(i) for i in items]


def verified(kube: Kube, node: str) -> list[HealthEvent]:
    return [e for e in node_events(kube, node) if e.spec.source == "remediation-agent"]


# ---- the NVML provider's side (Device API) ----

def condition(type_: str, status: str, reason: str, message: str, when: dt.datetime | None = None) -> gpu_pb2.Condition:
    c = gpu_pb2.Condition(type=type_, status=status, reason=reason, message=message)
    c.last_transition_time.FromDatetime((when or utcnow()).astimezone(dt.timezone.utc).replace(tzinfo=None))
    return c


def register(client: DeviceApiClient, uuid: str, *conds: gpu_pb2.Condition) -> None:
    g = gpu_pb2.Gpu()
    g.metadata.name = g.spec.uuid = uuid
    client.create_gpu(g)
    for c in conds:
        write(client, uuid, c)


def write(client: DeviceApiClient, uuid: str, cond: gpu_pb2.Condition) -> None:
    """Merge one condition by type with the resource version, like every provider (rule 2)."""
    for _ in range(20):
        gpu = client.get_gpu(uuid)
        status = gpu_pb2.GpuStatus()
        status.CopyFrom(gpu.status)
        del status.conditions[:]
        status.conditions.extend(c for c in gpu.status.conditions if c.type != cond.type)
        status.conditions.append(cond)
        try:
            client.update_gpu_status(uuid, status, gpu.resource_version)
            return
        except errors.Conflict:
            continue  # the agent wrote in between
    raise AssertionError(f"could not write {cond.type} on {uuid}")


def gpu_conditions(client: DeviceApiClient, uuid: str) -> dict[str, gpu_pb2.Condition]:
    return {c.type: c for c in client.get_gpu(uuid).status.conditions}


def request_on(client: DeviceApiClient, uuid: str) -> str | None:
    """The event named by the GPU's ResetRequested, or None."""
    c = gpu_conditions(client, uuid).get("ResetRequested")
    return c.message if c is not None else None


def ack(client: DeviceApiClient, uuid: str, event: str) -> dt.datetime:
    """The provider's one write after a successful reset: NvmlHealthy True GpuReset + GpuReset ResetVerified."""
    now = utcnow()
    gpu = client.get_gpu(uuid)
    status = gpu_pb2.GpuStatus()
    status.CopyFrom(gpu.status)
    del status.conditions[:]
    status.conditions.extend(c for c in gpu.status.conditions if c.type not in ("NvmlHealthy", "GpuReset"))
    status.conditions.append(condition("NvmlHealthy", "True", "GpuReset",
                                       f"GPU reset and re-verified (requested by HealthEvent {event})", now))
    status.conditions.append(condition("GpuReset", "True", "ResetVerified", f"{event}: GPU reset and re-verified", now))
    status.recommended_action = "NONE"
    client.update_gpu_status(uuid, status, gpu.resource_version)
    return now


# ---- the daemon ----

class Agent(Daemon):
    def __init__(self, kubeconfig: str, address: str, node: str) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k != "NODE_NAME" and not k.startswith("REMEDIATION_AGENT_")}
        super().__init__("remediation_agent", [
            "--kubeconfig", kubeconfig, "--address", address, "--node-name", node,
            "--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port),
            "--backoff-max", "1", "--log-level", "DEBUG"], env=env, name=f"remediation-agent-{node}")

    def ready(self) -> bool:
        return http_get(self.health_port, "/readyz", timeout=2)[0] == 200

    def metric(self, name: str) -> float:
        status, body = http_get(self.metrics_port, "/metrics")
        assert status == 200
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"no metric {name}")


@pytest.fixture
def device_api() -> Iterator[tuple[ThreadServer, DeviceApiClient]]:
    with temp_socket_dir() as d:
        server = ThreadServer(make_settings(d)).start()
        client = DeviceApiClient(server.tcp, timeout=5)
        try:
            yield server, client
        finally:
            client.close()
            server.stop()


def test_gpu_reset_handshake_on_least_privilege(control_plane: ControlPlane, crd_installed: None, kube: Kube,
                                                unique: str, tmp_path: Path,
                                                device_api: tuple[ThreadServer, DeviceApiClient]) -> None:
    """Verify, with only healthevents get/list/watch/create: a Remediating/GpuResetRequested event
    gets ResetRequested on its GPU only; the provider's ResetVerified answer removes it; a request
    whose event moves on or is deleted is removed; another node's event is never acted on."""
    server, client = device_api
    node, other = f"ra-hs-{unique}", f"ra-other-{unique}"
    kc = service_account_kubeconfig(kube, control_plane.kubeconfig, f"ra-{unique}", "remediation-agent",
                                    AGENT_RULES, out=tmp_path / "agent.kubeconfig")
    sa = Kube.connect(kc)
    try:
        sa.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")
        with pytest.raises(Forbidden):
            sa.patch(HEALTHEVENTS, "anything", {"status": {"phase": "Resolved"}}, subresource="status")
        with pytest.raises(Forbidden):
            sa.delete(HEALTHEVENTS, "anything")
    finally:
        sa.close()
    for u in UUIDS[:2]:
        register(client, u, condition("NvmlHealthy", "False", "Xid48", "XID 48: Double Bit ECC Error"))
    register(client, UUIDS[2], condition("NvmlHealthy", "True", "NvmlOk", "NVML reports no fatal error"))
    agent = Agent(kc, server.tcp, node).start()
    try:
        wait_until(agent.ready, what="agent ready", daemons=[agent])
        t = utcnow()
        # another node's event names GPU 2: its label does not match, the agent never sees it
        set_phase(kube, fatal_event(kube, other, f"{other}.other", UUIDS[2]), Phase.REMEDIATING, "GpuResetRequested", t)

        e1 = fatal_event(kube, node, f"{node}.e1", UUIDS[0])
        assert request_on(client, UUIDS[0]) is None  # New: nothing asked yet
        set_phase(kube, e1, Phase.REMEDIATING, "GpuResetRequested", t)
        wait_until(lambda: request_on(client, UUIDS[0]) == e1, what="ResetRequested on GPU 0", daemons=[agent])
        req = gpu_conditions(client, UUIDS[0])["ResetRequested"]
        assert (req.status, req.reason, req.message) == ("True", "RemediationRequested", e1)
        assert abs(req.last_transition_time.ToDatetime(dt.timezone.utc) - utcnow()) < dt.timedelta(seconds=30)
        nvml = gpu_conditions(client, UUIDS[0])["NvmlHealthy"]
        assert (nvml.status, nvml.reason) == ("False", "Xid48")  # another owner's condition: untouched
        assert client.get_gpu(UUIDS[0]).status.recommended_action == ""
        assert request_on(client, UUIDS[1]) is None and request_on(client, UUIDS[2]) is None

        # the provider resets GPU 0 and answers: the request goes, the answer and NvmlHealthy stay
        ack(client, UUIDS[0], e1)
        wait_until(lambda: request_on(client, UUIDS[0]) is None, what="request answered", daemons=[agent])
        conds = gpu_conditions(client, UUIDS[0])
        assert sorted(conds) == ["GpuReset", "NvmlHealthy"]
        assert (conds["NvmlHealthy"].status, conds["NvmlHealthy"].reason) == ("True", "GpuReset")
        agent.wait_log('msg="reset request removed" gpu=' + UUIDS[0])
        assert "why=answered" in agent.text()

        # a request whose event moves on (the controller cancelled it) is withdrawn
        e2 = fatal_event(kube, node, f"{node}.e2", UUIDS[1])
        set_phase(kube, e2, Phase.REMEDIATING, "GpuResetRequested", utcnow())
        wait_until(lambda: request_on(client, UUIDS[1]) == e2, what="ResetRequested on GPU 1", daemons=[agent])
        kube.patch(HEALTHEVENTS, e2, {"status": {"phase": "Cancelled"}}, subresource="status")
        wait_until(lambda: request_on(client, UUIDS[1]) is None, what="request withdrawn", daemons=[agent])
        # ... and one whose event is deleted
        e3 = fatal_event(kube, node, f"{node}.e3", UUIDS[1])
        set_phase(kube, e3, Phase.REMEDIATING, "GpuResetRequested", utcnow())
        wait_until(lambda: request_on(client, UUIDS[1]) == e3, what="ResetRequested for e3", daemons=[agent])
        kube.delete(HEALTHEVENTS, e3)
        wait_until(lambda: request_on(client, UUIDS[1]) is None, what="request of a deleted event removed",
                   daemons=[agent])
        assert "why=withdrawn" in agent.text()

        assert request_on(client, UUIDS[2]) is None  # the other node's event was never acted on
        assert verified(kube, node) == []  # nothing was Remediated
        assert agent.metric("nvsentinel_remediation_agent_reset_requests_written_total") == 3
        assert agent.metric("nvsentinel_remediation_agent_reset_requests_removed_total") == 3
        assert agent.metric('nvsentinel_remediation_agent_errors_total{kind="kube"}') == 0
        assert "forbidden" not in agent.text().lower()
        assert agent.terminate() == 0
    finally:
        agent.close()


def test_verification_restarts_and_outages(control_plane: ControlPlane, crd_installed: None, kube: Kube,
                                           unique: str) -> None:
    """Verify a Remediated event earns exactly one verified healthy event, for the GPU verified after
    the remediation only, with every contract field; a restarted agent adds none; a 409 counts as
    done; a Device API restart and an API server outage are survived, each with its work done."""
    node = f"ra-ver-{unique}"
    port = free_port()
    t = utcnow().replace(microsecond=700_000) - dt.timedelta(minutes=5)
    t_whole = t.replace(microsecond=0)  # the contract compares with whole seconds
    gpus = {
        UUIDS[0]: condition("NvmlHealthy", "True", "GpuReset", "GPU reset and re-verified", t_whole),  # == T: verified
        UUIDS[1]: condition("NvmlHealthy", "False", "Xid48", "XID 48: Double Bit ECC Error", t - dt.timedelta(hours=1)),
        UUIDS[2]: condition("NvmlHealthy", "True", "NvmlOk", "NVML reports no fatal error", t_whole - dt.timedelta(seconds=1)),
    }
    with temp_socket_dir() as d:
        server = ThreadServer(make_settings(d, grpc_address=f"127.0.0.1:{port}")).start()
        client = DeviceApiClient(server.tcp, timeout=5)
        agent: Agent | None = None
        try:
            for u, c in gpus.items():
                register(client, u, c)
            agent = Agent(control_plane.kubeconfig, server.tcp, node).start()
            wait_until(agent.ready, what="agent ready", daemons=[agent])

            e4 = fatal_event(kube, node, f"{node}.e4", *UUIDS, codes=("48", "79"))
            set_phase(kube, e4, Phase.REMEDIATED, "GpuResetVerified", t)
            (h,) = wait_until(lambda: verified(kube, node), what="the verified healthy event", daemons=[agent])
            when = gpus[UUIDS[0]].last_transition_time.ToDatetime(dt.timezone.utc)
            assert h.name == f"{node}.196b7c1a.verified.{int(when.timestamp())}"
            s = h.spec
            assert (s.source, s.agent, s.node_name, s.component_class, s.check_name) == (
                "remediation-agent", "nvsentinel-remediation-agent", node, "GPU", "gpu-health-check")
            assert (s.is_fatal, s.is_healthy, s.recommended_action) == (False, True, "NONE")
            assert s.error_codes == ("48", "79")
            assert [(e.type, e.value) for e in s.entities_impacted] == [("GPU", UUIDS[0])]
            assert s.message == f"GPU {UUIDS[0]} verified healthy after remediation of HealthEvent {e4}"
            assert s.detected_at == when
            assert dict(s.metadata) == {"remediatedEvent": e4, "reason": "VerifiedAfterRemediation"}
            assert dict(h.labels) == {LABEL_NODE: node, LABEL_COMPONENT_CLASS: "GPU", LABEL_IS_FATAL: "false",
                                      LABEL_SOURCE: "remediation-agent"}
            assert h.status.phase == Phase.NEW
            time.sleep(1.5)  # GPU 1 (still False) and GPU 2 (True since before T) earn nothing
            assert [v.name for v in verified(kube, node)] == [h.name]
            assert agent.metric("nvsentinel_remediation_agent_verifications_created_total") == 1

            # a restarted agent finds the event in its cache: nothing new, nothing sent
            assert agent.terminate() == 0
            agent.close()
            agent = Agent(control_plane.kubeconfig, server.tcp, node).start()
            wait_until(agent.ready, what="agent ready again", daemons=[agent])
            time.sleep(1.0)
            assert [v.name for v in verified(kube, node)] == [h.name]
            assert agent.metric("nvsentinel_remediation_agent_verifications_created_total") == 0
            # hidden from its cache (the node label removed), the agent creates it again: 409, done
            kube.patch(HEALTHEVENTS, h.name, {"metadata": {"labels": {LABEL_NODE: None}}})
            wait_until(lambda: agent.metric("nvsentinel_remediation_agent_verifications_existing_total") >= 1,
                       what="a 409 on the re-create", daemons=[agent])
            assert verified(kube, node) == []  # still the one object, unlabelled: no duplicate was made
            assert kube.get(HEALTHEVENTS, h.name)["metadata"]["uid"]
            assert agent.metric("nvsentinel_remediation_agent_verifications_created_total") == 0
            # the resolution controller resolves e4: it earns nothing any more
            kube.patch(HEALTHEVENTS, e4, {"status": {"phase": "Resolved"}}, subresource="status")

            # the Device API server restarts (in memory: every GPU gone); the providers re-register
            e5 = fatal_event(kube, node, f"{node}.e5", UUIDS[1])
            t5 = utcnow()
            set_phase(kube, e5, Phase.REMEDIATING, "GpuResetRequested", t5)
            wait_until(lambda: request_on(client, UUIDS[1]) == e5, what="ResetRequested on GPU 1", daemons=[agent])
            client.close()
            server.stop()
            time.sleep(0.5)
            server = ThreadServer(make_settings(d, grpc_address=f"127.0.0.1:{port}")).start()
            client = DeviceApiClient(server.tcp, timeout=5)
            for u, c in gpus.items():
                register(client, u, c)
            wait_until(lambda: request_on(client, UUIDS[1]) == e5, what="the request written again after the restart",
                       daemons=[agent])
            assert agent.metric('nvsentinel_remediation_agent_errors_total{kind="internal"}') == 0

            # the API server goes away: the provider's answer is still seen and the request removed
            control_plane.stop_apiserver()
            try:
                acked = ack(client, UUIDS[1], e5)
                wait_until(lambda: request_on(client, UUIDS[1]) is None, what="request answered during the outage",
                           daemons=[agent])
                wait_until(lambda: "informer retrying" in agent.text(), what="the informer retrying", daemons=[agent])
            finally:
                control_plane.start_apiserver()
            # back: the controller marks e5 Remediated; the GPU verified at the ack earns its event
            set_phase(kube, e5, Phase.REMEDIATED, "GpuResetVerified", t5)
            want = f"{node}.976baef6.verified.{int(acked.timestamp())}"
            (h5,) = wait_until(lambda: [v for v in verified(kube, node) if v.name == want], timeout=60,
                               what="the verified event after the outage", daemons=[agent])
            assert h5.spec.metadata["remediatedEvent"] == e5 and h5.gpu_uuids == (UUIDS[1],)
            assert len(verified(kube, node)) == 1
            wait_until(agent.ready, what="ready after the outage", daemons=[agent])
            assert agent.terminate() == 0
        finally:
            if agent is not None:
                agent.close()
            client.close()
            server.stop()
