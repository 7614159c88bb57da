"""The per-GPU drain scope policy (pure): when a drain may take only the faulty GPUs' pods, and when the node may
stay schedulable (nvsentinel/policy/drainscope.py)."""
from __future__ import annotations

import datetime as dt

import pytest

from nvsentinel.policy.drainscope import (
    DEFAULT_GPU_RESOURCE, GpuScope, gpu_scope, leaves_node_schedulable, parse_quantity_int,
)
from nvsentinel.policy.handoff import STRATEGY_ANNOTATION
from nvsentinel.policy.healthevent import (
    ENTITY_GPU, ENTITY_PCI, DrainScope, Entity, HealthEvent, HealthEventSpec, PodMapping, PodRef,
)
from nvsentinel.xid import Action

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
GPU_A, GPU_B = "GPU-aaaaaaaa-0000-0000-0000-000000000001", "GPU-bbbbbbbb-0000-0000-0000-000000000002"
MAPPING = PodMapping("nvidia.com/gpu", (PodRef("team", "on-a", (GPU_A,)), PodRef("team", "on-b", (GPU_B,)),
                                        PodRef("team", "on-both", (GPU_A, GPU_B)), PodRef("team", "no-device")),
                     read_at=T0)


def event(*, gpus: tuple[str, ...] = (GPU_A,), action: Action = Action.COMPONENT_RESET,
          mapping: PodMapping | None = MAPPING, strategy: str | None = None) -> HealthEvent:
    entities = tuple(Entity(ENTITY_GPU, g) for g in gpus) + (Entity(ENTITY_PCI, "0000:17:00.0"),)
    spec = HealthEventSpec(source="test", node_name="n1", component_class="GPU", check_name="xid-error-check",
                           is_fatal=True, is_healthy=False, detected_at=T0, recommended_action=action,
                           error_codes=("79",), entities_impacted=entities, pod_mapping=mapping)
    return HealthEvent(name="ev-1", spec=spec, annotations={STRATEGY_ANNOTATION: strategy} if strategy else {})


def test_node_scope_never_applies_and_gives_no_reason() -> None:
    """Verify --drain-scope node: no GPU scope and no fallback reason (nothing was asked for)."""
    assert gpu_scope(event(), DrainScope.NODE) == (None, "")
    assert gpu_scope(event(gpus=()), "node") == (None, "")


def test_gpu_scope_takes_the_mapped_pods_on_the_events_gpus_only() -> None:
    """Verify the scope holds the pods whose devices include an event GPU: not another GPU's, not device-less."""
    scope, why = gpu_scope(event(), DrainScope.GPU)
    assert why == ""
    assert scope == GpuScope((GPU_A,), (MAPPING.pods[0], MAPPING.pods[2]), "nvidia.com/gpu")
    both, _ = gpu_scope(event(gpus=(GPU_A, GPU_B)), DrainScope.GPU)
    assert both is not None and [p.name for p in both.pods] == ["on-a", "on-b", "on-both"]


def test_gpu_scope_with_an_empty_mapping_is_a_scope_with_no_pod() -> None:
    """Verify a readable mapping naming no pod on the GPU is a scope (nothing to evict), not a fallback."""
    scope, why = gpu_scope(event(mapping=PodMapping("nvidia.com/gpu", (), read_at=T0)), DrainScope.GPU)
    assert why == "" and scope is not None and scope.pods == ()


def test_gpu_scope_defaults_the_resource_name() -> None:
    """Verify a mapping without resourceName is read as nvidia.com/gpu (what leaves_node_schedulable compares)."""
    scope, _ = gpu_scope(event(mapping=PodMapping("", MAPPING.pods)), DrainScope.GPU)
    assert scope is not None and scope.resource_name == DEFAULT_GPU_RESOURCE == "nvidia.com/gpu"


@pytest.mark.parametrize(("kw", "needle"), [
    ({"gpus": ()}, "names no GPU"),
    ({"action": Action.RESTART_BM}, "recommended action RESTART_BM acts on the whole node"),
    ({"action": Action.RESTART_VM}, "RESTART_VM"),
    ({"action": Action.REPLACE_VM}, "REPLACE_VM"),
    ({"strategy": "reboot"}, "remediation strategy reboot acts on the whole node"),
    ({"strategy": " Terminate "}, "remediation strategy terminate"),
    ({"mapping": None}, "records no pod mapping"),
    ({"mapping": PodMapping("nvidia.com/gpu", (), error="dial unix /var/lib/kubelet/pod-resources: no such file")},
     "the pod mapping could not be read: dial unix"),
])
def test_gpu_scope_falls_back_to_the_node_saying_why(kw: dict, needle: str) -> None:
    """Verify each fallback: no GPU, a node-wide action or strategy, no mapping, a mapping error."""
    scope, why = gpu_scope(event(**kw), DrainScope.GPU)
    assert scope is None and needle in why


def test_a_named_gpu_strategy_overrides_a_node_wide_action() -> None:
    """Verify a strategy annotation that is not node-wide keeps the GPU scope even for a RESTART_BM action."""
    scope, why = gpu_scope(event(action=Action.RESTART_BM, strategy="component-reset"), DrainScope.GPU)
    assert why == "" and scope is not None


def test_a_long_mapping_error_is_cut() -> None:
    """Verify the reason carries at most 200 characters of the node-written error."""
    _, why = gpu_scope(event(mapping=PodMapping(error="x" * 5000)), DrainScope.GPU)
    assert why.count("x") == 200


def node(capacity: object, allocatable: object, resource: str = "nvidia.com/gpu") -> dict:
    return {"status": {"capacity": {resource: capacity, "cpu": "64"}, "allocatable": {resource: allocatable}}}


@pytest.mark.parametrize(("n", "expected"), [
    (node("8", "7"), True),
    (node("8", "0"), True),
    (node(8, 7), True),
    (node("8", "8"), False),
    (node("8", "9"), False),
    (node("8", None), False),
    (node(None, "7"), False),
    (node("8", "-1"), False),
    (node("8", "7.5"), False),
    (node("8Ki", "7"), False),
    ({"status": {}}, False),
    ({}, False),
])
def test_leaves_node_schedulable_only_when_the_kubelet_withholds_a_gpu(n: dict, expected: bool) -> None:
    """Verify allocatable < capacity (whole numbers) is the only case the node may stay schedulable."""
    assert leaves_node_schedulable(n) is expected


def test_leaves_node_schedulable_reads_the_mapped_resource() -> None:
    """Verify another resource name is compared when the mapping names one."""
    n = node("4", "3", resource="example.com/gpu")
    assert leaves_node_schedulable(n, "example.com/gpu") and not leaves_node_schedulable(n)


def test_parse_quantity_int() -> None:
    """Verify whole-number quantities parse and anything else is None."""
    assert (parse_quantity_int("8"), parse_quantity_int(3), parse_quantity_int("1k"), parse_quantity_int(None)) == (
        8, 3, None, None)
