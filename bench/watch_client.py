#!/usr/bin/env python3
"""Bench-only watch client: N WatchGpus streams from one grpc.aio process, timestamped on receipt.

    python bench/watch_client.py TARGET --watchers N [--since RV] [--connections K] --out FILE

Protocol with the parent (bench/apibench.py):
1. opens N streams (resuming after `--since`, or fresh without it), spread round-robin over K
   HTTP/2 connections (separate subchannels), and prints `ready` once every stream has its
   initial metadata, i.e. is subscribed on the server;
2. records (RV, time.perf_counter()) for every non-BOOKMARK event as it reaches the watcher's
   coroutine. perf_counter is CLOCK_MONOTONIC on Linux, so it compares with the writer's clock in
   another process;
3. reads one line from stdin, the last RV written (or `-1`: stop now), waits until every live
   stream has seen it (at most `--drain` seconds), cancels the streams, and pickles the per-watcher
   arrays, the end status of each stream and its own CPU time to FILE; prints `done`.
"""
from __future__ import annotations

import argparse
import asyncio
import pickle
import resource
import sys
import time
from array import array

import grpc

WATCH = "/nvidia.device.v1alpha1.GpuService/WatchGpus"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def event_rv(msg: bytes) -> tuple[bytes, int]:
    """(type, RV) of a WatchGpusResponse without building protobuf objects.

    The server frames events as {type=1, object=2} around the store's canonical Gpu bytes, whose
    first field is metadata {name=1, resource_version=2}. Anything else goes through protobuf.
    """
    try:
        if msg[0] == 0x0A:
            tlen = msg[1]
            etype = msg[2:2 + tlen]
            pos = 2 + tlen
            if msg[pos] == 0x12:
                _, pos = _varint(msg, pos + 1)
                if msg[pos] == 0x0A:
                    _, pos = _varint(msg, pos + 1)
                    if msg[pos] == 0x0A:
                        nlen, pos = _varint(msg, pos + 1)
                        pos += nlen
                    if msg[pos] == 0x12:
                        rlen, pos = _varint(msg, pos + 1)
                        return etype, int(msg[pos:pos + rlen])
    except (IndexError, ValueError):
        pass
    from nvsentinel._proto import gpu_pb2

    resp = gpu_pb2.WatchGpusResponse.FromString(msg)
    return resp.type.encode(), resp.object.resource_version


def watch_request(since: int | None) -> bytes:
    from nvsentinel._proto import gpu_pb2

    opts = gpu_pb2.ListOptions(resource_version="" if since is None else str(since))
    return gpu_pb2.WatchGpusRequest(opts=opts).SerializeToString()


class Watcher:
    def __init__(self, call) -> None:
        self.call = call
        self.rvs = array("q")
        self.times = array("d")
        self.status = "open"
        self.last = 0
        self.reached = asyncio.Event()
        self.final = None

    async def run(self) -> None:
        rvs, times, clock = self.rvs, self.times, time.perf_counter
        try:
            async for msg in self.call:
                now = clock()
                etype, rv = event_rv(msg)
                if etype == b"BOOKMARK":
                    continue
                rvs.append(rv)
                times.append(now)
                self.last = rv
                if self.final is not None and rv >= self.final:
                    self.reached.set()
            self.status = "ended"
        except asyncio.CancelledError:
            self.status = "cancelled" if self.status == "open" else self.status
        except grpc.aio.AioRpcError as exc:
            self.status = f"{exc.code().name}: {exc.details()}"
        finally:
            self.reached.set()


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--watchers", type=int, required=True)
    ap.add_argument("--since", type=int, default=None)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--drain", type=float, default=10.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--burst", type=int, default=0,
                    help="instead of watching, read N messages from each of --watchers Burst streams")
    args = ap.parse_args(argv)
    if args.burst:
        return await burst(args)

    channels = [
        grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1), ("nvsentinel.bench.conn", k)])
        for k in range(max(1, min(args.connections, args.watchers)))
    ]
    request = watch_request(args.since)
    watchers = []
    for i in range(args.watchers):
        call = channels[i % len(channels)].unary_stream(WATCH)(request)
        watchers.append(Watcher(call))
    await asyncio.gather(*(w.call.initial_metadata() for w in watchers))
    tasks = [asyncio.create_task(w.run()) for w in watchers]
    sys.stdout.write("ready\n")
    sys.stdout.flush()

    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    final = int(line.strip() or "-1")
    drained_at = time.perf_counter()
    if final >= 0:
        for w in watchers:
            w.final = final
            if w.last >= final:
                w.reached.set()
        try:
            await asyncio.wait_for(asyncio.gather(*(w.reached.wait() for w in watchers)), args.drain)
        except asyncio.TimeoutError:
            pass
    drain_s = time.perf_counter() - drained_at
    for w in watchers:
        w.call.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "watchers": [{"rvs": w.rvs, "times": w.times, "status": w.status} for w in watchers],
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "drain_s": drain_s,
        "connections": len(channels),
    }
    with open(args.out, "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.write("done\n")
    sys.stdout.flush()
    return 0


async def burst(args: argparse.Namespace) -> int:
    """Read `--burst` messages from each of `--watchers` concurrent Burst streams (the grpc.aio
    floor, no fan-out); pickle {"messages", "seconds", "cpu_s"}."""
    channels = [grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1), ("nvsentinel.bench.conn", k)])
                for k in range(max(1, min(args.connections, args.watchers)))]
    for ch in channels:
        await ch.channel_ready()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    counts = [0] * args.watchers

    async def one(i: int) -> None:
        call = channels[i % len(channels)].unary_stream("/nvsentinel.bench.Bench/Burst")(str(args.burst).encode())
        async for _ in call:
            counts[i] += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args.watchers)))
    seconds = time.perf_counter() - start
    for ch in channels:
        await ch.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(args.out, "wb") as f:
        pickle.dump({"messages": sum(counts), "seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime}, f)
    sys.stdout.write("done\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
