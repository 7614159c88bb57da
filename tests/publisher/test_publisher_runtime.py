"""The publisher's runtime: threads, retries, debounce, shutdown, probes — against a fake Kubernetes
client, and against a real Device API server (ThreadServer) with the real GpuInformer."""
from __future__ import annotations

import logging
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings, temp_socket_dir  # noqa: E402
from pubhelpers import T0, UUIDS, FakeKube, kmsg, make_gpu, nvml  # noqa: E402

from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.k8s.errors import Forbidden, Invalid, ServerUnavailable, TooManyRequests  # noqa: E402
from nvsentinel.policy.conditions import merge_status  # noqa: E402
from nvsentinel.node.publisher.publisher import Publisher, PublisherHttp  # noqa: E402

NODE = "node-a"
FAST = dict(backoff_initial=0.01, backoff_max=0.05)


def sample(pub: Publisher, name: str, **labels: str) -> float:
    value = pub.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def wait(check, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def started():
    pubs: list[Publisher] = []

    def start(kube, **kw) -> Publisher:
        pub = Publisher(kube, node_name=NODE, **{"debounce": 0.0, **FAST, **kw}).start()
        pubs.append(pub)
        return pub

    yield start
    for p in pubs:
        p.stop(flush_timeout=1.0)


def test_fault_then_recovery_are_created_in_order(started):
    """Verify a fault and its recovery become two creates, fatal first, counted by kind."""
    kube = FakeKube()
    pub = started(kube)
    pub.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0), action="RESTART_BM"))
    pub.on_update(None, make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 5)))
    assert pub.wait_idle(5)
    assert kube.order == [f"{NODE}.196b7c1a.xid79.{T0}", f"{NODE}.196b7c1a.healthy.{T0 + 5}"]
    body = kube.objects[kube.order[0]]
    assert body["spec"]["errorCodes"] == ["79"] and body["spec"]["recommendedAction"] == "RESTART_BM"
    assert sample(pub, "nvsentinel_publisher_events_published_total", kind="fatal") == 1
    assert sample(pub, "nvsentinel_publisher_events_published_total", kind="healthy") == 1
    assert pub.ready and pub.pending == 0


def test_already_exists_counts_as_published(started, caplog):
    """Verify a 409 on create is success (already published) and is counted as dedup."""
    kube = FakeKube()
    first = started(kube)
    first.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
    assert first.wait_idle(5)
    second = started(kube)  # a restarted publisher: no memory, same name
    with caplog.at_level(logging.INFO, logger="nvsentinel.node.publisher"):
        second.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0), kmsg("False", "Xid79", T0 + 9)))
        assert second.wait_idle(5)
    assert len(kube.objects) == 1 and kube.calls == 2
    assert sample(second, "nvsentinel_publisher_dedup_total") == 1
    assert sample(second, "nvsentinel_publisher_events_published_total", kind="fatal") == 0
    assert "health event already published" in caplog.text
    assert second.ready


@pytest.mark.parametrize("exc, reason", [
    (ServerUnavailable("503 ServiceUnavailable", status=503), "unavailable"),
    (TooManyRequests("429 TooManyRequests", status=429, retry_after=0.02), "throttled"),
    (Forbidden("403 Forbidden", status=403), "forbidden"),
])
def test_transient_failures_are_retried_until_created(started, exc, reason):
    """Verify unavailable, throttled and forbidden creates are retried with backoff and then succeed."""
    failures = {"left": 3}

    def fail(body):
        if failures["left"]:
            failures["left"] -= 1
            raise exc

    kube = FakeKube(fail)
    pub = started(kube)
    pub.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
    wait(lambda: sample(pub, "nvsentinel_publisher_create_failures_total", reason=reason) >= 1, what="a failure")
    assert not pub.ready or kube.objects  # not ready while the last create failed and it is pending
    assert pub.wait_idle(5)
    assert list(kube.objects) == [f"{NODE}.196b7c1a.xid79.{T0}"]
    assert kube.calls == 4
    assert sample(pub, "nvsentinel_publisher_create_failures_total", reason=reason) == 3
    assert pub.ready


def test_invalid_is_dropped_with_the_body_logged(started, caplog):
    """Verify a schema rejection is logged as an error with the body and not retried."""
    def fail(body):
        raise Invalid("422 Invalid: spec.checkName: Required value", status=422)

    kube = FakeKube(fail)
    pub = started(kube)
    with caplog.at_level(logging.ERROR, logger="nvsentinel.node.publisher"):
        pub.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
        assert pub.wait_idle(5)
    assert kube.calls == 1 and kube.objects == {}
    assert sample(pub, "nvsentinel_publisher_create_failures_total", reason="invalid") == 1
    assert sample(pub, "nvsentinel_publisher_events_dropped_total", kind="fatal") == 1
    record = next(r for r in caplog.records if "rejected as invalid" in r.getMessage())
    assert record.levelno == logging.ERROR and '"errorCodes": ["79"]' in record.kv["body"]
    assert pub.ready  # nothing pending


def test_a_failing_gpu_does_not_block_another(started):
    """Verify one GPU's event failing over and over leaves another GPU's event free to go."""
    def fail(body):
        if ".196b7c1a." in body["metadata"]["name"]:
            raise ServerUnavailable("503", status=503)

    kube = FakeKube(fail)
    pub = started(kube)
    pub.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
    pub.on_add(make_gpu(UUIDS[1], nvml("False", "Xid48", T0)))
    wait(lambda: kube.objects, what="GPU 1's event")
    assert list(kube.objects) == [f"{NODE}.976baef6.xid48.{T0}"]
    wait(lambda: kube.calls >= 6, what="GPU 0 retried")
    assert pub.pending == 1
    kube.fail = None
    assert pub.wait_idle(5)
    assert len(kube.objects) == 2


def test_debounce_sends_the_first_now_and_coalesces_the_rest(started):
    """Verify the first event is immediate and a flap inside the window is published once, late."""
    kube = FakeKube()
    pub = started(kube, debounce=0.4)
    t0 = time.monotonic()
    # a burst in one go: the first state goes at once, the rest waits for the window to end
    pub.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
    pub.on_update(None, make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 1)))
    pub.on_update(None, make_gpu(UUIDS[0], nvml("False", "Xid48", T0 + 2)))
    pub.on_update(None, make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 3)))
    wait(lambda: kube.objects, what="the first event")
    assert time.monotonic() - t0 < 0.3
    time.sleep(0.1)
    assert len(kube.objects) == 1  # held back
    assert pub.wait_idle(5)
    # coalesced: the latest state (recovered at T0+3) against the open Xid79 → one healthy
    assert kube.order == [f"{NODE}.196b7c1a.xid79.{T0}", f"{NODE}.196b7c1a.healthy.{T0 + 3}"]
    assert time.monotonic() - t0 >= 0.4


def test_stop_flushes_what_the_debounce_holds(started):
    """Verify stop() publishes the held-back latest state instead of losing it."""
    kube = FakeKube()
    pub = Publisher(kube, node_name=NODE, debounce=60.0, **FAST).start()
    pub.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
    wait(lambda: kube.objects, what="the first event")
    pub.on_update(None, make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 1)))
    wait(lambda: len(pub._debouncer) == 1, what="the update held back")
    assert pub.stop(flush_timeout=3.0) == []
    assert kube.order[-1] == f"{NODE}.196b7c1a.healthy.{T0 + 1}"


def test_stop_reports_what_it_could_not_create(caplog):
    """Verify stop() with the API server down gives up after the flush timeout and says what is lost."""
    def fail(body):
        raise ServerUnavailable("connection refused", status=0)

    pub = Publisher(FakeKube(fail), node_name=NODE, debounce=0.0, **FAST).start()
    pub.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
    wait(lambda: sample(pub, "nvsentinel_publisher_create_failures_total", reason="unavailable") >= 2)
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="nvsentinel.node.publisher"):
        left = pub.stop(flush_timeout=0.5)
    assert 0.4 <= time.monotonic() - t0 < 3
    assert [p.event.name for p in left] == [f"{NODE}.196b7c1a.xid79.{T0}"]
    assert "stopping with unpublished health events" in caplog.text


def test_bounded_queue_drops_healthy_under_an_outage(started, caplog):
    """Verify an outage that fills the queue drops the oldest healthy event, loudly, and keeps fatals."""
    def fail(body):
        raise ServerUnavailable("503", status=503)

    kube = FakeKube(fail)
    pub = started(kube, max_pending=2)
    with caplog.at_level(logging.ERROR, logger="nvsentinel.node.publisher"):
        pub.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
        pub.on_update(None, make_gpu(UUIDS[0], nvml("True", "Recovered", T0 + 1)))
        wait(lambda: pub.pending == 2, what="two pending")
        pub.on_add(make_gpu(UUIDS[1], nvml("False", "Xid79", T0)))
        wait(lambda: sample(pub, "nvsentinel_publisher_events_dropped_total", kind="healthy") == 1)
    assert "dropped the oldest healthy event" in caplog.text
    assert pub.pending == 2
    kube.fail = None
    assert pub.wait_idle(5)
    assert sorted(kube.objects) == [f"{NODE}.196b7c1a.xid79.{T0}", f"{NODE}.976baef6.xid79.{T0}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_probes_and_metrics_endpoints(started):
    """Verify /healthz, /readyz (503 while a create is failing) and /metrics are served."""
    def fail(body):
        raise ServerUnavailable("503", status=503)

    kube = FakeKube(fail)
    pub = started(kube)
    hp, mp = free_port(), free_port()
    http = PublisherHttp("127.0.0.1", hp, mp, lambda: pub.ready, pub.metrics)
    http.start()
    try:
        assert get(hp, "/healthz") == (200, "ok\n")
        assert get(hp, "/readyz") == (200, "ready\n")
        pub.on_add(make_gpu(UUIDS[0], nvml("False", "Xid79", T0)))
        wait(lambda: get(hp, "/readyz")[0] == 503, what="not ready")
        kube.fail = None
        wait(lambda: get(hp, "/readyz")[0] == 200, what="ready again")
        status, text = get(mp, "/metrics")
        assert status == 200
        for name in ('nvsentinel_publisher_events_published_total{kind="fatal"} 1.0',
                     "nvsentinel_publisher_dedup_total 0.0",
                     'nvsentinel_publisher_create_failures_total{reason="unavailable"}',
                     "nvsentinel_publisher_pending 0.0"):
            assert name in text
        assert get(mp, "/healthz")[0] == 404
    finally:
        http.stop()


def write_condition(client: DeviceApiClient, uuid: str, type_: str, status: str, reason: str, at: int) -> None:
    """Merge one condition into a GPU's status like a provider does (docs/conditions.md)."""
    from nvsentinel.policy.conditions import Finding, GpuView

    gpu = client.get_gpu(uuid)
    if status == "False":
        view = GpuView(Finding(reason, f"XID 79: {reason}", "RESTART_BM"))
    else:
        view = GpuView(None, reason, f"healthy again: {reason}")
    status_pb = merge_status(gpu.status, view, at, condition_type=type_)
    client.update_gpu_status(uuid, status_pb, gpu.resource_version)


def test_with_a_real_device_api_server_and_informer():
    """Verify the informer path: a condition written to a real Device API server becomes an event;
    after the server restarts and the provider re-sends the same fault, nothing new is published;
    a recovery is published."""
    with temp_socket_dir() as sock_dir:
        server = ThreadServer(make_settings(sock_dir)).start()
        port = server.server.tcp_port
        client = DeviceApiClient(server.tcp, timeout=5)
        kube = FakeKube()
        pub = Publisher(kube, node_name=NODE, debounce=0.0, **FAST)
        informer_client = DeviceApiClient(server.tcp, timeout=5)
        try:
            for uuid in UUIDS[:2]:
                g = gpu_pb2.Gpu()
                g.metadata.name = uuid
                g.spec.uuid = uuid
                client.create_gpu(g)
            pub.start(informer_client)
            wait(lambda: pub.synced, what="informer synced")
            write_condition(client, UUIDS[1], "NvmlHealthy", "False", "Xid79", T0)
            wait(lambda: kube.objects, what="the event")
            assert list(kube.objects) == [f"{NODE}.976baef6.xid79.{T0}"]

            client.close()
            server.stop()
            server = ThreadServer(make_settings(sock_dir, grpc_address=f"127.0.0.1:{port}")).start()
            client = DeviceApiClient(server.tcp, timeout=5)
            g = gpu_pb2.Gpu()
            g.metadata.name = g.spec.uuid = UUIDS[1]
            client.create_gpu(g)
            write_condition(client, UUIDS[1], "NvmlHealthy", "False", "Xid79", T0 + 100)  # re-sent, new time
            wait(lambda: (v := pub.view(UUIDS[1])) is not None and "Xid79" in v.faults, what="re-sent view seen")
            time.sleep(0.3)
            assert pub.wait_idle(5) and list(kube.objects) == [f"{NODE}.976baef6.xid79.{T0}"]
            write_condition(client, UUIDS[1], "NvmlHealthy", "True", "Recovered", T0 + 200)
            wait(lambda: len(kube.objects) == 2, what="the healthy event")
            assert kube.order[-1] == f"{NODE}.976baef6.healthy.{T0 + 200}"
        finally:
            pub.stop(flush_timeout=1.0)
            informer_client.close()
            client.close()
            server.stop()
