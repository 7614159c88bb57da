"""Every RPC and every error code, over real TCP and unix sockets."""
from __future__ import annotations

import grpc
import pytest
from gpus import gpu, gpu_name, status

from nvsentinel import errors
from nvsentinel._proto import gpu_pb2

A, B, C = gpu_name(1), gpu_name(2), gpu_name(3)


def test_create_is_idempotent(client):
    """Verify CreateGpu returns created=true once, then created=false with the stored object."""
    first, created = client.create_gpu(gpu(A))
    again, created_again = client.create_gpu(gpu(A, conditions=(("Ready", "False"),)))
    assert (created, created_again) == (True, False)
    assert again == first and first.resource_version == 1
    assert first.metadata.resource_version == "1"


def test_get_list_update_delete(client):
    """Verify the full lifecycle: get, list with its RV, update with RV checks, delete bumps the RV."""
    client.create_gpu(gpu(A))
    client.create_gpu(gpu(B))
    assert client.get_gpu(A).spec.uuid == A
    rv, items = client.list_gpus()
    assert rv == 2 and [g.metadata.name for g in items] == [A, B]

    updated = client.update_gpu_status(A, status(("Ready", "False"), action="RESTART_BM"), resource_version=1)
    assert updated.resource_version == 3 and updated.status.recommended_action == "RESTART_BM"
    with pytest.raises(errors.Conflict):
        client.update_gpu_status(A, status(("Ready", "True")), resource_version=1)

    whole = gpu(B, conditions=(("Ready", "True"),))
    whole.resource_version = 99
    with pytest.raises(errors.Conflict):
        client.update_gpu(whole)
    whole.resource_version = 2
    assert client.update_gpu(whole).resource_version == 4

    client.delete_gpu(A)
    rv, items = client.list_gpus()
    assert rv == 5 and [g.metadata.name for g in items] == [B]


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda c: c.get_gpu(C), errors.NotFound),
        (lambda c: c.delete_gpu(C), errors.NotFound),
        (lambda c: c.update_gpu_status(C, status()), errors.NotFound),
        (lambda c: c.update_gpu(gpu(C)), errors.NotFound),
        (lambda c: c.create_gpu(gpu("gpu-zero")), errors.InvalidObject),
        (lambda c: c.update_gpu_status(A, status(("Ready", "Maybe"))), errors.InvalidObject),
        (lambda c: c.update_gpu_status(A, status(("Ready", "True")), resource_version=-3), errors.InvalidObject),
        (lambda c: c.create_gpu(gpu_pb2.Gpu()), errors.InvalidObject),
    ],
)
def test_error_codes(client, call, error):
    """Verify each failure reaches the client as its typed error (mapped from the gRPC code)."""
    client.create_gpu(gpu(A))
    with pytest.raises(error):
        call(client)
    assert client.get_gpu(A).resource_version == 1  # nothing changed, still serving


def test_gpu_limit_is_resource_exhausted(make_server):
    """Verify creating past max_gpus gives RESOURCE_EXHAUSTED."""
    from nvsentinel.node.client import DeviceApiClient

    server = make_server(max_gpus=2)
    with DeviceApiClient(server.tcp) as c:
        c.create_gpu(gpu(A))
        c.create_gpu(gpu(B))
        with pytest.raises(errors.LimitExceeded):
            c.create_gpu(gpu(C))


def raw_call(target: str, method: str, payload: bytes, timeout: float = 5):
    with grpc.insecure_channel(target) as channel:
        fn = channel.unary_unary(f"/nvidia.device.v1alpha1.GpuService/{method}")
        return fn(payload, timeout=timeout)


@pytest.mark.parametrize("method", ["GetGpu", "ListGpus", "CreateGpu", "UpdateGpu", "UpdateGpuStatus", "DeleteGpu"])
def test_malformed_requests_are_invalid_argument(server, method):
    """Verify garbage request bytes get INVALID_ARGUMENT with a message, and the server keeps serving."""
    server.run_sync(server.store.create, gpu(A))
    with pytest.raises(grpc.RpcError) as info:
        raw_call(server.tcp, method, b"\x0a\xff\xff\xff")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in info.value.details()
    ok = gpu_pb2.GetGpuResponse.FromString(raw_call(server.tcp, "GetGpu", gpu_pb2.GetGpuRequest(name=A).SerializeToString()))
    assert ok.gpu.metadata.name == A


def test_wrong_typed_fields_are_invalid_argument(server):
    """Verify a request whose fields carry the wrong wire type is refused as INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as info:
        raw_call(server.tcp, "UpdateGpuStatus", b"\x08\x01")  # name as a varint
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_requests_are_refused(make_server):
    """Verify a request over --max-recv-bytes is refused (RESOURCE_EXHAUSTED), one over the object cap
    is INVALID_ARGUMENT, and the server keeps serving."""
    server = make_server(max_recv_bytes=70_000, max_object_bytes=4096)
    big = status(("Ready", "True"))
    big.conditions[0].message = "x" * 100_000
    req = gpu_pb2.UpdateGpuStatusRequest(name=A, status=big).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        raw_call(server.tcp, "UpdateGpuStatus", req)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    server.run_sync(server.store.create, gpu(A))
    big.conditions[0].message = "x" * 10_000
    req = gpu_pb2.UpdateGpuStatusRequest(name=A, status=big).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        raw_call(server.tcp, "UpdateGpuStatus", req)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "limit is 4096" in info.value.details()
    assert gpu_pb2.GetGpuResponse.FromString(
        raw_call(server.tcp, "GetGpu", gpu_pb2.GetGpuRequest(name=A).SerializeToString())
    ).gpu.resource_version == 1


def test_responses_are_wire_compatible_with_protobuf(server):
    """Verify hand-framed responses parse as the generated response types, byte for byte."""
    server.run_sync(server.store.create, gpu(A, conditions=(("Ready", "True"),)))
    raw = raw_call(server.tcp, "GetGpu", gpu_pb2.GetGpuRequest(name=A).SerializeToString())
    resp = gpu_pb2.GetGpuResponse.FromString(raw)
    assert resp.SerializeToString() == raw
    created = gpu_pb2.CreateGpuResponse.FromString(
        raw_call(server.tcp, "CreateGpu", gpu_pb2.CreateGpuRequest(gpu=gpu(B)).SerializeToString())
    )
    assert created.created is True and created.gpu.metadata.resource_version == "2"
