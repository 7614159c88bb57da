"""The HealthEvent publisher (SPEC §6): this node's GPU conditions from the Device API become
HealthEvent objects in Kubernetes (docs/publisher.md).

`logic` is pure (no I/O, no clock reads: time is passed in); `publisher` is the wiring (informer,
threads, Kubernetes creates, probes). Needs only `create` on healthevents: it never reads, lists or
patches them, so a node's credentials cannot touch other nodes' events.
"""
from __future__ import annotations

from nvsentinel.node.publisher.config import DEFAULT_CONDITIONS, ENV_PREFIX, PublisherSettings

__all__ = ["DEFAULT_CONDITIONS", "ENV_PREFIX", "PublisherSettings"]
