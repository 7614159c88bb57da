#!/usr/bin/env python3
"""Bench-only launcher of the device API server, with an empty unary RPC on the same server.

    python bench/api_server.py [daemon flags...]              the daemon's DeviceApiServer (grpc.aio)
    python bench/api_server.py --threadpool N [--grpc-address A]   a grpc.server thread pool of N
                                                                   workers serving only the empty RPC

The aio mode builds `DeviceApiServer(settings, extra_handlers=[EMPTY])` (with `Burst`, a server
stream of N ready ~1 KiB messages: the grpc.aio floor under a watch stream) from the daemon's own
flags (`python -m nvsentinel.daemons.device_api_server --help`), so UpdateGpuStatus and the empty
RPC are served by one server, one event loop and one port. The thread-pool mode exists to price the
alternative the lead rejected (bench/RESULTS.md, "Device API").

Once listening it prints one JSON line to stdout: {"grpc_port": N, "pid": P}. SIGTERM or SIGINT
stops it (no shutdown delay: this is a bench fixture, not the daemon). With
`NVS_BENCH_PROFILE=FILE` in the environment the aio server runs under cProfile and writes FILE on exit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

#: The empty unary RPC: raw bytes in, b"" out (no (de)serializer, like GpuService's handlers).
EMPTY_SERVICE = "nvsentinel.bench.Bench"
EMPTY_METHOD = f"/{EMPTY_SERVICE}/Empty"


def _announce(port: int) -> None:
    sys.stdout.write(json.dumps({"grpc_port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()


async def _empty_async(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b""


def _empty_sync(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b""


#: What Burst streams: a watch event the size of a realistic one (~1 KiB).
_BURST_MESSAGE = b"\x0a\x08MODIFIED\x12\x8a\x08" + b"\x00" * 1034


async def _burst(request: bytes, context: grpc.aio.ServicerContext):
    """The grpc.aio floor of a watch stream: yield `int(request)` ready messages, no waiting."""
    message = _BURST_MESSAGE
    for _ in range(int(request or b"0")):
        yield message


def empty_handler(fn) -> grpc.GenericRpcHandler:
    handlers = {"Empty": grpc.unary_unary_rpc_method_handler(fn)}
    if asyncio.iscoroutinefunction(fn):
        handlers["Burst"] = grpc.unary_stream_rpc_method_handler(_burst)
    return grpc.method_handlers_generic_handler(EMPTY_SERVICE, handlers)


async def serve_aio(argv: list[str]) -> None:
    from nvsentinel.node.api.config import ENV_PREFIX, DeviceApiSettings
    from nvsentinel.node.api.server import DeviceApiServer
    from nvsentinel.daemons.device_api_server import add_parser_arguments
    from nvsentinel.service.logs import configure_logging
    from nvsentinel.service.settings import resolve

    parser = argparse.ArgumentParser(prog="bench/api_server.py")
    add_parser_arguments(parser)
    settings = resolve(DeviceApiSettings, parser.parse_args(argv), prefix=ENV_PREFIX)
    settings.validate()
    configure_logging(settings.log_format, settings.log_level)
    server = DeviceApiServer(settings, extra_handlers=[empty_handler(_empty_async)])
    await server.start()
    _announce(server.tcp_port or 0)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(delay=0.0, timeout=1.0)


def serve_threadpool(workers: int, address: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers([empty_handler(_empty_sync)])
    port = server.add_insecure_port(address)
    if not port:
        raise SystemExit(f"cannot listen on {address}")
    server.start()
    _announce(port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1.0).wait()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--threadpool"]:
        workers = int(argv[1])
        rest = argparse.ArgumentParser()
        rest.add_argument("--grpc-address", default="127.0.0.1:0")
        serve_threadpool(workers, rest.parse_args(argv[2:]).grpc_address)
    elif os.environ.get("NVS_BENCH_PROFILE"):
        # where the server's time goes: cProfile of the event loop thread, dumped on SIGTERM
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(serve_aio(argv))
        finally:
            profiler.disable()
            profiler.dump_stats(os.environ["NVS_BENCH_PROFILE"])
    else:
        asyncio.run(serve_aio(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
