"""Exporter throughput (issue 19): HealthEvent transitions exported per second to a local sink,
against a bare loop of HTTP POSTs to the same sink in the same run (same concurrency, same
keep-alive connection pool, the same pre-encoded CloudEvents).

Workload: N HealthEvents are created in the real kube-apiserver and moved to Quarantined first
(2 transitions each: New, Quarantined), so the API server's create rate is not what is measured;
then `nvsentinel exporter` starts as a process and is timed to the last id at the sink. Reported:
the rate over the send window (first to last CloudEvent at the sink) and over the whole run from the
process start (start-up, the informer's list and the Lease included). Loss and duplicates are
counted by id at the sink.

    python bench/exporter.py --events 3000
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "k8s"))
sys.path.insert(0, str(HERE.parent / "tests" / "exporter"))

from cesink import CloudEventSink  # noqa: E402
from cluster import ControlPlane  # noqa: E402
from exporter_events import spec, status  # noqa: E402
from procs import Daemon  # noqa: E402

from nvsentinel.cluster.exporter.logic import pending_transitions  # noqa: E402
from nvsentinel.cluster.exporter.sender import Sender  # noqa: E402
from nvsentinel.k8s import AlreadyExists, Kube  # noqa: E402
from nvsentinel.k8s.crd import install_crd  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS, NAMESPACES  # noqa: E402
from nvsentinel.policy.healthevent import HealthEvent  # noqa: E402

NS = "bench-exporter"
TARGET_RATE = 500.0
TARGET_RATIO = 1.5


class TimedSink(CloudEventSink):
    """The sink, noting when the first and the last accepted CloudEvent arrived."""

    def __init__(self) -> None:
        self.first = self.last = 0.0
        super().__init__()

    def answer(self, headers: Any, body: bytes) -> tuple[int, str | None]:
        out = super().answer(headers, body)
        now = time.perf_counter()
        with self.lock:
            self.first = self.first or now
            self.last = now
        return out


def make_events(kube: Kube, n: int, label: str, threads: int = 16) -> None:
    def one(i: int) -> None:
        name = f"bench-{label}-{i}"
        kube.create(HEALTHEVENTS, {"apiVersion": "nvsentinel.nvidia.com/v1alpha1", "kind": "HealthEvent",
                                   "metadata": {"name": name, "labels": {"bench-exporter": label}},
                                   "spec": spec(node=f"node-{i % 500}")})
        kube.patch(HEALTHEVENTS, name, {"status": status("Quarantined")}, subresource="status")

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))


def bare_loop(sink: CloudEventSink, n: int, concurrency: int) -> float:
    """POST `n` real CloudEvents (encoded beforehand) over `concurrency` keep-alive connections: rate/s."""
    sender = Sender(sink.url, "bench", connections=concurrency, timeout=10)
    template = HealthEvent.from_dict({"apiVersion": "nvsentinel.nvidia.com/v1alpha1", "kind": "HealthEvent",
                                      "metadata": {"name": "bare", "uid": "bare", "creationTimestamp": "2025-01-01T00:00:00Z"},
                                      "spec": spec(), "status": status("Quarantined")})
    trs = pending_transitions(template, -1, "bench")
    bodies = [sender.encode(trs[i % 2]) for i in range(n)]
    bodies = [({**h, "ce-id": f"bare-{i}"}, b) for i, (h, b) in enumerate(bodies)]
    it = iter(bodies)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                item = next(it, None)
            if item is None:
                return
            r = sender.pool.urlopen("POST", sender.path, body=item[1], headers=item[0], retries=False)
            assert 200 <= r.status < 300

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    sender.close()
    return n / elapsed


def run(cp: ControlPlane, events: int, concurrency: int = 16, timeout: float = 300.0) -> dict[str, Any]:
    kube = cp.kube()
    label = uuid.uuid4().hex[:8]
    try:
        install_crd(kube)
        try:
            kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        except AlreadyExists:
            pass
        make_events(kube, events, label)
        want = 2 * events
        sink = TimedSink()
        try:
            bare = bare_loop(sink, want, concurrency)
            with sink.lock:
                sink.received.clear()
                sink.first = sink.last = 0.0
            started = time.perf_counter()
            exp = Daemon("exporter", [
                "--sink", sink.url, "--cluster-name", "bench", "--kubeconfig", cp.kubeconfig, "--namespace", NS,
                "--checkpoint-configmap", f"bench-cp-{label}", "--no-leader-elect", "--event-selector",
                f"bench-exporter={label}", "--health-port", "0", "--metrics-port", "0",
                "--concurrency", str(concurrency), "--log-level", "WARNING"], name="exporter").start()
            try:
                deadline = started + timeout
                while len(set(sink.ids())) < want:
                    exp.check_alive()
                    if time.perf_counter() > deadline:
                        raise AssertionError(f"{len(set(sink.ids()))} of {want} ids in {timeout} s")
                    time.sleep(0.005)
                ended = sink.last
            finally:
                exp.terminate()
                exp.close()
            ids = sink.ids()
        finally:
            sink.close()
    finally:
        for i in range(events):
            try:
                kube.delete(HEALTHEVENTS, f"bench-{label}-{i}")
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
        kube.close()
    window = max(ended - sink.first, 1e-9)
    rate = want / window
    return {
        "events": events, "cloudevents": want, "concurrency": concurrency,
        "unique_ids": len(set(ids)), "lost": want - len(set(ids)), "duplicates": len(ids) - len(set(ids)),
        "exporter_rate": round(rate, 1), "exporter_rate_from_start": round(want / (ended - started), 1),
        "startup_s": round(sink.first - started, 3), "bare_loop_rate": round(bare, 1),
        "ratio_bare_over_exporter": round(bare / rate, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args(argv)
    os.environ["PYTHONSAFEPATH"] = "1"
    with ControlPlane(controller_manager=False) as cp:
        res = run(cp, args.events, args.concurrency)
    sys.stdout.write(json.dumps(res, indent=2) + "\n")
    ok = res["lost"] == 0 and res["exporter_rate"] >= TARGET_RATE and res["ratio_bare_over_exporter"] <= TARGET_RATIO
    sys.stdout.write(f"exporter {res['exporter_rate']}/s vs bare loop {res['bare_loop_rate']}/s: "
                     f"ratio {res['ratio_bare_over_exporter']} (target >= {TARGET_RATE}/s, <= {TARGET_RATIO}x); "
                     f"lost {res['lost']}, duplicates {res['duplicates']}: {'MET' if ok else 'MISSED'}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
