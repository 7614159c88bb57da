"""The controller runtime on a real kube-apiserver: informer, leader election, manager, recorder."""
from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest
from cluster import ControlPlane
from kubelet import make_node
from prometheus_client import CollectorRegistry

from nvsentinel.k8s import AlreadyExists, AsyncKube, Kube, ServerUnavailable
from nvsentinel.k8s.resources import EVENTS, LEASES, NAMESPACES, NODES
from nvsentinel.k8s.runtime.controller import Result
from nvsentinel.k8s.runtime.informer import Informer
from nvsentinel.k8s.runtime.leader import LeaderElectionConfig
from nvsentinel.k8s.runtime.manager import Manager
from nvsentinel.k8s.runtime.recorder import EventRecorder

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def compacting_plane() -> Iterator[ControlPlane]:
    """A private control plane that compacts etcd every 2 s and has no watch cache, so an old
    resourceVersion really expires (410); its API server is stopped and started by the tests."""
    with ControlPlane(controller_manager=False,
                      apiserver_args=("--etcd-compaction-interval=2s", "--watch-cache=false")) as cp:
        yield cp


def ensure_namespace(kube: Kube, name: str) -> None:
    try:
        kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except AlreadyExists:
        pass


async def wait_for(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, etype: str, obj: dict, old: dict | None) -> None:
        self.events.append((etype, obj["metadata"]["name"]))


async def test_informer_lists_watches_and_tells_handlers(kube: Kube, unique: str) -> None:
    label = f"test-informer={unique}"
    make_node(kube, f"inf-a-{unique}", labels={"test-informer": unique})
    seen = Recorder()
    inf = Informer(AsyncKube(kube), NODES, label_selector=label)
    inf.add_handler(seen)
    async with anyio.create_task_group() as tg:
        tg.start_soon(inf.run)
        await inf.wait_synced()
        assert seen.events == [("ADDED", f"inf-a-{unique}")]
        await anyio.to_thread.run_sync(lambda: make_node(kube, f"inf-b-{unique}", labels={"test-informer": unique}))
        await wait_for(lambda: inf.get(f"inf-b-{unique}") is not None, what="node b in cache")
        await anyio.to_thread.run_sync(lambda: kube.patch(NODES, f"inf-a-{unique}", {"spec": {"unschedulable": True}}))
        await wait_for(lambda: (inf.get(f"inf-a-{unique}") or {}).get("spec", {}).get("unschedulable") is True,
                       what="modification")
        await anyio.to_thread.run_sync(lambda: kube.delete(NODES, f"inf-b-{unique}"))
        await wait_for(lambda: inf.get(f"inf-b-{unique}") is None, what="deletion")
        tg.cancel_scope.cancel()
    kinds = [e for e in seen.events if e[1] == f"inf-b-{unique}"]
    assert kinds[0] == ("ADDED", f"inf-b-{unique}") and kinds[-1] == ("DELETED", f"inf-b-{unique}")
    assert ("MODIFIED", f"inf-a-{unique}") in seen.events
    assert inf.relists == 1, "no relist expected without a 410"


async def test_informer_indexes_and_takes_its_own_writes_once(kube: Kube, unique: str) -> None:
    """An index follows every change; a write observed from its answer is told to handlers at once,
    and the watch's later copy of the same version is not told again; a stale base is refused."""
    names = [f"idx-{i}-{unique}" for i in range(3)]
    for name in names:
        make_node(kube, name, labels={"test-idx": unique})
    told: list[tuple[str, str, str]] = []
    inf = Informer(AsyncKube(kube), NODES, label_selector=f"test-idx={unique}")
    inf.add_index("zone", lambda o: (o["metadata"].get("labels") or {}).get("zone"))
    inf.add_handler(lambda et, o, old: told.append((et, o["metadata"]["name"], o["metadata"]["resourceVersion"])))
    async with anyio.create_task_group() as tg:
        tg.start_soon(inf.run)
        await inf.wait_synced()
        assert inf.by_index("zone", "a") == []
        base = inf.get(names[0])["metadata"]["resourceVersion"]
        written = await anyio.to_thread.run_sync(lambda: kube.patch(NODES, names[0], {
            "metadata": {"labels": {"zone": "a"}, "resourceVersion": base}}))
        # taken now, unless the watch already brought it (then there is nothing to take)
        took = inf.observe_write(written, base)
        assert took or inf.get(names[0])["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
        assert [o["metadata"]["name"] for o in inf.by_index("zone", "a")] == [names[0]]
        # a change nobody observed arrives by the watch, after the watch's copy of our own write
        await anyio.to_thread.run_sync(lambda: kube.patch(NODES, names[1], {"metadata": {"labels": {"zone": "a"}}}))
        await wait_for(lambda: len(inf.by_index("zone", "a")) == 2, what="the watched change indexed")
        # moving to another zone leaves the old bucket; deleting leaves the index
        await anyio.to_thread.run_sync(lambda: kube.patch(NODES, names[1], {"metadata": {"labels": {"zone": "b"}}}))
        await wait_for(lambda: [o["metadata"]["name"] for o in inf.by_index("zone", "b")] == [names[1]], what="move")
        await anyio.to_thread.run_sync(lambda: kube.delete(NODES, names[1]))
        await wait_for(lambda: inf.by_index("zone", "b") == [], what="deletion unindexed")
        assert not inf.observe_write(written, base), "a base the cache no longer holds must be refused"
        tg.cancel_scope.cancel()
    own = [t for t in told if t[1] == names[0] and t[2] == written["metadata"]["resourceVersion"]]
    assert own == [("MODIFIED", names[0], written["metadata"]["resourceVersion"])], told
    with pytest.raises(ValueError):
        inf.add_index("zone", lambda o: None)


async def test_informer_never_goes_back_behind_its_own_writes(kube: Kube, unique: str) -> None:
    """Writes observed from their answers run ahead of the watch; the older versions the watch still
    brings are skipped: handlers only ever see the object move forward."""
    name = f"ahead-{unique}"
    make_node(kube, name, labels={"test-ahead": unique})
    told: list[int] = []
    inf = Informer(AsyncKube(kube), NODES, label_selector=f"test-ahead={unique}")
    inf.add_handler(lambda et, o, old: told.append(int(o["metadata"]["resourceVersion"])))
    async with anyio.create_task_group() as tg:
        tg.start_soon(inf.run)
        await inf.wait_synced()
        last = ""
        # blocking calls on the event loop: the informer cannot take a watch event until all 8 writes
        # are observed, so the watch then brings 7 versions older than the cache's
        for i in range(8):
            base = inf.get(name)["metadata"]["resourceVersion"]
            written = kube.patch(NODES, name, {"metadata": {"labels": {"step": str(i)}, "resourceVersion": base}})
            assert inf.observe_write(written, base)
            last = written["metadata"]["resourceVersion"]
        await wait_for(lambda: int(inf.resource_version or 0) >= int(last), what="the watch caught up")
        assert inf.get(name)["metadata"]["resourceVersion"] == last
        tg.cancel_scope.cancel()
    assert told == sorted(set(told)), f"a handler saw the object go back: {told}"
    assert told[-1] == int(last)


async def test_informer_relists_after_410_and_reports_what_vanished(compacting_plane: ControlPlane) -> None:
    kube = compacting_plane.kube()
    for n in ("gone-1", "gone-2", "stays"):
        make_node(kube, n, labels={"test-410": "yes"})
    seen = Recorder()
    inf = Informer(AsyncKube(kube), NODES, label_selector="test-410=yes")
    inf.add_handler(seen)
    with anyio.move_on_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(inf.run)
            await inf.wait_synced()
            tg.cancel_scope.cancel()
    assert {e[1] for e in seen.events} == {"gone-1", "gone-2", "stays"}
    old_rv = inf.resource_version
    # while the informer is away: objects vanish and history is compacted past its RV
    kube.delete(NODES, "gone-1")
    kube.delete(NODES, "gone-2")
    for i in range(5):
        kube.patch(NODES, "stays", {"metadata": {"annotations": {"bump": str(i)}}})
    time.sleep(4.5)  # > 2 compaction intervals
    async with anyio.create_task_group() as tg:
        tg.start_soon(inf.run)  # resumes from old_rv: 410 Gone → relist
        await wait_for(lambda: inf.relists == 2, timeout=20, what="relist after 410")
        tg.cancel_scope.cancel()
    assert inf.resource_version != old_rv
    assert inf.get("gone-1") is None and inf.get("gone-2") is None
    assert ("DELETED", "gone-1") in seen.events and ("DELETED", "gone-2") in seen.events
    assert (inf.get("stays") or {})["metadata"]["annotations"]["bump"] == "4"
    kube.close()


async def test_informer_rides_out_an_api_server_restart(compacting_plane: ControlPlane) -> None:
    kube = compacting_plane.kube()
    seen = Recorder()
    inf = Informer(AsyncKube(kube), NODES, label_selector="test-restart=yes", backoff_max=1.0)
    inf.add_handler(seen)
    async with anyio.create_task_group() as tg:
        tg.start_soon(inf.run)
        await inf.wait_synced()
        await anyio.to_thread.run_sync(compacting_plane.stop_apiserver)
        with pytest.raises(ServerUnavailable):
            await anyio.to_thread.run_sync(lambda: kube.get(NODES, "anything"))
        await anyio.sleep(2)
        await anyio.to_thread.run_sync(compacting_plane.start_apiserver)
        await anyio.to_thread.run_sync(lambda: make_node(kube, "after-restart", labels={"test-restart": "yes"}))
        await wait_for(lambda: inf.get("after-restart") is not None, timeout=30, what="event after restart")
        tg.cancel_scope.cancel()
    assert ("ADDED", "after-restart") in seen.events
    kube.close()


class CountingReconciler:
    """Records reconciles of nodes carrying a test label; fails `fail_first` times per key."""

    def __init__(self, name: str, label: str, fail_first: int = 0) -> None:
        self.name = name
        self.label = label
        self.fail_first = fail_first
        self.done: list[str] = []
        self.failures: dict[str, int] = {}

    def setup(self, ctx) -> None:
        ctx.informer(NODES, label_selector=self.label).add_handler(
            lambda t, o, old: ctx.queue.add(o["metadata"]["name"]))

    async def reconcile(self, key: str, ctx) -> Result | None:
        n = self.failures.get(key, 0)
        if n < self.fail_first:
            self.failures[key] = n + 1
            raise RuntimeError("transient")
        self.done.append(key)
        return None


async def test_manager_retries_with_backoff_and_counts(kube: Kube, unique: str) -> None:
    label = f"test-mgr={unique}"
    make_node(kube, f"mgr-{unique}", labels={"test-mgr": unique})
    rec = CountingReconciler("retrying", label, fail_first=3)
    reg = CollectorRegistry()
    mgr = Manager(AsyncKube(kube), [rec], registry=reg, workers=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(mgr.run)
        await wait_for(lambda: rec.done, what="reconcile after retries")
        mgr.stop()
    assert rec.done == [f"mgr-{unique}"]
    assert rec.failures[f"mgr-{unique}"] == 3
    assert reg.get_sample_value("nvsentinel_retrying_controller_failures_total", {"reason": "RuntimeError"}) == 3
    assert reg.get_sample_value("nvsentinel_retrying_controller_reconciles_total") >= 4
    assert reg.get_sample_value("nvsentinel_retrying_controller_latency_seconds_count") >= 4
    assert reg.get_sample_value("nvsentinel_controllers_leader") == 1


async def test_exactly_one_leader_and_release_on_shutdown(kube: Kube, unique: str) -> None:
    ns = f"le-{unique}"
    ensure_namespace(kube, ns)
    label = f"test-le={unique}"
    make_node(kube, f"le-{unique}", labels={"test-le": unique})

    def cfg(identity: str) -> LeaderElectionConfig:
        return LeaderElectionConfig(namespace=ns, identity=identity, lease_duration=6, renew_deadline=4,
                                    retry_period=0.5)

    r1, r2 = CountingReconciler("one", label), CountingReconciler("two", label)
    m1 = Manager(AsyncKube(kube), [r1], leader_election=cfg("one"), namespace=ns)
    m2 = Manager(AsyncKube(kube), [r2], leader_election=cfg("two"), namespace=ns)
    async with anyio.create_task_group() as tg:
        tg.start_soon(m1.run)
        await wait_for(lambda: m1.is_leader, what="first leader")
        tg.start_soon(m2.run)
        await m2.wait_ready()
        await anyio.sleep(2)  # several retry periods: the standby must not take over
        assert (m1.is_leader, m2.is_leader) == (True, False)
        assert r1.done and not r2.done, "only the leader reconciles"
        lease = kube.get(LEASES, "nvsentinel-controllers.nvidia.com", ns)
        assert lease["spec"]["holderIdentity"] == "one"
        started = time.monotonic()
        m1.stop()  # graceful: releases the lease
        await wait_for(lambda: m2.is_leader, timeout=6, what="takeover")
        took = time.monotonic() - started
        await wait_for(lambda: r2.done, what="new leader's sweep")
        m2.stop()
    assert took < 3.0, f"a released lease is taken at once, took {took:.2f}s"
    assert kube.get(LEASES, "nvsentinel-controllers.nvidia.com", ns)["spec"]["leaseTransitions"] >= 1


async def test_standby_takes_over_an_unreleased_lease_after_it_expires(kube: Kube, unique: str) -> None:
    ns = f"le2-{unique}"
    ensure_namespace(kube, ns)
    label = f"test-le2={unique}"

    def cfg(identity: str) -> LeaderElectionConfig:
        return LeaderElectionConfig(namespace=ns, identity=identity, lease_duration=3, renew_deadline=2,
                                    retry_period=0.5)

    r1, r2 = CountingReconciler("crashy", label), CountingReconciler("standby", label)
    m1 = Manager(AsyncKube(kube), [r1], leader_election=cfg("crashy"), namespace=ns)
    m2 = Manager(AsyncKube(kube), [r2], leader_election=cfg("standby"), namespace=ns)
    async with anyio.create_task_group() as outer:
        crash_scope = anyio.CancelScope()

        async def run_m1() -> None:
            with crash_scope:
                await m1.run()

        outer.start_soon(run_m1)
        await wait_for(lambda: m1.is_leader, what="first leader")
        # a crash: the elector's lease writes stop, without a release
        m1.elector._release = _no_release  # type: ignore[method-assign]
        crash_scope.cancel()
        outer.start_soon(m2.run)
        started = time.monotonic()
        await wait_for(lambda: m2.is_leader, timeout=10, what="takeover after expiry")
        took = time.monotonic() - started
        m2.stop()
    assert 1.5 < took < 6.0, f"takeover must wait for the lease to expire (3 s), took {took:.2f}s"


async def _no_release() -> None:
    return None


async def test_recorder_aggregates_repeats(kube: Kube, unique: str) -> None:
    node = make_node(kube, f"rec-{unique}")
    rec = EventRecorder(AsyncKube(kube), "nvsentinel-test")
    for _ in range(3):
        await rec.event(node, "Warning", "TestReason", "the same message")
    await rec.event(node, "Normal", "Other", "another message")
    items, _ = kube.list(EVENTS, "default", field_selector=f"involvedObject.name=rec-{unique}")
    by_reason = {e["reason"]: e for e in items}
    assert by_reason["TestReason"]["count"] == 3 and by_reason["Other"]["count"] == 1
    assert by_reason["TestReason"]["involvedObject"]["kind"] == "Node"
    assert by_reason["TestReason"]["source"]["component"] == "nvsentinel-test"
    with pytest.raises(ValueError):
        await rec.event(node, "Bad", "X", "y")
