"""One Kubernetes client for nvsentinel: the official `kubernetes` client's transport, dict JSON.

Why not the generated API classes: the controllers work on plain JSON (their models are ours,
`nvsentinel.policy.healthevent`), need merge patches on any resource, custom resources and raw watch
streams with bookmarks, and must put every call behind one rate limiter. The official client still
does what it is good at: kubeconfig/in-cluster loading, TLS, auth (tokens, exec plugins, certs).

`Kube` is synchronous (thread-safe; the publisher uses it from its threads); `AsyncKube` runs the
same calls in anyio worker threads. Every request, from either, takes a token from one bucket.
Errors are mapped once, here, to `nvsentinel.k8s.errors`.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import anyio.to_thread
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from nvsentinel.k8s.errors import ServerUnavailable, error_from_response
from nvsentinel.k8s.resources import Resource

logger = logging.getLogger(__name__)

__all__ = ["RateLimiter", "Kube", "AsyncKube", "WatchStream", "load_api_client"]

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


class WatchStream:
    """One watch response: iterate for `(type, object)`; `close()` from any thread stops it."""

    def __init__(self, response: Any) -> None:
        self._resp = response
        self._closed = False

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        buf = b""
        try:
            for chunk in self._resp.stream(65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
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
                 timeout: float = 30.0) -> None:
        self.api_client = api_client
        self.limiter = RateLimiter(qps, burst)
        self.timeout = timeout

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None, **kw: Any) -> Kube:
        return cls(load_api_client(kubeconfig, context), **kw)

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    def close(self) -> None:
        self.api_client.close()

    # -- transport ---------------------------------------------------------------------------------
    def _wait_token(self) -> None:
        delay = self.limiter.reserve()
        if delay > 0:
            time.sleep(delay)

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
        self._wait_token()
        return self.raw(method, path, **kw)

    # -- verbs -------------------------------------------------------------------------------------
    def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.request("GET", res.path(name, namespace))

    def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None, limit: int = 500) -> tuple[list[dict[str, Any]], str]:
        """All items (paginated with `continue`) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            out = self.request("GET", res.path(None, namespace), query={
                "labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit,
                "continue": cont})
            for it in out.get("items") or ():
                it.setdefault("apiVersion", res.api_version)
                it.setdefault("kind", res.kind)
                items.append(it)
            meta = out.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                return items, str(meta.get("resourceVersion", ""))

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
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if uid:
            body["preconditions"] = {"uid": uid}
        if propagation:
            body["propagationPolicy"] = propagation
        return self.request("DELETE", res.path(name, namespace), body=body)

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
    """`Kube` for anyio code: the same verbs as coroutines (each call runs in a worker thread)."""

    def __init__(self, kube: Kube) -> None:
        self.sync = kube

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: self.sync.request(method, path, **kw))

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(lambda: self.sync.get(res, name, namespace))

    async def list(self, res: Resource, namespace: str | None = None, **kw: Any) -> tuple[list[dict[str, Any]], str]:
        return await anyio.to_thread.run_sync(lambda: self.sync.list(res, namespace, **kw))

    async def create(self, res: Resource, body: Mapping[str, Any], namespace: str | None = None,
                     **kw: Any) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(lambda: self.sync.create(res, body, namespace, **kw))

    async def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None,
                    **kw: Any) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(lambda: self.sync.patch(res, name, patch, namespace, **kw))

    async def replace(self, res: Resource, name: str, body: Mapping[str, Any], namespace: str | None = None,
                      **kw: Any) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(lambda: self.sync.replace(res, name, body, namespace, **kw))

    async def delete(self, res: Resource, name: str, namespace: str | None = None, **kw: Any) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(lambda: self.sync.delete(res, name, namespace, **kw))

