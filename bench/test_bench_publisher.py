"""Publisher throughput (HealthEvents created per second) against the real test kube-apiserver.

Cases (group `publisher.create`, one fresh node name per round so every create is new):

* `baseline`: a bare loop of `Kube.create` over pre-built bodies, one after another: what one
  client thread gets from this API server.
* `publisher`: N GPUs turn unhealthy at once, handed to a running `Publisher` as informer updates;
  timed until every event is created (observe, debounce, queue, senders, creates).
* `publisher-1-sender`: the same with one sender thread (no parallel creates).

Both use an unlimited client rate (`qps=0`): the daemon's default 20 QPS would measure the limiter.
The ratio to the baseline is in `bench/report.py`'s table (reference `baseline`) and printed to
stderr at the end of the module. Needs the kube-apiserver binaries (tests/k8s/cluster.py builds
them once); `pytest bench --benchmark-disable` runs each case once with 16 GPUs.
"""
from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "k8s"))

from cluster import ControlPlane  # noqa: E402

from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.k8s.crd import install_crd  # noqa: E402
from nvsentinel.policy.healthevent import LABEL_NODE  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS  # noqa: E402
from nvsentinel.node.publisher.logic import Context, observe  # noqa: E402
from nvsentinel.xid import default_catalog  # noqa: E402
from nvsentinel.node.publisher.publisher import Publisher  # noqa: E402

GPUS = 256
QUICK_GPUS = 16
ROUNDS = 3
T0 = 1_700_000_000
MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    with ControlPlane(controller_manager=False) as cp:
        kube = cp.kube(qps=0)
        try:
            install_crd(kube)
            # warm the API server (CRD handler, etcd, TLS session) so the first case is not penalised
            ctx = Context("bench-warmup", default_catalog())
            now = dt.datetime.now(dt.timezone.utc)
            for g in gpus(64):
                kube.create(HEALTHEVENTS, observe(None, g, now, ctx)[1][0].create_body())
        finally:
            kube.close()
        yield cp
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and "baseline" in MEDIANS:
        for impl in ("publisher", "publisher-1-sender"):
            if impl in MEDIANS:
                reporter.write_line(
                    f"[bench] publisher.create {impl}: {MEDIANS['baseline'] / MEDIANS[impl]:.2f}x the events/s "
                    f"of the bare kube.create loop ({MEDIANS['n']:.0f} events per round)")


def gpus(n: int) -> list[gpu_pb2.Gpu]:
    out = []
    for i in range(n):
        g = gpu_pb2.Gpu(resource_version=i + 1)
        g.metadata.name = g.spec.uuid = f"GPU-{i:08x}-0000-0000-0000-000000000000"
        c = g.status.conditions.add(type="NvmlHealthy", status="False", reason="Xid79",
                                    message="XID 79: GPU has fallen off the bus")
        c.last_transition_time.seconds = T0
        g.status.recommended_action = "RESTART_BM"
        out.append(g)
    return out


def count(kube: Any, node: str) -> int:
    return len(kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")[0])


def info(benchmark: Any, impl: str, n: int) -> None:
    benchmark.group = "publisher.create"
    benchmark.extra_info.update(case="publisher.create", impl=impl, ops=n, unit="event", reference="baseline",
                                target=None, note=f"{n} GPUs turn unhealthy at once; real kube-apiserver v1.20.2")


@pytest.mark.parametrize("impl", ["baseline", "publisher", "publisher-1-sender"])
def test_publisher_create_throughput(benchmark: Any, cluster: ControlPlane, impl: str) -> None:
    n = QUICK_GPUS if benchmark.disabled else GPUS
    MEDIANS["n"] = n
    kube = cluster.kube(qps=0)
    info(benchmark, impl, n)
    nodes: list[str] = []
    pub = None
    if impl != "baseline":
        pub = Publisher(kube, node_name="bench", debounce=0.0, senders=1 if impl.endswith("1-sender") else 4).start()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        node = f"bench-{uuid.uuid4().hex[:10]}"
        nodes.append(node)
        if impl == "baseline":
            ctx = Context(node, default_catalog())
            now = dt.datetime.now(dt.timezone.utc)
            bodies = [observe(None, g, now, ctx)[1][0].create_body() for g in gpus(n)]
            return (bodies,), {}
        pub.node_name = node  # a fresh node each round: new names, fresh views
        pub.ctx = Context(node, pub.ctx.catalog, pub.ctx.watched)
        pub._views.clear()
        return (gpus(n),), {}

    def run_baseline(bodies: list[dict[str, Any]]) -> None:
        for body in bodies:
            kube.create(HEALTHEVENTS, body)

    def run_publisher(items: list[gpu_pb2.Gpu]) -> None:
        for g in items:
            pub.on_add(g)
        deadline = time.monotonic() + 120
        while not pub.idle():
            assert time.monotonic() < deadline, "publisher did not drain in 120 s"
            time.sleep(0.0005)

    try:
        benchmark.pedantic(run_baseline if impl == "baseline" else run_publisher, setup=setup,
                           rounds=1 if benchmark.disabled else ROUNDS, iterations=1, warmup_rounds=0)
        correct = all(count(kube, node) == n for node in nodes)
        if pub is not None:
            correct = correct and pub.metrics.registry.get_sample_value(
                "nvsentinel_publisher_events_published_total", {"kind": "fatal"}) == n * len(nodes)
        benchmark.extra_info["correct"] = bool(correct)
        assert correct, f"{impl}: not every event was created exactly once"
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            MEDIANS[impl] = stats.stats.median
            benchmark.extra_info["events_per_s"] = n / stats.stats.median
    finally:
        if pub is not None:
            pub.stop(flush_timeout=2.0)
        kube.close()
