"""A real CloudEvents sink on loopback for the exporter's tests and benchmark.

A threaded HTTP/1.1 server (keep-alive) that records every binary-mode CloudEvent it accepts (its
ce-* headers and JSON body, in arrival order) and can be told to be down (the port closed and every
open connection cut: connection refused), to answer a status (503, 400, with Retry-After), or to
take `delay` seconds per request (slow).
"""
from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from typing import Any


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sink.lock:
            self.server.sink.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.sink.lock:
            self.server.sink.conns.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        sink = self.server.sink
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if sink.delay:
            time.sleep(sink.delay)
        status, retry_after = sink.answer(self.headers, body)
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], sink: CloudEventSink) -> None:
        self.sink = sink
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (killed, or cut by down()) is what these tests do on purpose


class CloudEventSink:
    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.received: list[dict[str, Any]] = []    # accepted: {"id", "headers", "data"}
        self.attempts = 0                           # every POST, answered 2xx or not
        self.status = 202
        self.retry_after: str | None = None
        self.delay = 0.0
        self.reject: set[str] = set()               # ids answered 400 (a refusal), whatever `status` says
        self.connections_seen: set[tuple[str, int]] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def answer(self, headers: Any, body: bytes) -> tuple[int, str | None]:
        with self.lock:
            self.attempts += 1
            status = 400 if headers.get("ce-id") in self.reject else self.status
            if 200 <= status < 300:
                self.received.append({"id": headers.get("ce-id"),
                                      "headers": {k.lower(): v for k, v in headers.items()},
                                      "data": json.loads(body) if body else None})
            return status, (self.retry_after if status >= 300 else None)

    # -- control ------------------------------------------------------------------------------------------
    def up(self) -> None:
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="cesink")
        self._thread.start()

    def down(self) -> None:
        """Close the port and cut every open connection: senders see connection refused/reset."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = None

    def close(self) -> None:
        self.down()

    # -- reading ------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        with self.lock:
            return [r["id"] for r in self.received]

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received)
