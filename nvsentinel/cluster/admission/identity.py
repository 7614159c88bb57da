"""What the webhook reads from the API server: which node a caller speaks for, and a Node as stored.

Which node: the bound service-account token's claims, checked against the API server.

Kubernetes >= 1.30 puts the node in the token (`authentication.kubernetes.io/node-name`). Older servers give only
the pod the token is bound to (name and uid); its node is the pod's `spec.nodeName`, read once per pod uid (a pod
never moves). A token not bound to a pod names no node, so a node identity using it is refused.
"""
from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping
from typing import Any

from nvsentinel.k8s import Kube, KubeNotFound
from nvsentinel.k8s.resources import NODES, PODS
from nvsentinel.policy.admission import NODE_NAME_CLAIM, POD_NAME_CLAIM, POD_UID_CLAIM, service_account_of

__all__ = ["NodeResolver", "IdentityUnavailable"]

logger = logging.getLogger(__name__)

#: Pods remembered (uid → node); a node agent pod per GPU node, so a fleet's worth.
CACHE_SIZE = 20000


class IdentityUnavailable(Exception):
    """The API server could not be asked which node a pod runs on (the request is refused, never waved through)."""


def _claim(extra: Mapping[str, Any], key: str) -> str:
    value = extra.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return ""


class NodeResolver:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._lock = threading.Lock()
        self._nodes: collections.OrderedDict[str, str] = collections.OrderedDict()

    def node_of(self, user_info: Mapping[str, Any]) -> str | None:
        """The caller's node, None when its token names none (not bound to a scheduled pod)."""
        extra = user_info.get("extra") or {}
        if not isinstance(extra, Mapping):
            return None
        node = _claim(extra, NODE_NAME_CLAIM)
        if node:
            return node
        pod, uid = _claim(extra, POD_NAME_CLAIM), _claim(extra, POD_UID_CLAIM)
        sa = service_account_of(str(user_info.get("username") or ""))
        if not pod or not uid or sa is None:
            return None
        with self._lock:
            if uid in self._nodes:
                self._nodes.move_to_end(uid)
                return self._nodes[uid]
        try:
            obj = self.kube.get(PODS, pod, sa[0])
        except KubeNotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - any API failure: refuse, say why
            raise IdentityUnavailable(f"cannot read pod {sa[0]}/{pod}: {type(exc).__name__}") from exc
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        node = str(spec.get("nodeName") or "")
        if meta.get("uid") != uid or not node:
            return None  # a new pod of the same name, or one not scheduled yet: the token speaks for no node
        with self._lock:
            self._nodes[uid] = node
            while len(self._nodes) > CACHE_SIZE:
                self._nodes.popitem(last=False)
        return node

    def live_node(self, name: str) -> dict[str, Any] | None:
        """The Node as stored now (None: no such Node)."""
        try:
            return self.kube.get(NODES, name)
        except KubeNotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - any API failure: refuse, say why
            raise IdentityUnavailable(f"cannot read node {name}: {type(exc).__name__}") from exc
