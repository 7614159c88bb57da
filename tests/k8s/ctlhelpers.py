"""What the controller tests on the real API server share: a running Manager and status readers."""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
from prometheus_client import CollectorRegistry

from nvsentinel.cluster.quarantine.logic import ANNOTATION
from nvsentinel.k8s import AsyncKube, Kube
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
