"""The webhook over HTTPS: AdmissionReview in, the verdict of `policy.admission.review` out; and the node view
(`nodeview.py`), the only way a node's credential reads HealthEvents.

A thread per connection (the API server keeps a few open and calls with a short timeout); the TLS certificate
is re-read when its file changes, so a cert-manager renewal needs no restart. Every request that cannot be
understood is refused with a reason, never admitted: an unchecked node write is what this server exists to stop.
"""
from __future__ import annotations

import datetime as _dt
import http.server
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from nvsentinel.cluster.admission.identity import IdentityUnavailable, NodeResolver
from nvsentinel.cluster.admission.nodeview import PREFIX as NODEVIEW_PREFIX
from nvsentinel.cluster.admission.nodeview import NodeView, encode
from nvsentinel.policy.admission import AdmissionRules, Verdict, review
from nvsentinel.policy.healthevent import PLURAL

__all__ = ["AdmissionServer", "AdmissionMetrics", "PATH", "MAX_BODY"]

logger = logging.getLogger(__name__)

#: The one path the ValidatingWebhookConfiguration calls.
PATH = "/validate"
#: An AdmissionReview of a Node update carries two Nodes; 8 MiB is far above any real one.
MAX_BODY = 8 << 20
#: Seconds a connection may idle or take to send its request.
IO_TIMEOUT = 10.0


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reviews = Counter("nvsentinel_admission_reviews_total", "Admission reviews answered, by resource and "
                               "result (allowed, denied, error) and the rule that denied", ["resource", "result", "rule"],
                               registry=self.registry)
        self.nodeview = Counter("nvsentinel_admission_nodeview_requests_total", "Node view reads, by HTTP status",
                                ["code"], registry=self.registry)
        self.latency = Histogram("nvsentinel_admission_review_seconds", "Time to answer one admission review",
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


class _Certs:
    """An SSLContext rebuilt whenever the certificate or key file changes."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self._lock = threading.Lock()
        self._stamp: tuple[float, float] | None = None
        self._ctx: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        stamp = (os.stat(self.cert).st_mtime, os.stat(self.key).st_mtime)
        with self._lock:
            if self._ctx is None or stamp != self._stamp:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.load_cert_chain(self.cert, self.key)
                if self._ctx is not None:
                    logger.info("webhook certificate reloaded", extra={"kv": {"cert": self.cert}})
                self._ctx, self._stamp = ctx, stamp
            return self._ctx


def _response(uid: Any, verdict: Verdict, api_version: str) -> dict[str, Any]:
    resp: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        resp["status"] = {"code": 403, "reason": "Forbidden",
                          "message": f"nvsentinel admission {verdict.rule}: {verdict.message}"}
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": resp}


class AdmissionServer:
    """`start()` binds (port 0: any free one, see `.port`) or raises OSError; `stop()` closes."""

    def __init__(self, host: str, port: int, cert: str, key: str, rules: AdmissionRules, resolver: NodeResolver,
                 metrics: AdmissionMetrics | None = None,
                 clock: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc),
                 nodeview: NodeView | None = None) -> None:
        self.rules, self.resolver, self.clock, self.nodeview = rules, resolver, clock, nodeview
        self.metrics = metrics or AdmissionMetrics()
        self._certs = _Certs(cert, key)
        self._certs.context()  # a bad certificate is a start-up error, not a failed handshake later
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IO_TIMEOUT

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                if self.path.split("?", 1)[0] != PATH:
                    return self._send(404, b'{"error":"not found"}')
                try:
                    length = int(self.headers.get("Content-Length") or "-1")
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    return self._send(413, b'{"error":"body missing or larger than 8 MiB"}')
                body = self.rfile.read(length)
                status, out = server.answer(body)
                self._send(status, out)

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                if server.nodeview is None or not self.path.startswith(NODEVIEW_PREFIX):
                    return self._send(404, b'{"error":"not found"}')
                answer = server.nodeview.serve("GET", self.path, self.headers.get("Authorization") or "")
                server.metrics.nodeview.labels(str(answer.status)).inc()
                if answer.stream is None:
                    return self._send(answer.status, encode(answer))
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in answer.stream:
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the client went away: the upstream watch is released below
                finally:
                    answer.close()
                    self.close_connection = True

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, addr = super().get_request()
                sock.settimeout(IO_TIMEOUT)
                # the handshake runs in the connection's own thread (do_handshake_on_connect), not the accept loop
                return server._certs.context().wrap_socket(sock, server_side=True), addr

            def handle_error(self, request: Any, client_address: Any) -> None:
                logger.debug("webhook connection failed", extra={"kv": {"peer": str(client_address)[:64]}})

        self._httpd = Server((host, port), Handler, bind_and_activate=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="admission-webhook", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)

    def answer(self, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, body) for one POSTed AdmissionReview."""
        with self.metrics.latency.time():
            try:
                doc = json.loads(body)
                request = doc["request"]
                if not isinstance(request, Mapping):
                    raise TypeError("request is not an object")
                api_version = str(doc.get("apiVersion") or "admission.k8s.io/v1")
            except (ValueError, KeyError, TypeError) as exc:
                self.metrics.reviews.labels("unknown", "error", "").inc()
                return 400, json.dumps({"error": f"not an AdmissionReview: {type(exc).__name__}"}).encode()
            resource = str((request.get("resource") or {}).get("resource") or "")[:64]
            verdict = self._decide(request)
            result = "allowed" if verdict.allowed else ("error" if verdict.rule == "E" else "denied")
            self.metrics.reviews.labels(resource, result, verdict.rule).inc()
            if not verdict.allowed:
                user = str((request.get("userInfo") or {}).get("username") or "")[:128]
                logger.warning("admission denied", extra={"kv": {
                    "rule": verdict.rule, "user": user, "resource": resource,
                    "operation": str(request.get("operation") or "")[:16],
                    "name": str(request.get("name") or "")[:128], "reason": verdict.message[:300]}})
            return 200, json.dumps(_response(request.get("uid"), verdict, api_version)).encode()

    def _decide(self, request: Mapping[str, Any]) -> Verdict:
        user_info = request.get("userInfo") or {}
        user = str(user_info.get("username") or "")
        node: str | None = None
        resource = (request.get("resource") or {}).get("resource")
        if resource == PLURAL and user in self.rules.node_identities:
            try:
                node = self.resolver.node_of(user_info)
            except IdentityUnavailable as exc:
                return Verdict(False, "E", f"cannot tell which node the caller runs on: {exc}")
        sub = request.get("subResource") or ""
        if resource == "nodes" and request.get("operation") == "UPDATE" and (
                (user in self.rules.node_writers and not sub)
                or (sub == "status" and self.rules.condition_writer and user == self.rules.condition_writer)):
            # the Node as stored, read here: kube-apiserver 1.20 sends the updated Node as oldObject too (seen
            # on the test server for PUT and every PATCH type), which would make every change look like none
            obj = request.get("object") or {}
            try:
                live = self.resolver.live_node(str(request.get("name") or ""))
            except IdentityUnavailable as exc:
                return Verdict(False, "E", f"cannot read the Node being changed: {exc}")
            rule = "S4" if sub else "S1"
            if live is None:
                return Verdict(False, rule, "the Node does not exist")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv and rv != (live.get("metadata") or {}).get("resourceVersion"):
                return Verdict(False, rule, "the Node changed while this update was checked: retry")
            request = {**request, "oldObject": live}
        try:
            return review(request, node, self.clock(), self.rules)
        except Exception as exc:  # noqa: BLE001 - a malformed object is refused, never admitted
            logger.exception("admission review failed")
            return Verdict(False, "E", f"cannot check the request: {type(exc).__name__}")
