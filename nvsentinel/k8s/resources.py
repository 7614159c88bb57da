"""The resource types nvsentinel touches, as URL builders (dict JSON in, dict JSON out)."""
from __future__ import annotations

import dataclasses
from urllib.parse import quote

from nvsentinel.policy.healthevent import GROUP, KIND, PLURAL, VERSION

__all__ = ["Resource", "NODES", "PODS", "EVENTS", "NAMESPACES", "CONFIGMAPS", "LEASES", "JOBS", "HEALTHEVENTS",
           "CRDS", "PDBS_V1BETA1"]


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, name: str | None = None, namespace: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        elif self.namespaced and name is not None:
            raise ValueError(f"{self.plural} are namespaced: a namespace is required")
        base += f"/{self.plural}"
        if name is not None:
            if not name:
                raise ValueError("empty object name")
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base


NODES = Resource("", "v1", "nodes", "Node", False)
PODS = Resource("", "v1", "pods", "Pod", True)
EVENTS = Resource("", "v1", "events", "Event", True)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
JOBS = Resource("batch", "v1", "jobs", "Job", True)
HEALTHEVENTS = Resource(GROUP, VERSION, PLURAL, KIND, False)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)
#: Kubernetes 1.20 serves PodDisruptionBudgets only as policy/v1beta1 (policy/v1 arrived in 1.21).
PDBS_V1BETA1 = Resource("policy", "v1beta1", "poddisruptionbudgets", "PodDisruptionBudget", True)
