"""Device API bench machinery: server subprocesses, raw-bytes clients, the watch-latency run, RSS.

Used by bench/test_bench_api.py; also runnable for a sweep of watch configurations:

    .venv/bin/python bench/apibench.py watch --watchers 256 --rate 1000 --seconds 3 [--processes 2]
    .venv/bin/python bench/apibench.py rss
    .venv/bin/python bench/apibench.py burst --streams 256 --messages 400   (the grpc.aio floor)
    .venv/bin/python bench/apibench.py watch ... --perf /tmp/perf.data   (then perf report --sort dso)

Processes: the server is `bench/api_server.py` (the daemon's DeviceApiServer plus an empty unary
RPC). When this process is pinned to a subset of the CPUs (bench/run pins to the last one), the
server is pinned to the other CPUs, so client and server never share a core or a GIL. Watch clients
(bench/watch_client.py) inherit this process's CPUs. Clocks: `time.perf_counter` everywhere
(CLOCK_MONOTONIC on Linux, one clock for every process on the machine).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pickle
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from nvsentinel._proto import gpu_pb2
from nvsentinel.devtools import benchmarks

HERE = pathlib.Path(__file__).resolve().parent

SERVICE = "/nvidia.device.v1alpha1.GpuService/"
EMPTY = "/nvsentinel.bench.Bench/Empty"
#: Flags every bench server gets: loopback TCP only, any free HTTP ports, no open-rate limit on
#: watches (the bench opens 256 at once), quiet logs.
BASE_FLAGS = (
    "--grpc-address", "127.0.0.1:0", "--unix-socket", "", "--health-port", "0", "--metrics-port", "0",
    "--watch-rate", "100000", "--watch-burst", "100000", "--log-level", "WARNING",
    # the benches open up to 256 watches from one process: one peer, past the default of 32 per peer
    "--max-watchers-per-peer", "256",
)


def server_cpus() -> set[int] | None:
    """The CPUs the server gets: the ones this process is not pinned to, if it is pinned."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    mine = os.sched_getaffinity(0)
    every = set(range(os.cpu_count() or 1))
    rest = every - mine
    return rest or None


def load() -> str:
    """`uptime`'s load averages (another job on a 2-vCPU machine shows up here)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status value in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> int:
    return proc_status(pid, "Threads")


@dataclasses.dataclass
class ServerProc:
    """bench/api_server.py in a subprocess."""

    proc: subprocess.Popen
    port: int
    cpus: set[int] | None

    @classmethod
    def start(cls, *flags: str, threadpool: int | None = None, timeout: float = 30.0) -> ServerProc:
        cpus = server_cpus()
        argv = ["--threadpool", str(threadpool), "--grpc-address", "127.0.0.1:0"] if threadpool else [*BASE_FLAGS, *flags]
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "api_server.py"), *argv],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"bench server did not start (exit {proc.poll()})")
        info = json.loads(line)
        return cls(proc, int(info["grpc_port"]), cpus)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()

    def __enter__(self) -> ServerProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawClient:
    """A sync grpc channel whose calls take and return bytes (requests pre-serialized)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        grpc.channel_ready_future(self.channel).result(timeout=20)
        self.empty = self.channel.unary_unary(EMPTY)
        self.create = self.channel.unary_unary(SERVICE + "CreateGpu")
        self.update_status = self.channel.unary_unary(SERVICE + "UpdateGpuStatus")
        self.get = self.channel.unary_unary(SERVICE + "GetGpu")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fill(self, n: int) -> int:
        """Create GPUs 0..n-1 (realistic objects; every 8th reports XID 79); the RV after."""
        rv = 0
        for i in range(n):
            req = gpu_pb2.CreateGpuRequest(gpu=benchmarks.gpu_object(i, unhealthy=i % 8 == 0))
            resp = gpu_pb2.CreateGpuResponse.FromString(self.create(req.SerializeToString()))
            rv = resp.gpu.resource_version
        return rv


def status_requests(gpus: int) -> list[bytes]:
    """Pre-serialized UpdateGpuStatusRequests (eight conditions, ~0.95 KiB each), unconditional
    (resource_version 0), alternating healthy / XID 79 per GPU: 2 × `gpus` requests, GPU-major."""
    return [
        gpu_pb2.UpdateGpuStatusRequest(
            name=benchmarks.gpu_name(i), status=benchmarks.gpu_status(i, unhealthy=bool(k), generation=k)
        ).SerializeToString()
        for k in (0, 1)
        for i in range(gpus)
    ]


def response_rvs(responses: Sequence[bytes]) -> list[int]:
    return [gpu_pb2.UpdateGpuStatusResponse.FromString(b).gpu.resource_version for b in responses]


def consecutive(rvs: Sequence[int]) -> bool:
    return all(b == a + 1 for a, b in zip(rvs, rvs[1:]))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def interleaved(calls: Sequence[Callable[[], Any]], pairs: int) -> list[list[float]]:
    """Time the calls alternately, one call at a time, `pairs` times each: per-call seconds."""
    clock = time.perf_counter
    out: list[list[float]] = [[] for _ in calls]
    for _ in range(pairs):
        for fn, times in zip(calls, out):
            t = clock()
            fn()
            times.append(clock() - t)
    return out


# ---- watch delivery latency ----------------------------------------------------------------------


class WatchClients:
    """`processes` bench/watch_client.py subprocesses sharing `watchers` streams."""

    def __init__(self, target: str, watchers: int, *, since: int | None, processes: int = 1, connections: int = 1,
                 drain: float = 10.0) -> None:
        self.dir = tempfile.mkdtemp(prefix="nvs-watch-")
        self.procs: list[subprocess.Popen] = []
        self.outs: list[str] = []
        share = [watchers // processes + (1 if k < watchers % processes else 0) for k in range(processes)]
        for k, n in enumerate(share):
            out = os.path.join(self.dir, f"client{k}.pickle")
            argv = [sys.executable, str(HERE / "watch_client.py"), target, "--watchers", str(n),
                    "--connections", str(max(1, connections // processes)), "--out", out, "--drain", str(drain)]
            if since is not None:
                argv += ["--since", str(since)]
            self.procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            self.outs.append(out)
        for p in self.procs:
            line = p.stdout.readline().strip()
            if line != "ready":
                self.kill()
                raise RuntimeError(f"watch client did not open its streams (got {line!r}, exit {p.poll()})")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def finish(self, final_rv: int, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Tell the clients the last RV, wait for their results (one dict per process)."""
        for p in self.procs:
            p.stdin.write(f"{final_rv}\n")
            p.stdin.flush()
        results = []
        for p, out in zip(self.procs, self.outs):
            line = p.stdout.readline().strip()
            p.wait(timeout)
            if line != "done":
                raise RuntimeError(f"watch client failed (exit {p.returncode})")
            with open(out, "rb") as f:
                results.append(pickle.load(f))
            os.unlink(out)
        for p in self.procs:
            p.stdin.close()
            p.stdout.close()
        os.rmdir(self.dir)
        return results

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            for pipe in (p.stdin, p.stdout):
                if not pipe.closed:
                    pipe.close()


def paced_writer(client: RawClient, requests: Sequence[bytes], rate: float, count: int,
                 max_seconds: float | None = None, answered: list[float] | None = None,
                 ) -> tuple[list[float], list[bytes], float]:
    """Issue `count` UpdateGpuStatus calls at `rate`/s on an absolute schedule (a late call goes
    out at once, nothing is skipped; the writer is closed-loop, one call in flight, so a server
    that answers late slows it down), stopping early after `max_seconds`: (send times, responses,
    elapsed seconds). `answered`, when given, gets the time each response arrived."""
    call, clock, sleep = client.update_status, time.perf_counter, time.sleep
    sends: list[float] = []
    responses: list[bytes] = []
    n = len(requests)
    start = clock()
    limit = start + max_seconds if max_seconds is not None else float("inf")
    for k in range(count):
        if k and clock() > limit:
            break
        due = start + k / rate
        now = clock()
        if due - now > 0.0002:
            sleep(due - now - 0.0001)
        while clock() < due:
            pass
        t = clock()
        responses.append(call(requests[k % n]))
        sends.append(t)
        if answered is not None:
            answered.append(clock())
    return sends, responses, clock() - start


def watch_run(*, watchers: int, rate: float, seconds: float, gpus: int = 64, processes: int = 1,
              connections: int = 1, server: ServerProc | None = None) -> dict[str, Any]:
    """One watch-latency run; every number it reports is in the returned dict.

    The server holds `gpus` GPUs; `watchers` streams resume after the current RV (an informer's
    list-then-watch), so every watcher must receive exactly the RVs the writer produced, in order.
    The writer plans rate × seconds updates and stops after seconds + 1 s of wall time: when the
    server cannot keep up it answers the (closed-loop) writer late, and `achieved_rate` says so.
    """
    own = server is None
    server = server or ServerProc.start()
    clients = None
    try:
        with RawClient(server.target) as client:
            base_rv = client.fill(gpus)
            requests = status_requests(gpus)
            count = max(1, int(rate * seconds))
            clients = WatchClients(server.target, watchers, since=base_rv, processes=processes, connections=connections)
            time.sleep(0.2)  # let the clients settle into their read loops
            cpu0 = {"server": server.cpu_s(), "clients": sum(cpu_seconds(p) for p in clients.pids)}
            wall0 = time.perf_counter()
            load_before = load()
            answered: list[float] = []
            sends, responses, elapsed = paced_writer(client, requests, rate, count, max_seconds=seconds + 1.0,
                                                     answered=answered)
            results = clients.finish(response_rvs(responses[-1:])[0])
            wall = time.perf_counter() - wall0
            rss = server.rss_kib()
            cpu = {
                "server": server.cpu_s() - cpu0["server"],
                "clients": sum(r["cpu_s"] for r in results) - cpu0["clients"],
            }
    finally:
        if clients is not None:
            clients.kill()
        if own:
            server.stop()
    rvs = response_rvs(responses)
    send_of = dict(zip(rvs, sends))
    expected = rvs
    lat: list[float] = []
    per_watcher = []
    for res in results:
        for w in res["watchers"]:
            got = list(w["rvs"])
            reordered = sum(1 for a, b in zip(got, got[1:]) if b <= a)
            received = len(set(got) & send_of.keys())
            per_watcher.append({"received": len(got), "lost": len(expected) - received, "reordered": reordered,
                                "status": w["status"]})
            lat.extend(t - send_of[rv] for rv, t in zip(w["rvs"], w["times"]) if rv in send_of)
    lat.sort()
    writes = sorted(b - a for a, b in zip(sends, answered))
    # a stream the server ended with an error status: evicted for lagging (RESOURCE_EXHAUSTED) or other
    evicted = [w for w in per_watcher if w["status"] not in ("cancelled", "ended")]
    complete = sum(1 for w in per_watcher if w["lost"] == 0 and w["reordered"] == 0)
    out = {
        "watchers": watchers,
        "rate": rate,
        "processes": processes,
        "connections": sum(r["connections"] for r in results),
        "gpus": gpus,
        "updates": len(responses),
        "updates_planned": count,
        "achieved_rate": len(responses) / elapsed if elapsed else float("nan"),
        "writes_consecutive": consecutive(rvs) and rvs[0] == base_rv + 1,
        "expected_per_watcher": len(expected),
        "received_min": min(w["received"] for w in per_watcher),
        "received_max": max(w["received"] for w in per_watcher),
        "events_expected": len(expected) * watchers,
        "events_received": sum(w["received"] for w in per_watcher),
        "lost": sum(w["lost"] for w in per_watcher),
        "reordered": sum(w["reordered"] for w in per_watcher),
        "watchers_complete": complete,
        "evicted": len(evicted),
        "end_status": sorted({w["status"].split(":")[0] for w in per_watcher}),
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": (lat[-1] if lat else float("nan")) * 1e3,
        "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan"),
        "write_p50_ms": percentile(writes, 50) * 1e3,
        "write_p99_ms": percentile(writes, 99) * 1e3,
        "wall_s": wall,
        "writer_s": elapsed,
        "drain_s": max(r["drain_s"] for r in results),
        "server_cpu_s": cpu["server"],
        "clients_cpu_s": cpu["clients"],
        "server_cpu_share": cpu["server"] / wall if wall else float("nan"),
        "clients_cpu_share": cpu["clients"] / wall if wall else float("nan"),
        "server_rss_mib": rss / 1024,
        "server_cpus": sorted(server.cpus) if server.cpus else "all",
        "load": load_before,
    }
    out["ok"] = out["lost"] == 0 and out["reordered"] == 0 and out["evicted"] == 0 and out["writes_consecutive"]
    return out


def watch_summary(r: dict[str, Any]) -> str:
    return (
        f"{r['watchers']} watchers × {r['rate']:g}/s ({r['achieved_rate']:.0f}/s achieved, {r['updates']} of "
        f"{r['updates_planned']} updates, "
        f"{r['processes']} client process(es), {r['connections']} connection(s)): "
        f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms; "
        f"per watcher {r['received_min']}–{r['received_max']} of {r['expected_per_watcher']} received, "
        f"lost {r['lost']}, reordered {r['reordered']}, evicted {r['evicted']}; "
        f"UpdateGpuStatus p50 {r['write_p50_ms']:.2f} ms, p99 {r['write_p99_ms']:.2f} ms; "
        f"CPU server {r['server_cpu_share']:.0%}, clients {r['clients_cpu_share']:.0%} of one core "
        f"over {r['wall_s']:.1f} s; load {r['load']}"
    )


def burst_run(*, streams: int = 256, messages: int = 400, connections: int = 1) -> dict[str, Any]:
    """The grpc.aio floor under the watch path: `streams` concurrent server streams, each yielding
    `messages` ready ~1 KiB messages (no fan-out, no waiting), read by one grpc.aio process.
    Reports messages/s and the server's CPU per message."""
    with ServerProc.start() as server:
        out = os.path.join(tempfile.mkdtemp(prefix="nvs-burst-"), "burst.pickle")
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "watch_client.py"), server.target, "--watchers", str(streams),
             "--connections", str(connections), "--burst", str(messages), "--out", out],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("burst client did not connect")
            cpu0, client0 = server.cpu_s(), cpu_seconds(proc.pid)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            if proc.stdout.readline().strip() != "done":
                raise RuntimeError("burst client failed")
            cpu = server.cpu_s() - cpu0
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stdin.close()
            proc.stdout.close()
        with open(out, "rb") as f:
            res = pickle.load(f)
        os.unlink(out)
        os.rmdir(os.path.dirname(out))
    return {
        "streams": streams,
        "messages": res["messages"],
        "expected": streams * messages,
        "seconds": res["seconds"],
        "msgs_per_s": res["messages"] / res["seconds"],
        "server_cpu_s": cpu,
        "server_us_per_msg": cpu / res["messages"] * 1e6,
        "client_us_per_msg": (res["cpu_s"] - client0) / res["messages"] * 1e6,
        "server_cpu_share": cpu / res["seconds"],
        "load": load(),
    }


def burst_summary(r: dict[str, Any]) -> str:
    return (
        f"{r['streams']} streams, {r['messages']} of {r['expected']} messages in {r['seconds']:.2f} s: "
        f"{r['msgs_per_s']:,.0f} messages/s; server {r['server_us_per_msg']:.1f} µs CPU per message "
        f"({r['server_cpu_share']:.0%} of one core), client {r['client_us_per_msg']:.1f} µs; load {r['load']}"
    )


def watch_brief(r: dict[str, Any]) -> str:
    """The table cell: latency, rate held, delivery, where the CPU went."""
    return (
        f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} / max {r['max_ms']:.1f} ms; "
        f"{r['achieved_rate']:.0f}/s written (UpdateGpuStatus p50 {r['write_p50_ms']:.1f} ms); "
        f"{r['received_min']}–{r['received_max']} of {r['expected_per_watcher']} events per watcher, "
        f"lost {r['lost']}, reordered {r['reordered']}, evicted {r['evicted']}; "
        f"CPU: server {r['server_cpu_share']:.0%}, watch clients {r['clients_cpu_share']:.0%} of a core"
    )


# ---- memory ---------------------------------------------------------------------------------------


def rss_run(*, gpus: int = 1024, watchers: int = 256, updates: int = 200, rate: float = 100.0) -> dict[str, Any]:
    """RSS of an idle server, then with `gpus` GPUs, then with `watchers` open watches, then after
    `updates` status updates were delivered to every watcher (so each stream has carried events)."""
    with ServerProc.start("--max-gpus", str(max(gpus, 1))) as server:
        time.sleep(0.5)
        idle = server.rss_kib()
        with RawClient(server.target) as client:
            rv = client.fill(gpus)
            filled = server.rss_kib()
            clients = WatchClients(server.target, watchers, since=rv)
            try:
                time.sleep(0.3)
                watching = server.rss_kib()
                sends, responses, _ = paced_writer(client, status_requests(min(gpus, 64)), rate, updates)
                results = clients.finish(response_rvs(responses[-1:])[0])
            finally:
                clients.kill()
            rvs = response_rvs(responses)
            after = server.rss_kib()
            hwm = server.hwm_kib()
            nthreads = threads(server.pid)
    got = [list(w["rvs"]) for r in results for w in r["watchers"]]
    return {
        "gpus": gpus,
        "watchers": watchers,
        "updates": updates,
        "idle_mib": idle / 1024,
        "filled_mib": filled / 1024,
        "watching_mib": watching / 1024,
        "after_updates_mib": after / 1024,
        "hwm_mib": hwm / 1024,
        "rss_bytes": after * 1024,
        "threads": nthreads,
        "delivered": all(g == rvs for g in got) and len(got) == watchers,
    }


def rss_summary(r: dict[str, Any]) -> str:
    return (
        f"idle {r['idle_mib']:.1f} MiB; {r['gpus']} GPUs {r['filled_mib']:.1f} MiB; + {r['watchers']} watches "
        f"{r['watching_mib']:.1f} MiB; after {r['updates']} updates to every watcher {r['after_updates_mib']:.1f} MiB "
        f"(peak {r['hwm_mib']:.1f} MiB, {r['threads']} threads)"
    )


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Device API bench runs outside pytest")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--watchers", type=int, default=256)
    w.add_argument("--rate", type=float, default=1000)
    w.add_argument("--seconds", type=float, default=3)
    w.add_argument("--gpus", type=int, default=64)
    w.add_argument("--processes", type=int, default=1)
    w.add_argument("--connections", type=int, default=1)
    w.add_argument("--json", action="store_true")
    w.add_argument("--perf", metavar="FILE", help="record the server with `perf record -g` into FILE")
    b = sub.add_parser("burst")
    b.add_argument("--streams", type=int, default=256)
    b.add_argument("--messages", type=int, default=400)
    b.add_argument("--connections", type=int, default=1)
    b.add_argument("--json", action="store_true")
    r = sub.add_parser("rss")
    r.add_argument("--gpus", type=int, default=1024)
    r.add_argument("--watchers", type=int, default=256)
    r.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "watch":
        kwargs = dict(watchers=args.watchers, rate=args.rate, seconds=args.seconds, gpus=args.gpus,
                      processes=args.processes, connections=args.connections)
        if args.perf:
            import signal

            with ServerProc.start() as server:
                perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(server.pid), "-o", args.perf],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                try:
                    res = watch_run(server=server, **kwargs)
                finally:
                    perf.send_signal(signal.SIGINT)
                    perf.wait(30)
        else:
            res = watch_run(**kwargs)
        print(json.dumps(res) if args.json else watch_summary(res))
    elif args.cmd == "burst":
        res = burst_run(streams=args.streams, messages=args.messages, connections=args.connections)
        print(json.dumps(res) if args.json else burst_summary(res))
    else:
        res = rss_run(gpus=args.gpus, watchers=args.watchers)
        print(json.dumps(res) if args.json else rss_summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
