"""install_crd's protocol, against a scripted fake client (the real server run is tests/k8s/test_crd.py)."""
from __future__ import annotations

import copy

import pytest

from nvsentinel.k8s import crd as crd_mod
from nvsentinel.k8s.errors import AlreadyExists, KubeConflict, KubeNotFound
from nvsentinel.k8s.resources import CRDS, HEALTHEVENTS


def established(body, status="True", rv="1"):
    out = copy.deepcopy(body)
    out["metadata"]["resourceVersion"] = rv
    out["status"] = {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                    {"type": "Established", "status": status, "message": "m"}]}
    return out


class FakeKube:
    """Records calls; `exists` makes create answer AlreadyExists; Established after `gets_until_ready` reads."""

    def __init__(self, *, exists=False, gets_until_ready=0, never_ready=False, conflicts=0, list_404s=0):
        self.exists, self.gets_until_ready, self.never_ready = exists, gets_until_ready, never_ready
        self.conflicts, self.list_404s = conflicts, list_404s
        self.calls: list[tuple] = []
        self.stored: dict | None = established(crd_mod.crd_manifest(), rv="5") if exists else None

    def _current(self):
        ready = not self.never_ready and self.gets_until_ready <= 0
        return established(self.stored, "True" if ready else "False", self.stored["metadata"]["resourceVersion"])

    def create(self, res, body):
        self.calls.append(("create", res, body["metadata"]["name"]))
        if self.exists:
            raise AlreadyExists("409 AlreadyExists")
        self.stored = copy.deepcopy(body)
        self.stored["metadata"]["resourceVersion"] = "1"
        out = copy.deepcopy(self.stored)
        out["status"] = {"conditions": []}  # fresh: nothing established yet
        return out

    def get(self, res, name):
        self.calls.append(("get", res, name))
        self.gets_until_ready -= 1
        return self._current()

    def replace(self, res, name, body):
        self.calls.append(("replace", res, name, body["metadata"].get("resourceVersion")))
        if self.conflicts:
            self.conflicts -= 1
            self.stored["metadata"]["resourceVersion"] = str(int(self.stored["metadata"]["resourceVersion"]) + 1)
            raise KubeConflict("409 Conflict")
        self.stored = copy.deepcopy(body)
        return self._current()

    def request(self, method, path, **kw):
        self.calls.append(("request", method, path))
        if self.list_404s:
            self.list_404s -= 1
            raise KubeNotFound("404")
        return {"items": []}


def test_creates_then_waits_for_established_and_served(monkeypatch):
    """Verify a fresh install creates the packaged CRD, polls until Established, then until the type is served."""
    monkeypatch.setattr(crd_mod, "_POLL_S", 0)
    kube = FakeKube(gets_until_ready=3, list_404s=2)
    out = crd_mod.install_crd(kube)
    assert crd_mod.is_established(out)
    assert kube.calls[0] == ("create", CRDS, crd_mod.CRD_NAME)
    assert [c[0] for c in kube.calls[1:]] == ["get"] * 3 + ["request"] * 3
    assert kube.calls[-1] == ("request", "GET", HEALTHEVENTS.path())
    assert kube.stored["spec"] == crd_mod.crd_manifest()["spec"]


def test_existing_crd_is_replaced_at_its_resource_version(monkeypatch):
    """Verify AlreadyExists leads to a replace carrying the live resourceVersion (not a blind overwrite)."""
    monkeypatch.setattr(crd_mod, "_POLL_S", 0)
    kube = FakeKube(exists=True)
    crd_mod.install_crd(kube)
    assert [c[0] for c in kube.calls[:3]] == ["create", "get", "replace"]
    assert kube.calls[2] == ("replace", CRDS, crd_mod.CRD_NAME, "5")


def test_replace_conflict_rereads_and_retries(monkeypatch):
    """Verify a concurrent writer's 409 makes it reread the resourceVersion and try again."""
    monkeypatch.setattr(crd_mod, "_POLL_S", 0)
    kube = FakeKube(exists=True, conflicts=2)
    crd_mod.install_crd(kube)
    assert [c[3] for c in kube.calls if c[0] == "replace"] == ["5", "6", "7"]


def test_replace_gives_up_after_repeated_conflicts(monkeypatch):
    """Verify endless conflicts surface as KubeConflict instead of looping forever."""
    kube = FakeKube(exists=True, conflicts=100)
    with pytest.raises(KubeConflict):
        crd_mod.install_crd(kube)
    assert sum(c[0] == "replace" for c in kube.calls) == crd_mod._REPLACE_ATTEMPTS


def test_never_established_times_out_with_conditions(monkeypatch):
    """Verify a CRD that never becomes Established raises TimeoutError naming the CRD and its conditions."""
    monkeypatch.setattr(crd_mod, "_POLL_S", 0.01)
    with pytest.raises(TimeoutError) as info:
        crd_mod.install_crd(FakeKube(never_ready=True), timeout=0.1)
    msg = str(info.value)
    assert crd_mod.CRD_NAME in msg and "Established=False" in msg and "NamesAccepted=True" in msg


def test_never_served_times_out(monkeypatch):
    """Verify an Established CRD whose endpoint keeps answering 404 raises TimeoutError, not a 404."""
    monkeypatch.setattr(crd_mod, "_POLL_S", 0.01)
    with pytest.raises(TimeoutError, match="404"):
        crd_mod.install_crd(FakeKube(list_404s=10**6), timeout=0.1)
