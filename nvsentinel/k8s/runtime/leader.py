"""Lease-based leader election (coordination.k8s.io/v1), for anyio.

Why not `kubernetes.leaderelection` (the official client's): it blocks a thread in an endless loop
with no way to stop it, so a shutdown cannot release the lease (the standby then waits a whole
lease duration), it exits the process with `sys.exit` on a bad config, uses the global default
client (no QPS limit, no per-manager kubeconfig) and runs the leader's work on an unsupervised
thread. This keeps its algorithm (and client-go's): acquire or renew with optimistic concurrency on
the Lease's resourceVersion; judge expiry by when *we* last saw the record change (local monotonic
clock, so clock skew between nodes does not matter); renew every `retry_period`; give up leading if
renewals fail for `renew_deadline`; release on shutdown.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from nvsentinel.k8s import AlreadyExists, AsyncKube, KubeConflict, KubeError, KubeNotFound
from nvsentinel.k8s.resources import LEASES
from nvsentinel.policy.healthevent import parse_time

logger = logging.getLogger(__name__)

__all__ = ["LeaderElectionConfig", "LeaderElector", "default_identity", "micro_time"]

DEFAULT_LEASE_NAME = "nvsentinel-controllers.nvidia.com"


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def micro_time(t: _dt.datetime) -> str:
    """metav1.MicroTime: always six fractional digits (the server parses with a fixed layout)."""
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class LeaderElectionConfig:
    namespace: str
    name: str = DEFAULT_LEASE_NAME
    identity: str = dataclasses.field(default_factory=default_identity)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.namespace or not self.name or not self.identity:
            raise ValueError("leader election needs a namespace, a lease name and an identity")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election: need 0 < retry-period < renew-deadline < lease-duration "
                             f"(got {self.retry_period}, {self.renew_deadline}, {self.lease_duration})")


class LeaderElector:
    def __init__(self, kube: AsyncKube, config: LeaderElectionConfig,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.kube = kube
        self.config = config
        self.on_change = on_change
        self.is_leader = False
        self.observed_holder = ""
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._lost = False

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Be a candidate: when elected, run `lead()`; if leadership is lost, stand again.

        `lead()` returning (shutdown) or cancelling `run` releases the lease, so a standby takes
        over at once instead of waiting out the lease duration.
        """
        while True:
            await self._acquire()
            self._lost = False
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._renew_until_lost, tg.cancel_scope)
                    await lead()
                    tg.cancel_scope.cancel()
                if not self._lost:
                    return
            finally:
                was = self.is_leader
                self._set_leader(False)
                if was:
                    with anyio.CancelScope(shield=True):
                        await self._release()
            logger.warning("leadership lost; standing as a candidate again",
                           extra={"kv": {"identity": self.config.identity}})

    async def _acquire(self) -> None:
        cfg = self.config
        logger.info("leader election: candidate", extra={"kv": {
            "identity": cfg.identity, "lease": f"{cfg.namespace}/{cfg.name}"}})
        while not await self.try_acquire_or_renew():
            await anyio.sleep(cfg.retry_period * (1 + 0.2 * (time.monotonic() % 1)))
        self._set_leader(True)
        logger.info("leader election: leading", extra={"kv": {"identity": cfg.identity}})

    async def _renew_until_lost(self, scope: anyio.CancelScope) -> None:
        cfg = self.config
        last_ok = time.monotonic()
        while True:
            await anyio.sleep(cfg.retry_period)
            if await self.try_acquire_or_renew():
                last_ok = time.monotonic()
            elif time.monotonic() - last_ok >= cfg.renew_deadline:
                logger.error("leader election: could not renew the lease in time; stop leading",
                             extra={"kv": {"identity": cfg.identity, "renew_deadline": cfg.renew_deadline}})
                self._lost = True
                self._set_leader(False)
                scope.cancel()
                return

    def _set_leader(self, value: bool) -> None:
        if value != self.is_leader:
            self.is_leader = value
            if self.on_change:
                self.on_change(value)

    async def try_acquire_or_renew(self) -> bool:
        cfg = self.config
        now = _dt.datetime.now(_dt.timezone.utc)
        try:
            lease = await self.kube.get(LEASES, cfg.name, cfg.namespace)
        except KubeNotFound:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                    "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": max(1, round(cfg.lease_duration)),
                             "acquireTime": micro_time(now), "renewTime": micro_time(now), "leaseTransitions": 0}}
            try:
                await self.kube.create(LEASES, body, cfg.namespace)
            except (AlreadyExists, KubeError) as exc:
                logger.debug("lease create failed", extra={"kv": {"error": str(exc)[:200]}})
                return False
            self._observe(body["spec"])
            return True
        except KubeError as exc:
            logger.warning("lease read failed", extra={"kv": {"error": str(exc)[:200]}})
            return False

        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self._observe(spec)
        expired = time.monotonic() - self._observed_at > float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
        if holder and holder != cfg.identity and not expired:
            return False
        new_spec = dict(spec)
        if holder != cfg.identity:
            new_spec["acquireTime"] = micro_time(now)
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        new_spec.update(holderIdentity=cfg.identity, leaseDurationSeconds=max(1, round(cfg.lease_duration)),
                        renewTime=micro_time(now))
        body = {**lease, "spec": new_spec}
        try:
            await self.kube.replace(LEASES, cfg.name, body, cfg.namespace)
        except (KubeConflict, KubeError) as exc:
            logger.debug("lease update failed", extra={"kv": {"error": str(exc)[:200]}})
            return False
        self._observe(new_spec)
        return True

    def _observe(self, spec: dict[str, Any]) -> None:
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        self.observed_holder = str(spec.get("holderIdentity") or "")

    async def _release(self) -> None:
        """Hand the lease back (holder cleared, 1 s duration) so a standby need not wait it out."""
        cfg = self.config
        try:
            with anyio.fail_after(5):
                lease = await self.kube.get(LEASES, cfg.name, cfg.namespace)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != cfg.identity:
                    return
                now = _dt.datetime.now(_dt.timezone.utc)
                await self.kube.replace(LEASES, cfg.name, {**lease, "spec": {
                    **spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": micro_time(now)}},
                    cfg.namespace)
            logger.info("leader election: lease released", extra={"kv": {"identity": cfg.identity}})
        except (KubeError, TimeoutError) as exc:
            logger.warning("lease release failed", extra={"kv": {"error": str(exc)[:200]}})


def lease_holder_renewed_at(lease: dict[str, Any]) -> _dt.datetime | None:
    t = (lease.get("spec") or {}).get("renewTime")
    return parse_time(t) if t else None
