"""The PodResources reader against the stand-in kubelet, over a real unix socket and real gRPC."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time

import grpc
import pytest

from nvsentinel._proto import podresources_pb2 as pb
from nvsentinel._proto import podresources_pb2_grpc as pb_grpc
from nvsentinel.devtools.podresources import PodResourcesServer
from nvsentinel.node.podresources import (
    DeadlineExceeded, PodResourcesError, PodResourcesReader, RpcFailed, SocketMissing, UntrustedMapping,
    gpu_of_device, pods_holding,
)
from nvsentinel.policy.healthevent import MAX_MAPPED_PODS, PodRef

GPU = "nvidia.com/gpu"
X = "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb"
Y = "GPU-976baef6-3b1f-dc48-2908-168925b1cdbf"
Z = "GPU-0d1b0f43-1453-595a-d607-8ca6a707ec5e"


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="nvs-pr-", dir="/tmp")  # a unix socket path is at most 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def kubelet(sock_dir):
    server = PodResourcesServer(os.path.join(sock_dir, "kubelet.sock")).start()
    yield server
    server.stop()


def reader(server: PodResourcesServer, timeout: float = 5.0) -> PodResourcesReader:
    return PodResourcesReader(server.socket_path, timeout=timeout)


def test_maps_pods_by_gpu_uuid(kubelet):
    """Verify only the pods holding the asked GPU come back, each with that GPU as its device."""
    kubelet.set_pod("ml", "on-x", {"main": {GPU: [X]}})
    kubelet.set_pod("ml", "on-y", {"main": {GPU: [Y]}})
    kubelet.set_pod("web", "no-gpu", {"main": {}})
    assert reader(kubelet).pods_for([X]) == (PodRef("ml", "on-x", (X,)),)
    assert reader(kubelet).pods_for([Y]) == (PodRef("ml", "on-y", (Y,)),)
    assert reader(kubelet).pods_for([Z]) == ()
    got = reader(kubelet).pods_for([X, Y])
    assert sorted(p.key for p in got) == [("ml", "on-x"), ("ml", "on-y")]
    assert kubelet.calls("List") == 4


def test_several_containers_are_merged_per_pod(kubelet):
    """Verify a pod's containers are one entry whose devices are the asked GPUs it holds, each once."""
    kubelet.set_pod("ml", "multi", {
        "init": {GPU: [X]},
        "trainer": {GPU: [X, Y]},
        "sidecar": {GPU: [Z]},
    })
    (pod,) = reader(kubelet).pods_for([X, Y])
    assert pod.key == ("ml", "multi")
    assert pod.devices == (X, Y)
    (pod,) = reader(kubelet).pods_for([Z])
    assert pod.devices == (Z,)


def test_other_resources_are_ignored(kubelet):
    """Verify devices of another resource (even with a GPU's UUID) and other resource names map nothing."""
    kubelet.set_pod("net", "rdma", {"main": {"rdma/hca": ["mlx5_0"], "example.com/gpu": [X]}})
    kubelet.set_pod("ml", "on-x", {"main": {GPU: [X], "rdma/hca": ["mlx5_1"]}})
    assert reader(kubelet).pods_for([X]) == (PodRef("ml", "on-x", (X,)),)
    # the resource name is the reader's setting (or the call's)
    assert PodResourcesReader(kubelet.socket_path, resource_name="example.com/gpu").pods_for([X]) == (
        PodRef("net", "rdma", (X,)),)
    assert reader(kubelet).pods_for([X], "example.com/gpu") == (PodRef("net", "rdma", (X,)),)


def test_time_sliced_replicas_name_their_gpu(kubelet):
    """Verify a time-sliced replica id (<uuid>::<n>) maps its pod to that GPU, recorded by UUID."""
    kubelet.set_pod("ml", "share-0", {"main": {GPU: [f"{X}::0"]}})
    kubelet.set_pod("ml", "share-1", {"main": {GPU: [f"{X}::1"]}})
    kubelet.set_pod("ml", "share-y", {"main": {GPU: [f"{Y}::0"]}})
    got = reader(kubelet).pods_for([X])
    assert got == (PodRef("ml", "share-0", (X,)), PodRef("ml", "share-1", (X,)))
    assert gpu_of_device(f"{X}::12") == X
    assert gpu_of_device(X) == X
    assert gpu_of_device("MIG-0d1b0f43-1453-595a-d607-8ca6a707ec5e") == ""
    assert gpu_of_device(f"{X}::") == ""


def test_untrusted_answers_are_errors_not_short_lists(kubelet):
    """Verify MIG devices, a non-UUID device id and an overlong pod name make the read fail (full-node drain)."""
    kubelet.set_pod("ml", "on-x", {"main": {GPU: [X]}})
    kubelet.set_pod("ml", "mig", {"main": {"nvidia.com/mig-1g.10gb": ["MIG-0d1b0f43-1453-595a-d607-8ca6a707ec5e"]}})
    with pytest.raises(UntrustedMapping, match="MIG devices in use"):
        reader(kubelet).pods_for([X])
    kubelet.remove_pod("ml", "mig")
    kubelet.set_pod("ml", "renamed", {"main": {GPU: ["gpu0"]}})
    with pytest.raises(UntrustedMapping, match="not a GPU UUID"):
        reader(kubelet).pods_for([X])
    kubelet.remove_pod("ml", "renamed")
    kubelet.set_pod("ml", "n" * 254, {"main": {GPU: [X]}})
    with pytest.raises(UntrustedMapping, match="bounds"):
        reader(kubelet).pods_for([X])
    kubelet.remove_pod("ml", "n" * 254)
    assert reader(kubelet).pods_for([X]) == (PodRef("ml", "on-x", (X,)),)


def test_at_most_max_mapped_pods():
    """Verify MAX_MAPPED_PODS pods map, and one more is an error (the CRD could not hold them)."""
    def answer(n: int) -> pb.ListPodResourcesResponse:
        return pb.ListPodResourcesResponse(pod_resources=[
            pb.PodResources(namespace="ml", name=f"p{i}", containers=[pb.ContainerResources(
                name="c", devices=[pb.ContainerDevices(resource_name=GPU, device_ids=[f"{X}::{i}"])])])
            for i in range(n)])

    assert len(pods_holding(answer(MAX_MAPPED_PODS), [X])) == MAX_MAPPED_PODS
    with pytest.raises(UntrustedMapping, match=f"more than {MAX_MAPPED_PODS} pods"):
        pods_holding(answer(MAX_MAPPED_PODS + 1), [X])


def test_socket_missing(sock_dir):
    """Verify a missing socket, and a path that is not a socket, raise SocketMissing naming the path."""
    path = os.path.join(sock_dir, "kubelet.sock")
    with pytest.raises(SocketMissing, match="no PodResources socket at") as err:
        PodResourcesReader(path).pods_for([X])
    assert path in str(err.value)
    open(path, "w").close()
    with pytest.raises(SocketMissing, match="not a unix socket"):
        PodResourcesReader(path).pods_for([X])


def test_stale_socket_no_listener(sock_dir):
    """Verify a socket file nobody listens on (a kubelet that died) is an RPC failure, at once."""
    path = os.path.join(sock_dir, "kubelet.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody accepts
    with pytest.raises(RpcFailed, match="UNAVAILABLE"):
        PodResourcesReader(path, timeout=30).pods_for([X])


def test_server_unavailable(kubelet):
    """Verify an UNAVAILABLE answer raises RpcFailed with the code, and a healed server answers again."""
    kubelet.set_pod("ml", "on-x", {"main": {GPU: [X]}})
    kubelet.fail()
    with pytest.raises(RpcFailed, match="List failed: UNAVAILABLE") as err:
        reader(kubelet).pods_for([X])
    assert isinstance(err.value, PodResourcesError)
    assert err.value.reason == str(err.value) and "\n" not in err.value.reason
    kubelet.fail(grpc.StatusCode.UNIMPLEMENTED)
    with pytest.raises(RpcFailed, match="UNIMPLEMENTED"):
        reader(kubelet).pods_for([X])
    kubelet.heal()
    assert reader(kubelet).pods_for([X]) == (PodRef("ml", "on-x", (X,)),)


def test_server_hang_is_a_deadline(kubelet):
    """Verify a kubelet that never answers raises DeadlineExceeded after about the timeout, not later."""
    kubelet.set_pod("ml", "on-x", {"main": {GPU: [X]}})
    kubelet.hang()
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="did not answer List within 0.5s"):
        reader(kubelet, timeout=0.5).pods_for([X])
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < 20  # the deadline ended it (a busy machine may be slow to notice, never early)
    assert kubelet.calls("List") == 1
    kubelet.heal()
    assert reader(kubelet).pods_for([X]) == (PodRef("ml", "on-x", (X,)),)


def test_reader_validates_its_settings():
    """Verify a relative socket path and a timeout outside (0, 60] are refused at construction."""
    with pytest.raises(ValueError, match="absolute"):
        PodResourcesReader("kubelet.sock")
    for bad in (0, -1, 61):
        with pytest.raises(ValueError, match="timeout"):
            PodResourcesReader("/x.sock", timeout=bad)


def test_stand_in_serves_get_and_allocatable(kubelet):
    """Verify the stand-in's Get (and NOT_FOUND) and GetAllocatableResources speak the v1 wire format."""
    kubelet.set_pod("ml", "on-x", {"main": {GPU: [X]}})
    kubelet.set_allocatable({GPU: [X, Y]})
    with grpc.insecure_channel(f"unix://{kubelet.socket_path}") as ch:
        stub = pb_grpc.PodResourcesListerStub(ch)
        got = stub.Get(pb.GetPodResourcesRequest(pod_name="on-x", pod_namespace="ml"), timeout=10)
        assert got.pod_resources.containers[0].devices[0].device_ids == [X]
        with pytest.raises(grpc.RpcError) as err:
            stub.Get(pb.GetPodResourcesRequest(pod_name="gone", pod_namespace="ml"), timeout=10)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        alloc = stub.GetAllocatableResources(pb.AllocatableResourcesRequest(), timeout=10)
        assert [(d.resource_name, list(d.device_ids)) for d in alloc.devices] == [(GPU, [X, Y])]
    assert kubelet.calls("Get") == 2 and kubelet.calls("GetAllocatableResources") == 1


def test_stopped_stand_in_removes_its_socket(sock_dir):
    """Verify stopping the stand-in leaves the reader a missing socket (the publisher's 'kubelet gone' case)."""
    server = PodResourcesServer(os.path.join(sock_dir, "kubelet.sock")).start()
    server.set_pod("ml", "on-x", {"main": {GPU: [X]}})
    assert PodResourcesReader(server.socket_path).pods_for([X])
    server.stop()
    with pytest.raises(SocketMissing):
        PodResourcesReader(server.socket_path).pods_for([X])
