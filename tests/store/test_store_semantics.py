"""GpuStore semantics (SPEC §2.1), run against both implementations; protobuf is the oracle."""
from __future__ import annotations

import pytest
from gpus import gpu, gpu_name, status, wire

from nvsentinel._proto import gpu_pb2
from nvsentinel.errors import Conflict, InvalidObject, LimitExceeded, NotFound
from nvsentinel.types import HealthCounts

A, B, C = gpu_name(1), gpu_name(2), gpu_name(3)


@pytest.fixture
def mod(impl):
    return impl.load("store")


@pytest.fixture
def store(mod):
    return mod.GpuStore()


def snapshot(store):
    rv, records = store.list()
    return rv, [(r.name, r.resource_version, r.data, r.health) for r in records], store.counts()


def test_create_assigns_increasing_rvs_and_embeds_them(store):
    """Verify each create bumps the store RV and the stored bytes carry it in both RV fields."""
    a, created_a = store.create(gpu(A))
    b, created_b = store.create(wire(gpu(B)))
    assert (created_a, created_b) == (True, True)
    assert (a.resource_version, b.resource_version, store.resource_version) == (1, 2, 2)
    msg = b.message()
    assert msg.resource_version == 2
    assert msg.metadata.resource_version == "2"
    assert msg.metadata.name == B and msg.spec.uuid == B


def test_create_existing_is_idempotent(store):
    """Verify creating an existing name returns the stored record, created=False, and no RV bump."""
    first, _ = store.create(gpu(A, conditions=(("Ready", "True"),)))
    again, created = store.create(gpu(A, conditions=(("Ready", "False"),)))
    assert created is False
    assert again is first or again.data == first.data
    assert store.resource_version == 1
    assert store.get(A).health == "healthy"


def test_update_status_checks_rv_and_replaces_only_the_status(store):
    """Verify update_status with the right RV succeeds, a stale one raises Conflict, 0 is unconditional."""
    rec, _ = store.create(gpu(A, namespace="node-1"))
    new = store.update_status(A, status(("Ready", "False"), action="RESTART_BM"), expected_rv=rec.resource_version)
    assert new.resource_version == 2
    assert new.health == "unhealthy"
    msg = new.message()
    assert msg.status.recommended_action == "RESTART_BM"
    assert msg.metadata.namespace == "node-1" and msg.spec.uuid == A
    before = snapshot(store)
    with pytest.raises(Conflict):
        store.update_status(A, status(("Ready", "True")), expected_rv=1)
    assert snapshot(store) == before
    third = store.update_status(A, status(("Ready", "True")))
    assert third.resource_version == 3 and third.health == "healthy"


def test_update_replaces_spec_and_status_with_rv_from_the_object(store):
    """Verify update takes the expected RV from the object itself unless given, and conflicts on a stale one."""
    rec, _ = store.create(gpu(A))
    g = gpu(A, conditions=(("Ready", "Unknown"),))
    g.resource_version = 7
    with pytest.raises(Conflict):
        store.update(g)
    g.resource_version = rec.resource_version
    new = store.update(g)
    assert new.resource_version == 2 and new.health == "unknown"
    assert store.update(g, expected_rv=0).resource_version == 3


def test_delete_bumps_the_rv(store):
    """Verify delete bumps the RV (upstream did not), returns the final object, and a stale RV conflicts."""
    store.create(gpu(A))
    store.create(gpu(B))
    with pytest.raises(Conflict):
        store.delete(A, expected_rv=2)
    gone = store.delete(A, expected_rv=1)
    assert gone.resource_version == 3 == store.resource_version
    assert gone.message().metadata.resource_version == "3"
    assert A not in store and len(store) == 1
    with pytest.raises(NotFound):
        store.get(A)
    with pytest.raises(NotFound):
        store.delete(A)


def test_not_found_on_every_operation(store):
    """Verify reads and writes of an unknown GPU raise NotFound and change nothing."""
    before = snapshot(store)
    for call in (
        lambda: store.get(A),
        lambda: store.update_status(A, status()),
        lambda: store.update(gpu(A)),
        lambda: store.delete(A),
    ):
        with pytest.raises(NotFound):
            call()
    assert snapshot(store) == before


def test_reads_are_snapshots(store):
    """Verify a record read before a write is unchanged by the write."""
    store.create(gpu(A, conditions=(("Ready", "True"),)))
    held = store.get(A)
    data, rv = held.data, held.resource_version
    store.update_status(A, status(("Ready", "False")))
    assert (held.data, held.resource_version, held.health) == (data, rv, "healthy")
    with pytest.raises(AttributeError):
        held.resource_version = 99


@pytest.mark.parametrize(
    "conditions, health",
    [
        ((), "unknown"),
        ((("Ready", "True"), ("Xid", "True")), "healthy"),
        ((("Ready", "True"), ("Xid", "Unknown")), "unknown"),
        ((("Ready", "Unknown"), ("Xid", "False")), "unhealthy"),
    ],
)
def test_health_is_judged_over_all_conditions(store, conditions, health):
    """Verify any False → unhealthy, else any Unknown (or none) → unknown, else healthy, and the counts."""
    rec, _ = store.create(gpu(A, conditions=conditions))
    assert rec.health == health
    counts = store.counts()
    assert counts.total == 1 and getattr(counts, health) == 1
    store.delete(A)
    assert store.counts() == HealthCounts(0, 0, 0, 0)


def test_counts_follow_every_mutation(store):
    """Verify healthy/unhealthy/unknown counts move with creates, status updates and deletes."""
    store.create(gpu(A, conditions=(("Ready", "True"),)))
    store.create(gpu(B, conditions=(("Ready", "False"),)))
    store.create(gpu(C))
    assert store.counts() == HealthCounts(3, 1, 1, 1)
    store.update_status(B, status(("Ready", "True")))
    assert store.counts() == HealthCounts(3, 2, 0, 1)
    store.delete(A)
    assert store.counts() == HealthCounts(2, 1, 0, 1)


def test_conditions_are_truncated_to_the_newest(mod):
    """Verify more than max_conditions keeps the newest by last_transition_time and counts the drop."""
    store = mod.GpuStore(max_conditions=3)
    st = gpu_pb2.GpuStatus()
    for i, seconds in enumerate([50, 10, 40, 30, 40, 20]):
        c = st.conditions.add(type=f"T{i}", status="True")
        c.last_transition_time.seconds = seconds
    store.create(gpu(A))
    rec = store.update_status(A, st)
    # newest: 50 (T0), 40 (T4, later of the tie), 40 (T2); kept in input order
    assert [c.type for c in rec.message().status.conditions] == ["T0", "T2", "T4"]
    assert store.stats()["truncated_conditions"] == 3


def test_gpu_limit(mod):
    """Verify the max_gpus+1-th create raises LimitExceeded and an existing name still answers."""
    store = mod.GpuStore(max_gpus=2)
    store.create(gpu(A))
    store.create(gpu(B))
    before = snapshot(store)
    with pytest.raises(LimitExceeded):
        store.create(gpu(C))
    assert store.create(gpu(A))[1] is False
    assert snapshot(store) == before
    assert store.stats()["rejected"]["limit"] == 1


def test_object_size_limit(mod):
    """Verify an object over max_object_bytes raises InvalidObject and leaves the store unchanged."""
    store = mod.GpuStore(max_object_bytes=1024)
    store.create(gpu(A))
    before = snapshot(store)
    big = status(("Ready", "True"))
    big.conditions[0].message = "x" * 2000
    with pytest.raises(InvalidObject, match="limit is 1024"):
        store.update_status(A, big)
    with pytest.raises(InvalidObject):
        store.create(gpu(B, conditions=(("Ready", "True"),), action="y" * 1100))
    assert snapshot(store) == before
    assert store.stats()["rejected"]["too_large"] == 2


BAD_NAMES = [
    "",
    "gpu0",
    "GPU-",
    "GPU-12345678-1234-1234-1234-123456789ab",  # one digit short
    "GPU-12345678-1234-1234-1234-123456789abcd",
    "GPU-1234567g-1234-1234-1234-123456789abc",
    "GPU_12345678-1234-1234-1234-123456789abc",
    "MIG-GPU-12345678-1234-1234-1234-123456789abc/1",
    "MIG-GPU-12345678-1234-1234-1234-123456789abc/a/0",
    "GPU-12345678-1234-1234-1234-123456789abc\n",
    "GPU-12345678\u20131234-1234-1234-123456789abc",
]
GOOD_NAMES = [
    "GPU-12345678-1234-1234-1234-123456789abc",
    "GPU-ABCDEF01-abcd-ABCD-0000-ffffffffffff",
    "MIG-12345678-1234-1234-1234-123456789abc",
    "MIG-GPU-12345678-1234-1234-1234-123456789abc/1/0",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_refused(mod, name):
    """Verify a name that is not an NVML UUID is refused with InvalidObject and nothing changes."""
    store = mod.GpuStore()
    assert not mod.is_valid_gpu_name(name)
    with pytest.raises(InvalidObject, match="not a GPU name"):
        store.create(gpu(name))
    assert len(store) == 0 and store.resource_version == 0


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_valid_names_are_accepted(mod, name):
    """Verify GPU-, MIG- and legacy MIG-GPU-…/gi/ci names are accepted."""
    store = mod.GpuStore()
    assert mod.is_valid_gpu_name(name)
    assert store.create(gpu(name))[0].name == name


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",  # truncated varint
        b"\x0a\x05abc",  # length past the end
        b"\x08\x01",  # metadata as a varint
        b"\x0b",  # group wire type
        b"\x00",  # field number 0
        b"\x0a\x02\x0a\x80",  # truncated name length
        b"\x0a\x03\x0a\x01\xff",  # name not UTF-8
        b"\x0a" + bytes([44]) + b"\x0a\x28" + b"GPU-12345678-1234-1234-1234-123456789abc" + b"\x1a\x02\xc3\x28",
    ],
)
def test_malformed_bytes_are_refused(store, payload):
    """Verify malformed wire bytes raise InvalidObject (never another exception) and change nothing."""
    with pytest.raises(InvalidObject, match="malformed|not a GPU name"):
        store.create(payload)
    assert len(store) == 0


@pytest.mark.parametrize(
    "bad_status, match",
    [
        (status(("Ready", "Yes")), "expected True, False or Unknown"),
        (status(("", "True")), "empty type"),
        (b"\x0a\x04\x12\x02\xc3\x28", "not valid UTF-8"),
        (b"\x0a\x02\x1a\x01", "runs past the end|truncated"),
    ],
)
def test_bad_status_is_refused(store, bad_status, match):
    """Verify a status with a bad condition is refused with a message naming the problem."""
    store.create(gpu(A))
    before = snapshot(store)
    with pytest.raises(InvalidObject, match=match):
        store.update_status(A, bad_status)
    assert snapshot(store) == before


@pytest.mark.parametrize("bad", [None, 3, "text", 1.5, object(), ["GPU"]])
def test_wrong_types_are_refused(store, bad):
    """Verify wrong argument types raise InvalidObject (a ValueError) with the type named."""
    store.create(gpu(A))
    before = snapshot(store)
    with pytest.raises(InvalidObject):
        store.create(bad)
    with pytest.raises(InvalidObject):
        store.update_status(A, bad)
    if not isinstance(bad, str):
        with pytest.raises(InvalidObject, match="must be a str"):
            store.update_status(bad, status())
        with pytest.raises(InvalidObject, match="must be a str"):
            store.get(bad)
        with pytest.raises(InvalidObject, match="must be a str"):
            store.delete(bad)
    assert snapshot(store) == before


@pytest.mark.parametrize("rv", [-1, -(2**63), 2**63, 1.0, "1", None, True])
def test_bad_expected_rvs_are_refused(store, rv):
    """Verify negative, oversized and non-int expected RVs raise InvalidObject and change nothing."""
    store.create(gpu(A))
    before = snapshot(store)
    with pytest.raises(InvalidObject, match="resource version"):
        store.update_status(A, status(), expected_rv=rv)
    with pytest.raises(InvalidObject, match="resource version"):
        store.delete(A, expected_rv=rv)
    assert snapshot(store) == before


def test_negative_rv_inside_the_object_is_refused_by_update(store):
    """Verify update refuses a Gpu whose own resource_version (the expected RV) is negative."""
    store.create(gpu(A))
    g = gpu(A)
    g.resource_version = -5
    with pytest.raises(InvalidObject, match=">= 0"):
        store.update(g)


def test_unknown_fields_survive(store):
    """Verify fields this version does not know (e.g. a future GpuSpec field) pass through verbatim."""
    g = gpu(A)
    extra_spec = b"\x12\x07H100-80"  # GpuSpec field 2 (a future product name)
    extra_top = b"\x2a\x03abc"  # Gpu field 5
    data = wire(g)
    spec = wire(g.spec) + extra_spec
    raw = wire(gpu_pb2.Gpu(metadata=g.metadata)) + b"\x12" + bytes([len(spec)]) + spec + extra_top
    rec, _ = store.create(raw)
    assert extra_spec in rec.data and rec.data.endswith(extra_top)
    msg = rec.message()
    assert msg.spec.uuid == A
    assert data  # the plain object still round-trips below
    assert store.update_status(A, status(("Ready", "True"))).data.endswith(extra_top)


def test_canonical_bytes_equal_protobufs_serialization(store):
    """Verify stored bytes are what protobuf itself serializes for the same object (oracle)."""
    g = gpu(A, conditions=(("Ready", "True"), ("Xid", "False")), action="COMPONENT_RESET", namespace="n")
    g.resource_version = 42
    g.metadata.resource_version = "junk"
    rec, _ = store.create(g)
    expected = gpu_pb2.Gpu()
    expected.CopyFrom(g)
    expected.resource_version = 1
    expected.metadata.resource_version = "1"
    assert rec.data == expected.SerializeToString()
    assert rec.message() == expected


def test_list_and_list_wire(store):
    """Verify list is (rv, records in creation order) and list_wire parses as the same GpuList."""
    for name in (B, A, C):
        store.create(gpu(name, conditions=(("Ready", "True"),)))
    store.update_status(A, status(("Ready", "False")))
    rv, records = store.list()
    assert rv == 4 and [r.name for r in records] == [B, A, C]
    lst = gpu_pb2.GpuList.FromString(store.list_wire())
    assert lst.metadata.resource_version == "4"
    assert [g.SerializeToString() for g in lst.items] == [r.data for r in records]
    resp = gpu_pb2.ListGpusResponse.FromString(store.list_wire(field=1))
    assert resp.gpu_list == lst
    assert gpu_pb2.GpuList.FromString(mod_empty_list(store)).metadata.resource_version == "0"
    with pytest.raises(InvalidObject):
        store.list_wire(field=16)


def mod_empty_list(store):
    return type(store)().list_wire()


def test_limits_are_validated(mod):
    """Verify nonsensical limits are refused at construction with the field named."""
    with pytest.raises(ValueError, match="max_gpus"):
        mod.GpuStore(max_gpus=0)
    with pytest.raises(ValueError, match="max_conditions"):
        mod.GpuStore(max_conditions=-1)
    with pytest.raises(ValueError, match="max_object_bytes"):
        mod.GpuStore(max_object_bytes="big")
    with pytest.raises(ValueError, match="max_lag"):
        mod.GpuStore(max_lag=0)


def test_rejections_are_counted_by_reason(store):
    """Verify stats() counts refused writes by reason (for the cache_rejected_total metric)."""
    store.create(gpu(A))
    for call in (
        lambda: store.update_status(A, status(), expected_rv=9),
        lambda: store.update_status(B, status()),
        lambda: store.create(b"\xff"),
    ):
        with pytest.raises(Exception):
            call()
    assert store.stats()["rejected"] == {"invalid": 1, "too_large": 0, "limit": 0, "conflict": 1, "not_found": 1}
