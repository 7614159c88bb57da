"""The admission webhook's HTTPS server on a real loopback socket: what it answers to odd input, how it maps a
pod-bound token to a node, and that a renewed certificate is served without a restart.

(The rules themselves: tests/kube/test_admission_rules.py; against a real API server:
tests/k8s/test_chart_identities.py.)
"""
from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
from webhook import serving_cert  # noqa: E402

from nvsentinel.cluster.admission.identity import IdentityUnavailable, NodeResolver  # noqa: E402
from nvsentinel.cluster.admission.server import MAX_BODY, AdmissionServer  # noqa: E402
from nvsentinel.k8s import KubeNotFound, ServerUnavailable  # noqa: E402
from nvsentinel.policy.admission import POD_NAME_CLAIM, POD_UID_CLAIM, AdmissionRules  # noqa: E402

PUBLISHER = "system:serviceaccount:nvs:nvs-publisher"


class Pods:
    """A narrow stand-in for the API server's pod GET (the real one is exercised in tests/k8s)."""

    def __init__(self, pods: dict[str, dict[str, Any]], fail: bool = False) -> None:
        self.pods, self.fail, self.calls = pods, fail, 0

    def get(self, res: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.calls += 1
        if self.fail:
            raise ServerUnavailable("503: down")
        if (namespace, name) not in self.pods:
            raise KubeNotFound(f"{name} not found")
        return self.pods[(namespace, name)]


def pod(name: str, uid: str, node: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid}, "spec": {"nodeName": node}}


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return serving_cert(tmp_path)


@pytest.fixture
def server(certs: tuple[Path, Path, Path]):
    ca, crt, key = certs
    kube = Pods({("nvs", "node-abc"): pod("node-abc", "uid-1", "gpu-7")})
    srv = AdmissionServer("127.0.0.1", 0, str(crt), str(key), AdmissionRules(node_identities=frozenset({PUBLISHER})),
                          NodeResolver(kube))  # type: ignore[arg-type]
    srv.start()
    srv.kube = kube  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def post(srv: AdmissionServer, ca: Path, body: bytes, path: str = "/validate") -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def review(node: str, extra: dict[str, list[str]] | None) -> bytes:
    obj = {"metadata": {"name": "e1", "labels": {}}, "spec": {"nodeName": node, "isHealthy": False,
                                                              "detectedAt": "2026-01-01T00:00:00Z"}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "req-1", "operation": "CREATE", "resource": {"group": "nvsentinel.nvidia.com", "version": "v1alpha1",
                                                            "resource": "healthevents"},
        "userInfo": {"username": PUBLISHER, "extra": extra or {}}, "object": obj}}).encode()


BOUND = {POD_NAME_CLAIM: ["node-abc"], POD_UID_CLAIM: ["uid-1"]}


def test_a_pod_bound_token_speaks_for_its_pods_node_only(server: AdmissionServer,
                                                         certs: tuple[Path, Path, Path]) -> None:
    ca = certs[0]
    status, out = post(server, ca, review("gpu-7", BOUND))
    assert status == 200 and out["response"] == {"uid": "req-1", "allowed": True}
    status, out = post(server, ca, review("gpu-8", BOUND))
    assert status == 200 and out["response"]["allowed"] is False
    assert out["response"]["status"]["code"] == 403 and "N2" in out["response"]["status"]["message"]
    # a recreated pod of the same name (new uid), or an unbound token: no node at all
    for extra in ({POD_NAME_CLAIM: ["node-abc"], POD_UID_CLAIM: ["uid-2"]}, {}):
        _, out = post(server, ca, review("gpu-7", extra))
        assert out["response"]["allowed"] is False and "without a node" in out["response"]["status"]["message"]


def test_the_pod_is_read_once_per_uid(server: AdmissionServer, certs: tuple[Path, Path, Path]) -> None:
    for _ in range(5):
        post(server, certs[0], review("gpu-7", BOUND))
    assert server.kube.calls == 1  # type: ignore[attr-defined]


def test_an_unreachable_api_server_refuses_rather_than_admits(certs: tuple[Path, Path, Path]) -> None:
    ca, crt, key = certs
    srv = AdmissionServer("127.0.0.1", 0, str(crt), str(key), AdmissionRules(node_identities=frozenset({PUBLISHER})),
                          NodeResolver(Pods({}, fail=True)))  # type: ignore[arg-type]
    srv.start()
    try:
        _, out = post(srv, ca, review("gpu-7", BOUND))
        assert out["response"]["allowed"] is False and "cannot tell which node" in out["response"]["status"]["message"]
    finally:
        srv.stop()
    with pytest.raises(IdentityUnavailable):
        NodeResolver(Pods({}, fail=True)).node_of({"username": PUBLISHER, "extra": BOUND})  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"request": 3}', b'{"kind": "AdmissionReview"}',
                                  "{\"request\": \"\u00b2\"}".encode()])
def test_odd_bodies_get_400_never_a_traceback(server: AdmissionServer, certs: tuple[Path, Path, Path],
                                              body: bytes) -> None:
    status, out = post(server, certs[0], body)
    assert status in (400, 413) and "error" in out
    assert "Traceback" not in json.dumps(out)


def test_an_oversized_body_is_refused_unread(server: AdmissionServer, certs: tuple[Path, Path, Path]) -> None:
    ctx = ssl.create_default_context(cafile=str(certs[0]))
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=30)
    try:
        conn.putrequest("POST", "/validate")
        conn.putheader("Content-Length", str(MAX_BODY + 1))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
    finally:
        conn.close()


def test_a_malformed_object_is_refused_not_admitted(server: AdmissionServer, certs: tuple[Path, Path, Path]) -> None:
    body = json.loads(review("gpu-7", BOUND))
    body["request"]["object"]["spec"] = ["not", "a", "mapping"]
    _, out = post(server, certs[0], json.dumps(body).encode())
    assert out["response"]["allowed"] is False


def test_other_paths_are_404(server: AdmissionServer, certs: tuple[Path, Path, Path]) -> None:
    status, _ = post(server, certs[0], review("gpu-7", BOUND), path="/mutate")
    assert status == 404


def test_a_renewed_certificate_is_served_without_a_restart(server: AdmissionServer, certs: tuple[Path, Path, Path],
                                                           tmp_path: Path) -> None:
    ca, crt, key = certs
    assert post(server, ca, review("gpu-7", BOUND))[0] == 200
    new_ca, new_crt, new_key = serving_cert(tmp_path / "renewed" if (tmp_path / "renewed").mkdir() is None else
                                            tmp_path)
    os.replace(new_key, key)
    os.replace(new_crt, crt)
    later = time.time() + 5  # mtime must move even on a coarse-grained filesystem clock
    os.utime(crt, (later, later))
    assert post(server, new_ca, review("gpu-7", BOUND))[0] == 200
    with pytest.raises(ssl.SSLError):
        post(server, ca, review("gpu-7", BOUND))


def test_a_bad_certificate_is_a_start_up_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises((ssl.SSLError, OSError)):
        AdmissionServer("127.0.0.1", 0, str(bad), str(bad), AdmissionRules(), NodeResolver(Pods({})))  # type: ignore[arg-type]


class ListView:
    """A node view that answers every read with an empty list and counts them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def serve(self, method: str, target: str, authorization: str) -> Any:
        from nvsentinel.cluster.admission.nodeview import Answer

        self.calls.append((method, target, authorization))
        return Answer(200, {"kind": "HealthEventList", "apiVersion": "nvsentinel.nvidia.com/v1alpha1",
                            "metadata": {"resourceVersion": "7"}, "items": []})


def test_a_client_sent_via_the_node_view_stays_there_across_token_refreshes(certs: tuple[Path, Path, Path],
                                                                            tmp_path: Path) -> None:
    """The kubeconfig loader's token-refresh hook re-sets the host on every request; `Kube.via` must keep
    sending to the view (a regression: the second request went to the API server)."""
    from nvsentinel.k8s import Kube
    from nvsentinel.k8s.resources import HEALTHEVENTS

    ca, crt, key = certs
    view = ListView()
    srv = AdmissionServer("127.0.0.1", 0, str(crt), str(key), AdmissionRules(), NodeResolver(Pods({})),  # type: ignore[arg-type]
                          nodeview=view)  # type: ignore[arg-type]
    srv.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "agent-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    api = Kube.connect(str(kubeconfig))
    reader = api.via(f"https://127.0.0.1:{srv.port}", str(ca))
    try:
        for _ in range(3):
            assert reader.list(HEALTHEVENTS, label_selector="nvsentinel.nvidia.com/node=n1") == ([], "7")
        assert len(view.calls) == 3
        assert all(auth == "Bearer agent-token" for _, _, auth in view.calls)
        assert api.host == "https://127.0.0.1:1", "the original client is untouched"
    finally:
        reader.close()
        api.close()
        srv.stop()


class Reviews(Pods):
    """TokenReview and HealthEvent GETs, as narrow stand-ins (the real ones: tests/k8s/test_chart_identities.py)."""

    def __init__(self) -> None:
        super().__init__({("nvs", "node-abc"): pod("node-abc", "uid-1", "gpu-7")})
        self.reviews = 0
        self.events = {"mine": {"metadata": {"name": "mine", "labels": {"nvsentinel.nvidia.com/node": "gpu-7"}},
                                "spec": {"nodeName": "gpu-7"}},
                       "theirs": {"metadata": {"name": "theirs", "labels": {"nvsentinel.nvidia.com/node": "gpu-8"}},
                                  "spec": {"nodeName": "gpu-8"}}}
        self.lists: list[dict[str, Any]] = []

    def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        if path.endswith("/tokenreviews"):
            self.reviews += 1
            token = kw["body"]["spec"]["token"]
            if token == "agent":
                return {"status": {"authenticated": True, "user": {"username": PUBLISHER, "extra": BOUND}}}
            if token == "operator":
                return {"status": {"authenticated": True, "user": {"username": "admin"}}}
            return {"status": {"authenticated": False}}
        if path.endswith("/healthevents"):
            self.lists.append(kw.get("query") or {})
            return {"kind": "HealthEventList", "items": []}
        name = path.rsplit("/", 1)[1]
        if name not in self.events:
            raise KubeNotFound(f"{name} not found", status=404)
        return self.events[name]


def view_of(kube: Reviews) -> Any:
    from nvsentinel.cluster.admission.nodeview import NodeView

    return NodeView(kube, NodeResolver(kube), frozenset({PUBLISHER}))  # type: ignore[arg-type]


EVENTS = "/apis/nvsentinel.nvidia.com/v1alpha1/healthevents"
OWN = f"{EVENTS}?labelSelector=nvsentinel.nvidia.com%2Fnode%3Dgpu-7&limit=500"


@pytest.mark.parametrize(("method", "target", "auth", "code"), [
    ("GET", OWN, "Bearer agent", 200),
    ("GET", f"{EVENTS}/mine", "Bearer agent", 200),
    ("GET", f"{EVENTS}/theirs", "Bearer agent", 404),                       # another node's: as if absent
    ("GET", f"{EVENTS}/nope", "Bearer agent", 404),
    ("GET", EVENTS, "Bearer agent", 403),                                   # no selector: every node's
    ("GET", f"{EVENTS}?labelSelector=nvsentinel.nvidia.com%2Fnode%3Dgpu-8", "Bearer agent", 403),
    ("GET", f"{EVENTS}?labelSelector=nvsentinel.nvidia.com%2Fnode%3Dgpu-7,x%3Dy", "Bearer agent", 403),
    ("GET", f"{OWN}&fieldSelector=metadata.name%3Dtheirs", "Bearer agent", 400),  # only an informer's keys
    ("GET", f"{OWN}&limit=2", "Bearer agent", 400),                         # a key twice
    ("GET", "/api/v1/pods", "Bearer agent", 404),
    ("GET", f"{EVENTS}/a/b", "Bearer agent", 404),
    ("POST", EVENTS, "Bearer agent", 405),
    ("GET", OWN, "Bearer operator", 403),                                   # not a node identity
    ("GET", OWN, "Bearer stolen", 401),
    ("GET", OWN, "", 401),
    ("GET", OWN, "Basic YWRtaW46YWRtaW4=", 401),
    ("GET", OWN, "Bearer " + "x" * 20000, 401),
])
def test_the_node_view_serves_a_node_its_own_events_only(method: str, target: str, auth: str, code: int) -> None:
    answer = view_of(Reviews()).serve(method, target, auth)
    assert answer.status == code, answer.body
    if code != 200:
        assert answer.body["kind"] == "Status" and answer.body["code"] == code


def test_a_token_is_reviewed_once_a_minute_not_per_request() -> None:
    kube = Reviews()
    view = view_of(kube)
    for _ in range(5):
        assert view.serve("GET", OWN, "Bearer agent").status == 200
    assert kube.reviews == 1
    assert kube.lists[-1]["labelSelector"] == "nvsentinel.nvidia.com/node=gpu-7"
