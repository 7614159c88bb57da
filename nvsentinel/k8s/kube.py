"""One Kubernetes client for nvsentinel: the official `kubernetes` client's transport, dict JSON.

Why not the generated API classes: the controllers work on plain JSON (their models are ours,
`nvsentinel.policy.healthevent`), need merge patches on any resource, custom resources and raw watch
streams with bookmarks, and must put every call behind one rate limiter. The official client still
does what it is good at: kubeconfig/in-cluster loading, TLS, auth (tokens, exec plugins, certs).

`Kube` is synchronous (thread-safe; the publisher uses it from its threads); `AsyncKube` runs the
same calls in anyio worker threads. Errors are mapped once, here, to `nvsentinel.k8s.errors`.

Flow control: a server with API Priority and Fairness (on by default since Kubernetes 1.20) says so
in every response (`X-Kubernetes-PF-FlowSchema-UID`); it queues and sheds load itself and answers
429 with `Retry-After` when a flow must wait. There, the client-side token bucket is the wrong brake
(a guess at the server's capacity, applied before the server is even asked), so it becomes a
ceiling (`FlowControl.max_qps`), and 429s are retried after the server's `Retry-After`. A server
without APF gets client-go's token bucket (`qps`, `burst`).

Lanes: `AsyncKube.lane(name)` gives a stage its own bucket and its own worker threads on the shared
connection pool, so a stage that waits for tokens or threads never makes another one wait (the
cordon never queues behind evictions or Kubernetes Events). A lane waits for its token on the event
loop, not in a thread.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anyio
import anyio.to_thread
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from nvsentinel.k8s.errors import KubeError, ServerUnavailable, TooManyRequests, error_from_response
from nvsentinel.k8s.resources import Resource

logger = logging.getLogger(__name__)

__all__ = ["RateLimiter", "FlowControl", "LaneStats", "Kube", "AsyncKube", "WatchStream", "load_api_client"]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
_PATCH_TYPES = {"merge": MERGE_PATCH, "json": JSON_PATCH, "strategic": STRATEGIC_PATCH}


class RateLimiter:
    """Token bucket (client-go's QPS/burst): `reserve()` books a token and says how long to wait.

    qps <= 0 means unlimited. Thread-safe; waiting is the caller's (sleep or anyio.sleep).
    """

    def __init__(self, qps: float, burst: int) -> None:
        if qps > 0 and burst < 1:
            raise ValueError("burst must be >= 1")
        self.qps = float(qps)
        self.burst = int(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            if self._tokens >= 0:
                return 0.0
            return -self._tokens / self.qps


#: Response headers an API server with API Priority and Fairness sets on every request it classifies.
APF_HEADERS = ("X-Kubernetes-PF-FlowSchema-UID", "X-Kubernetes-PF-PriorityLevel-UID")
FLOW_CONTROL_MODES = ("auto", "client", "server")
#: 429s retried per request (client-go's default), each after the server's Retry-After.
MAX_429_RETRIES = 10
#: Cap on one Retry-After wait (a misbehaving proxy must not park a stage for an hour).
MAX_RETRY_AFTER = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class FlowControl:
    """Who brakes: `client` (a token bucket of `qps`/`burst`), `server` (APF; `max_qps` is only a
    ceiling, 0 = none) or `auto` (server once a response carries the APF headers, client before)."""

    mode: str = "auto"
    qps: float = 50.0
    burst: int = 100
    max_qps: float = 500.0

    def __post_init__(self) -> None:
        if self.mode not in FLOW_CONTROL_MODES:
            raise ValueError(f"flow control must be one of {', '.join(FLOW_CONTROL_MODES)}, got {self.mode!r}")
        if self.qps < 0 or self.burst < 1 or self.max_qps < 0:
            raise ValueError("need qps >= 0, burst >= 1, max_qps >= 0")

    def limiters(self) -> tuple[RateLimiter, RateLimiter]:
        """(the bucket without APF, the ceiling with it), fresh for one lane."""
        return RateLimiter(self.qps, self.burst), RateLimiter(self.max_qps, max(1, int(self.max_qps)))


class LaneStats:
    """What one lane did, for metrics (plain counters; read by a collector at scrape time)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}   # (verb, code class or code) → count
        self.throttled_seconds = 0.0                     # waited for the client-side limit
        self.retried_429 = 0

    def count(self, verb: str, code: str) -> None:
        key = (verb, code)
        self.requests[key] = self.requests.get(key, 0) + 1


def _retry_after(exc: TooManyRequests, path: str, attempt: int) -> float | None:
    """Seconds to wait before retrying a 429, or None when it must go to the caller.

    An eviction's 429 is a PodDisruptionBudget's answer (the drain decides what to do), not load.
    """
    if path.endswith("/eviction") or attempt >= MAX_429_RETRIES:
        return None
    return min(MAX_RETRY_AFTER, exc.retry_after if exc.retry_after and exc.retry_after > 0 else 1.0)


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> k8s_client.ApiClient:
    """kubeconfig (flag, else $KUBECONFIG, else ~/.kube/config); in a pod without one, in-cluster."""
    cfg = k8s_client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or ""
    default_path = os.path.expanduser("~/.kube/config")
    if not path and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.path.exists(default_path):
        k8s_config.load_incluster_config(client_configuration=cfg)
    else:
        path = path or default_path
        if not os.path.exists(path):
            raise FileNotFoundError(f"no kubeconfig at {path} (set --kubeconfig or KUBECONFIG)")
        k8s_config.load_kube_config(config_file=path, context=context, client_configuration=cfg,
                                    persist_config=False)
    cfg.retries = False  # our callers retry with backoff; a hidden retry loop would hide outages
    # urllib3 keeps 5 × CPUs idle connections by default: a controller with 16 workers and its watch
    # streams overflowed it and paid a TLS handshake for each discarded connection (bench/RESULTS.md)
    cfg.connection_pool_maxsize = 64
    return k8s_client.ApiClient(cfg)


def _list_query(label_selector: str | None, field_selector: str | None, limit: int,
                cont: str | None) -> dict[str, Any]:
    return {"labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit, "continue": cont}


def _take_page(out: Mapping[str, Any], res: Resource, items: list[dict[str, Any]],
               transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> tuple[str | None, str]:
    """Append one list page's items (typed: a list response omits each item's kind); (continue, RV)."""
    for it in out.get("items") or ():
        it.setdefault("apiVersion", res.api_version)
        it.setdefault("kind", res.kind)
        items.append(transform(it) if transform is not None else it)
    meta = out.get("metadata") or {}
    return meta.get("continue") or None, str(meta.get("resourceVersion", ""))


def _delete_options(grace_period_seconds: int | None, uid: str | None, propagation: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
    if grace_period_seconds is not None:
        body["gracePeriodSeconds"] = grace_period_seconds
    if uid:
        body["preconditions"] = {"uid": uid}
    if propagation:
        body["propagationPolicy"] = propagation
    return body


class WatchStream:
    """One watch response: iterate for `(type, object)`; `close()` from any thread stops it."""

    def __init__(self, response: Any) -> None:
        self._resp = response
        self._closed = False

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        buf = b""
        try:
            for chunk in self._resp.stream(65536, decode_content=True):
                if b"\n" not in chunk:
                    buf += chunk
                    continue
                lines = (buf + chunk).split(b"\n")  # one split per chunk: a burst is many lines per read
                buf = lines.pop()
                for line in lines:
                    if line.strip():
                        ev = json.loads(line)
                        yield str(ev.get("type", "")), ev.get("object") or {}
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if not self._closed:
                raise ServerUnavailable(f"watch stream broken: {exc}") from exc
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._resp.shutdown()
        except Exception:  # noqa: BLE001 - best effort on an already-dead socket
            pass
        try:
            self._resp.release_conn()
        except Exception:  # noqa: BLE001
            pass


class Kube:
    """Synchronous, rate-limited Kubernetes client on dict JSON."""

    def __init__(self, api_client: k8s_client.ApiClient, *, qps: float = 50.0, burst: int = 100,
                 timeout: float = 30.0, flow_control: FlowControl | None = None) -> None:
        self.api_client = api_client
        self.flow = flow_control or FlowControl("client", qps, burst)
        self.limiter, self.ceiling = self.flow.limiters()
        self.timeout = timeout
        self.server_flow_control = self.flow.mode == "server"
        """True once the server is known to do API Priority and Fairness (the bucket is then only a ceiling)."""

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None, **kw: Any) -> Kube:
        return cls(load_api_client(kubeconfig, context), **kw)

    def via(self, host: str, ca_file: str) -> Kube:
        """The same credential (token refresh included) sent to another endpoint that serves part of the API:
        the remediation agent reads its node's HealthEvents through the node view (docs/security.md)."""
        cfg = copy.copy(self.api_client.configuration)
        base = host.rstrip("/")
        reload = cfg.refresh_api_key_hook

        def refresh(c: Any) -> None:
            # the kubeconfig and in-cluster loaders' hook re-reads the token and re-sets every field (the host,
            # the CA, and the hook itself): keep the token, put the endpoint and this hook back
            nonlocal reload
            if reload is not None:
                reload(c)
            if c.refresh_api_key_hook is not refresh:
                reload, c.refresh_api_key_hook = c.refresh_api_key_hook, refresh
            c.host, c.ssl_ca_cert, c.verify_ssl = base, ca_file, True

        cfg.refresh_api_key_hook = refresh
        cfg.host, cfg.ssl_ca_cert, cfg.verify_ssl = base, ca_file, True
        return Kube(k8s_client.ApiClient(cfg), flow_control=self.flow, timeout=self.timeout)

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    def close(self) -> None:
        self.api_client.close()

    # -- transport ---------------------------------------------------------------------------------
    def active_limiter(self, bucket: RateLimiter, ceiling: RateLimiter) -> RateLimiter:
        """Of a lane's two limiters, the one that applies now."""
        return ceiling if self.server_flow_control else bucket

    def _wait_token(self) -> None:
        delay = self.active_limiter(self.limiter, self.ceiling).reserve()
        if delay > 0:
            time.sleep(delay)

    def _saw_headers(self, headers: Any) -> None:
        if self.server_flow_control or self.flow.mode != "auto" or headers is None:
            return
        if any(headers.get(h) for h in APF_HEADERS):
            self.server_flow_control = True
            logger.info("server has API Priority and Fairness: the client-side rate limit is now a ceiling",
                        extra={"kv": {"server": self.host, "max_qps": self.flow.max_qps or "none"}})

    def raw(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
            content_type: str = JSON, timeout: float | tuple[float, float] | None = None,
            stream: bool = False) -> Any:
        """One unthrottled request; returns the urllib3 response (stream) or the decoded JSON."""
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        q = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items() if v is not None]
        try:
            m, url, hdrs, b, post = self.api_client.param_serialize(
                method=method, resource_path=path, query_params=q, header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )
            resp = self.api_client.call_api(m, url, header_params=hdrs, body=b, post_params=post,
                                            _request_timeout=timeout if timeout is not None else self.timeout)
        except k8s_client.ApiException as exc:  # raised by the transport for some failures
            raise error_from_response(exc.status or 0, exc.body, exc.headers) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServerUnavailable(f"{method} {path}: {exc}") from None
        self._saw_headers(resp.headers)
        if resp.status >= 400:
            try:
                data = resp.read()
            except (urllib3.exceptions.HTTPError, OSError):
                data = b""
            raise error_from_response(resp.status, data, resp.headers)
        if stream:
            return resp.response
        try:
            data = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServerUnavailable(f"{method} {path}: {exc}") from None
        return json.loads(data) if data else {}

    def request(self, method: str, path: str, **kw: Any) -> Any:
        attempt = 0
        while True:
            self._wait_token()
            try:
                return self.raw(method, path, **kw)
            except TooManyRequests as exc:
                wait = _retry_after(exc, path, attempt)
                if wait is None:
                    raise
            attempt += 1
            time.sleep(wait)

    # -- verbs -------------------------------------------------------------------------------------
    def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.request("GET", res.path(name, namespace))

    def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None, limit: int = 500) -> tuple[list[dict[str, Any]], str]:
        """All items (paginated with `continue`) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            out = self.request("GET", res.path(None, namespace), query=_list_query(label_selector, field_selector,
                                                                                   limit, cont))
            cont, rv = _take_page(out, res, items)
            if not cont:
                return items, rv

    def create(self, res: Resource, body: Mapping[str, Any], namespace: str | None = None, *,
               dry_run: bool = False, subresource_of: str | None = None, subresource: str | None = None
               ) -> dict[str, Any]:
        path = res.path(subresource_of, namespace, subresource) if subresource_of else res.path(None, namespace)
        return self.request("POST", path, body=dict(body), query={"dryRun": "All" if dry_run else None})

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              subresource: str | None = None, kind: str = "merge", dry_run: bool = False) -> dict[str, Any]:
        return self.request("PATCH", res.path(name, namespace, subresource), body=patch,
                            content_type=_PATCH_TYPES[kind], query={"dryRun": "All" if dry_run else None})

    def replace(self, res: Resource, name: str, body: Mapping[str, Any], namespace: str | None = None, *,
                subresource: str | None = None) -> dict[str, Any]:
        return self.request("PUT", res.path(name, namespace, subresource), body=dict(body))

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               grace_period_seconds: int | None = None, uid: str | None = None,
               propagation: str | None = None) -> dict[str, Any]:
        return self.request("DELETE", res.path(name, namespace),
                            body=_delete_options(grace_period_seconds, uid, propagation))

    def watch(self, res: Resource, *, resource_version: str, namespace: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              timeout_seconds: int = 300, bookmarks: bool = True) -> WatchStream:
        """A watch from `resource_version`; the server ends it after `timeout_seconds`."""
        self._wait_token()
        resp = self.raw("GET", res.path(None, namespace), stream=True, timeout=(10.0, timeout_seconds + 30.0), query={
            "watch": True, "resourceVersion": resource_version, "allowWatchBookmarks": bookmarks or None,
            "timeoutSeconds": timeout_seconds, "labelSelector": label_selector, "fieldSelector": field_selector})
        return WatchStream(resp)


class AsyncKube:
    """`Kube` for anyio code: the same verbs as coroutines, each request run in a worker thread.

    A lane (`lane()`) has its own token bucket (or APF ceiling) and its own thread budget over the
    shared connection pool; the token is awaited on the event loop. 429s are retried after the
    server's Retry-After, asleep on the event loop too.
    """

    def __init__(self, kube: Kube, *, name: str = "default", threads: int = 32) -> None:
        self.sync = kube
        self.name = name
        self._bucket, self._ceiling = kube.flow.limiters()
        self._threads = anyio.CapacityLimiter(threads) if threads > 0 else None
        self._thread_budget = threads
        self.stats = LaneStats()
        self.lanes: dict[str, AsyncKube] = {name: self}

    def lane(self, name: str, *, threads: int | None = None) -> AsyncKube:
        """The lane `name` (made on first use, then shared): own bucket, own threads, same connections."""
        got = self.lanes.get(name)
        if got is None:
            got = AsyncKube(self.sync, name=name, threads=self._thread_budget if threads is None else threads)
            got.lanes = self.lanes
            self.lanes[name] = got
        return got

    async def _token(self) -> None:
        delay = self.sync.active_limiter(self._bucket, self._ceiling).reserve()
        if delay > 0:
            self.stats.throttled_seconds += delay
            await anyio.sleep(delay)

    async def run_sync(self, fn: Any, *args: Any, abandon_on_cancel: bool = False) -> Any:
        """`fn(*args)` in one of this lane's worker threads."""
        if self._threads is None:
            return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel)
        return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel, limiter=self._threads)

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        attempt = 0
        while True:
            await self._token()
            try:
                out = await self.run_sync(lambda: self.sync.raw(method, path, **kw))
            except TooManyRequests as exc:
                self.stats.count(method, "429")
                wait = _retry_after(exc, path, attempt)
                if wait is None:
                    raise
                self.stats.retried_429 += 1
                attempt += 1
                await anyio.sleep(wait)
                continue
            except KubeError as exc:
                self.stats.count(method, str(exc.status or "error"))
                raise
            self.stats.count(method, "2xx")
            return out

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.request("GET", res.path(name, namespace))

    async def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                   field_selector: str | None = None, limit: int = 500,
                   transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                   ) -> tuple[list[dict[str, Any]], str]:
        """All items and the list's resourceVersion; `transform` is applied page by page (an informer's
        cache shape), so a list of 20 000 pods never holds them all whole at once."""
        items: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            out = await self.request("GET", res.path(None, namespace),
                                     query=_list_query(label_selector, field_selector, limit, cont))
            cont, rv = _take_page(out, res, items, transform)
            if not cont:
                return items, rv

    async def create(self, res: Resource, body: Mapping[str, Any], namespace: str | None = None, *,
                     dry_run: bool = False, subresource_of: str | None = None, subresource: str | None = None
                     ) -> dict[str, Any]:
        path = res.path(subresource_of, namespace, subresource) if subresource_of else res.path(None, namespace)
        return await self.request("POST", path, body=dict(body), query={"dryRun": "All" if dry_run else None})

    async def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
                    subresource: str | None = None, kind: str = "merge", dry_run: bool = False) -> dict[str, Any]:
        return await self.request("PATCH", res.path(name, namespace, subresource), body=patch,
                                  content_type=_PATCH_TYPES[kind], query={"dryRun": "All" if dry_run else None})

    async def replace(self, res: Resource, name: str, body: Mapping[str, Any], namespace: str | None = None, *,
                      subresource: str | None = None) -> dict[str, Any]:
        return await self.request("PUT", res.path(name, namespace, subresource), body=dict(body))

    async def delete(self, res: Resource, name: str, namespace: str | None = None, *,
                     grace_period_seconds: int | None = None, uid: str | None = None,
                     propagation: str | None = None) -> dict[str, Any]:
        return await self.request("DELETE", res.path(name, namespace),
                                  body=_delete_options(grace_period_seconds, uid, propagation))
