"""Device API benchmarks (SPEC §9): the gRPC server in a subprocess, clients here and in subprocesses.

Targets: UpdateGpuStatus ≤ 1.5× an empty unary RPC on the same server; watch delivery to 256
watchers at 1 000 updates/s with no lost or reordered event and p99 ≤ 10 ms; server RSS ≤ 100 MB
with 1024 GPUs and 256 watchers. Also measured once, to back design choices: an empty unary RPC on
grpc.aio against a grpc.server thread pool, and a GetGpu response framed around the stored bytes
against parsing and re-serializing them.

Unary cases are timed call by call (pedantic, one call per round; the p99 comes from the rounds),
each on a sync channel with pre-serialized requests, and timed again interleaved call by call
(`extra_info["interleaved"]`), which is the fairer ratio on a machine whose speed drifts. The
watch and RSS cases are one run each: their numbers are in `extra_info["measure"]`, the timing is
the run's wall time. Machinery: bench/apibench.py (server: bench/api_server.py, watchers:
bench/watch_client.py). When pytest is pinned (bench/run), the server gets the other CPUs.

`pytest bench --benchmark-disable` (the CI smoke test) runs every case once in a tiny
configuration (a few calls, 4 watchers at 100/s, 16 GPUs), still checking correctness.
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

import apibench
from nvsentinel import store as store_mod
from nvsentinel._proto import gpu_pb2
from nvsentinel.devtools import benchmarks
from nvsentinel.node.api import wire

ROUNDS = 3000
WARMUP = 300
PAIRS = 2000
QUICK_CALLS = 20
GPUS = 64

TARGET_UPDATE = {"text": "≤ 1.5× empty unary", "kind": "vs_baseline", "value": 1.5, "impls": ["update_status"], "ref": ""}
TARGET_WATCH_P99_MS = 10.0
TARGET_RSS_BYTES = 100_000_000  # 100 MB, read as 10^8 bytes (the stricter reading; 95.4 MiB)

#: Watch runs: (id, watchers, updates/s, seconds, client processes, connections). The first two are
#: the SPEC §9 load (one client process, then split over two); the others show what this machine
#: sustains: the most watchers at 1 000/s, a middle load that meets every criterion, and all 256
#: watchers at a light rate (the latency floor of delivering one update to 256 streams).
WATCH_RUNS = [
    ("256x1000", 256, 1000.0, 3.0, 1, 1),
    ("256x1000-2proc", 256, 1000.0, 3.0, 2, 2),
    ("2x1000", 2, 1000.0, 3.0, 1, 1),
    ("64x100", 64, 100.0, 3.0, 1, 1),
    ("256x10", 256, 10.0, 3.0, 1, 1),
]
QUICK_WATCH = dict(watchers=4, rate=100.0, seconds=0.3)

MEDIANS: dict[tuple[str, str], float] = {}


def _info(benchmark: Any, group: str, impl: str, *, note: str = "", reference: str | None = None,
          target: dict[str, Any] | None = None, ops: int = 1, unit: str = "call") -> None:
    benchmark.group = group
    benchmark.extra_info.update(
        case=group, impl=impl, ops=ops, unit=unit, note=note, reference=reference,
        target=target if target and impl in target["impls"] else None,
        grpcio=grpc.__version__, load=apibench.load(),
        server_cpus=sorted(apibench.server_cpus() or []) or "unpinned",
    )


def _p99(benchmark: Any, ops: int = 1) -> None:
    """Record the p99 per operation from the rounds (pedantic: one call per round)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return
    data = sorted(stats.stats.data)
    benchmark.extra_info["p99_ns"] = apibench.percentile(data, 99) / ops * 1e9
    MEDIANS[(benchmark.group, benchmark.extra_info["impl"])] = stats.stats.median / ops


def _time_calls(benchmark: Any, call: Callable[[], Any]) -> None:
    benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    if benchmark.disabled:
        for _ in range(QUICK_CALLS):
            call()
    _p99(benchmark)


def _ratio_line(group: str, impl: str, ref: str, interleaved: dict[str, float] | None) -> str:
    a, b = MEDIANS.get((group, impl)), MEDIANS.get((group, ref))
    text = f"\n[{group}]"
    if a and b:
        text += f" {impl} {a * 1e6:.1f} µs, {ref} {b * 1e6:.1f} µs: {impl}/{ref} {a / b:.2f}x (sequential)"
    if interleaved:
        text += (f"; interleaved {interleaved[impl] * 1e6:.1f} / {interleaved[ref] * 1e6:.1f} µs = "
                 f"{interleaved['ratio']:.2f}x")
    return text


def _interleaved(calls: dict[str, Callable[[], Any]], pairs: int) -> dict[str, float]:
    times = apibench.interleaved(list(calls.values()), pairs)
    out = {name: sorted(t)[len(t) // 2] for name, t in zip(calls, times)}
    a, b = list(calls)
    out["ratio"] = out[a] / out[b]
    out["pairs"] = pairs
    return out


# ---- servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aio_server() -> Iterator[tuple[apibench.ServerProc, apibench.RawClient, list[bytes]]]:
    """The daemon's DeviceApiServer (grpc.aio) with the empty RPC, holding 64 realistic GPUs."""
    with apibench.ServerProc.start() as server, apibench.RawClient(server.target) as client:
        client.fill(GPUS)
        yield server, client, apibench.status_requests(GPUS)


@pytest.fixture(scope="module")
def threadpool_server() -> Iterator[tuple[apibench.ServerProc, apibench.RawClient]]:
    """grpc.server on a 16-thread pool serving only the empty RPC."""
    with apibench.ServerProc.start(threadpool=16) as server, apibench.RawClient(server.target) as client:
        yield server, client


# ---- UpdateGpuStatus against an empty unary RPC on the same server ---------------------------------


@pytest.mark.parametrize("impl", ["empty", "update_status"])
def test_update_status_vs_empty(benchmark, capsys, aio_server, impl):
    """Time one UpdateGpuStatus (eight conditions, ~0.95 KiB, unconditional) and one empty unary
    RPC on the same grpc.aio server, call by call; the RV must rise by one per update."""
    server, client, requests = aio_server
    group = "api.update_status"
    _info(benchmark, group, impl, reference="empty",
          note="empty unary RPC, same server" if impl == "empty" else "",
          target=TARGET_UPDATE)
    responses: list[bytes] = []
    append = responses.append
    if impl == "empty":
        empty = client.empty

        def call() -> None:
            append(empty(b""))

        _time_calls(benchmark, call)
        correct = bool(responses) and all(r == b"" for r in responses)
    else:
        update, reqs = client.update_status, collections.deque(requests)
        rotate = reqs.rotate

        def call() -> None:
            append(update(reqs[0]))
            rotate(-1)

        _time_calls(benchmark, call)
        rvs = apibench.response_rvs(responses)
        correct = bool(rvs) and apibench.consecutive(rvs)
        pairs = QUICK_CALLS if benchmark.disabled else PAIRS
        more: list[bytes] = []
        updates = iter(requests * (pairs // len(requests) + 1))
        inter = _interleaved({"update_status": lambda: more.append(update(next(updates))),
                              "empty": lambda: client.empty(b"")}, pairs)
        rvs2 = apibench.response_rvs(more)
        correct = correct and apibench.consecutive(rvs + rvs2)
        benchmark.extra_info["interleaved"] = inter
        with capsys.disabled():
            print(_ratio_line(group, "update_status", "empty", inter))
    benchmark.extra_info["correct"] = correct
    assert correct, f"{group} [{impl}]: RVs did not rise by one per call"


# ---- the server choice: grpc.aio against a thread pool ------------------------------------------------


@pytest.mark.parametrize("impl", ["threadpool", "aio"])
def test_empty_unary_aio_vs_threadpool(benchmark, capsys, aio_server, threadpool_server, impl):
    """Time an empty unary RPC from one sync client on grpc.aio (the DeviceApiServer) and on a
    grpc.server with a 16-thread pool, call by call."""
    group = "api.empty_unary"
    _info(benchmark, group, impl, reference="threadpool",
          note="grpc.server, 16-thread pool" if impl == "threadpool" else "grpc.aio, DeviceApiServer")
    client = aio_server[1] if impl == "aio" else threadpool_server[1]
    responses: list[bytes] = []
    append, empty = responses.append, client.empty

    def call() -> None:
        append(empty(b""))

    _time_calls(benchmark, call)
    correct = bool(responses) and all(r == b"" for r in responses)
    if impl == "aio":
        pairs = QUICK_CALLS if benchmark.disabled else PAIRS
        inter = _interleaved({"aio": lambda: aio_server[1].empty(b""),
                              "threadpool": lambda: threadpool_server[1].empty(b"")}, pairs)
        inter["threadpool_threads"] = apibench.threads(threadpool_server[0].pid)
        inter["aio_threads"] = apibench.threads(aio_server[0].pid)
        benchmark.extra_info["interleaved"] = inter
        with capsys.disabled():
            print(_ratio_line(group, "aio", "threadpool", inter))
    benchmark.extra_info["correct"] = correct
    assert correct


# ---- GetGpu's response: stored bytes against parse + re-serialize ------------------------------------


@pytest.fixture(scope="module")
def stored_records() -> list[Any]:
    store = store_mod.GpuStore()
    for i in range(benchmarks.FLEET):
        store.create(benchmarks.gpu_object(i, unhealthy=i % 8 == 0).SerializeToString())
    return list(store.list()[1])


@pytest.mark.parametrize("impl", ["stored", "reserialize", "cached_message"])
def test_get_response(benchmark, capsys, frozen_gc, stored_records, impl):
    """Build GetGpuResponse bytes for each of 1024 stored GPUs (in process, no gRPC):
    `stored` frames the store's bytes (what the server does); `reserialize` parses them into a
    gpu_pb2.Gpu and serializes a GetGpuResponse; `cached_message` keeps parsed Gpu messages and
    serializes a GetGpuResponse around one (the copy included)."""
    group = "api.get_response"
    ops = len(stored_records)
    notes = {"stored": "wire.gpu_response(record.data)", "reserialize": "Gpu.FromString + SerializeToString",
             "cached_message": "GetGpuResponse(gpu=cached Gpu).SerializeToString"}
    _info(benchmark, group, impl, reference="stored", note=notes[impl], ops=ops, unit="response")
    if impl == "stored":
        args = [r.data for r in stored_records]
        fn = wire.gpu_response
    elif impl == "reserialize":
        args = [r.data for r in stored_records]
        Gpu, Resp = gpu_pb2.Gpu, gpu_pb2.GetGpuResponse

        def fn(data: bytes) -> bytes:
            return Resp(gpu=Gpu.FromString(data)).SerializeToString()
    else:
        args = [gpu_pb2.Gpu.FromString(r.data) for r in stored_records]
        Resp = gpu_pb2.GetGpuResponse

        def fn(msg: Any) -> bytes:
            return Resp(gpu=msg).SerializeToString()

    frozen_gc()

    def batch() -> list[bytes]:
        return list(map(fn, args))

    out = benchmark(batch)
    _p99(benchmark, ops)
    expected = [gpu_pb2.GetGpuResponse(gpu=gpu_pb2.Gpu.FromString(r.data)) for r in stored_records]
    correct = len(out) == ops and all(gpu_pb2.GetGpuResponse.FromString(b) == e for b, e in zip(out, expected))
    benchmark.extra_info["correct"] = correct
    if impl == "cached_message":
        with capsys.disabled():
            base = MEDIANS.get((group, "stored"))
            rows = [f"{k} {MEDIANS[(group, k)] * 1e9:.0f} ns ({MEDIANS[(group, k)] / base:.1f}x)"
                    for k in ("stored", "reserialize", "cached_message") if (group, k) in MEDIANS and base]
            print(f"\n[{group}] per response: " + ", ".join(rows))
    assert correct


# ---- watch delivery latency ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("run", WATCH_RUNS, ids=[r[0] for r in WATCH_RUNS])
def test_watch_latency(benchmark, capsys, run):
    """One run: a server subprocess with 64 GPUs, `watchers` WatchGpus streams (resumed after the
    current RV) in one or two grpc.aio client processes, a paced closed-loop writer here issuing
    UpdateGpuStatus; latency = receive time in the watcher − send time of that RV's write."""
    run_id, watchers, rate, seconds, processes, connections = run
    quick = bool(benchmark.disabled)
    cfg = dict(QUICK_WATCH) if quick else dict(watchers=watchers, rate=rate, seconds=seconds)
    cfg.update(processes=processes, connections=connections)
    group = f"api.watch[{run_id}]"
    is_target = watchers == 256 and rate == 1000.0
    _info(benchmark, group, "aio", unit="run")
    result: dict[str, Any] = {}

    def once() -> None:
        result.update(apibench.watch_run(**cfg))

    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    summary = apibench.watch_summary(result)
    # every run is judged by the SPEC criteria; only the 256 × 1 000/s runs are the SPEC load
    met = (result["ok"] and result["p99_ms"] <= TARGET_WATCH_P99_MS
           and result["achieved_rate"] >= 0.95 * cfg["rate"])
    # correct: whatever was written reached every watcher that was not evicted, in order, once
    correct = result["writes_consecutive"] and result["reordered"] == 0 and (
        result["lost"] == 0 or result["evicted"] > 0)
    benchmark.extra_info.update(
        measure=result,
        configuration=(f"{cfg['watchers']} watchers, {cfg['rate']:g} updates/s for {cfg['seconds']:g} s, "
                       f"{processes} client process{'es' if processes > 1 else ''}, "
                       f"{result['connections']} connection{'s' if result['connections'] > 1 else ''}"),
        result=apibench.watch_brief(result),
        summary=summary,
        target={"text": ("SPEC: " if is_target else "same criteria, lighter load: ")
                + "rate held, no loss, no reorder, p99 ≤ 10 ms"},
        measured=(f"{result['achieved_rate']:.0f}/s, p99 {result['p99_ms']:.1f} ms, lost {result['lost']}, "
                  f"reordered {result['reordered']}, evicted {result['evicted']}"),
        met=met,
        correct=correct,
    )
    with capsys.disabled():
        print(f"\n[{group}] {summary}")
    assert correct, f"{group}: {summary}"


@pytest.mark.slow
def test_stream_floor(benchmark, capsys):
    """Where a watch event's time goes, part one: the grpc.aio floor. 256 concurrent server streams
    (a bench RPC on the same server) each yield 400 ready ~1 KiB messages, no fan-out, no waiting;
    one grpc.aio client process reads them all. Server CPU per message is the least any watch
    event can cost on this server, whatever the servicer does."""
    quick = bool(benchmark.disabled)
    cfg = dict(streams=4, messages=50) if quick else dict(streams=256, messages=400)
    group = "api.stream_floor"
    _info(benchmark, group, "aio", unit="run")
    result: dict[str, Any] = {}

    def once() -> None:
        result.update(apibench.burst_run(**cfg))

    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    summary = apibench.burst_summary(result)
    benchmark.extra_info.update(
        measure=result,
        configuration=f"{cfg['streams']} streams × {cfg['messages']} messages, 1 client process, 1 connection",
        result=(f"{result['msgs_per_s']:,.0f} messages/s; server {result['server_us_per_msg']:.1f} µs CPU per message "
                f"({result['server_cpu_share']:.0%} of a core), client {result['client_us_per_msg']:.1f} µs"),
        summary=summary,
        target=None,
        measured="",
        met=None,
        correct=result["messages"] == result["expected"],
    )
    with capsys.disabled():
        print(f"\n[{group}] {summary}")
    assert result["messages"] == result["expected"], summary


# ---- server memory -------------------------------------------------------------------------------


@pytest.mark.slow
def test_server_rss(benchmark, capsys):
    """VmRSS of the server subprocess: idle, with 1024 realistic GPUs, with 256 watches open
    (resumed after the current RV), and after 200 updates delivered to every watcher."""
    quick = bool(benchmark.disabled)
    cfg = dict(gpus=16, watchers=4, updates=10) if quick else dict(gpus=1024, watchers=256, updates=200)
    group = "api.rss"
    _info(benchmark, group, "aio", unit="run")
    result: dict[str, Any] = {}

    def once() -> None:
        result.update(apibench.rss_run(**cfg))

    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    summary = apibench.rss_summary(result)
    worst = max(result["watching_mib"], result["after_updates_mib"]) * 2**20
    is_target = cfg["gpus"] == 1024 and cfg["watchers"] == 256
    benchmark.extra_info.update(
        measure=result,
        configuration=f"{cfg['gpus']} GPUs, {cfg['watchers']} watchers, {cfg['updates']} updates",
        result=summary,
        target={"text": "≤ 100 MB RSS (1024 GPUs + 256 watchers)"} if is_target else None,
        measured=f"{worst / 1e6:.1f} MB ({worst / 2**20:.1f} MiB)",
        met=(worst <= TARGET_RSS_BYTES) if is_target else None,
        correct=result["delivered"],
    )
    with capsys.disabled():
        print(f"\n[{group}] {summary}")
    assert result["delivered"], f"{group}: not every watcher got every update: {summary}"
