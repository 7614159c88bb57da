"""The installed protobuf modules are exactly what protos/ says, and the field numbers are SPEC §3's."""
from __future__ import annotations

import pathlib

from google.protobuf import descriptor_pb2

from nvsentinel._proto import gpu_pb2, gpu_pb2_grpc

PROTOS = pathlib.Path(__file__).resolve().parents[1] / "protos"


def test_generated_module_matches_the_proto(tmp_path):
    """Verify re-running protoc on protos/ gives the FileDescriptorProto the installed module holds."""
    import grpc_tools
    from grpc_tools import protoc

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out = tmp_path / "gpu.desc"
    rc = protoc.main([
        "protoc", f"-I{PROTOS}", f"-I{include}", f"--descriptor_set_out={out}",
        "nvidia/device/v1alpha1/gpu.proto",
    ])
    assert rc == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    installed = descriptor_pb2.FileDescriptorProto.FromString(gpu_pb2.DESCRIPTOR.serialized_pb)
    for fd in (fresh, installed):  # json_name is derived; the python generator may omit it
        for message in fd.message_type:
            for field in message.field:
                field.ClearField("json_name")
    assert fresh == installed
    assert len(installed.message_type) == len(EXPECTED)


EXPECTED = {
    "ObjectMeta": {"name": 1, "resource_version": 2, "namespace": 3},
    "ListMeta": {"resource_version": 1},
    "GetOptions": {"resource_version": 1, "namespace": 2},
    "ListOptions": {"resource_version": 1, "namespace": 2},
    "Gpu": {"metadata": 1, "spec": 2, "status": 3, "resource_version": 4},
    "GpuList": {"metadata": 1, "items": 2},
    "GpuSpec": {"uuid": 1, "pci_bus_id": 2, "serial": 3},
    "GpuStatus": {"conditions": 1, "recommended_action": 2},
    "Condition": {"type": 1, "status": 2, "last_transition_time": 3, "reason": 4, "message": 5},
    "GetGpuRequest": {"name": 1, "opts": 2},
    "GetGpuResponse": {"gpu": 1},
    "ListGpusRequest": {"opts": 1},
    "ListGpusResponse": {"gpu_list": 1},
    "WatchGpusRequest": {"opts": 1},
    "WatchGpusResponse": {"type": 1, "object": 2},
    "CreateGpuRequest": {"gpu": 1},
    "CreateGpuResponse": {"gpu": 1, "created": 2},
    "UpdateGpuRequest": {"gpu": 1},
    "UpdateGpuResponse": {"gpu": 1},
    "UpdateGpuStatusRequest": {"name": 1, "status": 2, "resource_version": 3},
    "UpdateGpuStatusResponse": {"gpu": 1},
    "DeleteGpuRequest": {"name": 1},
}


def test_field_numbers_are_the_compatibility_promise():
    """Verify every message and field number of SPEC §3, one by one, in package nvidia.device.v1alpha1."""
    fd = gpu_pb2.DESCRIPTOR
    assert fd.package == "nvidia.device.v1alpha1"
    assert fd.name == "nvidia/device/v1alpha1/gpu.proto"
    for message, fields in EXPECTED.items():
        desc = fd.message_types_by_name[message]
        got = {f.name: f.number for f in desc.fields}
        assert {k: got.get(k) for k in fields} == fields, message
    assert fd.message_types_by_name["Gpu"].fields_by_name["resource_version"].type == 3  # TYPE_INT64
    assert fd.message_types_by_name["CreateGpuResponse"].fields_by_name["created"].type == 8  # BOOL


def test_service_has_the_seven_rpcs():
    """Verify GpuService's methods, their request/response types and that only WatchGpus streams."""
    svc = gpu_pb2.DESCRIPTOR.services_by_name["GpuService"]
    methods = {m.name: (m.input_type.name, m.output_type.full_name, m.server_streaming) for m in svc.methods}
    assert methods == {
        "GetGpu": ("GetGpuRequest", "nvidia.device.v1alpha1.GetGpuResponse", False),
        "ListGpus": ("ListGpusRequest", "nvidia.device.v1alpha1.ListGpusResponse", False),
        "WatchGpus": ("WatchGpusRequest", "nvidia.device.v1alpha1.WatchGpusResponse", True),
        "CreateGpu": ("CreateGpuRequest", "nvidia.device.v1alpha1.CreateGpuResponse", False),
        "UpdateGpu": ("UpdateGpuRequest", "nvidia.device.v1alpha1.UpdateGpuResponse", False),
        "UpdateGpuStatus": ("UpdateGpuStatusRequest", "nvidia.device.v1alpha1.UpdateGpuStatusResponse", False),
        "DeleteGpu": ("DeleteGpuRequest", "google.protobuf.Empty", False),
    }
    assert hasattr(gpu_pb2_grpc, "GpuServiceStub")
