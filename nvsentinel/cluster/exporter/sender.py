"""One CloudEvent, one HTTP POST in binary content mode (ce-* headers, JSON data as the body).

A pool of keep-alive connections (urllib3, already under the Kubernetes client) sized to the
exporter's concurrency: a send never opens a connection per event. Blocking: the dispatcher calls
it from worker threads.
"""
from __future__ import annotations

import dataclasses
import time
import urllib.parse

import urllib3
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent

from nvsentinel.cluster.exporter.logic import Transition, cloudevent_attributes

__all__ = ["SendResult", "Sender"]


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    status: int | None
    """the HTTP status; None when no response came (refused, reset, timed out)"""
    retry_after: str | None = None
    error: str = ""
    seconds: float = 0.0


class Sender:
    def __init__(self, sink: str, cluster: str, *, connections: int = 16, timeout: float = 10.0,
                 ca_file: str = "") -> None:
        url = urllib.parse.urlsplit(sink)
        self.cluster = cluster
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        kw = {"ca_certs": ca_file} if ca_file and url.scheme == "https" else {}
        self.pool = urllib3.connection_from_url(
            sink, maxsize=connections, block=True, timeout=urllib3.Timeout(total=timeout), retries=False, **kw)

    def encode(self, tr: Transition) -> tuple[dict[str, str], bytes]:
        msg = to_binary_event(CloudEvent(cloudevent_attributes(tr, self.cluster), dict(tr.data)))
        return msg.headers, msg.body

    def send(self, tr: Transition) -> SendResult:
        headers, body = self.encode(tr)
        started = time.perf_counter()
        try:
            resp = self.pool.urlopen("POST", self.path, body=body, headers=headers, retries=False,
                                     preload_content=True, assert_same_host=False)
        except urllib3.exceptions.HTTPError as exc:
            return SendResult(None, error=f"{type(exc).__name__}: {str(exc)[:200]}",
                              seconds=time.perf_counter() - started)
        return SendResult(resp.status, resp.headers.get("Retry-After"), seconds=time.perf_counter() - started)

    def close(self) -> None:
        self.pool.close()
