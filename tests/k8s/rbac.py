"""Least-privilege identities for tests: a ServiceAccount, its ClusterRole, and a kubeconfig with its token.

The test API server authorizes with RBAC, so a daemon run with such a kubeconfig proves that the
rules it is given are enough, and a refused call proves they are not too many.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nvsentinel.k8s import AlreadyExists, Kube
from nvsentinel.k8s.resources import NAMESPACES, Resource

SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount", True)
CLUSTERROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False)
CLUSTERROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False)
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True)
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True)


def _create(kube: Kube, res: Resource, body: dict[str, Any], ns: str | None = None) -> None:
    try:
        kube.create(res, body, ns)
    except AlreadyExists:
        pass


def service_account_kubeconfig(kube: Kube, admin_kubeconfig: str, namespace: str, name: str,
                               cluster_rules: Sequence[dict[str, Any]] = (),
                               namespace_rules: Sequence[dict[str, Any]] = (), *, out: Path) -> str:
    """Create SA `namespace/name` bound to the given rules; write a kubeconfig with a fresh token."""
    _create(kube, NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    _create(kube, SERVICEACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                    "metadata": {"name": name, "namespace": namespace}}, namespace)
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    role_name = f"{namespace}-{name}"
    if cluster_rules:
        _create(kube, CLUSTERROLES, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                     "metadata": {"name": role_name}, "rules": list(cluster_rules)})
        _create(kube, CLUSTERROLEBINDINGS, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": subject})
    if namespace_rules:
        _create(kube, ROLES, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                              "metadata": {"name": name, "namespace": namespace}, "rules": list(namespace_rules)},
                namespace)
        _create(kube, ROLEBINDINGS, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject}, namespace)
    return token_kubeconfig(kube, admin_kubeconfig, namespace, name, out=out)


def token_kubeconfig(kube: Kube, admin_kubeconfig: str, namespace: str, name: str, *, out: Path,
                     bound_pod: dict[str, Any] | None = None) -> str:
    """A kubeconfig for the existing ServiceAccount `namespace/name`, with a fresh TokenRequest token.

    `bound_pod` (a Pod object): the token is bound to that pod, as the kubelet's projected tokens are, so the
    API server puts the pod's name and uid in the caller's identity (what the admission webhook reads).
    """
    spec: dict[str, Any] = {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}
    if bound_pod is not None:
        spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": bound_pod["metadata"]["name"],
                                  "uid": bound_pod["metadata"]["uid"]}
    token = kube.create(SERVICEACCOUNTS, {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        namespace, subresource_of=name, subresource="token")["status"]["token"]
    admin = json.loads(Path(admin_kubeconfig).read_text())
    admin["users"] = [{"name": "admin", "user": {"token": token}}]
    out.write_text(json.dumps(admin))
    return str(out)
