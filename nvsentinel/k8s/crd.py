"""The HealthEvent CRD: the packaged manifest and an idempotent installer that waits until it is served.

The manifest is package data (`nvsentinel/data/crds/`), the same bytes the Helm chart ships, so the
tests, the demo and a chart install all create the same schema.
"""
from __future__ import annotations

import copy
import functools
import importlib.resources
import logging
import time
from typing import Any

import yaml

from nvsentinel.k8s.errors import AlreadyExists, KubeConflict, KubeNotFound
from nvsentinel.k8s.kube import Kube
from nvsentinel.k8s.resources import CRDS, HEALTHEVENTS
from nvsentinel.policy.healthevent import GROUP, PLURAL, VERSION

logger = logging.getLogger(__name__)

__all__ = ["CRD_NAME", "MANIFEST_FILE", "crd_manifest", "install_crd", "is_established"]

CRD_NAME = f"{PLURAL}.{GROUP}"
MANIFEST_FILE = f"{CRD_NAME}.yaml"

_POLL_S = 0.1
_REPLACE_ATTEMPTS = 5


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    text = importlib.resources.files("nvsentinel").joinpath("data", "crds", MANIFEST_FILE).read_text("utf-8")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or doc.get("metadata", {}).get("name") != CRD_NAME:
        raise RuntimeError(f"packaged CRD manifest {MANIFEST_FILE} is not the {CRD_NAME} CRD")
    return doc


def crd_manifest() -> dict[str, Any]:
    """The CRD as a fresh dict (callers may change their copy)."""
    return copy.deepcopy(_load())


def is_established(crd: dict[str, Any]) -> bool:
    for cond in (crd.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Established":
            return cond.get("status") == "True"
    return False


def install_crd(kube: Kube, *, timeout: float = 30.0) -> dict[str, Any]:
    """Create the CRD, or replace an existing one with the packaged manifest; return it once served.

    Served means `Established=True` and the resource's list endpoint answering: the apiserver sets
    Established a moment before its handler serves the new type, and a create in that gap gets 404.
    A conflicting concurrent writer is retried; an `Established` that never comes raises
    `TimeoutError` naming the CRD's last conditions (e.g. `NamesAccepted=False` on a name clash).
    """
    deadline = time.monotonic() + timeout
    body = crd_manifest()
    try:
        crd = kube.create(CRDS, body)
        logger.info("crd created", extra={"kv": {"crd": CRD_NAME}})
    except AlreadyExists:
        crd = _replace(kube, body)
        logger.info("crd replaced", extra={"kv": {"crd": CRD_NAME, "resourceVersion": crd["metadata"].get(
            "resourceVersion", "")}})
    while not is_established(crd):
        if time.monotonic() >= deadline:
            conds = ", ".join(f"{c.get('type')}={c.get('status')} ({c.get('message', '')})"
                              for c in (crd.get("status") or {}).get("conditions") or ()) or "none"
            raise TimeoutError(f"CRD {CRD_NAME} not Established after {timeout:g} s; conditions: {conds}")
        time.sleep(_POLL_S)
        crd = kube.get(CRDS, CRD_NAME)
    while True:
        try:
            kube.request("GET", HEALTHEVENTS.path(), query={"limit": 1})
            return crd
        except KubeNotFound:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"CRD {CRD_NAME} is Established but /apis/{GROUP}/{VERSION}/{PLURAL} "
                                   f"still answers 404 after {timeout:g} s") from None
            time.sleep(_POLL_S)


def _replace(kube: Kube, body: dict[str, Any]) -> dict[str, Any]:
    for attempt in range(_REPLACE_ATTEMPTS):
        current = kube.get(CRDS, CRD_NAME)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            return kube.replace(CRDS, CRD_NAME, body)
        except KubeConflict:
            if attempt == _REPLACE_ATTEMPTS - 1:
                raise
            logger.info("crd replace conflicted; rereading", extra={"kv": {"crd": CRD_NAME, "attempt": attempt + 1}})
    raise AssertionError("unreachable")
