"""The kubelet's PodResources v1 wire format, field by field, as the Kubernetes API reference gives it.

The table below is written from k8s.io/kubelet/pkg/apis/podresources/v1 (the kubelet's api.proto): a
stand-in server or reader built on a wrong number would talk to itself happily and to no real kubelet.
"""
from __future__ import annotations

import pathlib

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor as F

from nvsentinel._proto import podresources_pb2, podresources_pb2_grpc

PROTOS = pathlib.Path(__file__).resolve().parents[2] / "protos"
PROTO = "k8s/podresources/v1/api.proto"

S, I64, U64, MSG = F.TYPE_STRING, F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_MESSAGE
REP = True  # repeated

#: message → {field: (number, type, repeated, message type name or None)}
EXPECTED: dict[str, dict[str, tuple[int, int, bool, str | None]]] = {
    "ListPodResourcesRequest": {},
    "ListPodResourcesResponse": {"pod_resources": (1, MSG, REP, "PodResources")},
    "PodResources": {
        "name": (1, S, False, None),
        "namespace": (2, S, False, None),
        "containers": (3, MSG, REP, "ContainerResources"),
    },
    "ContainerResources": {
        "name": (1, S, False, None),
        "devices": (2, MSG, REP, "ContainerDevices"),
        "cpu_ids": (3, I64, REP, None),
        "memory": (4, MSG, REP, "ContainerMemory"),
        "dynamic_resources": (5, MSG, REP, "DynamicResource"),
    },
    "ContainerMemory": {
        "memory_type": (1, S, False, None),
        "size": (2, U64, False, None),
        "topology": (3, MSG, False, "TopologyInfo"),
    },
    "ContainerDevices": {
        "resource_name": (1, S, False, None),
        "device_ids": (2, S, REP, None),
        "topology": (3, MSG, False, "TopologyInfo"),
    },
    "TopologyInfo": {"nodes": (1, MSG, REP, "NUMANode")},
    "NUMANode": {"ID": (1, I64, False, None)},
    "DynamicResource": {
        "claim_name": (2, S, False, None),
        "claim_namespace": (3, S, False, None),
        "claim_resources": (4, MSG, REP, "ClaimResource"),
    },
    "ClaimResource": {
        "cdi_devices": (1, MSG, REP, "CDIDevice"),
        "driver_name": (2, S, False, None),
        "pool_name": (3, S, False, None),
        "device_name": (4, S, False, None),
    },
    "CDIDevice": {"name": (1, S, False, None)},
    "AllocatableResourcesRequest": {},
    "AllocatableResourcesResponse": {
        "devices": (1, MSG, REP, "ContainerDevices"),
        "cpu_ids": (2, I64, REP, None),
        "memory": (3, MSG, REP, "ContainerMemory"),
    },
    "GetPodResourcesRequest": {"pod_name": (1, S, False, None), "pod_namespace": (2, S, False, None)},
    "GetPodResourcesResponse": {"pod_resources": (1, MSG, False, "PodResources")},
}

METHODS = {
    "List": ("ListPodResourcesRequest", "ListPodResourcesResponse"),
    "GetAllocatableResources": ("AllocatableResourcesRequest", "AllocatableResourcesResponse"),
    "Get": ("GetPodResourcesRequest", "GetPodResourcesResponse"),
}


def test_package_and_file_are_the_kubelets():
    """Verify the wire package is `v1` (what the kubelet serves) although the module is podresources_pb2."""
    fd = podresources_pb2.DESCRIPTOR
    assert fd.package == "v1"
    assert fd.name == PROTO
    assert podresources_pb2.__name__ == "nvsentinel._proto.podresources_pb2"


def test_every_message_field_number_type_and_label():
    """Verify each message has exactly the reference's fields: name, number, type, repeated, message type."""
    fd = podresources_pb2.DESCRIPTOR
    assert set(fd.message_types_by_name) == set(EXPECTED)
    for message, fields in EXPECTED.items():
        desc = fd.message_types_by_name[message]
        assert desc.full_name == f"v1.{message}"
        proto = descriptor_pb2.DescriptorProto()
        desc.CopyToProto(proto)  # the declared label, as protoc wrote it
        got = {
            f.name: (f.number, f.type, f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                     f.type_name.removeprefix(".v1.") or None)
            for f in proto.field
        }
        assert got == fields, message
        assert all(f.type_name.startswith(".v1.") for f in proto.field if f.type == MSG), message
        assert {f.name: f.is_repeated for f in desc.fields} == {k: v[2] for k, v in fields.items()}


def test_removed_class_name_number_is_never_reused():
    """Verify DynamicResource's field 1 (class_name, removed in Kubernetes 1.31) is reserved, not taken."""
    proto = descriptor_pb2.DescriptorProto()
    podresources_pb2.DESCRIPTOR.message_types_by_name["DynamicResource"].CopyToProto(proto)
    assert [(r.start, r.end) for r in proto.reserved_range] == [(1, 2)]
    assert all(f.number != 1 for f in proto.field)


def test_service_full_method_names():
    """Verify the service `v1.PodResourcesLister`, its three unary methods and the paths a client calls."""
    svc = podresources_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert svc.full_name == "v1.PodResourcesLister"
    got = {m.name: (m.input_type.name, m.output_type.name) for m in svc.methods}
    assert got == METHODS
    assert not any(m.client_streaming or m.server_streaming for m in svc.methods)
    paths = {f"/{svc.full_name}/{m.name}" for m in svc.methods}
    assert paths == {"/v1.PodResourcesLister/List", "/v1.PodResourcesLister/GetAllocatableResources",
                     "/v1.PodResourcesLister/Get"}
    # the generated stub calls exactly those paths
    import grpc

    channel = grpc.insecure_channel("unix:///nonexistent-podresources.sock")
    try:
        stub = podresources_pb2_grpc.PodResourcesListerStub(channel)
        for name in METHODS:
            assert getattr(stub, name)._method == f"/v1.PodResourcesLister/{name}".encode()
    finally:
        channel.close()


def test_generated_module_matches_the_proto(tmp_path):
    """Verify re-running protoc on protos/ gives the FileDescriptorProto the installed module holds."""
    import grpc_tools
    from grpc_tools import protoc

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out = tmp_path / "podresources.desc"
    assert protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", f"--descriptor_set_out={out}", PROTO]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    installed = descriptor_pb2.FileDescriptorProto.FromString(podresources_pb2.DESCRIPTOR.serialized_pb)
    for fd in (fresh, installed):  # json_name is derived; the python generator may omit it
        for message in fd.message_type:
            for field in message.field:
                field.ClearField("json_name")
    assert fresh == installed


def test_wire_bytes_of_a_list_response():
    """Verify the encoding a real kubelet sends decodes: tags hand-built from the reference's numbers."""

    def ld(tag: int, payload: bytes) -> bytes:  # a length-delimited field (wire type 2)
        return bytes([tag << 3 | 2, len(payload)]) + payload

    devices = ld(1, b"nvidia.com/gpu") + ld(2, b"GPU-a") + ld(2, b"GPU-b")
    container = ld(1, b"main") + ld(2, devices)
    pod = ld(1, b"train-0") + ld(2, b"ml") + ld(3, container)
    msg = podresources_pb2.ListPodResourcesResponse.FromString(ld(1, pod))
    (p,) = msg.pod_resources
    assert (p.namespace, p.name) == ("ml", "train-0")
    (c,) = p.containers
    assert c.name == "main"
    assert c.devices[0].resource_name == "nvidia.com/gpu"
    assert list(c.devices[0].device_ids) == ["GPU-a", "GPU-b"]
