"""`nvsentinel demo`: the whole system on this machine, a scripted fault sequence, a live timeline.

Node side (processes, as the DaemonSet runs them): the device API server with the NVML provider on
the fake libnvidia-ml (8 GPUs), the kernel-log monitor following a generated log, the publisher and
the remediation agent. Cluster side: the local control plane of `nvsentinel.devtools.devcluster` (built on
first use, cached), three GPU Nodes, workload pods (one behind a PodDisruptionBudget), the controllers,
and a stand-in kubelet that completes pod deletions and reboot Jobs; a completed reboot Job restarts
the node side on a fresh fake boot, as a real reboot would.

Everything lives in one temp dir and in child processes that die with this one (PR_SET_PDEATHSIG);
Ctrl-C or any error stops them all and removes the dir.
"""
from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from nvsentinel.devtools.demo.script import SCENARIOS, Observed, Scenario, summary_table, timeline_line
from nvsentinel.devtools.devcluster.controlplane import with_parent_death

__all__ = ["DemoError", "Demo"]

NODE = "gpu-node-1"
OTHER_NODES = ("gpu-node-2", "gpu-node-3")
CONTROLLERS_NS = "nvsentinel-demo"
WORKLOAD_NS = "demo-workloads"
SCENARIO_TIMEOUT = 120.0


class DemoError(RuntimeError):
    """A part of the demo could not start or stopped; the message says which and why."""


class Proc:
    """One daemon (`python -m nvsentinel.daemons.<module>`) with its log in the demo dir."""

    def __init__(self, name: str, module: str, args: list[str], workdir: Path) -> None:
        self.name, self.module, self.args = name, module, args
        self.log = workdir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(with_parent_death([sys.executable, "-m", f"nvsentinel.daemons.{module}",
                                                            *args]),
                                         stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise DemoError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class NodeSide:
    """What the DaemonSet runs on gpu-node-1; `reboot()` restarts it on a fresh fake boot."""

    def __init__(self, workdir: Path, kubeconfig: str | None, node: str) -> None:
        self.workdir, self.kubeconfig, self.node = workdir, kubeconfig, node
        self.socket = workdir / "device.sock"
        self.kern_log = workdir / "kern.log"
        self.kern_log.touch()
        self.boot = 0
        self.procs: list[Proc] = []
        self.uuids: list[str] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        from nvsentinel.devtools.fake_nvml import FaultInjector

        self.boot += 1
        control = self.workdir / f"fake-nvml-boot{self.boot}.ctl"  # a fresh boot: a fresh fake
        address = f"unix://{self.socket}"
        w = self.workdir
        self.procs = [Proc(f"device-api-server-{self.boot}", "device_api_server", [
            "--unix-socket", str(self.socket), "--grpc-address", "", "--health-port", "0", "--metrics-port", "0",
            "--enable-nvml-provider", "--fake-nvml", "--fake-nvml-control", str(control), "--node-name", self.node,
            "--shutdown-delay", "0"], w)]
        self._wait_gpus(address)
        self.procs.append(Proc(f"kmsg-monitor-{self.boot}", "kmsg_monitor", [
            "--address", address, "--source", str(self.kern_log), "--state-file", str(w / "kmsg-state.json"),
            "--node-name", self.node, "--poll-interval", "0.2"], w))
        if self.kubeconfig:
            common = ["--address", address, "--kubeconfig", self.kubeconfig, "--node-name", self.node,
                      "--health-port", "0", "--metrics-port", "0"]
            self.procs.append(Proc(f"publisher-{self.boot}", "publisher", [*common, "--debounce", "1"], w))
            self.procs.append(Proc(f"remediation-agent-{self.boot}", "remediation_agent",
                                   [*common, "--resync-period", "1"], w))
        self.fault = FaultInjector(control)
        time.sleep(1.0)  # the publisher and the agent have seen the healthy GPUs

    def _wait_gpus(self, address: str, timeout: float = 60.0) -> None:
        from nvsentinel.node.client import DeviceApiClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.procs[0].check()
            if self.socket.exists():
                with contextlib.suppress(Exception):
                    with DeviceApiClient(address, timeout=2.0) as c:
                        _, gpus = c.list_gpus()
                        if len(gpus) == 8:
                            self.uuids = self._by_index(sorted(g.metadata.name for g in gpus))
                            return
            time.sleep(0.2)
        raise DemoError(f"the device API server did not register 8 fake GPUs in {timeout:g} s:\n"
                        f"{self.procs[0].tail()}")

    def _by_index(self, names: list[str]) -> list[str]:
        """UUIDs in NVML index order, from the provider's `gpu found index=… uuid=…` log lines."""
        import re

        found = dict(re.findall(r"index=(\d+) uuid=(GPU-[0-9a-fA-F-]+)", self.procs[0].tail(200000)))
        if sorted(found.values()) == names:
            return [found[str(i)] for i in range(len(names))]
        return names

    def reboot(self) -> None:
        with self.lock:
            self.stop()
            self.start()

    def check(self) -> None:
        with self.lock:
            for p in self.procs:
                p.check()

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs = []

    def inject(self, s: Scenario, uuid: str) -> None:
        if s.source == "nvml":
            self.fault.inject_xid(uuid, s.xid)
            return
        stamp = time.monotonic()
        pci = f"0000:{0x10 + s.gpu:02x}:00.0"
        with open(self.kern_log, "a") as f:
            f.write(f"[{stamp:12.6f}] NVRM: GPU at PCI:{pci}: {uuid}\n"
                    f"[{stamp:12.6f}] NVRM: Xid (PCI:{pci}): {s.xid}, pid=4242, name=train.py, Graphics Exception\n")

    def kernel_log_read(self) -> bool:
        """The kernel-log monitor has applied every line of the generated log (its cursor is at the end)."""
        import json

        try:
            state = json.loads((self.workdir / "kmsg-state.json").read_text())
        except (OSError, ValueError):
            return False
        return int(state.get("offset", -1)) >= self.kern_log.stat().st_size

    def condition(self, uuid: str) -> str:
        """The GPU's first False condition reason ("" if healthy)."""
        from nvsentinel.node.client import DeviceApiClient

        with DeviceApiClient(f"unix://{self.socket}", timeout=2.0) as c:
            gpu = c.get_gpu(uuid)
        return next((c.reason for c in gpu.status.conditions if c.status == "False"), "")


class Demo:
    def __init__(self, *, cluster: bool = True, kubeconfig: str | None = None, node: str | None = None,
                 live: bool = False, out: TextIO = sys.stdout, pace: float = 1.0) -> None:
        self.cluster, self.kubeconfig_arg, self.live = cluster, kubeconfig, live
        self.node = node or NODE
        self.out = out
        self.pace = pace
        self.dry_run = bool(kubeconfig) and not live
        self.workdir = Path(tempfile.mkdtemp(prefix="nvsentinel-demo-"))
        self.plane: Any = None
        self.kube: Any = None
        self.side: NodeSide | None = None
        self.controllers: Proc | None = None
        self._stop = threading.Event()
        self._changes: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._created: list[str] = []

    # ---- output -------------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def _progress(self, elapsed: float, line: str) -> None:
        if self.out.isatty():
            self.out.write(f"\r  building the local control plane (once, then cached): {elapsed:5.0f} s  "
                           f"{line[:60]:<60}")
            self.out.flush()
        elif int(elapsed * 2) % 20 == 0:
            self.say(f"  building the local control plane (once, then cached): {elapsed:.0f} s  {line[:80]}")

    # ---- lifecycle ----------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self._start()
            rows = [(s, self._run_scenario(s)) for s in SCENARIOS]
            text, ok = summary_table(rows, node_only=not self.cluster, dry_run=self.dry_run)
            self.say("\nSummary")
            self.say(text)
            self.say("\nevery scripted fault reached its expected end" if ok else
                     "\nSOME FAULTS DID NOT END AS EXPECTED (see above)")
            return 0 if ok else 1
        finally:
            self.close()

    def _start(self) -> None:
        t0 = time.monotonic()
        self.say(f"demo files: {self.workdir} (removed at the end)")
        kubeconfig = None
        if self.cluster:
            kubeconfig = self._start_cluster()
        self.say(f"node side: device API server + fake NVML (8 GPUs), kernel-log monitor"
                 f"{', publisher, remediation agent' if kubeconfig else ''} on {self.node}")
        self.side = NodeSide(self.workdir, kubeconfig, self.node)
        self.side.start()
        if self.cluster:
            self._start_controllers(kubeconfig)
        self.say(f"ready in {time.monotonic() - t0:.1f} s\n")

    def _start_cluster(self) -> str:
        from nvsentinel.devtools.devcluster.controlplane import ControlPlane, binaries_ready
        from nvsentinel.k8s.crd import install_crd
        from nvsentinel.k8s import AlreadyExists, Kube
        from nvsentinel.k8s.resources import CRDS, NAMESPACES

        if self.kubeconfig_arg:
            self.kube = Kube.connect(self.kubeconfig_arg)
            try:
                self.kube.get(CRDS, "healthevents.nvsentinel.nvidia.com")
            except Exception as exc:  # noqa: BLE001 - any failure here means "not usable"
                raise DemoError(f"the HealthEvent CRD is not installed on {self.kube.host} ({exc}); install the "
                                "chart (docs/operations.md) first") from None
            mode = "LIVE: nodes will be cordoned and drained" if self.live else "dry-run: decisions are recorded, " \
                "nothing is changed"
            self.say(f"cluster: {self.kube.host} ({mode}); node {self.node}")
            return self.kubeconfig_arg
        if not binaries_ready():
            self.say("cluster: the local control plane is not built yet: building it once (about 7 minutes on "
                     "2 cores; cached for the next run)")
        self.plane = ControlPlane(progress=self._progress)
        if self.out.isatty():
            self.out.write("\n")
        self.plane.start()
        self.say(f"control plane files: {self.plane.dir} (removed at the end)")
        self.kube = self.plane.kube(qps=0)
        install_crd(self.kube)
        for ns in (CONTROLLERS_NS, WORKLOAD_NS):
            with contextlib.suppress(AlreadyExists):
                self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self._make_nodes()
        self.say(f"cluster: local kube-apiserver v1.20.2 at {self.plane.url}; GPU nodes {NODE}, "
                 f"{', '.join(OTHER_NODES)}; workloads in {WORKLOAD_NS}")
        return self.plane.kubeconfig

    def _make_nodes(self) -> None:
        from nvsentinel.devtools.devcluster.kubelet import make_node

        for n in (NODE, *OTHER_NODES):
            make_node(self.kube, n)
        for i, node in enumerate((NODE, NODE, *OTHER_NODES)):
            self._pod(f"train-{i}", node, "train")

    def _pod(self, name: str, node: str, app: str) -> None:
        from nvsentinel.devtools.devcluster.kubelet import run_pod
        from nvsentinel.k8s.resources import PODS

        self.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": name, "namespace": WORKLOAD_NS, "labels": {"app": app}},
                                "spec": {"nodeName": node, "containers": [{"name": "main", "image": "cuda"}]}},
                         WORKLOAD_NS)
        run_pod(self.kube, WORKLOAD_NS, name)

    def _start_controllers(self, kubeconfig: str | None) -> None:
        from nvsentinel.policy.healthevent import LABEL_NODE

        assert kubeconfig is not None
        args = ["--kubeconfig", kubeconfig, "--namespace", CONTROLLERS_NS, "--health-port", "0",
                "--metrics-port", "0", "--no-leader-elect", "--event-selector", f"{LABEL_NODE}={self.node}",
                "--drain-pdb-retry", "1", "--drain-poll", "0.3", "--remediation-poll", "0.3",
                "--remediation-backoff", "1"]
        if self.kubeconfig_arg:
            args.append("--no-dry-run" if self.live else "--dry-run")
        else:
            args += ["--breaker-percent", "50"]
        self.controllers = Proc("controllers", "controllers", args, self.workdir)
        self._thread(self._watch_events)
        if self.plane is not None:
            self._thread(self._kubelet)
        deadline = time.monotonic() + 30
        while "controllers started" not in self.controllers.tail(100000):
            self.controllers.check()
            if time.monotonic() > deadline:
                raise DemoError(f"the controllers did not start in 30 s:\n{self.controllers.tail()}")
            time.sleep(0.1)
        self.say("controllers: quarantine → drain → remediation → resolution → TTL"
                 + (" (dry-run)" if self.dry_run else ""))

    def _thread(self, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, daemon=True, name=fn.__name__)
        t.start()
        self._threads.append(t)

    # ---- background: the event watch and the stand-in kubelet -----------------------------------------
    def _watch_events(self) -> None:
        from nvsentinel.policy.healthevent import LABEL_NODE
        from nvsentinel.k8s.resources import HEALTHEVENTS

        _, rv = self.kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={self.node}", limit=1)
        while not self._stop.is_set():
            try:
                stream = self.kube.watch(HEALTHEVENTS, resource_version=rv, timeout_seconds=30,
                                         label_selector=f"{LABEL_NODE}={self.node}")
                for etype, obj in stream:
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if etype in ("ADDED", "MODIFIED"):
                        self._changes.put((time.monotonic(), obj))
                    if self._stop.is_set():
                        stream.close()
            except Exception:  # noqa: BLE001 - resume after a dropped watch
                time.sleep(0.2)

    def _kubelet(self) -> None:
        from nvsentinel.devtools.devcluster.kubelet import finish_deletions, finish_job
        from nvsentinel.k8s.resources import JOBS

        done: set[str] = set()
        while not self._stop.wait(0.2):
            with contextlib.suppress(Exception):
                finish_deletions(self.kube, WORKLOAD_NS)
                for job in self.kube.list(JOBS, CONTROLLERS_NS)[0]:
                    name = job["metadata"]["name"]
                    if name in done:
                        continue
                    done.add(name)
                    self._stop.wait(1.0 * self.pace)
                    finish_job(self.kube, CONTROLLERS_NS, name, succeeded=True)
                    self.say(f"             [kubelet] reboot Job {name} succeeded; {NODE} reboots (node agent "
                             "restarts on a fresh boot)")
                    assert self.side is not None
                    self.side.reboot()

    # ---- one scenario -------------------------------------------------------------------------------
    def _run_scenario(self, s: Scenario) -> Observed:
        assert self.side is not None
        self.say(f"== {s.title}: XID {s.xid} on GPU {s.gpu} via {'the kernel log' if s.source == 'kmsg' else 'NVML'}")
        if s.pdb_workload and self.plane is not None:
            self._pdb_workload()
        uuid = self.side.uuids[s.gpu]
        while not self._changes.empty():
            self._changes.get_nowait()
        t0 = time.monotonic()
        self.side.inject(s, uuid)
        if not self.cluster:
            return self._follow_gpu(s, uuid, t0)
        return self._follow_event(s, uuid, t0)

    def _pdb_workload(self) -> None:
        from nvsentinel.k8s.resources import PDBS_V1BETA1

        self._pod("inference-0", NODE, "inference")
        self.kube.create(PDBS_V1BETA1, {"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                                        "metadata": {"name": "inference", "namespace": WORKLOAD_NS},
                                        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "inference"}}}},
                         WORKLOAD_NS)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pdb = self.kube.get(PDBS_V1BETA1, "inference", WORKLOAD_NS)
            if (pdb.get("status") or {}).get("expectedPods") == 1:
                break
            time.sleep(0.2)
        self.say("             workload: inference-0 on gpu-node-1 behind PodDisruptionBudget minAvailable=1")

    def _follow_gpu(self, s: Scenario, uuid: str, t0: float) -> Observed:
        assert self.side is not None
        o = Observed()
        wait = 3.0 if not s.expect_condition else SCENARIO_TIMEOUT
        deadline = t0 + wait
        while time.monotonic() < deadline:
            self.side.check()
            reason = self.side.condition(uuid)
            if reason:
                o.condition = reason
                self.say(timeline_line(time.monotonic() - t0, s, "", "condition", f"{uuid}: {reason} (False)"))
                break
            time.sleep(0.1)
        if not o.condition and s.source == "kmsg" and not self._wait_read(t0):
            o.condition = "UnreadKernelLog"
        if not o.condition:
            self.say(timeline_line(time.monotonic() - t0, s, "", "no change", f"{uuid} stays healthy"))
        o.seconds = time.monotonic() - t0
        return o

    def _follow_event(self, s: Scenario, uuid: str, t0: float) -> Observed:
        assert self.side is not None and self.controllers is not None
        o = Observed()
        quiet = 4.0 if s.expect_phase is None else SCENARIO_TIMEOUT
        deadline = t0 + quiet
        draining_since: float | None = None
        last: tuple[str, str] = ("", "")
        while time.monotonic() < deadline:
            self.controllers.check()
            with contextlib.suppress(DemoError):
                self.side.check()  # a restart in progress is not a failure
            if draining_since is not None and s.pdb_workload and time.monotonic() - draining_since > 3 * self.pace:
                self._free_pdb(t0, s)
                draining_since = None
            try:
                at, obj = self._changes.get(timeout=0.2)
            except queue.Empty:
                continue
            spec = obj["spec"]
            name = obj["metadata"]["name"]
            if not spec.get("isFatal") or uuid not in [e.get("value") for e in spec.get("entitiesImpacted") or ()]:
                continue
            if o.event and name != o.event:
                continue
            if not o.event:
                o.event = name
                self._created.append(name)
                self.say(timeline_line(at - t0, s, name, "published", f"HealthEvent {name} "
                                       f"(recommendedAction {spec.get('recommendedAction')})"))
            status = obj.get("status") or {}
            phase = status.get("phase") or "New"
            conds = sorted(status.get("conditions") or (), key=lambda c: c["lastTransitionTime"])
            rem = next((c for c in conds if c["type"] == "Remediated"), None)
            o.reason = rem["reason"] if rem else (conds[-1]["reason"] if self.dry_run and conds else "")
            latest = (conds[-1]["type"], conds[-1]["reason"]) if conds else ("", "")
            if not o.phases or o.phases[-1][1] != phase or latest != last:
                if not o.phases or o.phases[-1][1] != phase:
                    o.phases.append((at - t0, phase))
                    if phase == "Draining" and s.pdb_workload:
                        draining_since = time.monotonic()
                why = f"{conds[-1]['reason']}: {conds[-1]['message']}" if conds else ""
                self.say(timeline_line(at - t0, s, name, phase, why))
                last = latest
            if self._finished(s, o, phase):
                break
        if s.source == "kmsg" and not self._wait_read(t0):
            o.event = o.event or "(the kernel-log monitor never read the line)"
        if s.expect_phase is None and not o.event:
            self.say(timeline_line(time.monotonic() - t0, s, "", "no event", "benign: the monitor records nothing, "
                                   "no HealthEvent"))
        o.seconds = (o.phases[-1][0] if o.phases else time.monotonic() - t0)
        return o

    def _wait_read(self, t0: float, timeout: float = 10.0) -> bool:
        """Whether the kernel-log monitor applied the generated line (a benign XID must be read, then ignored)."""
        assert self.side is not None
        while time.monotonic() < t0 + timeout:
            if self.side.kernel_log_read():
                return True
            time.sleep(0.1)
        return False

    def _finished(self, s: Scenario, o: Observed, phase: str) -> bool:
        if self.dry_run:
            return o.reason.startswith("DryRun")
        if s.expect_phase is None:
            return False
        return phase == s.expect_phase and (not s.expect_reason or o.reason == s.expect_reason)

    def _free_pdb(self, t0: float, s: Scenario) -> None:
        from nvsentinel.k8s.resources import PDBS_V1BETA1

        with contextlib.suppress(Exception):
            self.kube.delete(PDBS_V1BETA1, "inference", WORKLOAD_NS)
        self.say(timeline_line(time.monotonic() - t0, s, "", "operator", "the PDB held the drain; the operator "
                               "removes it (inference moved elsewhere)"))

    # ---- cleanup ------------------------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        if self.controllers is not None:
            self.controllers.stop()
        if self.side is not None:
            with self.side.lock:
                self.side.stop()
        for t in self._threads:
            t.join(5)
        if self.kubeconfig_arg and self.kube is not None:
            from nvsentinel.k8s.resources import HEALTHEVENTS

            for name in self._created:  # the demo's own events, on someone's real cluster
                with contextlib.suppress(Exception):
                    self.kube.delete(HEALTHEVENTS, name)
        if self.kube is not None:
            self.kube.close()
        if self.plane is not None:
            self.plane.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
