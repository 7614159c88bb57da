"""The agent's reconcile against a real Device API server (in a thread) and a recording Kubernetes
stand-in: the condition contract under a racing provider, and failures that are retried, not fatal.
The cluster-side proof is tests/k8s/test_remediation_agent.py."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agenthelpers import NODE, T0, UUIDS, cond, event

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from apiserver import ThreadServer, make_settings, temp_socket_dir  # noqa: E402

from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.policy.healthevent import Phase  # noqa: E402
from nvsentinel.k8s import AlreadyExists, Invalid, ServerUnavailable  # noqa: E402
from nvsentinel.k8s.kube import FlowControl  # noqa: E402
from nvsentinel.node.remediation_agent.agent import RemediationAgent  # noqa: E402


class FakeKube:
    """Creates by name like the API server (409 on a duplicate); `fail` is raised instead when set."""

    flow = FlowControl("client", 0, 1)  # what AsyncKube reads to build its limiters

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.fail: Exception | None = None

    def create(self, res: Any, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        name = body["metadata"]["name"]
        if name in self.objects:
            raise AlreadyExists(f"{name} exists", status=409)
        self.objects[name] = body
        return body


class RacingClient:
    """The real client, but right after the agent's first read of a GPU a provider writes it, so
    the agent's write carries a stale resource version."""

    def __init__(self, client: DeviceApiClient, provider_write: Callable[[], None]) -> None:
        self._client = client
        self._write = provider_write
        self.raced = 0

    def get_gpu(self, name: str, **kw: Any) -> gpu_pb2.Gpu:
        gpu = self._client.get_gpu(name, **kw)
        if not self.raced:
            self.raced += 1
            self._write()
        return gpu

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
def server() -> Iterator[ThreadServer]:
    with temp_socket_dir() as d:
        srv = ThreadServer(make_settings(d)).start()
        try:
            yield srv
        finally:
            srv.stop()


def put_gpu(client: DeviceApiClient, uuid: str, *conds: gpu_pb2.Condition) -> None:
    g = gpu_pb2.Gpu()
    g.metadata.name = g.spec.uuid = uuid
    client.create_gpu(g)
    set_conditions(client, uuid, *conds)


def set_conditions(client: DeviceApiClient, uuid: str, *conds: gpu_pb2.Condition) -> None:
    status = gpu_pb2.GpuStatus()
    status.conditions.extend(conds)
    client.update_gpu_status(uuid, status)


def add_condition(client: DeviceApiClient, uuid: str, c: gpu_pb2.Condition) -> None:
    gpu = client.get_gpu(uuid)
    status = gpu_pb2.GpuStatus()
    status.CopyFrom(gpu.status)
    status.conditions.append(c)
    client.update_gpu_status(uuid, status, gpu.resource_version)


def types(client: DeviceApiClient, uuid: str) -> list[tuple[str, str, str]]:
    return [(c.type, c.status, c.message) for c in client.get_gpu(uuid).status.conditions]


def wait(pred: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def cached_types(agent: RemediationAgent, uuid: str) -> list[str]:
    gpu = agent.gpus.get(uuid)
    return [c.type for c in gpu.status.conditions] if gpu is not None else []


def test_request_survives_a_racing_provider_and_goes_when_answered(server):
    """Verify the request lands on the asked-for GPU only, after a Conflict with a provider's write
    that it keeps; a settled GPU is not written again; the provider's answer removes the request."""
    client = DeviceApiClient(server.tcp, timeout=5)
    put_gpu(client, UUIDS[0], cond("NvmlHealthy", "False", "Xid48"))
    put_gpu(client, UUIDS[1], cond("NvmlHealthy", "False", "Xid48"))
    racing = RacingClient(client, lambda: add_condition(client, UUIDS[0], cond("KmsgHealthy", "False", "Xid48")))
    agent = RemediationAgent(FakeKube(), racing, node_name=NODE)
    try:
        agent.gpus.start()
        assert agent.gpus.wait_for_sync(10)
        agent.on_healthevent("ADDED", event("ev", UUIDS[0]).to_dict(), None)
        assert agent.reconcile() is True
        assert racing.raced == 1
        assert types(client, UUIDS[0]) == [("NvmlHealthy", "False", "NvmlHealthy Xid48"),
                                           ("KmsgHealthy", "False", "KmsgHealthy Xid48"),
                                           ("ResetRequested", "True", "ev")]
        assert [t for t, _, _ in types(client, UUIDS[1])] == ["NvmlHealthy"]
        assert agent.metrics.requests_written._value.get() == 1

        wait(lambda: "ResetRequested" in cached_types(agent, UUIDS[0]), "the informer to see the request")
        rv = client.get_gpu(UUIDS[0]).resource_version
        assert agent.reconcile() is True
        assert client.get_gpu(UUIDS[0]).resource_version == rv  # nothing to write: nothing written

        add_condition(client, UUIDS[0], cond("GpuReset", "True", "ResetVerified", T0 + 5, "ev: GPU reset and re-verified"))
        wait(lambda: "GpuReset" in cached_types(agent, UUIDS[0]), "the informer to see the answer")
        assert agent.reconcile() is True
        assert [t for t, _, _ in types(client, UUIDS[0])] == ["NvmlHealthy", "KmsgHealthy", "GpuReset"]
        assert agent.metrics.requests_removed._value.get() == 1

        # the event moves on: nothing asks any more, nothing is written
        agent.on_healthevent("MODIFIED", event("ev", UUIDS[0], phase=Phase.REMEDIATED).to_dict(), None)
        agent.on_healthevent("DELETED", event("ev", UUIDS[0]).to_dict(), None)
        assert agent.events() == []
        assert agent.reconcile() is True
        assert agent.metrics.requests_written._value.get() == 1
    finally:
        agent.stop()
        client.close()


def test_failures_are_counted_and_retried_never_raised(server):
    """Verify a Device API outage fails only the GPU writes (the creates still go out), an API
    server outage fails the creates; both make reconcile report a retry. A create that succeeded
    is not sent again, a 409 counts as done, and an Invalid body is dropped."""
    client = DeviceApiClient(server.tcp, timeout=5)
    put_gpu(client, UUIDS[0], cond("NvmlHealthy", "False", "Xid48"))
    put_gpu(client, UUIDS[1], cond("NvmlHealthy", "True", "GpuReset", T0 + 10))
    kube = FakeKube()
    agent = RemediationAgent(kube, client, node_name=NODE)
    try:
        agent.gpus.start()
        assert agent.gpus.wait_for_sync(10)
        agent.on_healthevent("ADDED", event("asks", UUIDS[0]).to_dict(), None)
        agent.on_healthevent("ADDED", event("done", UUIDS[1], phase=Phase.REMEDIATED).to_dict(), None)

        kube.fail = ServerUnavailable("connection refused")
        assert agent.reconcile() is False
        assert agent.metrics.errors.labels("kube")._value.get() == 1
        assert kube.objects == {}
        assert [t for t, _, _ in types(client, UUIDS[0])] == ["NvmlHealthy", "ResetRequested"]

        kube.fail = None
        assert agent.reconcile() is True
        (name,) = kube.objects
        assert name == f"{NODE}.976baef6.verified.{T0 + 10}"
        calls = kube.calls
        assert agent.reconcile() is True
        assert kube.calls == calls  # known to exist: not sent again

        again = RemediationAgent(kube, client, node_name=NODE)  # a restarted agent: 409, done
        again.gpus.start()
        assert again.gpus.wait_for_sync(10)
        again.on_healthevent("ADDED", event("done", UUIDS[1], phase=Phase.REMEDIATED).to_dict(), None)
        assert again.reconcile() is True
        assert again.metrics.verifications_existing._value.get() == 1
        assert len(kube.objects) == 1
        again.stop()

        # GPU 1 verified again later (a second remediation): a new name; then the Device API goes away
        set_conditions(client, UUIDS[1], cond("NvmlHealthy", "True", "GpuReset", T0 + 20))
        wait(lambda: agent.gpus.get(UUIDS[1]).status.conditions[0].last_transition_time.seconds == T0 + 20,
             "the informer to see the new transition")
        server.stop()  # the GPU cache stays
        agent.on_healthevent("ADDED", event("asks-too", UUIDS[1]).to_dict(), None)
        kube.fail = Invalid("spec.errorCodes: Too many", status=422)
        calls = kube.calls
        assert agent.reconcile() is False
        assert agent.metrics.errors.labels("device_api")._value.get() == 1
        assert kube.calls == calls + 1  # the create was still tried ...
        assert agent.metrics.errors.labels("kube")._value.get() == 2  # ... and refused as Invalid
        assert agent.reconcile() is False  # the Device API is still down ...
        assert kube.calls == calls + 1  # ... but the Invalid body is not sent again
        assert agent.metrics.errors.labels("device_api")._value.get() == 2
    finally:
        agent.stop()
        client.close()
