"""`nvsentinel exporter` as a real process, against the real kube-apiserver and a real HTTP sink on
loopback: every phase transition arrives once and in order per event; nothing is lost while the sink
is down; a kill -9 resumes from the checkpoint (only a short tail is sent again); a backlog drains in
order per event."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import ControlPlane, free_port
from procs import Daemon, http_get, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exporter"))
from cesink import CloudEventSink  # noqa: E402
from exporter_events import spec, status  # noqa: E402

from nvsentinel.k8s import AlreadyExists, Kube, KubeNotFound  # noqa: E402
from nvsentinel.k8s.resources import CONFIGMAPS, HEALTHEVENTS, NAMESPACES  # noqa: E402

pytestmark = pytest.mark.usefixtures("crd_installed")

NS = "nvsentinel-exporter-test"
CHAIN = ["New", "Quarantined", "Draining", "Drained", "Remediating", "Remediated", "Resolved"]


@pytest.fixture
def sink() -> Iterator[CloudEventSink]:
    s = CloudEventSink()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def ns(kube: Kube) -> str:
    try:
        kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    except AlreadyExists:
        pass
    return NS


class Run:
    """One test's exporter(s), events and sink, isolated by a label and their own Lease and checkpoint."""

    def __init__(self, cp: ControlPlane, kube: Kube, sink: CloudEventSink, unique: str) -> None:
        self.cp, self.kube, self.sink, self.unique = cp, kube, sink, unique
        self.daemons: list[Daemon] = []
        self.checkpoint = f"exporter-cp-{unique}"

    def exporter(self, *extra: str, name: str = "exporter") -> Daemon:
        d = Daemon("exporter", [
            "--sink", self.sink.url, "--cluster-name", "test-cluster", "--kubeconfig", self.cp.kubeconfig,
            "--namespace", NS, "--checkpoint-configmap", self.checkpoint, "--lease-name", f"exporter-{self.unique}",
            "--event-selector", f"test-exporter={self.unique}", "--health-port", "0", "--metrics-port", "0",
            "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5", "--identity", name,
            "--retry-backoff", "0.05", "--max-retry-backoff", "0.5", *extra], name=name).start()
        self.daemons.append(d)
        return d

    def create(self, name: str, **kw: object) -> str:
        body = {"apiVersion": "nvsentinel.nvidia.com/v1alpha1", "kind": "HealthEvent",
                "metadata": {"name": f"{name}-{self.unique}", "labels": {"test-exporter": self.unique}},
                "spec": spec(**kw)}  # type: ignore[arg-type]
        return str(self.kube.create(HEALTHEVENTS, body)["metadata"]["uid"])

    def advance(self, name: str, phase: str) -> None:
        self.kube.patch(HEALTHEVENTS, f"{name}-{self.unique}", {"status": status(phase)}, subresource="status")

    def checkpointed(self) -> dict[str, str]:
        try:
            cm = self.kube.get(CONFIGMAPS, self.checkpoint, NS)
        except KubeNotFound:
            return {}
        return json.loads((cm.get("data") or {}).get("exported.json") or "{}")

    def close(self) -> None:
        for d in self.daemons:
            d.close()
        for obj in self.kube.list(HEALTHEVENTS, label_selector=f"test-exporter={self.unique}")[0]:
            try:
                self.kube.delete(HEALTHEVENTS, obj["metadata"]["name"])
            except KubeNotFound:
                pass


@pytest.fixture
def run(control_plane: ControlPlane, kube: Kube, sink: CloudEventSink, unique: str, ns: str) -> Iterator[Run]:
    r = Run(control_plane, kube, sink, unique)
    try:
        yield r
    finally:
        r.close()


def per_event(ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i in ids:
        uid, _, phase = i.rpartition(".")
        out.setdefault(uid, []).append(phase)
    return out


def test_every_transition_arrives_once_in_order_with_its_attributes(run: Run, sink: CloudEventSink) -> None:
    exp = run.exporter()
    exp.wait_log("exporter leading", timeout=60)
    uids = {f"walk{i}": run.create(f"walk{i}", node=f"node-{i}", pods=(("team", f"job-{i}"),)) for i in range(4)}
    cancelled = run.create("skip")
    for phase in CHAIN[1:]:
        for name in uids:
            run.advance(name, phase)
    run.advance("skip", "Cancelled")
    want = {f"{u}.{p}" for u in uids.values() for p in CHAIN} | {f"{cancelled}.New", f"{cancelled}.Cancelled"}
    wait_until(lambda: want <= set(sink.ids()), timeout=60, what="every transition at the sink", daemons=[exp])
    ids = sink.ids()
    assert len(ids) == len(set(ids)) == len(want), "each transition exactly once"
    got = per_event(ids)
    assert all(got[u] == CHAIN for u in uids.values()) and got[cancelled] == ["New", "Cancelled"]
    by_id = {e["id"]: e for e in sink.events()}
    ev = by_id[f"{uids['walk2']}.Drained"]
    h, d = ev["headers"], ev["data"]
    assert h["ce-type"] == "com.nvidia.nvsentinel.healthevent.drained"
    assert h["ce-source"] == "/clusters/test-cluster/healthevents" and h["ce-subject"] == f"walk2-{run.unique}"
    assert h["ce-time"].startswith("2025-01-02T03:04:08") and h["content-type"] == "application/json"
    assert d["node"] == "node-2" and d["xids"] == [79] and d["gpus"] == ["GPU-0000"]
    assert d["pods"] == [{"namespace": "team", "name": "job-2"}] and d["recommendedAction"] == "RESTART_BM"
    assert d["reason"] == "Drained" and d["cluster"] == "test-cluster" and d["phase"] == "Drained"
    # the checkpoint holds the last phase of each, and lets go of a deleted event
    wait_until(lambda: run.checkpointed().get(cancelled) == "Cancelled", timeout=30, what="checkpoint", daemons=[exp])
    run.kube.delete(HEALTHEVENTS, f"skip-{run.unique}")
    wait_until(lambda: cancelled not in run.checkpointed() and run.checkpointed().get(uids["walk0"]) == "Resolved",
               timeout=30, what="deleted event pruned", daemons=[exp])
    assert exp.terminate() == 0
    assert len(sink.ids()) == len(want)


def test_sink_down_for_a_while_then_everything_arrives(run: Run, sink: CloudEventSink) -> None:
    exp = run.exporter()
    exp.wait_log("exporter leading", timeout=60)
    sink.down()
    uids = [run.create(f"down{i}") for i in range(5)]
    for i in range(5):
        run.advance(f"down{i}", "Quarantined")
        run.advance(f"down{i}", "Draining")
    exp.wait_log("attempt=6", timeout=60)  # refused, retried with backoff, still refused
    assert sink.ids() == []
    sink.up()
    want = {f"{u}.{p}" for u in uids for p in CHAIN[:3]}
    wait_until(lambda: want <= set(sink.ids()), timeout=60, what="backlog after the sink came back", daemons=[exp])
    assert len(sink.ids()) == len(want)
    assert all(v == CHAIN[:3] for v in per_event(sink.ids()).values())


def test_kill_9_mid_stream_resumes_from_the_checkpoint(run: Run, sink: CloudEventSink) -> None:
    n = 200
    uids = [run.create(f"k{i}") for i in range(n)]
    for i in range(n):
        run.advance(f"k{i}", "Quarantined")
    want = {f"{u}.{p}" for u in uids for p in CHAIN[:2]}
    sink.delay = 0.02  # about 100 sends/s with 2 connections: the kill lands mid-stream
    first = run.exporter("--concurrency", "2", "--checkpoint-interval", "0.2", name="first")
    wait_until(lambda: len(sink.ids()) >= 150, timeout=60, what="150 sent", daemons=[first])
    first.kill()
    before = len(sink.ids())
    assert before < len(want), "the kill must land mid-stream"
    second = run.exporter("--concurrency", "8", name="second")
    wait_until(lambda: want <= set(sink.ids()), timeout=90, what="every id after the restart", daemons=[second])
    ids = sink.ids()
    repeats = len(ids) - len(set(ids))
    # what went again is the tail the last checkpoint (0.2 s) had not recorded, not all `before` sends
    assert repeats <= 50, f"{repeats} of {before} sends before the kill went again"
    assert set(ids) == want
    # de-duplicated by id as a sink does (first arrival kept), each event's phases came in order
    assert all(v == CHAIN[:2] for v in per_event(list(dict.fromkeys(ids))).values())


def test_a_backlog_drains_in_order_per_event(run: Run, sink: CloudEventSink) -> None:
    sink.delay = 0.05  # 2 connections: 40 events/s, far slower than the events are made
    mp = free_port()
    exp = run.exporter("--concurrency", "2", "--metrics-port", str(mp))
    exp.wait_log("exporter leading", timeout=60)
    names = [f"b{i}" for i in range(40)]
    uids = [run.create(n) for n in names]
    for phase in ("Quarantined", "Draining", "Drained"):
        for n in names:
            run.advance(n, phase)

    def backlog() -> float:
        code, text = http_get(mp, "/metrics")
        line = next(x for x in text.splitlines() if x.startswith("nvsentinel_exporter_backlog "))
        return float(line.split()[1])

    peak = max(backlog(), 0.0)
    want = {f"{u}.{p}" for u in uids for p in CHAIN[:4]}
    deadline = time.monotonic() + 90
    while not want <= set(sink.ids()):
        peak = max(peak, backlog())
        assert time.monotonic() < deadline, f"{len(sink.ids())} of {len(want)} after 90 s"
        exp.check_alive()
        time.sleep(0.05)
    assert peak >= 20, f"the sink should have fallen behind (peak backlog {peak})"
    ids = sink.ids()
    assert len(ids) == len(want)
    assert all(v == CHAIN[:4] for v in per_event(ids).values())
    wait_until(lambda: backlog() == 0, timeout=30, what="backlog 0", daemons=[exp])
