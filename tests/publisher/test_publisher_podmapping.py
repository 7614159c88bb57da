"""spec.podMapping: the publisher records which pods hold a fatal event's GPUs, read from the stand-in kubelet
over a real unix socket (the real kube-apiserver runs of the same are in tests/k8s/test_podresources_e2e.py)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest
from pubhelpers import NOW, T0, UUIDS, FakeKube, make_gpu, nvml

from nvsentinel.devtools.podresources import PodResourcesServer
from nvsentinel.node.podresources import PodResourcesReader
from nvsentinel.node.publisher.config import PublisherSettings
from nvsentinel.node.publisher.logic import Context, mapped_gpus, observe, with_pod_mapping
from nvsentinel.node.publisher.podmapping import PodMapper
from nvsentinel.node.publisher.publisher import Publisher
from nvsentinel.policy.healthevent import HealthEvent, PodMapping, PodRef
from nvsentinel.xid import default_catalog

NODE = "node-a"
GPU = "nvidia.com/gpu"
X, Y, Z = UUIDS
FAST = dict(backoff_initial=0.01, backoff_max=0.05, debounce=0.0)


@pytest.fixture
def kubelet():
    d = tempfile.mkdtemp(prefix="nvs-pm-", dir="/tmp")
    server = PodResourcesServer(os.path.join(d, "kubelet.sock")).start()
    server.set_pod("ml", "on-x", {"main": {GPU: [X]}})
    server.set_pod("ml", "on-y", {"main": {GPU: [Y]}, "side": {"rdma/hca": ["mlx5_0"]}})
    server.set_pod("ml", "on-xz", {"a": {GPU: [Z]}, "b": {GPU: [X]}})
    yield server
    server.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def started():
    pubs: list[Publisher] = []

    def start(kube, **kw) -> Publisher:
        pub = Publisher(kube, node_name=NODE, **{**FAST, **kw}).start()
        pubs.append(pub)
        return pub

    yield start
    for p in pubs:
        p.stop(flush_timeout=1.0)


def sample(pub: Publisher, result: str) -> float:
    return pub.metrics.registry.get_sample_value("nvsentinel_publisher_pod_mapping_reads_total",
                                                 {"result": result}) or 0.0


def spec_of(kube: FakeKube, name: str) -> dict:
    return kube.objects[name]["spec"]


def wait(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# ---- which events get a mapping (pure) ----

def _events(*conds, uuid=X, view=None):
    ctx = Context(node_name=NODE, catalog=default_catalog())
    return observe(view, make_gpu(uuid, *conds), NOW, ctx)


def test_only_fatal_gpu_events_are_mapped():
    """Verify mapped_gpus: a fatal GPU event's UUIDs; () for healthy, Unknown (non-fatal) and NVSwitch events."""
    _, (fatal,) = _events(nvml("False", "Xid48", T0))
    assert fatal.spec.is_fatal and mapped_gpus(fatal) == (X,)
    view, _ = _events(nvml("False", "Xid48", T0))
    _, (healthy,) = _events(nvml("True", "Recovered", T0 + 5), view=view)
    assert healthy.spec.is_healthy and mapped_gpus(healthy) == ()
    _, (unknown,) = _events(nvml("Unknown", "NvmlUnresponsive", T0))
    assert not unknown.spec.is_fatal and mapped_gpus(unknown) == ()
    _, (switch,) = _events(nvml("False", "SXid24007", T0))
    assert switch.spec.component_class == "NVSwitch" and mapped_gpus(switch) == ()


def test_with_pod_mapping_writes_the_wire_field():
    """Verify the mapping lands in the create body as spec.podMapping, camelCase, and reads back equal."""
    _, (fatal,) = _events(nvml("False", "Xid48", T0))
    mapping = PodMapping(GPU, (PodRef("ml", "on-x", (X,)),), "", NOW)
    ev = with_pod_mapping(fatal, mapping)
    body = ev.create_body()
    assert body["spec"]["podMapping"] == {"resourceName": GPU, "readAt": body["spec"]["podMapping"]["readAt"],
                                          "pods": [{"namespace": "ml", "name": "on-x", "devices": [X]}]}
    assert HealthEvent.from_dict(body).spec.pod_mapping == mapping
    assert "podMapping" not in fatal.create_body()["spec"]


# ---- the publisher with the stand-in kubelet ----

def test_fatal_event_names_only_the_pods_on_its_gpu(started, kubelet):
    """Verify a fatal XID on GPU X records the pods holding X (containers merged), not Y's; its recovery gets none."""
    kube = FakeKube()
    pub = started(kube, pod_resources=PodResourcesReader(kubelet.socket_path, timeout=10))
    pub.on_add(make_gpu(X, nvml("False", "Xid48", T0), action="COMPONENT_RESET"))
    assert pub.wait_idle(30)
    (name,) = kube.order
    m = spec_of(kube, name)["podMapping"]
    assert m["resourceName"] == GPU and "error" not in m and m["readAt"]
    assert m["pods"] == [{"namespace": "ml", "name": "on-x", "devices": [X]},
                         {"namespace": "ml", "name": "on-xz", "devices": [X]}]
    assert sample(pub, "ok") == 1 and sample(pub, "error") == 0
    pub.on_update(None, make_gpu(X, nvml("True", "Recovered", T0 + 5)))
    assert pub.wait_idle(30)
    assert "podMapping" not in spec_of(kube, kube.order[1])
    assert kubelet.calls("List") == 1  # the healthy event asked nothing


def test_without_the_socket_setting_nothing_is_read(started, kubelet):
    """Verify a publisher without pod_resources publishes no podMapping and never calls the kubelet."""
    kube = FakeKube()
    pub = started(kube)
    pub.on_add(make_gpu(X, nvml("False", "Xid48", T0)))
    assert pub.wait_idle(30)
    assert "podMapping" not in spec_of(kube, kube.order[0])
    assert kubelet.calls("List") == 0 and sample(pub, "ok") == sample(pub, "error") == 0


def test_stopped_kubelet_records_the_error_and_publishes(started, kubelet):
    """Verify a missing socket → pods [] and error, the event published all the same, counted as an error."""
    kubelet.stop()
    kube = FakeKube()
    pub = started(kube, pod_resources=PodResourcesReader(kubelet.socket_path, timeout=10))
    pub.on_add(make_gpu(X, nvml("False", "Xid48", T0)))
    assert pub.wait_idle(30)
    m = spec_of(kube, kube.order[0])["podMapping"]
    assert m["pods"] == [] and m["error"] == f"no PodResources socket at {kubelet.socket_path}"
    assert sample(pub, "error") == 1 and sample(pub, "ok") == 0


def test_failing_kubelet_records_the_code_and_publishes(started, kubelet):
    """Verify an UNAVAILABLE answer gives an error mapping naming the code, and the event is published."""
    kube = FakeKube()
    pub = started(kube, pod_resources=PodResourcesReader(kubelet.socket_path, timeout=10))
    kubelet.fail()
    pub.on_add(make_gpu(X, nvml("False", "Xid48", T0)))
    assert pub.wait_idle(30)
    m = spec_of(kube, kube.order[0])["podMapping"]
    assert m["pods"] == [] and m["error"].startswith("List failed: UNAVAILABLE")
    assert sample(pub, "error") == 1


def test_hanging_kubelet_only_delays_the_event_by_the_timeout(started, kubelet):
    """Verify a kubelet that never answers costs the timeout, then the event goes out with the deadline error."""
    kube = FakeKube()
    pub = started(kube, pod_resources=PodResourcesReader(kubelet.socket_path, timeout=0.5))
    kubelet.hang()
    t0 = time.monotonic()
    pub.on_add(make_gpu(X, nvml("False", "Xid48", T0)))
    wait(lambda: len(kube.order) == 1, what="the event")
    assert time.monotonic() - t0 >= 0.45  # it waited for the deadline, no more than it had to (see the reader tests)
    m = spec_of(kube, kube.order[0])["podMapping"]
    assert m == {"resourceName": GPU, "pods": [], "error": "the kubelet did not answer List within 0.5s",
                 "readAt": m["readAt"]}
    assert sample(pub, "error") == 1 and kubelet.calls("List") == 1
    kubelet.heal()


def test_untrusted_answer_is_an_error(started, kubelet):
    """Verify MIG devices on the node make the mapping an error (the drain must take the whole node)."""
    kubelet.set_pod("ml", "mig", {"main": {"nvidia.com/mig-1g.10gb": ["MIG-1b2d3c4e-0000-1111-2222-333333333333"]}})
    kube = FakeKube()
    pub = started(kube, pod_resources=PodResourcesReader(kubelet.socket_path, timeout=10))
    pub.on_add(make_gpu(X, nvml("False", "Xid48", T0)))
    assert pub.wait_idle(30)
    m = spec_of(kube, kube.order[0])["podMapping"]
    assert m["pods"] == [] and m["error"].startswith("MIG devices in use (nvidia.com/mig-1g.10gb)")


# ---- one read per worker pass ----

def _fatal(uuid: str) -> HealthEvent:
    _, (ev,) = _events(nvml("False", "Xid48", T0), uuid=uuid)
    return ev


def test_one_read_serves_a_pass_then_reads_again(kubelet):
    """Verify events judged in one pass share one List (a failure too), and the next pass reads afresh."""
    counted: list[str] = []
    mapper = PodMapper(PodResourcesReader(kubelet.socket_path, timeout=10), count=counted.append)
    mapper.new_pass()
    a, b = mapper.map(_fatal(X)), mapper.map(_fatal(Y))
    assert kubelet.calls("List") == 1
    assert [p.name for p in a.spec.pod_mapping.pods] == ["on-x", "on-xz"]
    assert [p.name for p in b.spec.pod_mapping.pods] == ["on-y"]
    assert a.spec.pod_mapping.read_at == b.spec.pod_mapping.read_at
    kubelet.fail()
    mapper.new_pass()
    c, d = mapper.map(_fatal(Z)), mapper.map(_fatal(X))
    assert kubelet.calls("List") == 2  # the failure is shared too: a stuck kubelet costs one timeout per pass
    assert c.spec.pod_mapping.error == d.spec.pod_mapping.error != ""
    kubelet.heal()
    mapper.new_pass()
    assert [p.name for p in mapper.map(_fatal(Z)).spec.pod_mapping.pods] == ["on-xz"]
    assert kubelet.calls("List") == 3
    assert counted == ["ok", "ok", "error", "error", "ok"]


def test_a_burst_of_gpus_in_one_pass_costs_one_hanging_read(kubelet):
    """Verify three GPUs judged in one pass against a hanging kubelet cost one read (one timeout), all published."""
    kube = FakeKube()
    pub = Publisher(kube, node_name=NODE, pod_resources=PodResourcesReader(kubelet.socket_path, timeout=0.5),
                    **FAST)
    kubelet.hang()
    for uuid in (X, Y, Z):  # handed over before the worker starts: one batch
        pub.on_add(make_gpu(uuid, nvml("False", "Xid48", T0)))
    pub.start()
    try:
        assert pub.wait_idle(30)
    finally:
        pub.stop(flush_timeout=1.0)
    assert len(kube.order) == 3
    assert kubelet.calls("List") == 1
    assert {spec_of(kube, n)["podMapping"]["error"] for n in kube.order} == {
        "the kubelet did not answer List within 0.5s"}
    assert sample(pub, "error") == 3
    kubelet.heal()


# ---- settings ----

@pytest.mark.parametrize("kw, match", [
    ({"pod_resources_socket": "kubelet.sock"}, "--pod-resources-socket must be an absolute path"),
    ({"pod_resources_socket": "/" + "x" * 107}, "at most 107 bytes"),
    ({"pod_resources_resource": "gpu"}, "--pod-resources-resource"),
    ({"pod_resources_resource": "nvidia.com/gpu/x"}, "--pod-resources-resource"),
    ({"pod_resources_timeout": 0.0}, "--pod-resources-timeout"),
    ({"pod_resources_timeout": 31.0}, "--pod-resources-timeout"),
])
def test_settings_are_validated(kw, match):
    """Verify the three settings' bounds, each refusal naming its flag."""
    with pytest.raises(ValueError, match=match):
        PublisherSettings(**kw).validate()


def test_settings_defaults():
    """Verify the defaults: off, nvidia.com/gpu, 2 s, and a set socket validates."""
    s = PublisherSettings()
    assert (s.pod_resources_socket, s.pod_resources_resource, s.pod_resources_timeout) == ("", GPU, 2.0)
    PublisherSettings(pod_resources_socket="/var/lib/kubelet/pod-resources/kubelet.sock",
                      pod_resources_resource="example.com/accel", pod_resources_timeout=0.5).validate()
