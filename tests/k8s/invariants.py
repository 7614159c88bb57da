"""The invariant run (issue 17 §5): a seeded random scenario against the real control plane, then checks.

One GPU node runs what the DaemonSet runs (the device API server with the NVML provider on the fake
libnvidia-ml, the publisher, the remediation agent); the controllers run the whole chain. A seeded
generator draws the steps: faults, recovery-action changes, GPU swaps across a reboot, operator cordons
and uncordons, kill -9 of any daemon, an API server stop/start. This module plays the kubelet and the
technician: it completes pod deletions, runs each reboot Job (marks it succeeded, then reboots the node:
the node daemons restart on a fresh fake boot, with any swapped GPU in its slot).

After the steps it waits until the system is quiet and checks what must always hold
(`Run.violations`). Watches (not samples) record every HealthEvent phase, every Job creation and every
Node change, so a violation that came and went between two looks is still seen.

Used by tests/k8s/test_invariants.py (a short run in the suite) and bench/invariants.py (a long run that
prints its steps, seed and violations).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubelet import delete_nodes, finish_deletions, finish_job, make_node, run_pod
from procs import Daemon, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nvml"))
from apiserver import SubprocessServer  # noqa: E402
from nvml_fake_helpers import UUIDS  # noqa: E402

from nvsentinel.cluster.ownership import ANNOTATION, TAINT_KEY, Ownership  # noqa: E402
from nvsentinel.devtools import fake_nvml  # noqa: E402
from nvsentinel.k8s import Kube, KubeNotFound  # noqa: E402
from nvsentinel.k8s.resources import CONFIGMAPS, HEALTHEVENTS, JOBS, NAMESPACES, NODES, PODS  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.policy.healthevent import LABEL_NODE, HealthEvent, parse_time  # noqa: E402

GPUS = 8
#: Step kinds and their weights: faults dominate, the disruptive steps are rarer.
STEPS: dict[str, int] = {
    "xid-reboot": 4,          # XID 79: RESTART_BM → drain → reboot Job → verification after the reboot
    "xid-reset": 3,           # XID 48: COMPONENT_RESET → the gpu-reset handshake
    "xid-benign": 2,          # XID 13 (not fatal by default): nothing may happen
    "xid-human": 1,           # an unknown XID: CONTACT_SUPPORT, held for a human
    "recovery-action": 3,     # NVML says GPU_RESET / NODE_REBOOT through field 230
    "recovery-clear": 2,      # ... and NONE again
    "swap-gpu": 1,            # a technician swaps a GPU: the node reboots with a new UUID in that slot
    "operator-cordon": 1,
    "operator-uncordon": 2,
    "kill-controllers": 2,
    "kill-publisher": 1,
    "kill-agent": 1,
    "kill-device-api": 1,
    "restart-apiserver": 1,
}
REASON_OPERATOR = "UncordonedByOperator"


@dataclasses.dataclass
class Record:
    """What the watches saw, for the checks."""

    phases: dict[str, list[tuple[float, str]]] = dataclasses.field(default_factory=dict)
    """event name → [(wall time, phase)] every phase change"""
    events: dict[str, dict] = dataclasses.field(default_factory=dict)
    """event name → its latest object"""
    job_adds: dict[str, int] = dataclasses.field(default_factory=dict)
    """reboot Job name → how many times it was created"""
    node_samples: list[tuple[float, dict]] = dataclasses.field(default_factory=list)
    """every Node object the watch delivered"""


class Watches:
    """Background watches of the node's HealthEvents, the namespace's Jobs and the Node; each resumes
    from its last resource version across API server restarts (relisting on 410)."""

    def __init__(self, kube: Kube, node: str, ns: str) -> None:
        self.kube, self.node, self.ns = kube, node, ns
        self.rec = Record()
        self.lock = threading.Lock()
        self.changes = 0
        self._seen_jobs: set[str] = set()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(HEALTHEVENTS, None, f"{LABEL_NODE}={node}", None, self._he),
                             daemon=True),
            threading.Thread(target=self._loop, args=(JOBS, ns, None, None, self._job), daemon=True),
            threading.Thread(target=self._loop, args=(NODES, None, None, f"metadata.name={node}", self._node_seen),
                             daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _loop(self, res: Any, ns: str | None, labels: str | None, fields: str | None,
              handle: Callable[[str, dict], None]) -> None:
        rv = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    items, rv = self.kube.list(res, ns, label_selector=labels, field_selector=fields)
                    for obj in items:
                        handle("ADDED", obj)
                stream = self.kube.watch(res, resource_version=rv, namespace=ns, label_selector=labels,
                                         field_selector=fields, timeout_seconds=30)
                for etype, obj in stream:
                    if self._stop.is_set():
                        break
                    if etype == "ERROR":  # 410 Gone: our resource version is compacted away; relist
                        rv = None
                        break
                    rv = obj["metadata"].get("resourceVersion") or rv
                    if etype != "BOOKMARK":
                        handle(etype, obj)
            except Exception:  # noqa: BLE001 - a broken watch (API server restart) is resumed
                self._stop.wait(0.2)

    def _he(self, etype: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        phase = "Deleted" if etype == "DELETED" else (obj.get("status") or {}).get("phase") or "New"
        with self.lock:
            self.changes += 1
            if etype != "DELETED":
                self.rec.events[name] = obj
            seen = self.rec.phases.setdefault(name, [])
            if not seen or seen[-1][1] != phase:
                seen.append((time.time(), phase))

    def _job(self, etype: str, obj: dict) -> None:
        with self.lock:
            self.changes += 1
            if etype == "ADDED":
                name = obj["metadata"]["name"]
                uid = obj["metadata"]["uid"]
                key = f"{name}/{uid}"
                if key not in self._seen_jobs:
                    self._seen_jobs.add(key)
                    self.rec.job_adds[name] = self.rec.job_adds.get(name, 0) + 1

    def _node_seen(self, etype: str, obj: dict) -> None:
        with self.lock:
            self.changes += 1
            if etype != "DELETED":
                self.rec.node_samples.append((time.time(), obj))

    def close(self) -> None:
        self._stop.set()


class Node:
    """The node side, as the DaemonSet runs it, each daemon restartable on its own; `reboot()` restarts
    them all on a fresh fake boot (a fresh control file), with the swapped GPUs in their slots."""

    def __init__(self, cp: Any, name: str, sock_dir: str) -> None:
        self.cp, self.name, self.sock_dir = cp, name, sock_dir
        self.boot = 0
        self.swapped: dict[int, tuple[str, str]] = {}
        """slot → (uuid, serial) of the GPU a technician put there"""
        self.recovery: dict[int, str] = {}
        """slot → the recovery action NVML reports now (NONE when absent)"""
        self.server: Any = None
        self.publisher: Daemon | None = None
        self.agent: Daemon | None = None
        self._start()

    def uuid(self, slot: int) -> str:
        return self.swapped[slot][0] if slot in self.swapped else UUIDS[slot]

    def _start(self) -> None:
        self.boot += 1
        self.recovery = {}
        self.control = os.path.join(self.sock_dir, f"fake-nvml-boot{self.boot}.ctl")
        self.fault = fake_nvml.FaultInjector(self.control)
        for slot, (uuid, serial) in sorted(self.swapped.items()):
            self.fault.replace(slot, uuid, serial)  # the board in that slot since before this boot
        self.start_server()
        self.start_publisher()
        self.start_agent()
        self.wait_registered()

    def start_server(self) -> None:
        self.server = SubprocessServer.start(self.sock_dir, "--enable-nvml-provider", "--fake-nvml",
                                             "--fake-nvml-control", self.control, "--node-name", self.name)

    def _common(self) -> list[str]:
        return ["--kubeconfig", self.cp.kubeconfig, "--node-name", self.name, "--health-port", "0",
                "--metrics-port", "0", "--address", self.server.unix]

    def start_publisher(self) -> None:
        self.publisher = Daemon("publisher", [*self._common(), "--debounce", "0.2"],
                                name=f"publisher-{self.boot}").start()

    def start_agent(self) -> None:
        self.agent = Daemon("remediation_agent", [*self._common(), "--resync-period", "1"],
                            name=f"agent-{self.boot}").start()

    def wait_registered(self) -> None:
        def registered() -> bool:
            with DeviceApiClient(self.server.unix) as c:
                return {g.metadata.name for g in c.list_gpus()[1]} == {self.uuid(i) for i in range(GPUS)}

        wait_until(registered, timeout=60, what="every GPU registered", daemons=self.daemons())

    def daemons(self) -> list[Daemon]:
        return [d for d in (self.publisher, self.agent) if d is not None]

    def kill(self, which: str) -> None:
        """kill -9 one daemon and start it again (as the kubelet restarts a container)."""
        if which == "device-api":
            self.server.kill()
            self.start_server()  # the same boot's control file: the fake's state survives
            # the clients keep their address; the socket is the same path
            return
        d = self.publisher if which == "publisher" else self.agent
        assert d is not None
        d.kill()
        d.close()
        (self.start_publisher if which == "publisher" else self.start_agent)()

    def reboot(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        for d in self.daemons():
            d.close()
        if self.server is not None:
            self.server.close()


class Run:
    """One seeded scenario on one node: `play(steps)`, then `settle()`, then `violations()`."""

    def __init__(self, cp: Any, unique: str, sock_dir: str, seed: int, *, log: Callable[[str], None] = print) -> None:
        self.cp, self.seed, self.log = cp, seed, log
        self.rng = random.Random(seed)
        self.kube = cp.kube(qps=0)
        self.ns = f"inv-{unique}"
        self.node_name = f"gpu-inv-{unique}"
        self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
        make_node(self.kube, self.node_name)
        self.kube.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "nvsentinel-policy", "namespace": self.ns},
                                      "data": {"ttlAfterResolved": "1h", "cleanupInterval": "5s"}}, self.ns)
        for i in range(2):
            self._pod(f"train-{i}")
        self.watches = Watches(self.kube, self.node_name, self.ns)
        self.node = Node(cp, self.node_name, sock_dir)
        self.ctl: Daemon | None = None
        self.ctl_runs = 0
        self.start_controllers()
        self.finished_jobs: set[str] = set()
        self.steps: list[str] = []
        self.remediation_starts: dict[str, float] = {}

    # ---- the world's moving parts ----

    def _pod(self, name: str) -> None:
        self.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": name, "namespace": self.ns, "labels": {"app": "train"}},
                                "spec": {"nodeName": self.node_name,
                                         "containers": [{"name": "c", "image": "cuda"}]}}, self.ns)
        run_pod(self.kube, self.ns, name)

    def start_controllers(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
        self.ctl_runs += 1
        self.ctl = Daemon("controllers", [
            "--kubeconfig", self.cp.kubeconfig, "--namespace", self.ns, "--health-port", "0", "--metrics-port", "0",
            "--identity", f"ctl-{self.ctl_runs}", "--lease-duration", "3", "--renew-deadline", "2",
            "--retry-period", "0.3", "--event-selector", f"{LABEL_NODE}={self.node_name}",
            "--node-selector", f"kubernetes.io/hostname={self.node_name}", "--breaker-percent", "100",
            "--drain-pdb-retry", "0.5", "--drain-poll", "0.3", "--remediation-poll", "0.3",
            "--remediation-backoff", "0.5"], name=f"controllers-{self.ctl_runs}").start()
        self.ctl.wait_log("leader election: leading", timeout=60)

    def daemons(self) -> list[Daemon]:
        return [*self.node.daemons(), *([self.ctl] if self.ctl else [])]

    def kubelet(self) -> None:
        """Complete pod deletions; run each new reboot Job: it succeeds, and the node reboots."""
        with contextlib.suppress(Exception):
            finish_deletions(self.kube, self.ns)
        try:
            jobs = self.kube.list(JOBS, self.ns)[0]
        except Exception:  # noqa: BLE001 - the API server may be down for a moment
            return
        for job in jobs:
            name = job["metadata"]["name"]
            if name in self.finished_jobs or (job.get("status") or {}).get("conditions"):
                continue
            finish_job(self.kube, self.ns, name, succeeded=True)
            self.finished_jobs.add(name)
            self.log(f"    kubelet: reboot Job {name} succeeded; the node reboots")
            self.node.reboot()

    # ---- steps ----

    def pick(self) -> str:
        kinds = list(STEPS)
        return self.rng.choices(kinds, weights=[STEPS[k] for k in kinds])[0]

    def do(self, kind: str) -> None:
        slot = self.rng.randrange(GPUS)
        desc = kind
        if kind == "xid-reboot":
            self.node.fault.inject_xid(slot, 79)
        elif kind == "xid-reset":
            self.node.fault.inject_xid(slot, 48)
        elif kind == "xid-benign":
            self.node.fault.inject_xid(slot, 13)
        elif kind == "xid-human":
            self.node.fault.inject_xid(slot, 999)
        elif kind == "recovery-action":
            action = self.rng.choice(["GPU_RESET", "NODE_REBOOT"])
            self.node.fault.recovery_action(slot, action)
            self.node.recovery[slot] = action
            desc += f" {action}"
        elif kind == "recovery-clear":
            slot = next(iter(sorted(self.node.recovery)), slot)
            self.node.fault.recovery_action(slot, "NONE")
            self.node.recovery.pop(slot, None)
        elif kind == "swap-gpu":
            old = self.node.uuid(slot)
            self.node.swapped[slot] = (fake_nvml.replacement_uuid(old), f"17{self.rng.randrange(10**11):011d}")
            self.node.reboot()
            desc += f" {old} → {self.node.uuid(slot)}"
        elif kind == "operator-cordon":
            self.kube.patch(NODES, self.node_name, {"spec": {"unschedulable": True}})
        elif kind == "operator-uncordon":
            self.kube.patch(NODES, self.node_name, {"spec": {"unschedulable": False}})
        elif kind == "kill-controllers":
            assert self.ctl is not None
            self.ctl.kill()
            self.start_controllers()
        elif kind in ("kill-publisher", "kill-agent", "kill-device-api"):
            self.node.kill(kind.removeprefix("kill-"))
        elif kind == "restart-apiserver":
            self.cp.stop_apiserver()
            time.sleep(self.rng.uniform(0.2, 2.0))  # how long it is down: part of the scenario
            self.cp.start_apiserver()
        else:
            raise ValueError(kind)
        if kind.startswith("xid") or kind.startswith("recovery"):
            desc += f" gpu {slot}"
        self.steps.append(desc)
        self.log(f"  step {len(self.steps):3d}: {desc}")

    def play(self, steps: int, deadline: float) -> None:
        for _ in range(steps):
            if time.monotonic() > deadline:
                self.log("  (time bound reached: stopping early)")
                break
            self.do(self.pick())
            # the pace between steps is drawn too: some land mid-chain, some after it settles
            end = time.monotonic() + self.rng.uniform(0.0, 3.0)
            while time.monotonic() < end:
                self.kubelet()
                time.sleep(0.1)

    # ---- quiet, and the checks ----

    def settle(self, timeout: float = 180.0, quiet_for: float = 5.0) -> bool:
        """Recover every GPU NVML still flags (what a technician does last), then wait until no HealthEvent,
        Job or Node has changed for `quiet_for` seconds. False: it never went quiet."""
        for slot in sorted(self.node.recovery):
            self.node.fault.recovery_action(slot, "NONE")
        self.node.recovery.clear()
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.kubelet()
            changes = self.watches.changes
            if changes != last:
                last, since = changes, time.monotonic()
            elif time.monotonic() - since >= quiet_for:
                return True
            time.sleep(0.2)
        return False

    def violations(self) -> list[str]:
        out: list[str] = []
        node = self.kube.get(NODES, self.node_name)
        events = [HealthEvent.from_dict(e) for e in self.kube.list(
            HEALTHEVENTS, label_selector=f"{LABEL_NODE}={self.node_name}")[0]]
        open_fatal = [e for e in events if e.spec.is_fatal and not e.spec.is_healthy and not e.status.phase.terminal]
        annotations = node["metadata"].get("annotations") or {}
        unschedulable = bool(node["spec"].get("unschedulable"))
        ours = None
        if ANNOTATION in annotations:
            with contextlib.suppress(ValueError):
                ours = Ownership.from_json(annotations[ANNOTATION])
        operator = [e for e in events if (c := e.status.condition("NodeQuarantined")) is not None
                    and c.reason == REASON_OPERATOR]
        # 1. every node we cordoned has an open fatal event or a recorded operator decision
        if unschedulable and ours is not None and ours.cordoned_by_us and not open_fatal and not operator:
            out.append(f"node cordoned by nvsentinel with no open fatal event and no operator decision: {ours}")
        tainted = any(t.get("key") == TAINT_KEY for t in node["spec"].get("taints") or [])
        if tainted and not open_fatal:
            out.append("node carries our taint with no open fatal event")
        # 2. no node with an open fatal event we own is schedulable (unless an operator said so)
        owned = [e for e in open_fatal if (c := e.status.condition("NodeQuarantined")) is not None
                 and c.status == "True"]
        if owned and not unschedulable and not operator:
            out.append(f"node schedulable with open fatal events we own: {[e.name for e in owned]}")
        # 3. at most one reboot Job per attempt
        for name, n in self.watches.rec.job_adds.items():
            if n > 1:
                out.append(f"reboot Job {name} created {n} times")
        # 4. no remediation started for a GPU whose fault had cleared (verified healthy before it began)
        healthy = [e for e in self.watches.rec.events.values() if e["spec"]["isHealthy"]]
        for name, seen in self.watches.rec.phases.items():
            started = next((t for t, p in seen if p == "Remediating"), None)
            ev = self.watches.rec.events.get(name)
            if started is None or ev is None:
                continue
            fatal = HealthEvent.from_dict(ev)
            for h in healthy:
                hev = HealthEvent.from_dict(h)
                if not (set(hev.gpu_uuids) & set(fatal.gpu_uuids)) or hev.spec.detected_at < fatal.spec.detected_at:
                    continue
                created = parse_time(h["metadata"]["creationTimestamp"]).timestamp()
                # 2 s: the stage's caches may not have delivered the healthy event yet (one watch round trip)
                if created + 2.0 < started:
                    out.append(f"{name} began remediation at {_ts(started)} after {hev.name} "
                               f"(created {_ts(created)}) had cleared its GPU")
        # 5. nothing waits in a non-terminal phase without a condition saying why
        for e in events:
            if e.status.phase.terminal:
                continue
            if not e.status.conditions:
                out.append(f"{e.name} waits in phase {e.status.phase.value} with no condition")
                continue
            last = max(e.status.conditions, key=lambda c: c.last_transition_time)
            if not last.reason or not last.message:
                out.append(f"{e.name} waits in phase {e.status.phase.value}: condition {last.type} says nothing")
        return out

    def close(self) -> None:
        self.watches.close()
        if self.ctl is not None:
            self.ctl.close()
        self.node.close()
        with contextlib.suppress(Exception):
            for ev in self.kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={self.node_name}")[0]:
                with contextlib.suppress(KubeNotFound):
                    self.kube.delete(HEALTHEVENTS, ev["metadata"]["name"])
            delete_nodes(self.kube, [self.node_name])
            self.kube.delete(NAMESPACES, self.ns)
        self.kube.close()


def _ts(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
