"""Replay: an NVSwitch SXid in the kernel log reaches the cluster and quarantines the node (issue 17).

Real everything: a Device API server with eight GPUs, the kmsg-monitor and publisher daemons
(tests/kmsg/kmsgstack.py), the real kube-apiserver, and the quarantine stage run by the real Manager.
A non-fatal SXid publishes nothing; a fatal one is ONE NVSwitch HealthEvent (not eight), and the
node is cordoned for it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kmsg"))

from ctlhelpers import eventually, ownership, running_manager  # noqa: E402
from kmsgstack import UUIDS, KmsgNode, events  # noqa: E402
from kubelet import make_node  # noqa: E402

from nvsentinel.cluster.quarantine.config import QuarantineConfig  # noqa: E402
from nvsentinel.cluster.quarantine.controller import QuarantineController  # noqa: E402
from nvsentinel.k8s import AlreadyExists, KubeNotFound  # noqa: E402
from nvsentinel.k8s.resources import NAMESPACES, NODES  # noqa: E402
from nvsentinel.policy.conditions import CHECK_SXID  # noqa: E402
from nvsentinel.policy.healthevent import LABEL_COMPONENT_CLASS, LABEL_NODE, Phase  # noqa: E402
from nvsentinel.xid import Action  # noqa: E402

pytestmark = pytest.mark.anyio

TIMEOUT = 60.0
NONFATAL = ("[ 1108.858286] nvidia-nvswitch1: SXid (PCI:0000:c4:00.0): 12028, Non-fatal, Link 10 egress "
            "non-posted PRIV error (First)\n")
FATAL = ("[ 1109.000000] nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, Fatal, Link 28 sourcetrack "
         "timeout error (First)\n")


async def test_fatal_sxid_is_one_nvswitch_event_and_cordons_the_node(control_plane, crd_installed, kube, unique):
    node = f"nvswitch-{unique}"
    ns = f"nvswitch-{unique}"
    try:
        kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    except AlreadyExists:
        pass
    make_node(kube, node)
    cfg = QuarantineConfig(node_selector=f"kubernetes.io/hostname={node}", event_selector=f"{LABEL_NODE}={node}",
                           breaker_percent=100, breaker_max_nodes=10_000)
    stack = KmsgNode(control_plane.kubeconfig, node)
    try:
        async with running_manager(kube, [QuarantineController(cfg)], ns):
            await eventually(stack.publisher_ready, timeout=TIMEOUT, what="publisher ready")

            # a non-fatal SXid: decoded and counted, nothing written, nothing published
            stack.append(NONFATAL)
            await eventually(lambda: stack.kmsg_metric("nvsentinel_kmsg_events_decoded_total", kind="sxid") == 1,
                             timeout=TIMEOUT, what="the non-fatal SXid decoded")
            assert [stack.kmsg_condition(u) for u in UUIDS] == [None] * 8
            assert stack.kmsg_metric("nvsentinel_kmsg_condition_writes_total", status="False") == 0

            # a fatal SXid: KmsgHealthy False SXid24007 on all eight GPUs, one shared time
            stack.append(FATAL)
            await eventually(lambda: all(stack.kmsg_condition(u) == ("False", "SXid24007") for u in UUIDS),
                             timeout=TIMEOUT, what="SXid24007 on every GPU")
            times = {next(c.last_transition_time.seconds for c in stack.client.get_gpu(u).status.conditions
                          if c.type == "KmsgHealthy") for u in UUIDS}
            assert len(times) == 1
            # every GPU's copy judged by the publisher: the first queued, seven recognised as the same event
            await eventually(lambda: stack.publisher.text().count("node-level health event already queued") == 7,
                             timeout=TIMEOUT, what="all eight copies judged")
            evs = await eventually(lambda: events(kube, node), timeout=TIMEOUT, what="the NVSwitch event")
            (ev,) = evs
            s = ev.spec
            assert (s.component_class, s.check_name, s.error_codes) == ("NVSwitch", CHECK_SXID, ("SXID.24007",))
            assert (s.is_fatal, s.recommended_action, s.source) == (True, Action.CONTACT_SUPPORT, "kmsg-monitor")
            assert s.entities_impacted == ()
            assert "nvidia-nvswitch0" in s.message and "0000:c3:00" in s.message
            assert ev.name == f"{node}.nvswitch.sxid24007.{times.pop()}"
            assert ev.labels[LABEL_COMPONENT_CLASS] == "NVSwitch"

            # the quarantine stage acts on it: the node is cordoned and tainted, the event Quarantined
            def cordoned() -> bool:
                n = kube.get(NODES, node)
                own = ownership(n)
                return bool(n["spec"].get("unschedulable")) and own is not None and ev.name in own["events"]

            await eventually(cordoned, timeout=TIMEOUT, what="node cordoned for the NVSwitch event")
            await eventually(lambda: events(kube, node)[0].status.phase is Phase.QUARANTINED,
                             timeout=TIMEOUT, what="event Quarantined")
            taints = kube.get(NODES, node)["spec"].get("taints") or []
            assert any(t["key"] == cfg.taint_key for t in taints)
            assert len(events(kube, node)) == 1
        for d in stack.daemons:
            d.check_alive()
            assert "Traceback" not in d.text(), d.text()[-3000:]
    finally:
        stack.close()
        try:
            kube.delete(NODES, node)
        except KubeNotFound:
            pass
