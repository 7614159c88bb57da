"""What the node API's hardening costs (issue 16): the unix-socket relay's latency, and a full store's memory
while many clients list it at once.

    .venv/bin/python bench/node_api_cost.py [--json OUT]      # the full run (~30 s on the 2-vCPU VM)
    .venv/bin/python bench/node_api_cost.py --quick           # the CI smoke configuration (a few seconds)

One real server subprocess (`python -m nvsentinel.daemons.device_api_server`, through
tests/api/apiserver.py's SubprocessServer) listens on a unix socket and on loopback TCP at once.

1. **Latency.** The unix socket goes through `PeerRelay` (nvsentinel/node/api/peers.py): the server
   accepts, reads SO_PEERCRED and copies the bytes to gRPC's private abstract listener, so every call
   crosses the server's event loop twice more. TCP goes to gRPC directly. No build without the relay
   runs in the same process, so the baseline is TCP on the same server: the ratio unix/TCP is what
   the relay adds. GetGpu of a small GPU (~1.1 KiB) and GetGpu of a name the store lacks (NOT_FOUND,
   the smallest answer) are timed call by call, the two transports alternated (the order flips every
   round), through sync channels with pre-serialized requests. Then the server's CPU per call is
   read from /proc over alternating blocks of calls.
2. **Memory.** The store is filled with `--gpus` GPUs of `--gpu-kib` KiB (1 024 × 64 KiB: the default
   bounds, so the biggest store a server takes). Baseline: the server's RSS right after the fill;
   its peak is then reset (`/proc/<pid>/clear_refs` 5) so VmHWM shows the peak of the listing alone.
   `--clients` DeviceApiClients (threads of this process, one channel each, all over the unix socket)
   call `list_gpus()` `--lists` times each, all at once. A list over `--max-list-bytes` is refused
   (RESOURCE_EXHAUSTED) and the client reads it through a fresh watch instead. Every list must hold
   every GPU, whole, at the store's RV. The peak is compared with the baseline and with the chart's
   memory limit (charts/nvsentinel/values.yaml node.deviceApiServer.resources.limits.memory).

Progress goes to stderr; the report to stdout; `--json` writes every number. Exit 1 when a
correctness check fails (a wrong answer, a lost GPU, a failed list), not when a number is large; exit 2
when the server does not start (e.g. it refuses a `--server-arg`).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "api"))  # SubprocessServer: the real daemon, as the API tests start it
sys.path.insert(0, str(HERE))  # apibench, also under PYTHONSAFEPATH

import grpc  # noqa: E402
import yaml  # noqa: E402
from apibench import proc_status  # noqa: E402
from apiserver import SubprocessServer, http_get, temp_socket_dir  # noqa: E402

from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.devtools import benchmarks  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402

MIB = 1024 * 1024
SERVICE = "/nvidia.device.v1alpha1.GpuService/"
CHART_VALUES = ROOT / "charts" / "nvsentinel" / "values.yaml"
#: Bytes below --gpu-kib each object is built to: the server stamps metadata (RV, times) on top, and
#: the result must stay under --max-object-bytes (64 KiB by default).
OBJECT_SLACK = 200
METRIC = "device_api_server_"

FULL = dict(pairs=5000, warmup=300, cpu_blocks=6, cpu_block_calls=400, gpus=1024, gpu_kib=64, clients=8, lists=3)
#: Tiny, but still on every path: 32 × 64 KiB is over the quick run's --max-list-bytes, so every
#: list is refused and read through the watch fallback, as in the full run.
QUICK = dict(pairs=100, warmup=20, cpu_blocks=1, cpu_block_calls=20, gpus=32, gpu_kib=64, clients=3, lists=2)
QUICK_SERVER_FLAGS = ("--max-list-bytes", str(1 * MIB), "--max-list-bytes-in-flight", str(2 * MIB))


def progress(line: str) -> None:
    """One progress line on stderr (stdout carries the report)."""
    print(f"[node-api-cost] {line}", file=sys.stderr, flush=True)


# ---- /proc and the chart ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads, in ns resolution: the sum of /proc/<pid>/task/*/schedstat
    (time on CPU). /proc/<pid>/stat counts in clock ticks (10 ms), too coarse for blocks of calls."""
    total, read = 0, False
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
            read = True
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    if read:
        return total / 1e9
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:  # a kernel without schedstat: clock ticks
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux ≥ 4.0; we own the process). False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


_QUANTITY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def chart_memory_limit(path: pathlib.Path = CHART_VALUES) -> tuple[str, int]:
    """node.deviceApiServer.resources.limits.memory of the chart: (as written, bytes)."""
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    text = str(values["node"]["deviceApiServer"]["resources"]["limits"]["memory"])
    m = re.fullmatch(r"(\d+)([kMG]i?|)", text)
    if not m:
        raise ValueError(f"{path}: cannot read the memory limit {text!r}")
    return text, int(m.group(1)) * _QUANTITY[m.group(2)]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list (q in 0..100)."""
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def metrics(server: SubprocessServer) -> dict[str, float]:
    """The server's `device_api_server_*` samples, by name with labels."""
    status, text = http_get(server.metrics_port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(METRIC):
            name, _, value = line.rpartition(" ")
            out[name[len(METRIC):]] = float(value)
    return out


# ---- 1. latency: unix socket (relay) against loopback TCP (no relay), same server -------------------


def _channel(target: str) -> grpc.Channel:
    ch = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    grpc.channel_ready_future(ch).result(timeout=30)
    return ch


def latency(server: SubprocessServer, *, pairs: int, warmup: int, cpu_blocks: int, cpu_block_calls: int,
            failures: list[str]) -> dict[str, Any]:
    """Interleaved unary latency and server CPU per call, unix socket vs loopback TCP."""
    small = benchmarks.gpu_object(0)
    with DeviceApiClient(server.unix, timeout=30) as c:
        c.create_gpu(small)
    get_req = gpu_pb2.GetGpuRequest(name=small.metadata.name).SerializeToString()
    missing_req = gpu_pb2.GetGpuRequest(name=benchmarks.gpu_name(10**6)).SerializeToString()
    channels = {"unix": _channel(server.unix), "tcp": _channel(server.tcp)}
    try:
        expected = channels["tcp"].unary_unary(SERVICE + "GetGpu")(get_req, timeout=30)
        if gpu_pb2.GetGpuResponse.FromString(expected).gpu.metadata.name != small.metadata.name:
            failures.append("latency: GetGpu over TCP did not return the GPU")
        wrong = {"get": 0, "missing": 0}

        def get_call(ch: grpc.Channel) -> Callable[[], None]:
            rpc = ch.unary_unary(SERVICE + "GetGpu")

            def call() -> None:
                if rpc(get_req, timeout=30) != expected:
                    wrong["get"] += 1
            return call

        def missing_call(ch: grpc.Channel) -> Callable[[], None]:
            rpc = ch.unary_unary(SERVICE + "GetGpu")

            def call() -> None:
                try:
                    rpc(missing_req, timeout=30)
                except grpc.RpcError as exc:
                    if exc.code() is grpc.StatusCode.NOT_FOUND:
                        return
                wrong["missing"] += 1
            return call

        cases = {"get": get_call, "missing": missing_call}
        calls = {(case, t): make(ch) for case, make in cases.items() for t, ch in channels.items()}
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        progress(f"latency: {pairs} rounds × {len(calls)} calls, unix and TCP alternated call by call")
        times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
        clock = time.perf_counter
        step = max(1, pairs // 5)
        for i in range(pairs):
            order = ("unix", "tcp") if i % 2 == 0 else ("tcp", "unix")
            for case in cases:
                for t in order:
                    fn = calls[(case, t)]
                    t0 = clock()
                    fn()
                    times[(case, t)].append(clock() - t0)
            if (i + 1) % step == 0:
                progress(f"latency: {i + 1}/{pairs} rounds")

        progress(f"server CPU: {cpu_blocks} blocks of {cpu_block_calls} calls per case and transport")
        cpu: dict[tuple[str, str], float] = {key: 0.0 for key in calls}
        for b in range(cpu_blocks):
            order = ("unix", "tcp") if b % 2 == 0 else ("tcp", "unix")
            for case in cases:
                for t in order:
                    fn = calls[(case, t)]
                    c0 = cpu_seconds(server.proc.pid)
                    for _ in range(cpu_block_calls):
                        fn()
                    cpu[(case, t)] += cpu_seconds(server.proc.pid) - c0
    finally:
        for ch in channels.values():
            ch.close()
    if wrong["get"] or wrong["missing"]:
        failures.append(f"latency: wrong answers {wrong}")

    out: dict[str, Any] = {"pairs": pairs, "warmup": warmup, "baseline": "loopback TCP on the same server (no relay)",
                           "wrong_answers": wrong, "cases": {}}
    per_cpu = cpu_blocks * cpu_block_calls
    for case in cases:
        row: dict[str, Any] = {}
        for t in channels:
            s = sorted(times[(case, t)])
            row[t] = {"median_us": statistics.median(s) * 1e6, "p99_us": percentile(s, 99) * 1e6,
                      "mean_us": statistics.fmean(s) * 1e6, "calls": len(s),
                      "server_cpu_us_per_call": cpu[(case, t)] / per_cpu * 1e6 if per_cpu else float("nan")}
        diffs = sorted(u - t for u, t in zip(times[(case, "unix")], times[(case, "tcp")]))
        row["ratio_median"] = row["unix"]["median_us"] / row["tcp"]["median_us"]
        row["ratio_p99"] = row["unix"]["p99_us"] / row["tcp"]["p99_us"]
        row["paired_diff_median_us"] = statistics.median(diffs) * 1e6
        tcp_cpu = row["tcp"]["server_cpu_us_per_call"]
        row["ratio_server_cpu"] = row["unix"]["server_cpu_us_per_call"] / tcp_cpu if tcp_cpu else float("nan")
        out["cases"][case] = row
    out["cpu_blocks"], out["cpu_block_calls"] = cpu_blocks, cpu_block_calls
    return out


# ---- 2. memory: a full store listed by many clients at once --------------------------------------


def big_gpu(i: int, size: int) -> gpu_pb2.Gpu:
    """A realistic GPU (eight conditions) padded to `size` bytes through its first condition's message."""
    g = benchmarks.gpu_object(i)
    g.status.conditions[0].message += "x" * max(0, size - g.ByteSize())
    return g


def fill(address: str, count: int, size: int, failures: list[str]) -> int:
    """Create GPUs 0..count-1 of `size` bytes from 4 writer threads; the store's RV after."""
    rvs: list[int] = []
    errors: list[BaseException] = []
    done = [0]
    lock = threading.Lock()

    def writer(part: range) -> None:
        try:
            with DeviceApiClient(address, timeout=60) as c:
                for i in part:
                    g, created = c.create_gpu(big_gpu(i, size))
                    with lock:
                        rvs.append(g.resource_version)
                        done[0] += 1
                        if done[0] % 256 == 0:
                            progress(f"fill: {done[0]}/{count} GPUs")
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(range(k, count, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if errors or len(rvs) != count:
        failures.append(f"fill: {len(rvs)} of {count} GPUs created; errors {errors[:2]!r}")
    return max(rvs, default=0)


def memory(server: SubprocessServer, *, gpus: int, gpu_kib: int, clients: int, lists: int,
           failures: list[str]) -> dict[str, Any]:
    pid = server.proc.pid
    with DeviceApiClient(server.unix, timeout=30) as c:  # the latency run's small GPU
        c.delete_gpu(benchmarks.gpu_name(0))
    size = gpu_kib * 1024 - OBJECT_SLACK
    progress(f"fill: {gpus} GPUs × {size} bytes ({gpus * size / MIB:.0f} MiB of objects)")
    t0 = time.perf_counter()
    store_rv = fill(server.unix, gpus, size, failures)
    fill_s = time.perf_counter() - t0
    hwm_fill_kib = proc_status(pid, "VmHWM")
    rss_filled_kib = proc_status(pid, "VmRSS")
    reset = reset_peak(pid)
    baseline_kib = proc_status(pid, "VmHWM") if reset else rss_filled_kib  # after a reset: the RSS at that moment
    before = metrics(server)

    expected = {benchmarks.gpu_name(i) for i in range(gpus)}
    floor = size  # every listed object must be whole: at least what was written
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)
    sampled = [0]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(0.02):
            try:
                sampled[0] = max(sampled[0], proc_status(pid, "VmRSS"))
            except OSError:
                return

    def lister(k: int) -> None:
        try:
            with DeviceApiClient(server.unix, timeout=600) as c:
                start.wait(60)
                for r in range(lists):
                    t = time.perf_counter()
                    rv, items = c.list_gpus()
                    seconds = time.perf_counter() - t
                    names = [g.metadata.name for g in items]
                    res = {"client": k, "list": r, "rv": rv, "items": len(items), "seconds": seconds,
                           "all_gpus": set(names) == expected and len(names) == len(expected),
                           "whole": all(g.ByteSize() >= floor for g in items)}
                    del items, names
                    with lock:
                        results.append(res)
                        progress(f"lists: {len(results)}/{clients * lists} done (client {k}: {res['items']} GPUs "
                                 f"in {seconds:.1f} s)")
        except BaseException as exc:  # handed to the main thread
            with lock:
                errors.append(f"client {k}: {type(exc).__name__}: {exc}")

    progress(f"lists: {clients} clients × {lists} list_gpus() at once")
    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=lister, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    lists_s = time.perf_counter() - t0
    stop.set()
    watcher.join(5)
    peak_kib = proc_status(pid, "VmHWM")
    rss_after_kib = proc_status(pid, "VmRSS")
    after = metrics(server)
    alone: list[float] = []  # what one list costs a client when nobody else lists (after the peak is read)
    with DeviceApiClient(server.unix, timeout=600) as c:
        for _ in range(2):
            t = time.perf_counter()
            rv, items = c.list_gpus()
            alone.append(time.perf_counter() - t)
            if rv != store_rv or len(items) != gpus:
                failures.append(f"memory: a lone list got {len(items)} GPUs at RV {rv}")
            del items

    def delta(name: str) -> int:
        return int(after.get(name, 0) - before.get(name, 0))

    refused = {reason: delta(f'refused_total{{reason="{reason}"}}') for reason in ("list_too_large", "list_busy")}
    list_ok = delta('grpc_requests_total{code="OK",method="ListGpus"}')
    complete = [r for r in results if r["all_gpus"] and r["whole"] and r["rv"] == store_rv]
    if errors:
        failures.append(f"memory: {len(errors)} client(s) failed: {errors[:2]}")
    if len(results) != clients * lists:
        failures.append(f"memory: {len(results)} of {clients * lists} lists finished")
    if len(complete) != len(results):
        bad = [r for r in results if r not in complete][:2]
        failures.append(f"memory: {len(results) - len(complete)} list(s) lost GPUs or were stale: {bad}")
    if max(peak_kib, sampled[0]) < baseline_kib:
        failures.append(f"memory: peak {peak_kib} KiB under the baseline {baseline_kib} KiB")
    limit_text, limit = chart_memory_limit()
    # the peak: VmHWM, or the sampled VmRSS where that read higher (the kernel's RSS counters are per-CPU
    # and its high-water mark is updated lazily, so the two can differ by a few hundred KiB)
    peak = max(peak_kib, sampled[0]) * 1024
    base = baseline_kib * 1024
    return {
        "gpus": gpus, "object_bytes": size, "store_objects_mib": gpus * size / MIB, "store_rv": store_rv,
        "clients": clients, "lists_per_client": lists, "fill_s": fill_s, "lists_s": lists_s,
        "peak_reset_after_fill": reset,
        "peak_since": "fill" if reset else "server start (VmHWM reset refused)",
        "hwm_during_fill_mib": hwm_fill_kib / 1024,
        "rss_after_fill_mib": rss_filled_kib / 1024,
        "baseline_mib": base / MIB,
        "peak_mib": peak / MIB,
        "vmhwm_mib": peak_kib / 1024,
        "sampled_max_rss_mib": sampled[0] / 1024,
        "rss_after_lists_mib": rss_after_kib / 1024,
        "growth_mib": (peak - base) / MIB,
        "growth_ratio": peak / base,
        "chart_limit": limit_text,
        "chart_limit_mib": limit / MIB,
        "peak_vs_chart_limit": peak / limit,
        "under_chart_limit": peak <= limit,
        "lists": len(results),
        "lists_complete": len(complete),
        "every_client_saw_every_gpu": not errors and len(complete) == clients * lists,
        "items_per_list": sorted({r["items"] for r in results}),
        "list_seconds_median": statistics.median([r["seconds"] for r in results]) if results else float("nan"),
        "list_seconds_max": max((r["seconds"] for r in results), default=float("nan")),
        "list_alone_seconds": min(alone),
        "refused": refused,
        "listgpus_ok": list_ok,
        "client_errors": errors,
    }


# ---- the run --------------------------------------------------------------------------------------


def run(cfg: dict[str, Any], server_flags: tuple[str, ...]) -> dict[str, Any]:
    failures: list[str] = []
    result: dict[str, Any] = {"config": {**cfg, "server_flags": list(server_flags)},
                              "machine": {**benchmarks.environment(), "grpcio": grpc.__version__},
                              "load_before": load()}
    with temp_socket_dir() as sock_dir:
        progress("starting the device API server (unix socket + loopback TCP)")
        server = SubprocessServer.start(sock_dir, *server_flags, timeout=60, env={"PYTHONSAFEPATH": "1"})
        try:
            result["server_pid"] = server.proc.pid
            result["server_idle_rss_mib"] = proc_status(server.proc.pid, "VmRSS") / 1024
            result["latency"] = latency(server, pairs=cfg["pairs"], warmup=cfg["warmup"], cpu_blocks=cfg["cpu_blocks"],
                                        cpu_block_calls=cfg["cpu_block_calls"], failures=failures)
            result["memory"] = memory(server, gpus=cfg["gpus"], gpu_kib=cfg["gpu_kib"], clients=cfg["clients"],
                                      lists=cfg["lists"], failures=failures)
        finally:
            server.close()
        tracebacks = sum("Traceback" in line for line in server.log)
        if tracebacks:
            failures.append(f"server log has {tracebacks} traceback(s)")
    result["load_after"] = load()
    result["failures"] = failures
    result["ok"] = not failures
    return result


def render(r: dict[str, Any]) -> str:
    m, lat, mem = r["machine"], r["latency"], r["memory"]
    lines = [
        f"node API hardening cost: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, Python {m.get('python', '?')}, "
        f"grpcio {m['grpcio']}; load {r['load_before']} … {r['load_after']}",
        "",
        f"1. unary latency, unix socket (through the relay) vs loopback TCP (no relay) on the same server; "
        f"{lat['pairs']} rounds, calls alternated one by one. Baseline: {lat['baseline']}.",
        "",
        "| call | path | median | p99 | server CPU / call |",
        "|---|---|--:|--:|--:|",
    ]
    names = {"get": "GetGpu (1.1 KiB GPU)", "missing": "GetGpu NOT_FOUND"}
    for case, row in lat["cases"].items():
        for t in ("tcp", "unix"):
            x = row[t]
            lines.append(f"| {names[case] if t == 'tcp' else ''} | {t} | {x['median_us']:.0f} µs | {x['p99_us']:.0f} µs "
                         f"| {x['server_cpu_us_per_call']:.0f} µs |")
        lines.append(f"| | unix/TCP | {row['ratio_median']:.2f}× | {row['ratio_p99']:.2f}× | "
                     f"{row['ratio_server_cpu']:.2f}× |")
    for case, row in lat["cases"].items():
        lines.append(f"- {names[case]}: the relay adds {row['paired_diff_median_us']:.0f} µs per call "
                     "(median of the paired differences)")
    lines += [
        "",
        f"2. memory: {mem['gpus']} GPUs × {mem['object_bytes']} bytes ({mem['store_objects_mib']:.0f} MiB of objects), "
        f"{mem['clients']} clients × {mem['lists_per_client']} list_gpus() at once over the unix socket",
        "",
        "| | MiB |",
        "|---|--:|",
        f"| baseline: RSS right after the fill | {mem['baseline_mib']:.1f} |",
        f"| peak while listing (VmHWM since the fill) | {mem['peak_mib']:.1f} |",
        f"| growth | {mem['growth_mib']:+.1f} ({mem['growth_ratio']:.2f}× the baseline) |",
        f"| chart limit ({mem['chart_limit']}) | {mem['chart_limit_mib']:.0f} (peak = {mem['peak_vs_chart_limit']:.0%}) |",
        "",
        f"- VmHWM {mem['vmhwm_mib']:.1f} MiB, sampled max VmRSS {mem['sampled_max_rss_mib']:.1f} MiB (the peak is the "
        f"larger); peak during the fill {mem['hwm_during_fill_mib']:.1f} MiB; RSS after the lists "
        f"{mem['rss_after_lists_mib']:.1f} MiB",
        f"- {mem['lists_complete']}/{mem['lists']} lists complete (every GPU, whole, at RV {mem['store_rv']}); "
        f"ListGpus refused: {mem['refused']['list_too_large']} too large, {mem['refused']['list_busy']} busy "
        f"(each read through a watch), {mem['listgpus_ok']} answered; one list took "
        f"{mem['list_seconds_median']:.1f} s (median), all {mem['lists_s']:.1f} s; one client alone "
        f"{mem['list_alone_seconds']:.2f} s",
        "",
        "correct: yes" if r["ok"] else "correct: NO: " + "; ".join(r["failures"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the CI smoke configuration: a few calls, 32 GPUs, "
                    "3 clients, --max-list-bytes 1 MiB so the lists still take the watch fallback")
    ap.add_argument("--pairs", type=int, help=f"latency rounds (default {FULL['pairs']})")
    ap.add_argument("--gpus", type=int, help=f"GPUs in the store (default {FULL['gpus']})")
    ap.add_argument("--gpu-kib", type=int, help=f"KiB per GPU object (default {FULL['gpu_kib']})")
    ap.add_argument("--clients", type=int, help=f"concurrent listing clients (default {FULL['clients']})")
    ap.add_argument("--lists", type=int, help=f"list_gpus() calls per client (default {FULL['lists']})")
    ap.add_argument("--server-arg", action="append", default=[], metavar="FLAG",
                    help="extra flag for the server (repeatable; write --server-arg=--max-list-bytes=1048576)")
    ap.add_argument("--json", metavar="OUT", help="write every number as JSON here")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("pairs", "gpus", "gpu_kib", "clients", "lists"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                ap.error(f"--{key.replace('_', '-')} must be at least 1")
            cfg[key] = value
    cfg["quick"] = args.quick
    flags = (QUICK_SERVER_FLAGS if args.quick else ()) + tuple(args.server_arg)
    try:
        result = run(cfg, flags)
    except RuntimeError as exc:  # the server refused its flags or did not start: its log says why
        progress(f"error: {str(exc).strip().splitlines()[-1]}")
        return 2
    print(render(result), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        progress(f"results: {args.json}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
