"""The node view: a node's credential reads its own node's HealthEvents, and nothing else.

RBAC cannot limit a list or a watch to a label, and admission never sees reads. So the remediation agent
holds no read permission at all: it lists, watches and gets through this view, served next to the admission
webhook. The view authenticates the caller's bearer token with a TokenReview, finds its node exactly as
admission does (the token's node claim, or the pod it is bound to), and forwards a request to the API server
with its own credential only when the request is confined to that node:

- list and watch: only with `labelSelector=nvsentinel.nvidia.com/node=<that node>`, the agent's own;
- get by name: only an event of that node (any other is answered 404, so names of other nodes' events
  do not leak either);
- nothing else (no other query keys, no other path, no other method).

Answers stream through unchanged, errors as the API server's Status objects, so the agent's informer relists on
410 exactly as against the API server.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from nvsentinel.cluster.admission.identity import IdentityUnavailable, NodeResolver
from nvsentinel.k8s import Kube, KubeError, ServerUnavailable
from nvsentinel.k8s.resources import HEALTHEVENTS
from nvsentinel.policy.healthevent import LABEL_NODE
from nvsentinel.policy.naming import label_value

__all__ = ["NodeView", "Answer", "PREFIX", "encode"]

logger = logging.getLogger(__name__)

#: The collection path the view serves (the same path as on the API server, so a client only changes host).
PREFIX = HEALTHEVENTS.path(None, None)
#: Query keys an informer sends; anything else is refused.
ALLOWED_KEYS = frozenset({"labelSelector", "limit", "continue", "resourceVersion", "resourceVersionMatch", "watch",
                          "allowWatchBookmarks", "timeoutSeconds"})
#: Seconds a TokenReview answer is reused (a revoked token stops working within this).
REVIEW_TTL = 60.0
REVIEW_CACHE = 20000
#: Longest watch the view forwards (the API server's own default upper bound is 30 min).
MAX_WATCH_SECONDS = 1800


class Answer:
    """An HTTP answer: a status, a JSON body, or a stream of bytes (a watch)."""

    def __init__(self, status: int, body: Mapping[str, Any] | None = None, stream: Iterator[bytes] | None = None,
                 close: Any = None) -> None:
        self.status, self.body, self.stream, self.close = status, body, stream, close


def _status(code: int, reason: str, message: str) -> Answer:
    return Answer(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                         "message": f"nvsentinel node view: {message}"})


class NodeView:
    def __init__(self, kube: Kube, resolver: NodeResolver, node_identities: frozenset[str]) -> None:
        self.kube, self.resolver, self.node_identities = kube, resolver, node_identities
        self._lock = threading.Lock()
        self._reviews: collections.OrderedDict[str, tuple[float, Mapping[str, Any]]] = collections.OrderedDict()

    # ---- who is asking ------------------------------------------------------------------------------
    def _user(self, authorization: str) -> Mapping[str, Any] | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > 16384:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._reviews.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        out = self.kube.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
        status = out.get("status") or {}
        user = status.get("user") if status.get("authenticated") else None
        with self._lock:
            self._reviews[key] = (now + REVIEW_TTL, user or {})
            while len(self._reviews) > REVIEW_CACHE:
                self._reviews.popitem(last=False)
        return user or None

    # ---- one request -------------------------------------------------------------------------------------
    def serve(self, method: str, target: str, authorization: str) -> Answer:
        if method != "GET":
            return _status(405, "MethodNotAllowed", "only get, list and watch")
        url = urllib.parse.urlsplit(target)
        path = url.path.rstrip("/")
        name = None
        if path != PREFIX:
            if not path.startswith(PREFIX + "/") or "/" in path[len(PREFIX) + 1:] or len(path) > len(PREFIX) + 254:
                return _status(404, "NotFound", "only HealthEvents are served")
            name = path[len(PREFIX) + 1:]
        try:
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True, strict_parsing=False,
                                          max_num_fields=16)
        except ValueError:
            return _status(400, "BadRequest", "malformed query")
        if set(query) - ALLOWED_KEYS or any(len(v) != 1 for v in query.values()):
            return _status(400, "BadRequest", "unsupported query parameters")
        q = {k: v[0] for k, v in query.items()}
        try:
            user = self._user(authorization)
        except KubeError as exc:
            return _status(503, "ServiceUnavailable", f"cannot review the token: {type(exc).__name__}")
        if user is None:
            return _status(401, "Unauthorized", "a valid bearer token is required")
        username = str(user.get("username") or "")
        if username not in self.node_identities:
            return _status(403, "Forbidden", "only node identities read through the node view")
        try:
            node = self.resolver.node_of(user)
        except IdentityUnavailable as exc:
            return _status(503, "ServiceUnavailable", str(exc))
        if not node:
            return _status(403, "Forbidden", "the token names no node: use the bound token of a pod on the node")
        if name is not None:
            return self._get(name, node)
        own = f"{LABEL_NODE}={label_value(node)}"
        if q.get("labelSelector") != own:
            return _status(403, "Forbidden", f"node {node} may list and watch only with labelSelector={own}")
        return self._list(q)

    def _get(self, name: str, node: str) -> Answer:
        try:
            obj = self.kube.request("GET", HEALTHEVENTS.path(name, None))
        except KubeError as exc:
            return _from_error(exc)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if (obj.get("spec") or {}).get("nodeName") != node or labels.get(LABEL_NODE) != label_value(node):
            return _status(404, "NotFound", f"healthevents {name!r} not found"[:300])
        return Answer(200, obj)

    def _list(self, q: dict[str, str]) -> Answer:
        if q.get("watch") not in ("true", "1"):
            try:
                return Answer(200, self.kube.request("GET", PREFIX, query=q))
            except KubeError as exc:
                return _from_error(exc)
        try:
            seconds = min(int(q.get("timeoutSeconds") or MAX_WATCH_SECONDS), MAX_WATCH_SECONDS)
        except ValueError:
            return _status(400, "BadRequest", "timeoutSeconds must be an integer")
        q["timeoutSeconds"] = str(max(seconds, 1))
        try:
            resp = self.kube.raw("GET", PREFIX, query=q, stream=True, timeout=(10.0, seconds + 30.0))
        except KubeError as exc:
            return _from_error(exc)

        def chunks() -> Iterator[bytes]:
            try:
                yield from resp.stream(65536, decode_content=True)
            except Exception as exc:  # noqa: BLE001 - the upstream watch ended badly: the client relists
                logger.debug("node view watch ended", extra={"kv": {"error": type(exc).__name__}})

        return Answer(200, stream=chunks(), close=resp.release_conn)


def _from_error(exc: KubeError) -> Answer:
    if isinstance(exc, ServerUnavailable):
        return _status(503, "ServiceUnavailable", "the API server is unavailable")
    body = exc.body if isinstance(exc.body, dict) and exc.body.get("kind") == "Status" else None
    if body is not None and exc.status:
        return Answer(exc.status, body)
    return _status(exc.status or 500, exc.reason or "InternalError", str(exc)[:300])


def encode(answer: Answer) -> bytes:
    return json.dumps(answer.body or {}).encode()
