"""Kubernetes access for the node daemons and the controllers: one client, typed errors, resources,
the CRD install, the connection flags, and the controller runtime (`nvsentinel.k8s.runtime`)."""
from nvsentinel.k8s.errors import (  # noqa: F401
    AlreadyExists, Forbidden, Gone, Invalid, KubeConflict, KubeError, KubeNotFound, ServerUnavailable,
    TooManyRequests,
)
from nvsentinel.k8s.kube import AsyncKube, Kube, RateLimiter, WatchStream, load_api_client  # noqa: F401
