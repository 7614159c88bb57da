"""XID injected → every phase of the chain, on the real test kube-apiserver, all processes real.

One node agent (device API server + NVML provider on the fake library, publisher with a 0.2 s
debounce, remediation agent) and `nvsentinel controllers` running the whole chain. A HealthEvent
watch stamps each phase the moment the server has it.

* `gpu-reset` (group `chain.remediation`): XID 48 → Quarantined, Drained (no pods), Remediated (the
  gpu-reset handshake: controller → agent → provider resets the fake GPU → publisher's healthy
  event), Resolved (node uncordoned). The reset leaves the GPU healthy, so rounds repeat on one GPU.
* `reboot`: XID 79 → Remediated through a reboot Job that a stand-in job controller completes as
  soon as it appears (one round per GPU: a rebooted GPU is verified only after a real restart).
* `baseline`: a HealthEvent created by the bench, until its own watch sees it: the floor of one
  write made visible on this server.

Each round is one pedantic benchmark round timed to Remediated; the per-phase p50/p99 and the ratios
to the baseline are printed at the end. `pytest bench --benchmark-disable` runs 2 rounds of each.
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
from kubelet import finish_job, make_node  # noqa: E402
from procs import Daemon  # noqa: E402

from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.policy.healthevent import HealthEvent, HealthEventSpec, utcnow  # noqa: E402
from nvsentinel.k8s.crd import install_crd  # noqa: E402
from nvsentinel.k8s import Kube  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS, JOBS, NAMESPACES  # noqa: E402

NS = "bench-remediation"
ROUNDS = int(os.environ.get("REMEDIATION_ROUNDS", "12"))
QUICK_ROUNDS = 2
PHASES = ("Quarantined", "Drained", "Remediated", "Resolved")
RESULTS: dict[str, dict[str, list[float]]] = {}


class PhaseWatch:
    """A HealthEvent watch in a thread: when each event was first seen in each phase (perf_counter)."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.seen: dict[tuple[str, str], float] = {}
        self.created: dict[str, float] = {}
        self.by_node: dict[str, list[str]] = {}
        self.cond = threading.Condition()
        self._stream: Any = None
        self._stop = False
        _, self.rv = kube.list(HEALTHEVENTS, limit=1)
        self.thread = threading.Thread(target=self._run, daemon=True, name="phase-watch")
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self._stream = self.kube.watch(HEALTHEVENTS, resource_version=self.rv, timeout_seconds=60)
                for etype, obj in self._stream:
                    self.rv = obj["metadata"].get("resourceVersion", self.rv)
                    if etype in ("BOOKMARK", "DELETED"):
                        continue
                    now = time.perf_counter()
                    name = obj["metadata"]["name"]
                    phase = (obj.get("status") or {}).get("phase") or "New"
                    with self.cond:
                        self.created.setdefault(name, now)
                        if obj["spec"].get("isFatal"):
                            node = obj["spec"]["nodeName"]
                            if name not in self.by_node.setdefault(node, []):
                                self.by_node[node].append(name)
                        self.seen.setdefault((name, phase), now)
                        self.cond.notify_all()
            except Exception:  # noqa: BLE001 - stopped, or a dropped watch: resume
                if self._stop:
                    return
                time.sleep(0.05)

    def new_fatal(self, node: str, known: int, timeout: float = 30.0) -> str:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.by_node.get(node, ())) > known, timeout):
                raise AssertionError(f"no new fatal HealthEvent for {node} within {timeout} s")
            return self.by_node[node][known]

    def wait(self, name: str, phase: str, timeout: float = 60.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: (name, phase) in self.seen, timeout):
                raise AssertionError(f"{name} not {phase} within {timeout} s")
            return self.seen[(name, phase)]

    def wait_created(self, name: str, timeout: float = 30.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in self.created, timeout):
                raise AssertionError(f"{name} not seen within {timeout} s")
            return self.created[name]

    def close(self) -> None:
        self._stop = True
        if self._stream is not None:
            self._stream.close()


class JobCompleter:
    """The job controller this test cluster lacks: every reboot Job succeeds as soon as it exists."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="job-completer")
        self.thread.start()

    def _run(self) -> None:
        done: set[str] = set()
        while not self._stop.wait(0.02):
            with contextlib.suppress(Exception):
                for job in self.kube.list(JOBS, NS)[0]:
                    name = job["metadata"]["name"]
                    if name not in done:
                        finish_job(self.kube, NS, name, succeeded=True)
                        done.add(name)

    def close(self) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    with ControlPlane(controller_manager=False) as cp:
        kube = cp.kube(qps=0)
        install_crd(kube)
        kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        node = f"remed-bench-{os.getpid()}"
        make_node(kube, node)
        sock_dir = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
        control = os.path.join(sock_dir, "fake-nvml.ctl")
        quiet = ["--health-port", "0", "--metrics-port", "0", "--log-level", "WARNING"]
        server = SubprocessServer.start(sock_dir, "--enable-nvml-provider", "--fake-nvml", "--fake-nvml-control",
                                        control, "--node-name", node)
        common = ["--address", server.unix, "--kubeconfig", cp.kubeconfig, "--node-name", node, *quiet]
        daemons = [
            Daemon("publisher", [*common, "--debounce", "0.2", "--kube-qps", "0"], name="publisher").start(),
            Daemon("remediation_agent", [*common, "--resync-period", "5"], name="agent").start(),
            Daemon("controllers", [
                "--kubeconfig", cp.kubeconfig, "--namespace", NS, "--no-leader-elect", "--health-port", "0",
                "--metrics-port", "0",
                "--breaker-percent", "100", "--breaker-max-nodes", "100000", "--kube-qps", "0",
                # every round remediates the same GPU: escalation (a human after 3) would stop the loop
                "--drain-poll", "0.2", "--remediation-poll", "0.5", "--escalation-threshold", "0"],
                name="controllers").start(),
        ]
        watch = PhaseWatch(kube)
        jobs = JobCompleter(kube)
        try:
            daemons[-1].wait_log("controllers started")
            time.sleep(1.5)  # GPUs registered, the publisher and the agent synced
            yield {"kube": kube, "node": node, "fault": FaultInjector(control), "watch": watch, "daemons": daemons}
        finally:
            jobs.close()
            watch.close()
            for d in daemons:
                d.close()
            server.close()
            shutil.rmtree(sock_dir, ignore_errors=True)
            kube.close()


def _rounds(benchmark: Any, full: int) -> int:
    return QUICK_ROUNDS if benchmark.disabled else full


def _keep(case: str, phase: str, seconds: float) -> None:
    RESULTS.setdefault(case, {}).setdefault(phase, []).append(seconds)


def test_remediation_baseline_create_and_watch(benchmark: Any, world: dict[str, Any]) -> None:
    """Floor: the bench creates a HealthEvent and waits until its own watch has it."""
    kube, watch = world["kube"], world["watch"]
    n = _rounds(benchmark, ROUNDS)
    it = iter(range(n))
    benchmark.group = "chain.remediation"
    benchmark.extra_info["impl"] = "baseline"

    def run() -> None:
        name = f"baseline-{os.getpid()}-{next(it)}"
        t0 = time.perf_counter()
        kube.create(HEALTHEVENTS, HealthEvent(name=name, labels={"bench": "baseline"}, spec=HealthEventSpec(
            source="bench", node_name="nowhere", component_class="GPU", check_name="bench", is_fatal=False,
            is_healthy=True, detected_at=utcnow())).create_body())
        _keep("baseline", "created", watch.wait_created(name) - t0)

    benchmark.pedantic(run, rounds=n, iterations=1)


def _one_fault(world: dict[str, Any], case: str, gpu: int, xid: int, phases: tuple[str, ...]) -> None:
    watch, node = world["watch"], world["node"]
    known = len(watch.by_node.get(node, ()))
    t0 = time.perf_counter()
    world["fault"].inject_xid(gpu, xid)
    name = watch.new_fatal(node, known)
    for phase in phases:
        _keep(case, phase, watch.wait(name, phase) - t0)
    for d in world["daemons"]:
        d.check_alive()


def test_remediation_xid48_gpu_reset_every_phase(benchmark: Any, world: dict[str, Any]) -> None:
    """XID 48 on GPU 2 → … → Remediated (gpu-reset verified) → Resolved; timed to Resolved."""
    n = _rounds(benchmark, ROUNDS)
    benchmark.group = "chain.remediation"
    benchmark.extra_info["impl"] = "gpu-reset"

    def setup() -> tuple[tuple, dict]:
        time.sleep(1.1)  # the next event's name carries its second
        return (), {}

    benchmark.pedantic(lambda: _one_fault(world, "gpu-reset", 2, 48, PHASES), setup=setup, rounds=n, iterations=1)


def test_remediation_xid79_reboot_job_to_remediated(benchmark: Any, world: dict[str, Any]) -> None:
    """XID 79 → Drained → reboot Job (completed at once by the stand-in) → Remediated; one round per GPU."""
    gpus = iter([g for g in range(8) if g != 2])
    n = min(_rounds(benchmark, ROUNDS), 7)
    benchmark.group = "chain.remediation"
    benchmark.extra_info["impl"] = "reboot"

    def setup() -> tuple[tuple[int], dict]:
        time.sleep(1.1)
        return (next(gpus),), {}

    benchmark.pedantic(lambda g: _one_fault(world, "reboot", g, 79, ("Quarantined", "Drained", "Remediated")),
                       setup=setup, rounds=n, iterations=1)


def _p(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(round(q * (len(data) - 1))))]


def teardown_module() -> None:
    if not RESULTS:
        return
    base = _p(RESULTS["baseline"]["created"], 0.5) if "baseline" in RESULTS else None
    lines = ["", "chain.remediation: ms from the XID injection to each phase (p50 / p99):"]
    for case, phases in RESULTS.items():
        for phase, values in phases.items():
            ratio = f"  {_p(values, 0.5) / base:6.1f}× baseline" if base and case != "baseline" else ""
            lines.append(f"  {case:<10} {phase:<12} n={len(values):>3}  p50 {_p(values, 0.5) * 1000:8.1f} ms  "
                         f"p99 {_p(values, 0.99) * 1000:8.1f} ms{ratio}")
    print("\n".join(lines), file=sys.stderr)
