"""The real Kubernetes control plane for tests/k8s (started once per session; see cluster.py)."""
from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import ControlPlane

from nvsentinel.k8s import Kube

# the helm driver lives with the offline chart tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helm"))
from helmchart import Helm  # noqa: E402


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as cp:
        yield cp


@pytest.fixture
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    k = control_plane.kube()
    try:
        yield k
    finally:
        k.close()


@pytest.fixture(scope="session")
def crd_installed(control_plane: ControlPlane) -> None:
    from nvsentinel.k8s.crd import install_crd

    k = control_plane.kube()
    try:
        install_crd(k)
    finally:
        k.close()


@pytest.fixture
def unique() -> str:
    """A short unique suffix: tests share one API server and isolate by name."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def helm() -> Iterator[Helm]:
    """The official helm binary (tools/get-helm.sh, cached), with its own state in a temp dir."""
    h = Helm.create()
    try:
        yield h
    finally:
        shutil.rmtree(h.home, ignore_errors=True)


@pytest.fixture(scope="session")
def image() -> str:
    """The project's image (tools/build-image.sh, podman; from cache when the sources are unchanged)."""
    from cluster import kube_cache_dir
    from podman import build_image, remove_leftovers

    remove_leftovers()
    return build_image(kube_cache_dir().parent / "nvsentinel-image" / "build.log")
