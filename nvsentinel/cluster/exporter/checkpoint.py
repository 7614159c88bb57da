"""The checkpoint: {event uid: last phase sent} in a ConfigMap, so a restart resumes, not replays.

Written by the leader at most every `interval` seconds and only when it changed (one write carries
every send since the last), so after a crash (kill -9) only the last interval's sends can go out
again. Entries leave when their HealthEvent is deleted and nothing is left to send for it.
"""
from __future__ import annotations

import logging

from nvsentinel.cluster.exporter.logic import decode_checkpoint, encode_checkpoint
from nvsentinel.k8s import AsyncKube, KubeNotFound
from nvsentinel.k8s.resources import CONFIGMAPS
from nvsentinel.policy.healthevent import Phase

logger = logging.getLogger(__name__)

__all__ = ["CheckpointStore", "KEY"]

KEY = "exported.json"


class CheckpointStore:
    def __init__(self, kube: AsyncKube, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name

    async def load(self) -> dict[str, Phase]:
        try:
            cm = await self.kube.get(CONFIGMAPS, self.name, self.namespace)
        except KubeNotFound:
            return {}
        return decode_checkpoint((cm.get("data") or {}).get(KEY))

    async def save(self, exported: dict[str, Phase]) -> None:
        """Write it whole. An update without a resourceVersion: the leader is its only writer."""
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/component": "exporter"}},
                "data": {KEY: encode_checkpoint(exported)}}
        try:
            await self.kube.replace(CONFIGMAPS, self.name, body, self.namespace)
        except KubeNotFound:
            await self.kube.create(CONFIGMAPS, body, self.namespace)
