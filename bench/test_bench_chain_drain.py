"""End-to-end latency of XID → Drained on the real test kube-apiserver (SPEC §9), next to XID → cordon.

Group `chain.drain`, one pedantic round per injected XID, p50 = the median, p99 from the rounds:

* `baseline`: the bench evicts one running pod itself and waits until the fake kubelet has deleted
  it: the floor of "a pod evicted and gone" on this API server, which any drain includes.
* `xid`: XID 79 is injected into the fake NVML of a node agent (device API server with the NVML
  provider embedded + `nvsentinel publisher`) on a node running one pod (no PDB). Timed until the
  new HealthEvent is seen `Drained`, with `nvsentinel controllers --controllers quarantine,drain`
  (separate process) doing the chain. The same rounds also record when the node was first seen
  cordoned, so XID → cordon and XID → Drained come from the same injections.

A fake kubelet (a pod watch) deletes each evicted pod as soon as it carries a deletionTimestamp.
Between rounds the node is uncordoned and gets a fresh pod. `pytest bench --benchmark-disable`
(the CI smoke test) runs each case once (pytest-benchmark calls a disabled pedantic case once).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "k8s"))
sys.path.insert(0, str(HERE.parent / "tests" / "api"))

from apiserver import SubprocessServer  # noqa: E402
from cluster import ControlPlane  # noqa: E402
from kubelet import make_node, run_pod  # noqa: E402
from procs import Daemon, wait_until  # noqa: E402
from test_bench_chain import TAINT, CordonWatch  # noqa: E402
from test_bench_drain import Kubelet  # noqa: E402

from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.k8s.crd import install_crd  # noqa: E402
from nvsentinel.k8s import AlreadyExists, Kube, ServerUnavailable  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS, NAMESPACES, NODES, PODS  # noqa: E402

ROUNDS = int(os.environ.get("XID_ROUNDS", "24"))
QUICK_ROUNDS = 1
NS = "work"
TARGET_CORDON_P50_S = 1.0
RESULTS: dict[str, dict[str, float]] = {}


class DrainedEvents:
    """A HealthEvent watch: when each event (name → node) was first seen `Drained`."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.drained: dict[str, tuple[str, float]] = {}
        self.cond = threading.Condition()
        self._stream: Any = None
        self._stop = False
        _, self.rv = kube.list(HEALTHEVENTS, limit=1)
        self.thread = threading.Thread(target=self._run, daemon=True, name="drained-events")
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self._stream = self.kube.watch(HEALTHEVENTS, resource_version=self.rv, timeout_seconds=120)
                for etype, obj in self._stream:
                    self.rv = obj["metadata"].get("resourceVersion", self.rv)
                    if etype in ("ADDED", "MODIFIED") and (obj.get("status") or {}).get("phase") == "Drained":
                        with self.cond:
                            name = obj["metadata"]["name"]
                            if name not in self.drained:
                                self.drained[name] = ((obj.get("spec") or {}).get("nodeName", ""), time.perf_counter())
                                self.cond.notify_all()
            except ServerUnavailable:
                if self._stop:
                    return

    def names(self) -> set[str]:
        with self.cond:
            return set(self.drained)

    def wait_new(self, node: str, known: set[str], timeout: float = 30.0) -> float:
        """The time the first event of `node` not in `known` was seen Drained."""
        def new() -> list[float]:
            return [t for name, (n, t) in self.drained.items() if n == node and name not in known]

        with self.cond:
            if not self.cond.wait_for(new, timeout):
                raise AssertionError(f"no new HealthEvent of node {node} Drained within {timeout} s")
            return min(new())

    def close(self) -> None:
        self._stop = True
        if self._stream is not None:
            self._stream.close()


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with ControlPlane(controller_manager=False) as cp:
        kube = cp.kube()
        install_crd(kube)
        for ns in ("bench", NS):
            with contextlib.suppress(AlreadyExists):
                kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        kube.close()
        yield cp


@pytest.fixture(scope="module")
def kube(plane: ControlPlane) -> Iterator[Kube]:
    k = plane.kube(qps=0)
    yield k
    k.close()


@pytest.fixture(scope="module")
def kubelet(plane: ControlPlane, kube: Kube) -> Iterator[Kubelet]:
    k = plane.kube(qps=0)
    _, rv = kube.list(PODS, NS, limit=1)
    let = Kubelet(k, NS, rv)
    yield let
    let.close()
    k.close()


@pytest.fixture(scope="module")
def controllers(plane: ControlPlane) -> Iterator[Daemon]:
    d = Daemon("controllers", [
        "--kubeconfig", plane.kubeconfig, "--namespace", "bench", "--no-leader-elect",
        "--controllers", "quarantine,drain", "--health-port", "0", "--metrics-port", "0",
        "--breaker-percent", "100", "--breaker-max-nodes", "100000", "--kube-qps", "0"], name="controllers").start()
    try:
        d.wait_log("informers synced")
        yield d
    finally:
        d.close()


@pytest.fixture(scope="module")
def watches(kube: Kube) -> Iterator[tuple[CordonWatch, DrainedEvents]]:
    c, d = CordonWatch(kube), DrainedEvents(kube)
    yield c, d
    c.close()
    d.close()


def _pod(kube: Kube, node: str, name: str) -> None:
    kube.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": {
        "nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}, NS)
    run_pod(kube, NS, name)


def _stats(samples: list[float]) -> dict[str, float]:
    data = sorted(samples)
    return {"p50": data[len(data) // 2], "p99": data[min(len(data) - 1, int(round(0.99 * (len(data) - 1))))],
            "n": len(data)}


def test_drain_baseline_evict_one_pod(benchmark: Any, kube: Kube, kubelet: Kubelet) -> None:
    """Floor: one Eviction create until the kubelet stand-in has deleted the pod (seen by its watch)."""
    n = QUICK_ROUNDS if benchmark.disabled else ROUNDS
    node = f"evict-{os.getpid()}"
    make_node(kube, node)
    rounds = iter(range(n))
    benchmark.group = "chain.drain"
    benchmark.extra_info.update(case="chain.drain", impl="baseline")

    def setup() -> tuple[tuple[str, int], dict]:
        name = f"base-{next(rounds)}"
        _pod(kube, node, name)
        return (name, kubelet.gone + 1), {}

    done: list[str] = []

    def run(name: str, want_gone: int) -> None:
        done.append(name)
        kube.create(PODS, {"kind": "Eviction", "metadata": {"name": name, "namespace": NS},
                           "deleteOptions": {"gracePeriodSeconds": 30}}, NS, subresource_of=name,
                    subresource="eviction")
        kubelet.wait_gone(want_gone, 30)

    gone0 = kubelet.gone
    benchmark.pedantic(run, setup=setup, rounds=n, iterations=1)
    assert done and kubelet.gone - gone0 == len(done)  # --benchmark-disable: one round
    data = getattr(benchmark, "stats", None)
    if data is not None:
        RESULTS["baseline"] = _stats(list(data.stats.data))
        benchmark.extra_info.update(p50_s=RESULTS["baseline"]["p50"], p99_s=RESULTS["baseline"]["p99"])


@pytest.fixture(scope="module")
def agent(plane: ControlPlane, kube: Kube) -> Iterator[tuple[str, FaultInjector, list[Any]]]:
    node = f"xid-drain-{os.getpid()}"
    make_node(kube, node)
    sock_dir = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    control = os.path.join(sock_dir, "fake-nvml.ctl")
    server = SubprocessServer.start(sock_dir, "--enable-nvml-provider", "--fake-nvml", "--fake-nvml-control", control,
                                    "--node-name", node)
    pub = Daemon("publisher", ["--address", server.unix, "--kubeconfig", plane.kubeconfig, "--node-name", node,
                               "--health-port", "0", "--metrics-port", "0", "--debounce", "0.2", "--kube-qps", "0",
                               "--log-level", "WARNING"], name="publisher").start()
    try:
        time.sleep(1.0)
        yield node, FaultInjector(control), [pub]
    finally:
        pub.close()
        server.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_drain_xid_injected_to_drained(benchmark: Any, kube: Kube, kubelet: Kubelet, controllers: Daemon,
                                      watches: tuple[CordonWatch, DrainedEvents], agent: Any) -> None:
    """XID 79 in the fake NVML → … → HealthEvent → node cordoned → its one pod evicted, gone → Drained."""
    cordon, drained = watches
    node, fault, daemons = agent
    daemons = [*daemons, controllers]
    n = QUICK_ROUNDS if benchmark.disabled else ROUNDS
    rounds = iter(range(n))
    cordon_s: list[float] = []
    benchmark.group = "chain.drain"
    benchmark.extra_info.update(case="chain.drain", impl="xid")
    gone0 = kubelet.gone
    done: list[int] = []

    def setup() -> tuple[tuple[int, set[str], int], dict]:
        i = next(rounds)
        gpu = i % 8
        if i and gpu == 0:  # every GPU has had its XID: a lost GPU that answers again re-verifies all
            fault.lose(0)
            time.sleep(0.5)
            fault.recover(0)
            time.sleep(1.0)
        # back to a clean, schedulable node (what the resolution controller will do) with one running pod
        kube.patch(NODES, node, {"metadata": {"annotations": {TAINT: None}},
                                 "spec": {"unschedulable": False, "taints": []}})
        wait_until(lambda: node not in cordon.seen, timeout=10, what="node uncordoned", daemons=daemons)
        _pod(kube, node, f"train-{i}")
        time.sleep(1.1)  # the next event's name carries its second: keep injections a second apart
        return (gpu, drained.names(), kubelet.gone + 1), {}

    def run(gpu: int, known: set[str], want_gone: int) -> None:
        done.append(gpu)
        t0 = time.perf_counter()
        fault.inject_xid(gpu, 79)
        drained.wait_new(node, known)
        cordon_s.append(cordon.wait(node) - t0)
        assert kubelet.gone >= want_gone, "Drained before the pod was gone"

    benchmark.pedantic(run, setup=setup, rounds=n, iterations=1)
    controllers.check_alive()
    assert done and kubelet.gone - gone0 == len(done) and controllers.text().count("pod evicted") == len(done)
    data = getattr(benchmark, "stats", None)
    if data is not None:
        RESULTS["xid→drained"] = _stats(list(data.stats.data))
        RESULTS["xid→cordon"] = _stats(cordon_s)
        d, c = RESULTS["xid→drained"], RESULTS["xid→cordon"]
        benchmark.extra_info.update(p50_s=d["p50"], p99_s=d["p99"], cordon_p50_s=c["p50"], cordon_p99_s=c["p99"])


def teardown_module() -> None:
    if not RESULTS:
        return
    lines = ["", "chain.drain (p50 / p99 over the rounds):"]
    for case, r in RESULTS.items():
        lines.append(f"  {case:<13} n={int(r['n']):>3}  p50 {r['p50'] * 1000:8.1f} ms  p99 {r['p99'] * 1000:8.1f} ms")
    if "xid→drained" in RESULTS and "xid→cordon" in RESULTS:
        d, c = RESULTS["xid→drained"], RESULTS["xid→cordon"]
        lines.append(f"  drain stage (p50 Drained − p50 cordon): {(d['p50'] - c['p50']) * 1000:.1f} ms; "
                     f"Drained / cordon p50 {d['p50'] / c['p50']:.1f}×")
        if "baseline" in RESULTS:
            lines.append(f"  drain stage / one eviction until gone (p50): "
                         f"{(d['p50'] - c['p50']) / RESULTS['baseline']['p50']:.1f}×")
        met = "met" if c["p50"] <= TARGET_CORDON_P50_S else "MISSED"
        lines.append(f"  XID → cordon p50 ≤ {TARGET_CORDON_P50_S:g} s: {met}")
    print("\n".join(lines), file=sys.stderr)
