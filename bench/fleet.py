"""Fleet-scale benchmark of the whole controller chain on the real test kube-apiserver (v1.20.2 + etcd).

N GPU nodes (8 GPUs each) with P running pods each; then K fatal HealthEvents (XID 79, RESTART_BM),
one per node, created as fast as 32 threads can (`--burst K`), or one every 1/R s for S s (`--rate R
--duration S`). `nvsentinel controllers` runs as a real process with its DEFAULT performance settings
(client QPS, burst, workers: what the chart ships); only the breaker is moved out of the way unless
`--breaker default`. Stand-ins in this process play the rest of the cluster:

* kubelet: a pod watch; a pod with a deletionTimestamp is deleted with grace 0 and a UID precondition;
* job controller: a Job watch in the controllers' namespace; each reboot Job is marked Complete;
* node agent: a HealthEvent watch; a fatal event first seen `Remediated` gets one healthy HealthEvent
  for its node (what the publisher sends after the reboot), so resolution resolves it and uncordons.

Measured (time.monotonic; t0 = just before an event's create is sent): when each event is first seen
in each phase, when its node is first seen cordoned (unschedulable + the quarantine taint), when its
reboot Job appears, when the node is back in service. The controllers run under their own identity
(a second token), and the API server writes an audit log for that user only, so every request the
chain makes is counted by verb/resource/subresource and by response code. A baseline cordons the same
number of other nodes straight from this process (32 threads, unthrottled), the floor to compare the
controllers' cordon throughput with.

    python bench/fleet.py --nodes 1000 --pods 4 --burst 1000 --json out.json
    python bench/fleet.py --nodes 100 --rate 1 --duration 60
    python bench/fleet.py --nodes 30 --burst 10 --breaker default
    python bench/fleet.py --nodes 100 --controllers-arg=--kube-qps=200 --controllers-arg=--workers=16

Run it with the venv whose `nvsentinel` is under test; `run_fleet(...)` is the same from Python
(bench/test_bench_fleet.py is the CI smoke test).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as _dt
import json
import math
import os
import resource
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

# child Pythons (the controllers) import the installed package, never a source tree in the cwd
os.environ.setdefault("PYTHONSAFEPATH", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "k8s"))

from cluster import ControlPlane, free_port  # noqa: E402
from kubelet import finish_job, make_node, run_pod  # noqa: E402
from procs import Daemon, http_get  # noqa: E402

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import nvsentinel  # noqa: E402
from nvsentinel.k8s import AlreadyExists, Gone, Kube, KubeConflict, KubeError, KubeNotFound  # noqa: E402
from nvsentinel.k8s.crd import install_crd  # noqa: E402
from nvsentinel.k8s.kube import load_api_client  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS, JOBS, NAMESPACES, NODES, PODS, Resource  # noqa: E402
from nvsentinel.policy.healthevent import Entity, HealthEvent, HealthEventSpec, utcnow  # noqa: E402
from nvsentinel.xid import Action  # noqa: E402

RUN_LABEL = "nvsentinel-bench/fleet"
BASELINE_LABEL = "nvsentinel-bench/fleet-baseline"
TAINT = "nvsentinel.nvidia.com/quarantine"
NODE_ANNOTATION = "nvsentinel.nvidia.com/node"  # on the reboot Job: the node it reboots
CTL_USER = "nvsentinel-bench-controllers"
PHASES = ("Quarantined", "Draining", "Drained", "Remediating", "Remediated", "Resolved")
MUTATING = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}
SETUP_THREADS = 16
BURST_THREADS = 32
KUBELET_THREADS = 32
BASELINE_THREADS = 32
#: what `nvsentinel controllers` gets unless `--breaker default`: the breaker never trips
BREAKER_OFF = ("--breaker-percent", "100", "--breaker-max-nodes", "100000")

Log = Callable[[str], None]


# ---- the control plane: a second identity for the controllers, an audit log of that identity only --------

class FleetPlane(ControlPlane):
    """ControlPlane + a token for `nvsentinel-bench-controllers` (system:masters) and its kubeconfig, and an
    audit log (level Metadata, stages after RequestReceived) of that user's requests only."""

    CTL_TOKEN = "nvsentinel-bench-controllers-token"  # loopback only, a throwaway cluster

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("controller_manager", False)  # the bench plays the job controller; nothing else needed
        extra = tuple(kw.pop("apiserver_args", ()))
        super().__init__(**kw)
        self.audit_policy = self.dir / "audit-policy.json"
        self.audit_log = self.dir / "audit.log"
        self.ctl_kubeconfig = str(self.dir / "kubeconfig-controllers")
        self.apiserver_args = (
            "--audit-policy-file", str(self.audit_policy), "--audit-log-path", str(self.audit_log),
            "--audit-log-maxsize", "0", "--audit-log-maxbackup", "0", "--audit-log-format", "json",
            "--audit-log-mode", "blocking", *extra)

    def _prepare(self) -> None:
        super()._prepare()
        with open(self.dir / "tokens.csv", "a") as f:
            f.write(f"{self.CTL_TOKEN},{CTL_USER},{CTL_USER}-uid,system:masters\n")
        self.audit_policy.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "users": [CTL_USER]}, {"level": "None"}]}))
        Path(self.ctl_kubeconfig).write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "bench",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": self.ca_file}}],
            "users": [{"name": CTL_USER, "user": {"token": self.CTL_TOKEN}}],
            "contexts": [{"name": "bench", "context": {"cluster": "test", "user": CTL_USER}}],
        }))

    def http(self, path: str, *, token: str | None = None, timeout: float = 60.0) -> tuple[int, dict[str, str], str]:
        """(status, headers, body text) of one GET (`/metrics` is text, not JSON)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        req = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {token or self.TOKEN}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
                return r.status, dict(r.headers.items()), r.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers.items()), exc.read().decode(errors="replace")

    def pid(self, name: str) -> int | None:
        p = self.procs.get(name)
        return p.pid if p is not None and p.poll() is None else None


def pooled_kube(kubeconfig: str, connections: int) -> Kube:
    """An unthrottled client whose urllib3 pool keeps `connections` connections (see test_bench_drain)."""
    api = load_api_client(kubeconfig)
    api.configuration.connection_pool_maxsize = connections
    fresh = type(api)(api.configuration)  # the pool is sized when the client is built
    api.close()
    return Kube(fresh, qps=0)


def _retry(fn: Callable[[], Any], what: str, attempts: int = 5) -> Any:
    """Setup and stand-in calls: a transient failure (timeout, 5xx, 429) is retried; others raise."""
    for i in range(attempts):
        try:
            return fn()
        except (KubeNotFound, KubeConflict, Gone):
            raise
        except KubeError as exc:
            if i == attempts - 1:
                raise AssertionError(f"{what}: {exc}") from exc
            time.sleep(0.2 * (i + 1))
    return None


# ---- watches ------------------------------------------------------------------------------------------

class Watcher:
    """A list + watch in one thread: `handler(etype, obj, seen_at)` for every change, seen_at = monotonic.

    Resumes from the last resourceVersion (bookmarks on); a 410 relists (its items as "SYNC"). Errors never
    escape the thread: they are counted in `errors` and the watch is restarted.
    """

    def __init__(self, kube: Kube, res: Resource, handler: Callable[[str, dict, float], None], *, name: str,
                 namespace: str | None = None, label_selector: str | None = None) -> None:
        self.kube, self.res, self.handler, self.name = kube, res, handler, name
        self.ns, self.selector = namespace, label_selector
        self.errors: list[str] = []
        self._stream: Any = None
        self._stop = False
        self.rv = self._relist(deliver=False)
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{name}")
        self.thread.start()

    def _relist(self, deliver: bool) -> str:
        items, rv = _retry(lambda: self.kube.list(self.res, self.ns, label_selector=self.selector),
                           f"list {self.res.plural}")
        if deliver:
            now = time.monotonic()
            for obj in items:
                self.handler("SYNC", obj, now)
        return rv

    def _run(self) -> None:
        while not self._stop:
            try:
                self._stream = self.kube.watch(self.res, resource_version=self.rv, namespace=self.ns,
                                               label_selector=self.selector, timeout_seconds=120)
                for etype, obj in self._stream:
                    now = time.monotonic()
                    if etype == "ERROR":
                        if (obj.get("code") or 0) == 410:
                            self.rv = self._relist(deliver=True)
                            break
                        raise KubeError(f"watch error: {obj}")
                    self.rv = (obj.get("metadata") or {}).get("resourceVersion", self.rv)
                    if etype != "BOOKMARK":
                        self.handler(etype, obj, now)
            except Gone:
                with contextlib.suppress(Exception):
                    self.rv = self._relist(deliver=True)
            except Exception as exc:  # noqa: BLE001 - counted, reported, the watch restarted
                if self._stop:
                    return
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                time.sleep(0.2)

    def close(self) -> None:
        self._stop = True
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        self.thread.join(10)


class Pool:
    """A thread pool whose task failures are collected (never lost, never raised in a thread)."""

    def __init__(self, n: int, name: str) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix=name)
        self.errors: list[str] = []
        self.name = name

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - collected and reported
                self.errors.append(f"{self.name}: {type(exc).__name__}: {exc}"[:300])
        self.pool.submit(run)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Fleet:
    """What the bench sees and the stand-ins do, all keyed by node name; `cond` is notified on each change."""

    def __init__(self, run: str, burst_nodes: Sequence[str], baseline_nodes: Sequence[str]) -> None:
        self.run = run
        self.burst_set = set(burst_nodes)
        self.baseline_set = set(baseline_nodes)
        self.cond = threading.Condition()
        self.t0: dict[str, float] = {}                        # node → just before its fatal event's create
        self.phase: dict[str, dict[str, float]] = {n: {} for n in burst_nodes}
        self.held: dict[str, float] = {}                      # node → first seen CircuitBreakerOpen
        self.cordon: dict[str, float] = {}
        self.back: dict[str, float] = {}
        self.job: dict[str, float] = {}
        self.jobs_per_node: Counter[str] = Counter()
        self.base_t0: dict[str, float] = {}
        self.base_cordon: dict[str, float] = {}
        self.pods_gone: Counter[str] = Counter()              # node → pods the kubelet saw deleted
        self.healthy_sent: set[str] = set()

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()


def _cordoned(node: dict) -> bool | None:
    """True: unschedulable with our taint; False: schedulable without it; None: in between."""
    spec = node.get("spec") or {}
    unsched = bool(spec.get("unschedulable"))
    tainted = any(t.get("key") == TAINT for t in spec.get("taints") or ())
    if unsched and tainted:
        return True
    if not unsched and not tainted:
        return False
    return None


# ---- the stand-ins -------------------------------------------------------------------------------------

class Standins:
    """Kubelet, job controller, node agent and the timing watches, each with its own unthrottled client."""

    def __init__(self, plane: FleetPlane, fleet: Fleet, *, pod_ns: str, ctl_ns: str, selector: str) -> None:
        self.plane, self.fleet, self.pod_ns, self.ctl_ns, self.selector = plane, fleet, pod_ns, ctl_ns, selector
        self.clients: list[Kube] = []
        self.watchers: list[Watcher] = []
        self.pools: list[Pool] = []
        self._kubelet_handled: set[str] = set()
        self._jobs_seen: set[str] = set()

    def _client(self, connections: int) -> Kube:
        k = pooled_kube(self.plane.kubeconfig, connections)
        self.clients.append(k)
        return k

    def _pool(self, n: int, name: str) -> Pool:
        p = Pool(n, name)
        self.pools.append(p)
        return p

    def start_nodes(self) -> None:
        self.watchers.append(Watcher(self._client(4), NODES, self._on_node, name="nodes"))

    def start_chain(self) -> None:
        """Kubelet, job controller, node agent, HealthEvent timing (before the controllers start)."""
        self.kubelet_kube = self._client(KUBELET_THREADS + 4)
        self.kubelet_pool = self._pool(KUBELET_THREADS, "kubelet")
        self.watchers.append(Watcher(self._client(4), PODS, self._on_pod, name="pods", namespace=self.pod_ns))
        self.job_kube = self._client(12)
        self.job_pool = self._pool(8, "jobctl")
        self.watchers.append(Watcher(self._client(4), JOBS, self._on_job, name="jobs", namespace=self.ctl_ns))
        self.agent_kube = self._client(12)
        self.agent_pool = self._pool(8, "agent")
        self.watchers.append(Watcher(self._client(4), HEALTHEVENTS, self._on_event, name="healthevents",
                                     label_selector=self.selector))

    # -- handlers (watch threads: cheap; requests go to the pools) ----------------------------------------
    def _on_node(self, etype: str, obj: dict, now: float) -> None:
        if etype == "DELETED":
            return
        f = self.fleet
        name = obj["metadata"]["name"]
        if name in f.burst_set:
            state = _cordoned(obj)
            if state is True and name not in f.cordon:
                f.cordon[name] = now
                f.notify()
            elif state is False and name in f.cordon and name not in f.back:
                f.back[name] = now
                f.notify()
        elif name in f.baseline_set and name not in f.base_cordon and _cordoned(obj) is True:
            f.base_cordon[name] = now
            f.notify()

    def _on_pod(self, etype: str, obj: dict, now: float) -> None:
        meta = obj.get("metadata") or {}
        if etype == "DELETED":
            self.fleet.pods_gone[(obj.get("spec") or {}).get("nodeName", "")] += 1
            self.fleet.notify()
        elif meta.get("deletionTimestamp") and meta["uid"] not in self._kubelet_handled:
            self._kubelet_handled.add(meta["uid"])
            self.kubelet_pool.submit(self._finish_pod, meta["name"], meta["uid"])

    def _finish_pod(self, name: str, uid: str) -> None:
        with contextlib.suppress(KubeNotFound, KubeConflict):  # gone already / a newer pod of that name
            _retry(lambda: self.kubelet_kube.delete(PODS, name, self.pod_ns, grace_period_seconds=0, uid=uid),
                   f"kubelet delete {name}")

    def _on_job(self, etype: str, obj: dict, now: float) -> None:
        if etype not in ("ADDED", "SYNC"):
            return
        meta = obj["metadata"]
        node = (meta.get("annotations") or {}).get(NODE_ANNOTATION, "")
        if node not in self.fleet.burst_set or meta.get("uid") in self._jobs_seen:
            return
        self._jobs_seen.add(meta["uid"])
        self.fleet.job.setdefault(node, now)
        self.fleet.jobs_per_node[node] += 1
        self.fleet.notify()
        self.job_pool.submit(lambda: _retry(lambda: finish_job(self.job_kube, self.ctl_ns, meta["name"],
                                                               succeeded=True), f"finish job {meta['name']}"))

    def _on_event(self, etype: str, obj: dict, now: float) -> None:
        spec = obj.get("spec") or {}
        node = spec.get("nodeName", "")
        f = self.fleet
        if etype == "DELETED" or not spec.get("isFatal") or node not in f.burst_set:
            return
        status = obj.get("status") or {}
        phase = status.get("phase") or "New"
        changed = False
        if phase != "New" and phase not in f.phase[node]:
            f.phase[node][phase] = now
            changed = True
        if node not in f.held and any(c.get("type") == "NodeQuarantined" and c.get("status") == "False" and
                                      c.get("reason") == "CircuitBreakerOpen" for c in status.get("conditions") or ()):
            f.held[node] = now
            changed = True
        if phase == "Remediated" and node not in f.healthy_sent:
            f.healthy_sent.add(node)
            self.agent_pool.submit(self._healthy, node)
        if changed:
            f.notify()

    def _healthy(self, node: str) -> None:
        """The node agent after the reboot: the GPU is healthy again."""
        body = HealthEvent(name=f"{node}-healthy", spec=HealthEventSpec(
            source="bench", node_name=node, component_class="GPU", check_name="xid-error-check", is_fatal=False,
            is_healthy=True, detected_at=utcnow(), recommended_action=Action.NONE,
            entities_impacted=(Entity("GPU", gpu_uuid(node)),), message="GPU healthy after reboot"),
            labels={RUN_LABEL: self.fleet.run}).create_body()
        with contextlib.suppress(AlreadyExists):
            _retry(lambda: self.agent_kube.create(HEALTHEVENTS, body), f"healthy event {node}")

    def errors(self) -> list[str]:
        return [e for w in self.watchers for e in w.errors] + [e for p in self.pools for e in p.errors]

    def close(self) -> None:
        for w in self.watchers:
            w.close()
        for p in self.pools:
            p.close()
        for k in self.clients:
            with contextlib.suppress(Exception):
                k.close()


def gpu_uuid(node: str) -> str:
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, node)}"


def fatal_body(node: str, run: str) -> dict:
    """The XID 79 event of `node`, as test_bench_drain.World._event builds it (plus the run label)."""
    spec = HealthEventSpec(source="bench", node_name=node, component_class="GPU", check_name="xid-error-check",
                           is_fatal=True, is_healthy=False, detected_at=utcnow(),
                           recommended_action=Action.RESTART_BM, error_codes=("79",),
                           entities_impacted=(Entity("GPU", gpu_uuid(node)),), message="Xid 79")
    return HealthEvent(name=f"{node}-xid79", spec=spec, labels={RUN_LABEL: run}).create_body()


# ---- numbers -------------------------------------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> float:
    """Percentile by linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats(values: Iterable[float]) -> dict[str, Any]:
    v = list(values)
    if not v:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(v), "p50": round(pct(v, 50), 4), "p99": round(pct(v, 99), 4), "max": round(max(v), 4)}


def proc_cpu(pid: int | None) -> float:
    """utime + stime of a process, seconds (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int | None, key: str) -> int:
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def parse_metrics(text: str, names: Iterable[str]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of `names` in a Prometheus text exposition: name → [(labels, value)] (prometheus_client's parser)."""
    want = set(names)
    out: dict[str, list[tuple[dict[str, str], float]]] = {n: [] for n in want}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in want:
                out[sample.name].append((dict(sample.labels), float(sample.value)))
    return out


APISERVER_METRICS = ("apiserver_request_total", "apiserver_request_duration_seconds_bucket")


def apiserver_delta(before: str, after: str) -> dict[str, Any]:
    """apiserver_request_total by verb/resource, and the mutating latency p50/p99 from the bucket delta."""
    b, a = parse_metrics(before, APISERVER_METRICS), parse_metrics(after, APISERVER_METRICS)

    def key_total(lab: dict[str, str]) -> str:
        sub = lab.get("subresource", "")
        return f"{lab.get('verb', '')} {lab.get('resource', '')}" + (f"/{sub}" if sub else "")

    totals: Counter[str] = Counter()
    for sign, samples in ((-1, b["apiserver_request_total"]), (1, a["apiserver_request_total"])):
        for lab, v in samples:
            totals[key_total(lab)] += sign * v
    buckets: Counter[float] = Counter()
    for sign, samples in ((-1, b["apiserver_request_duration_seconds_bucket"]),
                          (1, a["apiserver_request_duration_seconds_bucket"])):
        for lab, v in samples:
            if lab.get("verb") in MUTATING:
                buckets[float(lab["le"])] += sign * v

    def quantile(q: float) -> float | None:
        edges = sorted(buckets)
        if not edges or buckets[math.inf] <= 0:
            return None
        total, prev_le, prev_c = buckets[math.inf], 0.0, 0.0
        for le in edges:
            c = buckets[le]
            if c >= q * total:
                if math.isinf(le):
                    return prev_le
                return prev_le + (le - prev_le) * ((q * total - prev_c) / (c - prev_c) if c > prev_c else 0)
            prev_le, prev_c = le, c
        return None

    mutating = buckets[math.inf] if buckets else 0
    return {"request_total_delta": {k: int(v) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v > 0},
            "mutating_requests": int(mutating),
            "mutating_latency_p50_s": _round(quantile(0.5)), "mutating_latency_p99_s": _round(quantile(0.99))}


def _round(v: float | None, n: int = 4) -> float | None:
    return None if v is None else round(v, n)


def _wall(ts: str) -> float:
    return _dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def read_audit(path: Path, offset: int, user: str, start_wall: float, end_wall: float,
               pod_ns: str) -> dict[str, Any]:
    """The controllers' requests in [start_wall, end_wall] (by requestReceivedTimestamp), one per auditID."""
    by_id: dict[str, dict] = {}
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            if (ev.get("user") or {}).get("username") != user:
                continue
            prev = by_id.get(ev["auditID"])
            if prev is None or ev.get("stage") == "ResponseComplete":
                by_id[ev["auditID"]] = ev
    calls: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    before = after = 0
    before_calls: Counter[str] = Counter()
    evictions: Counter[str] = Counter()
    conflicts: Counter[str] = Counter()
    for ev in by_id.values():
        t = _wall(ev["requestReceivedTimestamp"])
        ref = ev.get("objectRef") or {}
        if ref.get("resource"):
            key = f"{ev['verb']} {ref['resource']}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        else:
            key = f"{ev['verb']} {ev.get('requestURI', '').split('?')[0]}"
        if t < start_wall:
            before += 1
            before_calls[key] += 1
            continue
        if t > end_wall:
            after += 1
            continue
        calls[key] += 1
        code = (ev.get("responseStatus") or {}).get("code")
        codes[str(code)] += 1
        if code == 409:
            conflicts[key] += 1
        if ref.get("subresource") == "eviction" and ev["verb"] == "create" and ref.get("namespace") == pod_ns:
            evictions[ref.get("name", "")] += 1
    return {"total": sum(calls.values()), "by_call": dict(calls.most_common()), "by_code": dict(codes.most_common()),
            "conflicts_409": sum(conflicts.values()), "conflicts_by_call": dict(conflicts.most_common()),
            "evictions_by_pod": evictions, "before_window": before, "before_by_call": dict(before_calls.most_common()),
            "after_window": after}


# ---- the run -------------------------------------------------------------------------------------------

def breaker_cap(gpu_nodes: int, percent: float = 10.0, max_nodes: int = 50) -> int:
    """The breaker's limit at its defaults (nvsentinel.policy.breaker: floor(10 %), max 50, at least 1)."""
    return max(1, min(math.floor(percent * gpu_nodes / 100 + 1e-9), max_nodes))


def run_fleet(nodes: int = 100, pods: int = 4, burst: int | None = None, *, rate: float | None = None,
              duration: float | None = None, breaker: str = "off", controllers_args: Sequence[str] = (),
              baseline: int | None = None, namespace: str | None = None, deadline: float | None = None,
              plane: FleetPlane | None = None, log: Log = print) -> dict[str, Any]:
    """One fleet run; returns the results (see `render` for the table). Raises AssertionError when a wait
    times out (with what is missing and the controllers' log tail).

    nodes/pods: the fleet; burst: events created at once on the first `burst` nodes (default: all);
    rate/duration: instead, one event every 1/rate s for `duration` s (steady mode); breaker: "off"
    (cap out of the way) or "default" (the controllers' own defaults: the burst stops at the cap);
    controllers_args: extra flags for `nvsentinel controllers`; baseline: nodes the bench cordons itself
    first (default: as many as events, 0: none); namespace: the controllers' (default nvsentinel-bench-<run>);
    deadline: seconds to wait for the chain (default scaled with the events); plane: a FleetPlane to reuse.
    """
    if breaker not in ("off", "default"):
        raise ValueError(f"breaker must be 'off' or 'default', got {breaker!r}")
    steady = rate is not None
    if steady:
        if not duration or rate <= 0:
            raise ValueError("--rate needs a positive rate and --duration")
        k = max(1, int(round(rate * duration)))
    else:
        k = nodes if burst is None else burst
    if not 1 <= k <= nodes:
        raise ValueError(f"events ({k}) must be 1..nodes ({nodes})")
    n_base = k if baseline is None else baseline
    with contextlib.ExitStack() as stack:
        if plane is None:
            log("[fleet] starting etcd + kube-apiserver v1.20.2 (audit log of the controllers' identity)")
            plane = stack.enter_context(FleetPlane())
        return _run(plane, nodes=nodes, pods=pods, k=k, steady=steady, rate=rate, duration=duration,
                    breaker=breaker, controllers_args=list(controllers_args), n_base=n_base, namespace=namespace,
                    deadline=deadline, log=log)


def _run(plane: FleetPlane, *, nodes: int, pods: int, k: int, steady: bool, rate: float | None,
         duration: float | None, breaker: str, controllers_args: list[str], n_base: int, namespace: str | None,
         deadline: float | None, log: Log) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    selector = f"{RUN_LABEL}={run}"
    pod_ns, ctl_ns = f"fleet-{run}", namespace or f"nvsentinel-bench-{run}"
    node_names = [f"fleet-{run}-{i:05d}" for i in range(nodes)]
    burst_nodes = node_names[:k]
    base_nodes = [f"fleet-{run}-base-{i:05d}" for i in range(n_base)]
    fleet = Fleet(run, burst_nodes, base_nodes)
    result: dict[str, Any] = {"config": {
        "nodes": nodes, "pods_per_node": pods, "events": k, "mode": "steady" if steady else "burst",
        "rate": rate, "duration": duration, "breaker": breaker, "controllers_args": controllers_args,
        "baseline_nodes": n_base, "run": run, "namespace": ctl_ns, "nvsentinel": os.path.dirname(nvsentinel.__file__),
        "python": sys.executable, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    audit_offset = plane.audit_log.stat().st_size if plane.audit_log.exists() else 0
    admin = pooled_kube(plane.kubeconfig, SETUP_THREADS + 4)
    burst_kube = pooled_kube(plane.kubeconfig, BURST_THREADS + 4)
    standins = Standins(plane, fleet, pod_ns=pod_ns, ctl_ns=ctl_ns, selector=selector)
    ctl: Daemon | None = None
    try:
        # -- setup --------------------------------------------------------------------------------------
        t_setup = time.monotonic()
        install_crd(admin)
        for ns in (pod_ns, ctl_ns):
            with contextlib.suppress(AlreadyExists):
                admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        _parallel(lambda n: _retry(lambda: make_node(admin, n, gpus=8, labels={RUN_LABEL: run}), f"node {n}"),
                  node_names, "GPU nodes", log)
        _parallel(lambda n: _retry(lambda: make_node(admin, n, gpus=8, labels={BASELINE_LABEL: run}), f"node {n}"),
                  base_nodes, "baseline nodes (not the controllers')", log)
        pod_list = [(node, f"{node}-p{j}") for node in node_names for j in range(pods)]
        _parallel(lambda np: _pod(admin, pod_ns, *np), pod_list, "running pods", log)
        result["setup_s"] = round(time.monotonic() - t_setup, 1)
        log(f"[fleet] setup done in {result['setup_s']} s: {nodes} nodes × {pods} pods, {n_base} baseline nodes")
        result["pf_headers"] = _pf_headers(plane)

        # -- baseline: the bench cordons other nodes itself, unthrottled ------------------------------
        standins.start_nodes()
        if n_base and not steady:
            result["baseline"] = _baseline(plane, fleet, base_nodes, admin, log)
        # steady: the bench cordons one baseline node itself half-way between two events (the same
        # request the controllers make, timed the same way, under the same background load)
        base_cordon = _baseline_cordon(admin, fleet, base_nodes, admin) if steady and n_base else None

        # -- the controllers ----------------------------------------------------------------------------
        standins.start_chain()
        metrics_port = free_port()
        args = ["--kubeconfig", plane.ctl_kubeconfig, "--namespace", ctl_ns, "--no-leader-elect",
                "--health-port", "0", "--metrics-port", str(metrics_port), "--node-selector", selector,
                "--event-selector", selector, *(BREAKER_OFF if breaker == "off" else ()), *controllers_args]
        result["config"]["controllers_cmd"] = "nvsentinel controllers " + " ".join(args)
        ctl = Daemon("controllers", args, name="controllers").start()
        ctl.wait_log("informers synced", timeout=180)
        ctl_pid = ctl.proc.pid if ctl.proc else None
        log(f"[fleet] controllers up (pid {ctl_pid}, metrics :{metrics_port}); "
            f"{'steady ' + str(rate) + '/s for ' + str(duration) + ' s' if steady else 'burst of ' + str(k)}")

        cap = breaker_cap(nodes) if breaker == "default" else None
        wait_s = deadline if deadline is not None else (
            (duration or 0) + 240 + 1.5 * k if breaker == "off" else 240 + 1.0 * k)
        _, _, metrics_before = plane.http("/metrics")
        cpu0 = {"controllers": proc_cpu(ctl_pid), "kube-apiserver": proc_cpu(plane.pid("kube-apiserver")),
                "etcd": proc_cpu(plane.pid("etcd"))}
        self_cpu0 = resource.getrusage(resource.RUSAGE_SELF)

        # -- the events ---------------------------------------------------------------------------------
        bodies = {n: fatal_body(n, run) for n in burst_nodes}
        start_wall, start = time.time(), time.monotonic()
        create_errors = _create_events(burst_kube, fleet, burst_nodes, bodies, rate if steady else None,
                                       base_cordon, base_nodes)
        created_s = time.monotonic() - start
        if create_errors:
            raise AssertionError(f"{len(create_errors)} HealthEvent creates failed: {create_errors[:5]}")
        log(f"[fleet] {k} events created in {created_s:.2f} s ({k / max(created_s, 1e-9):.0f}/s)")

        # -- wait for the chain -------------------------------------------------------------------------
        cap = _wait_chain(fleet, ctl, standins, k, cap, metrics_port, wait_s, start, log)
        end_wall, end = time.time(), time.monotonic()
        log(f"[fleet] chain done in {end - start:.1f} s")

        # -- after: metrics, CPU, the audit log ---------------------------------------------------------
        self_cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {name: round(proc_cpu(pid) - cpu0[name], 2) for name, pid in (
            ("controllers", ctl_pid), ("kube-apiserver", plane.pid("kube-apiserver")), ("etcd", plane.pid("etcd")))}
        cpu["bench (stand-ins)"] = round(self_cpu1.ru_utime + self_cpu1.ru_stime - self_cpu0.ru_utime -
                                         self_cpu0.ru_stime, 2)
        peak_rss_kib = proc_status_kib(ctl_pid, "VmHWM")
        _, _, metrics_after = plane.http("/metrics")
        ctl_metrics = _controller_metrics(metrics_port)
        result["config"]["loadavg_end"] = os.getloadavg()
        result["chain_s"] = round(end - start, 3)
        result["create_s"] = round(created_s, 3)
        result["controller"] = {"cpu_s": cpu["controllers"], "cpu_s_by_process": cpu, "peak_rss_mib":
                                round(peak_rss_kib / 1024, 1), "metrics": ctl_metrics}
        result["apiserver"] = apiserver_delta(metrics_before, metrics_after)

        rc = ctl.terminate(30)
        if rc not in (0, -15):
            raise AssertionError(f"controllers exited rc={rc}")
        audit = _read_audit_after(plane, audit_offset, start_wall, end_wall, pod_ns)
        result.update(_summarize(fleet, k, pods, cap, breaker, audit, result.get("baseline"), steady))
        errors = standins.errors()
        result["standin_errors"] = errors[:20]
        if errors:
            log(f"[fleet] stand-in errors (retried): {len(errors)}; first: {errors[0]}")
        result["controllers_log_tracebacks"] = ctl.text().count("Traceback")
        return result
    except BaseException:
        if ctl is not None:
            log(f"[fleet] controllers' log tail:\n{ctl.text()[-4000:]}")
        raise
    finally:
        if ctl is not None:
            ctl.close()
        standins.close()
        burst_kube.close()
        admin.close()


def _parallel(fn: Callable[[Any], Any], items: Sequence[Any], what: str, log: Log) -> None:
    """Run `fn` over `items` from SETUP_THREADS threads, printing progress about every 10 s."""
    if not items:
        return
    t0 = last = time.monotonic()
    done = 0
    with concurrent.futures.ThreadPoolExecutor(SETUP_THREADS) as pool:
        futures = [pool.submit(fn, it) for it in items]
        for fut in concurrent.futures.as_completed(futures):
            fut.result()
            done += 1
            now = time.monotonic()
            if now - last >= 10:
                last = now
                log(f"[fleet]   {what}: {done}/{len(items)} ({done / (now - t0):.0f}/s)")
    log(f"[fleet]   {what}: {len(items)} in {time.monotonic() - t0:.1f} s")


def _pod(kube: Kube, ns: str, node: str, name: str) -> None:
    with contextlib.suppress(AlreadyExists):
        _retry(lambda: kube.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": ns, "labels": {"app": "train", "node": node}}, "spec": {
            "nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}, ns), f"pod {name}")
    _retry(lambda: run_pod(kube, ns, name), f"run pod {name}")


def _pf_headers(plane: FleetPlane) -> dict[str, Any]:
    """Which API Priority and Fairness headers a response carries (one GET as each identity)."""
    names: dict[str, str] = {}  # uid → "FlowSchema <name>" / "PriorityLevel <name>"
    for plural, kind in (("flowschemas", "FlowSchema"), ("prioritylevelconfigurations", "PriorityLevel")):
        status, _, body = plane.http(f"/apis/flowcontrol.apiserver.k8s.io/v1beta1/{plural}")
        if status == 200:
            for item in json.loads(body).get("items") or ():
                names[item["metadata"]["uid"]] = f"{kind} {item['metadata']['name']}"
    out: dict[str, Any] = {}
    for who, token in (("admin", plane.TOKEN), ("controllers", plane.CTL_TOKEN)):
        status, headers, _ = plane.http("/api/v1/namespaces/default", token=token)
        out[who] = {"status": status, "headers": sorted(headers),
                    "pf": {h: f"{v} ({names.get(v, '?')})" for h, v in headers.items()
                           if h.lower().startswith("x-kubernetes-pf")}}
    return out


def _baseline_cordon(kube: Kube, fleet: Fleet, names: Sequence[str], admin: Kube) -> Callable[[str], None]:
    """What the controllers' cordon does, done by the bench: one merge patch (with resourceVersion) that
    cordons, taints and annotates `n`; timed from just before it is sent to the node watch seeing it."""
    items, _ = admin.list(NODES, label_selector=f"{BASELINE_LABEL}={fleet.run}")
    rvs = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in items}
    assert set(rvs) >= set(names), f"baseline: {len(rvs)} of {len(names)} nodes listed"
    since = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")

    def cordon(n: str) -> None:
        patch = {"metadata": {"resourceVersion": rvs[n], "annotations": {TAINT: json.dumps(
            {"events": [f"{n}-xid79"], "since": since, "cordonedByUs": True}, separators=(",", ":"))}},
            "spec": {"unschedulable": True, "taints": [{"key": TAINT, "value": "true", "effect": "NoSchedule"}]}}
        fleet.base_t0[n] = time.monotonic()
        kube.patch(NODES, n, patch)

    return cordon


def _baseline(plane: FleetPlane, fleet: Fleet, names: Sequence[str], admin: Kube, log: Log) -> dict[str, Any]:
    """Cordon + taint `names` the controllers' way, 32 threads at once, unthrottled."""
    kube = pooled_kube(plane.kubeconfig, BASELINE_THREADS + 4)
    cordon = _baseline_cordon(kube, fleet, names, admin)
    try:
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(BASELINE_THREADS) as pool:
            list(pool.map(cordon, names))
        with fleet.cond:
            if not fleet.cond.wait_for(lambda: len(fleet.base_cordon) >= len(names), 120 + len(names) * 0.1):
                raise AssertionError(f"baseline: only {len(fleet.base_cordon)} of {len(names)} nodes seen cordoned")
    finally:
        kube.close()
    last = max(fleet.base_cordon.values())
    out = {"nodes": len(names), "last_cordon_s": round(last - start, 3),
           "throughput_nodes_per_s": round(len(names) / (last - start), 1),
           "latency": stats(fleet.base_cordon[n] - fleet.base_t0[n] for n in names)}
    log(f"[fleet] baseline: {len(names)} nodes cordoned by the bench in {out['last_cordon_s']} s "
        f"({out['throughput_nodes_per_s']} nodes/s)")
    return out


def _create_events(kube: Kube, fleet: Fleet, nodes: Sequence[str], bodies: dict[str, dict],
                   rate: float | None, base_cordon: Callable[[str], None] | None = None,
                   base_nodes: Sequence[str] = ()) -> list[str]:
    errors: list[str] = []

    def create(n: str) -> None:
        fleet.t0[n] = time.monotonic()
        try:
            _retry(lambda: kube.create(HEALTHEVENTS, bodies[n]), f"create event {n}")
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            errors.append(f"{n}: {exc}"[:300])

    with concurrent.futures.ThreadPoolExecutor(BURST_THREADS) as pool:
        if rate is None:
            list(pool.map(create, nodes))
        else:
            start = time.monotonic()
            futures = []
            for i, n in enumerate(nodes):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(create, n))
                if base_cordon is not None and i < len(base_nodes):
                    delay = start + (i + 0.5) / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    base_cordon(base_nodes[i])
            for fut in futures:
                fut.result()
    return errors


def _controller_metrics(port: int) -> dict[str, Any]:
    status, text = http_get(port, "/metrics")
    if status != 200:
        return {}
    keep = {"nvsentinel_quarantine_controller_breaker_limit", "nvsentinel_quarantine_controller_breaker_tripped",
            "nvsentinel_quarantine_controller_breaker_cordoned_nodes"}
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in keep:
                out[sample.name] = sample.value
            elif sample.name.endswith("_controller_actions_total") and sample.value > 0:
                stage = sample.name.removeprefix("nvsentinel_").removesuffix("_controller_actions_total")
                out[f"{stage}.{sample.labels.get('action', '')}"] = sample.value
            elif sample.name.endswith("_controller_failures_total") and sample.value > 0:
                stage = sample.name.removeprefix("nvsentinel_").removesuffix("_controller_failures_total")
                out[f"{stage}.failed.{sample.labels.get('reason', '')}"] = sample.value
            elif sample.name == "nvsentinel_controllers_k8s_events_total":
                out[f"k8s_events.{sample.labels.get('result', '')}"] = sample.value
            elif sample.name == "nvsentinel_kube_server_flow_control":
                out["kube_server_flow_control"] = sample.value
    return out


def _breaker_limit(port: int) -> int:
    status, text = http_get(port, "/metrics", timeout=2)
    if status != 200:
        return 0
    samples = parse_metrics(text, ["nvsentinel_quarantine_controller_breaker_limit"])[
        "nvsentinel_quarantine_controller_breaker_limit"]
    return int(samples[0][1]) if samples else 0


def _wait_chain(fleet: Fleet, ctl: Daemon, standins: Standins, k: int, cap: int | None, metrics_port: int,
                wait_s: float, start: float, log: Log) -> int | None:
    """Until every node is back in service (breaker off), or the breaker's cap of nodes is back in service
    and the rest held (breaker default). Returns the cap used."""
    end = start + wait_s
    last_log = time.monotonic()
    last_metric = 0.0
    nodes = sorted(fleet.burst_set)

    def missing() -> dict[str, Any]:
        n_held = len(fleet.held)
        out = {"cordoned": f"{len(fleet.cordon)}/{k if cap is None else cap}",
               **{p: sum(1 for n in nodes if p in fleet.phase[n]) for p in PHASES},
               "jobs": len(fleet.job), "back": len(fleet.back)}
        if cap is not None:
            out["held"] = f"{n_held}/{k - cap}"
        return out

    def done() -> bool:
        if cap is None:
            return len(fleet.back) >= k and all("Resolved" in fleet.phase[n] for n in nodes)
        if len(fleet.cordon) > cap:
            raise AssertionError(f"breaker: {len(fleet.cordon)} nodes cordoned, cap {cap}")
        cordoned = list(fleet.cordon)
        return (len(cordoned) == cap and len(fleet.held) >= k - cap and
                all(n in fleet.back and "Resolved" in fleet.phase[n] for n in cordoned))

    while True:
        with fleet.cond:
            fleet.cond.wait(0.5)
        now = time.monotonic()
        if cap is not None and now - last_metric > 2:
            last_metric = now
            with contextlib.suppress(Exception):
                limit = _breaker_limit(metrics_port)
                if limit > 0:
                    cap = limit
        if done():
            return cap
        ctl.check_alive()
        if now > end:
            miss = missing()
            lagging = [n for n in nodes if n not in fleet.back][:10]
            raise AssertionError(f"fleet: not done in {wait_s:.0f} s: {miss}; first nodes not back: {lagging}; "
                                 f"stand-in errors: {standins.errors()[:5]}")
        if now - last_log >= 10:
            last_log = now
            log(f"[fleet]   t={now - start:5.0f} s {missing()}")


def _read_audit_after(plane: FleetPlane, offset: int, start_wall: float, end_wall: float,
                      pod_ns: str) -> dict[str, Any]:
    """The controllers have exited: one marker request as their identity, seen in the audit log, means
    every request they made is in it too."""
    marker = f"fleet-audit-marker-{uuid.uuid4().hex[:8]}"
    plane.http(f"/api/v1/namespaces/default/configmaps/{marker}", token=plane.CTL_TOKEN)
    deadline = time.monotonic() + 60
    while True:
        with open(plane.audit_log, "rb") as f:
            f.seek(offset)
            if marker.encode() in f.read():
                break
        if time.monotonic() > deadline:
            raise AssertionError(f"audit: marker {marker} not in {plane.audit_log} after 60 s")
        time.sleep(0.1)
    return read_audit(plane.audit_log, offset, CTL_USER, start_wall, end_wall, pod_ns)


def _summarize(fleet: Fleet, k: int, pods: int, cap: int | None, breaker: str, audit: dict[str, Any],
               baseline: dict[str, Any] | None, steady: bool) -> dict[str, Any]:
    # snapshots: the watch threads still run
    t0, cordon_at, back_at, job_at, held_at = dict(fleet.t0), dict(fleet.cordon), dict(fleet.back), dict(fleet.job), \
        dict(fleet.held)
    phase_at = {n: dict(p) for n, p in list(fleet.phase.items())}
    nodes = sorted(fleet.burst_set)
    lat: dict[str, Any] = {}
    for p in PHASES:
        lat[p] = stats(phase_at[n][p] - t0[n] for n in nodes if p in phase_at[n])
    lat["cordon"] = stats(cordon_at[n] - t0[n] for n in cordon_at)
    lat["job created"] = stats(job_at[n] - t0[n] for n in job_at)
    lat["back in service"] = stats(back_at[n] - t0[n] for n in back_at)
    if held_at:
        lat["held (breaker)"] = stats(held_at[n] - t0[n] for n in held_at)
    first_t0 = min(t0.values())
    last_cordon = max(cordon_at.values()) if cordon_at else float("nan")
    n_cordoned = len(cordon_at)
    cordon = {"nodes": n_cordoned, "last_node_cordoned_s": round(last_cordon - first_t0, 3),
              "throughput_nodes_per_s": round(n_cordoned / (last_cordon - first_t0), 1),
              "max_per_node_s": lat["cordon"]["max"]}
    # the first C cordons, C = the default breaker's cap: with the breaker on, all it lets through; with
    # it off, the same count, to compare the breaker's cost below its cap
    first = sorted(cordon_at.values())[:cap or breaker_cap(k)]
    if first:
        cordon["first_cap"] = {"nodes": len(first), "last_s": round(first[-1] - first_t0, 3),
                               "throughput_nodes_per_s": round(len(first) / (first[-1] - first_t0), 1)}
    if baseline:
        cordon["baseline_nodes_per_s"] = baseline["throughput_nodes_per_s"]
        cordon["ratio_to_baseline"] = round(cordon["throughput_nodes_per_s"] / baseline["throughput_nodes_per_s"], 3)
    if steady and fleet.base_cordon:
        base = stats(fleet.base_cordon[n] - fleet.base_t0[n] for n in fleet.base_cordon if n in fleet.base_t0)
        cordon["steady_baseline"] = base
        cordon["steady_p99_vs_baseline_p99"] = round(lat["cordon"]["p99"] / base["p99"], 2) if base["p99"] else None
    if steady:
        cordon["steady_create_to_cordon_p50_s"] = lat["cordon"]["p50"]
        cordon["steady_create_to_cordon_p99_s"] = lat["cordon"]["p99"]
        cordon["steady_target_p99_le_20ms_met"] = (lat["cordon"]["p99"] or 1e9) <= 0.020
    remediated = [n for n in nodes if n in cordon_at]
    pods_drained = len(remediated) * pods
    evictions = audit.pop("evictions_by_pod")
    n_evictions = sum(evictions.values())
    per_pod = Counter(evictions.values())
    requests = {**audit, "per_node": round(audit["total"] / k, 2),
                "per_remediated_node": round(audit["total"] / len(remediated), 2) if remediated else None,
                "by_call_per_node": {c: round(v / max(1, len(remediated)), 2) for c, v in audit["by_call"].items()},
                "evictions": n_evictions, "pods_drained": pods_drained,
                "pods_evicted": len(evictions),
                "evictions_per_pod": round(n_evictions / pods_drained, 3) if pods_drained else None,
                "pods_evicted_more_than_once": sum(c for times, c in per_pod.items() if times > 1)}
    counts = {"events": k, "cordoned": n_cordoned, "back_in_service": len(back_at),
              "resolved": sum(1 for n in nodes if "Resolved" in phase_at[n]), "held": len(held_at),
              "held_and_cordoned": len(set(held_at) & set(cordon_at)),
              "jobs": len(job_at), "jobs_per_node_max": max(fleet.jobs_per_node.values(), default=0),
              "pods_gone_on_remediated_nodes": sum(fleet.pods_gone[n] for n in remediated),
              "pods_on_remediated_nodes": pods_drained, "breaker_cap": cap}
    return {"latency_s": lat, "cordon": cordon, "requests": requests, "counts": counts}


# ---- the table -------------------------------------------------------------------------------------------

def render(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = [f"fleet: {c['nodes']} nodes × {c['pods_per_node']} pods, {c['events']} events "
             f"({c['mode']}{', ' + str(c['rate']) + '/s × ' + str(c['duration']) + ' s' if c['mode'] == 'steady' else ''}),"
             f" breaker {c['breaker']}; load avg {c['loadavg_start'][0]:.2f} → {c.get('loadavg_end', [0])[0]:.2f} "
             f"on {c['cpus']} CPUs",
             f"  {c.get('controllers_cmd', '')}",
             f"  nvsentinel from {c['nvsentinel']} ({c['python']})",
             f"  setup {r.get('setup_s')} s; events created in {r.get('create_s')} s; chain done {r.get('chain_s')} s "
             "after the first create", "",
             f"  {'seconds from t0':<18}{'n':>6}{'p50':>10}{'p99':>10}{'max':>10}"]
    for name, s in r["latency_s"].items():
        if s["n"]:
            lines.append(f"  {name:<18}{s['n']:>6}{s['p50']:>10.3f}{s['p99']:>10.3f}{s['max']:>10.3f}")
        else:
            lines.append(f"  {name:<18}{0:>6}{'-':>10}{'-':>10}{'-':>10}")
    cd = r["cordon"]
    lines += ["", f"  cordon: {cd['nodes']} nodes, throughput {cd['throughput_nodes_per_s']} nodes/s; last node cordoned "
                  f"{cd['last_node_cordoned_s']} s after the first create; max per node {cd['max_per_node_s']} s"]
    if "first_cap" in cd:
        fc = cd["first_cap"]
        lines.append(f"  first {fc['nodes']} cordons (the default breaker's cap): last {fc['last_s']} s after the "
                     f"first create, {fc['throughput_nodes_per_s']} nodes/s")
    if "baseline_nodes_per_s" in cd:
        b = r["baseline"]
        lines.append(f"  baseline (bench cordons {b['nodes']} nodes, 32 threads, unthrottled): "
                     f"{b['throughput_nodes_per_s']} nodes/s, last {b['last_cordon_s']} s, per node p50 "
                     f"{b['latency']['p50']} p99 {b['latency']['p99']} s → controllers at "
                     f"{cd['ratio_to_baseline']:.3f}× the baseline")
    if "steady_baseline" in cd:
        b = cd["steady_baseline"]
        lines.append(f"  steady baseline (the bench's own cordon patch half-way between events, to its node watch): "
                     f"n {b['n']}, p50 {b['p50']} s, p99 {b['p99']} s, max {b['max']} s; controllers' p99 = "
                     f"{cd['steady_p99_vs_baseline_p99']}× the baseline's")
    if "steady_create_to_cordon_p99_s" in cd:
        lines.append(f"  steady create→cordon p50 {cd['steady_create_to_cordon_p50_s']} s, p99 "
                     f"{cd['steady_create_to_cordon_p99_s']} s; target p99 ≤ 20 ms: "
                     f"{'met' if cd['steady_target_p99_le_20ms_met'] else 'MISSED'}")
    q = r["requests"]
    lines += ["", f"  controllers' requests (audit log, during the run): {q['total']} total, {q['per_node']} per event"
                  f" node, {q['per_remediated_node']} per remediated node; 409: {q['conflicts_409']}; evictions "
                  f"{q['evictions']} for {q['pods_drained']} pods = {q['evictions_per_pod']} per pod "
                  f"({q['pods_evicted_more_than_once']} pods evicted more than once); before the burst "
                  f"{q['before_window']}, after {q['after_window']}",
              f"  {'verb resource/subresource':<40}{'count':>8}{'/node':>8}{'409':>6}"]
    for call, n in q["by_call"].items():
        lines.append(f"  {call:<40}{n:>8}{q['by_call_per_node'][call]:>8.2f}{q['conflicts_by_call'].get(call, 0):>6}")
    lines.append("  by code: " + ", ".join(f"{code}: {n}" for code, n in q["by_code"].items()))
    ctl = r["controller"]
    lines += ["", "  CPU s during the run: " + ", ".join(f"{p} {v}" for p, v in ctl["cpu_s_by_process"].items()) +
              f"; controllers peak RSS {ctl['peak_rss_mib']} MiB"]
    a = r["apiserver"]
    lines.append(f"  apiserver (all clients, bench included): {a['mutating_requests']} mutating requests, latency p50 "
                 f"{a['mutating_latency_p50_s']} s p99 {a['mutating_latency_p99_s']} s; top: " +
                 ", ".join(f"{k} {v}" for k, v in list(a["request_total_delta"].items())[:8]))
    lines.append(f"  counts: {r['counts']}")
    if ctl["metrics"]:
        lines.append(f"  controller metrics: {ctl['metrics']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100, help="GPU nodes of this run (default 100)")
    ap.add_argument("--pods", type=int, default=4, help="running pods per node (default 4)")
    ap.add_argument("--burst", type=int, default=None, help="fatal events created at once, on the first K nodes "
                    "(default: one per node)")
    ap.add_argument("--rate", type=float, default=None, help="steady mode: events per second (instead of a burst)")
    ap.add_argument("--duration", type=float, default=None, help="steady mode: seconds of events")
    ap.add_argument("--breaker", choices=("off", "default"), default="off",
                    help="off: --breaker-percent 100 --breaker-max-nodes 100000 (default); default: no breaker flags")
    ap.add_argument("--controllers-arg", action="append", default=[], metavar="FLAG",
                    help="extra flag for `nvsentinel controllers` (repeatable; write --controllers-arg=--workers=8)")
    ap.add_argument("--baseline-nodes", type=int, default=None, help="nodes the bench cordons itself as the baseline "
                    "(default: as many as events; 0: none)")
    ap.add_argument("--namespace", default=None, help="the controllers' namespace (default nvsentinel-bench-<run>)")
    ap.add_argument("--deadline", type=float, default=None, help="seconds to wait for the chain (default: "
                    "240 + 1.5 s per event)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    args = ap.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    r = run_fleet(args.nodes, args.pods, args.burst, rate=args.rate, duration=args.duration, breaker=args.breaker,
                  controllers_args=args.controllers_arg, baseline=args.baseline_nodes, namespace=args.namespace,
                  deadline=args.deadline, log=log)
    print(render(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str) + "\n")
        print(f"[fleet] results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
