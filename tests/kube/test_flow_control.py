"""Flow control and lanes of nvsentinel.k8s against a loopback HTTP server that answers like an API server.

The real kube-apiserver (tests/k8s) cannot be made to shed load on demand; this server can: it says
API Priority and Fairness in its headers (or not), answers 429 + Retry-After a given number of times,
and records when each request arrived, over real sockets through the official client's transport.
"""
from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import anyio
import pytest
from kubernetes import client as k8s_client

from nvsentinel.k8s import Kube, TooManyRequests
from nvsentinel.k8s.kube import APF_HEADERS, MAX_429_RETRIES, AsyncKube, FlowControl
from nvsentinel.k8s.resources import NODES, PODS


class _State:
    def __init__(self) -> None:
        self.apf = False
        self.throttle = 0            # answer this many requests 429 first
        self.retry_after: str | None = "0.05"
        self.seen: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()


@pytest.fixture
def server() -> Iterator[tuple[str, _State]]:
    state = _State()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            with state.lock:
                state.seen.append((time.monotonic(), self.command, self.path))
                throttled = state.throttle > 0
                if throttled:
                    state.throttle -= 1
            if throttled:
                body = json.dumps({"kind": "Status", "reason": "TooManyRequests", "message": "slow down"}).encode()
                self.send_response(429)
                if state.retry_after is not None:
                    self.send_header("Retry-After", state.retry_after)
            else:
                body = json.dumps({"kind": "Node", "metadata": {"name": "n", "resourceVersion": "1"}}).encode()
                self.send_response(200)
            if state.apf:
                for h in APF_HEADERS:
                    self.send_header(h, "7a2e5d1c-0000-4000-8000-000000000000")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _kube(url: str, flow: FlowControl) -> Kube:
    cfg = k8s_client.Configuration()
    cfg.host = url
    cfg.retries = False
    return Kube(k8s_client.ApiClient(cfg), flow_control=flow, timeout=10.0)


def test_apf_headers_turn_the_bucket_into_the_ceiling(server):
    url, state = server
    state.apf = True
    kube = _kube(url, FlowControl("auto", qps=1, burst=1, max_qps=0))
    try:
        assert not kube.server_flow_control
        kube.get(NODES, "n")  # the one token the bucket has
        assert kube.server_flow_control
        started = time.monotonic()
        for _ in range(20):  # with the 1/s bucket still on, this would take 20 s
            kube.get(NODES, "n")
        assert time.monotonic() - started < 10
    finally:
        kube.close()


def test_without_apf_the_bucket_stays(server):
    url, state = server
    kube = _kube(url, FlowControl("auto", qps=20, burst=1, max_qps=0))
    try:
        for _ in range(6):
            kube.get(NODES, "n")
        assert not kube.server_flow_control
        times = [t for t, _, _ in state.seen]
        assert times[-1] - times[0] >= 5 / 20 * 0.9  # burst 1, then one every 50 ms
    finally:
        kube.close()


def test_client_mode_ignores_the_headers(server):
    url, state = server
    state.apf = True
    kube = _kube(url, FlowControl("client", qps=50, burst=10))
    try:
        kube.get(NODES, "n")
        assert not kube.server_flow_control
    finally:
        kube.close()


def test_a_429_is_retried_after_retry_after_sync_and_async(server):
    url, state = server
    state.throttle, state.retry_after = 2, "0.2"
    kube = _kube(url, FlowControl("server", max_qps=0))
    try:
        started = time.monotonic()
        assert kube.get(NODES, "n")["metadata"]["name"] == "n"
        assert time.monotonic() - started >= 0.35
        assert len(state.seen) == 3

        lane = AsyncKube(kube).lane("quarantine")
        state.throttle = 1

        async def one() -> None:
            await lane.patch(NODES, "n", {"spec": {"unschedulable": True}})

        anyio.run(one)
        assert lane.stats.retried_429 == 1
        assert lane.stats.requests[("PATCH", "429")] == 1 and lane.stats.requests[("PATCH", "2xx")] == 1
    finally:
        kube.close()


def test_an_eviction_429_goes_to_the_caller_and_retries_are_bounded(server):
    url, state = server
    state.retry_after = None  # no header: 1 s each; keep the bound test short by counting, not timing
    kube = _kube(url, FlowControl("server", max_qps=0))
    try:
        state.throttle = 1
        with pytest.raises(TooManyRequests):  # a PodDisruptionBudget's answer: the drain decides
            kube.create(PODS, {"kind": "Eviction"}, "ns", subresource_of="p", subresource="eviction")
        assert len(state.seen) == 1
        state.retry_after, state.throttle = "0.01", MAX_429_RETRIES + 5
        with pytest.raises(TooManyRequests):
            kube.get(NODES, "n")
        assert len(state.seen) == 1 + MAX_429_RETRIES + 1
    finally:
        kube.close()


def test_lanes_have_their_own_budget(server):
    """A lane that ran out of tokens does not hold up another lane: the cordon never waits behind evictions."""
    url, _ = server
    kube = _kube(url, FlowControl("client", qps=2, burst=1))
    async_kube = AsyncKube(kube)
    drain, quarantine = async_kube.lane("drain"), async_kube.lane("quarantine")
    assert async_kube.lane("drain") is drain and set(async_kube.lanes) == {"default", "drain", "quarantine"}
    done: dict[str, float] = {}

    async def evictions() -> None:
        for _ in range(4):  # 1 now, then one per 0.5 s
            await drain.get(NODES, "n")
        done["drain"] = time.monotonic()

    async def cordon() -> None:
        while not drain.stats.requests:  # once the drain has spent its burst
            await anyio.sleep(0.001)
        await quarantine.get(NODES, "n")
        done["quarantine"] = time.monotonic()

    async def main() -> float:
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(evictions)
            tg.start_soon(cordon)
        return started

    try:
        started = anyio.run(main)
    finally:
        kube.close()
    # the drain waited for its own tokens (1.5 s of them); the cordon, on its own lane, for none, and
    # was done long before (no timer: the order and the waits are the claim)
    assert drain.stats.throttled_seconds > 1.0 and quarantine.stats.throttled_seconds == 0
    assert done["quarantine"] < done["drain"] and done["drain"] - started > 1.0


def test_flow_control_settings_are_validated():
    with pytest.raises(ValueError):
        FlowControl("maybe")
    with pytest.raises(ValueError):
        FlowControl("auto", qps=-1)
