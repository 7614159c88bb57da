"""nvsentinel.k8s without a server: the rate limiter, the one error map, resource paths.
(Its behaviour against a real API server is proven in tests/k8s.)"""
from __future__ import annotations

import json

import pytest

from nvsentinel.k8s import errors as ke
from nvsentinel.k8s.kube import RateLimiter
from nvsentinel.k8s.resources import EVENTS, HEALTHEVENTS, LEASES, NODES, PODS


def test_rate_limiter_allows_a_burst_then_spaces_requests_at_qps():
    lim = RateLimiter(qps=10, burst=3)
    delays = [lim.reserve() for _ in range(6)]
    assert delays[:3] == [0.0, 0.0, 0.0]
    # the 4th..6th wait about 0.1, 0.2, 0.3 s (tokens refill at 10/s)
    for got, want in zip(delays[3:], (0.1, 0.2, 0.3)):
        assert want - 0.01 <= got <= want + 0.01


def test_rate_limiter_zero_qps_is_unlimited_and_bad_burst_is_refused():
    lim = RateLimiter(qps=0, burst=1)
    assert all(lim.reserve() == 0.0 for _ in range(1000))
    with pytest.raises(ValueError):
        RateLimiter(qps=5, burst=0)


@pytest.mark.parametrize(("status", "reason", "cls"), [
    (400, "BadRequest", ke.Invalid), (401, "Unauthorized", ke.Forbidden), (403, "Forbidden", ke.Forbidden),
    (404, "NotFound", ke.KubeNotFound), (409, "Conflict", ke.KubeConflict), (409, "AlreadyExists", ke.AlreadyExists),
    (410, "Expired", ke.Gone), (422, "Invalid", ke.Invalid), (429, "TooManyRequests", ke.TooManyRequests),
    (500, "InternalError", ke.ServerUnavailable), (503, "ServiceUnavailable", ke.ServerUnavailable),
    (418, "Teapot", ke.KubeError),
])
def test_every_status_maps_to_one_error_class(status, reason, cls):
    body = json.dumps({"kind": "Status", "reason": reason, "message": f"msg {status}"}).encode()
    err = ke.error_from_response(status, body, {"Retry-After": "5"})
    assert type(err) is cls
    assert err.status == status and err.reason == reason and f"msg {status}" in str(err)
    assert err.retry_after == 5.0


def test_a_non_json_error_body_still_maps():
    err = ke.error_from_response(502, b"<html>bad gateway</html>")
    assert isinstance(err, ke.ServerUnavailable) and "bad gateway" in str(err) and err.body == {}
    assert isinstance(ke.error_from_response(409, b"{}"), ke.KubeConflict)
    assert not isinstance(ke.error_from_response(409, b"{}"), ke.AlreadyExists)


def test_resource_paths():
    assert NODES.path() == "/api/v1/nodes"
    assert NODES.path("n 1") == "/api/v1/nodes/n%201"
    assert NODES.path("n", subresource="status") == "/api/v1/nodes/n/status"
    assert PODS.path(None, "ns") == "/api/v1/namespaces/ns/pods"
    assert PODS.path("p", "ns", "eviction") == "/api/v1/namespaces/ns/pods/p/eviction"
    assert PODS.path() == "/api/v1/pods"  # all namespaces
    assert LEASES.path("l", "ns") == "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"
    assert HEALTHEVENTS.path("e") == "/apis/nvsentinel.nvidia.com/v1alpha1/healthevents/e"
    assert HEALTHEVENTS.api_version == "nvsentinel.nvidia.com/v1alpha1" and EVENTS.api_version == "v1"
    with pytest.raises(ValueError):
        PODS.path("p")  # a namespaced object needs its namespace
    with pytest.raises(ValueError):
        NODES.path("")
