"""What the controller tests on the real API server share: a running Manager and status readers."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.quarantine.logic import ANNOTATION
from nvsentinel.devtools.devcluster.kubelet import delete_nodes, finish_deletions
from nvsentinel.k8s import AsyncKube, Kube, KubeNotFound
from nvsentinel.k8s.resources import HEALTHEVENTS, NAMESPACES, PODS
from nvsentinel.k8s.runtime.manager import Manager


@contextlib.asynccontextmanager
async def running_manager(kube: Kube, reconcilers: Sequence[Any], namespace: str, *, dry_run: bool = False,
                          workers: int = 2) -> AsyncIterator[tuple[Manager, CollectorRegistry]]:
    """A Manager running `reconcilers` in-process (its own registry), ready when entered."""
    registry = CollectorRegistry()
    mgr = Manager(AsyncKube(kube), list(reconcilers), namespace=namespace, dry_run=dry_run, workers=workers,
                  registry=registry)
    async with anyio.create_task_group() as tg:
        tg.start_soon(mgr.run)
        with anyio.fail_after(30):
            await mgr.wait_ready()
        try:
            yield mgr, registry
        finally:
            mgr.stop()


async def eventually(fn: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `fn` (blocking; run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await anyio.to_thread.run_sync(fn)
        if last:
            return last
        await anyio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def phase(obj: dict) -> str:
    return (obj.get("status") or {}).get("phase") or "New"


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == type_), None)


def ownership(node: dict) -> dict | None:
    """The quarantine controller's ownership annotation, parsed."""
    text = (node["metadata"].get("annotations") or {}).get(ANNOTATION)
    return json.loads(text) if text else None


def action_count(registry: CollectorRegistry, controller: str, name: str) -> float:
    return registry.get_sample_value(f"nvsentinel_{controller}_controller_actions_total", {"action": name}) or 0.0


def clean_up(kube: Kube, *, events: Sequence[str] = (), nodes: Sequence[str] = (), namespace: str | None = None,
             threads: int = 8) -> None:
    """What a test created on the shared API server, deleted (what is already gone is fine): its HealthEvents
    (in parallel: a test may leave hundreds), its Nodes, its namespace."""
    import concurrent.futures

    def drop(name: str) -> None:
        with contextlib.suppress(KubeNotFound):
            kube.delete(HEALTHEVENTS, name)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(drop, events))
    if nodes:
        delete_nodes(kube, nodes)
    if namespace is not None:
        with contextlib.suppress(KubeNotFound):
            kube.delete(NAMESPACES, namespace)


def env_fixture(make: Callable[[Any, str], Any]) -> Any:
    """The `env` fixture of a stage test module: `make(control_plane, unique)`, closed after the test however it
    ends (`env = env_fixture(Env)` at module level)."""
    @pytest.fixture
    def env(control_plane: Any, crd_installed: Any, unique: str) -> Any:
        e = make(control_plane, unique)
        try:
            yield e
        finally:
            e.close()
    return env


class DeletionFinisher:
    """The kubelet stand-in of a stage test's namespace: completes the pod deletions evictions start, in the
    background (every 0.2 s), as a kubelet would; `stop()` ends it and removes the pods left at once."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"finish-{namespace}")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(Exception):  # a transient API error: the next round retries
                finish_deletions(self.kube, self.namespace)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        items, _ = self.kube.list(PODS, self.namespace)
        for p in items:
            with contextlib.suppress(KubeNotFound):
                self.kube.delete(PODS, p["metadata"]["name"], self.namespace, grace_period_seconds=0)
