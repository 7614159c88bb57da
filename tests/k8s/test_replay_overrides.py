"""Replay: a site override on the kernel-log path, given the way a node pod gets it
(NVSENTINEL_XID_OVERRIDES on both node daemons), turns a benign XID 13 into a fatal HealthEvent
(issue 17). Real everything: a Device API server, the kmsg-monitor and publisher daemons
(tests/kmsg/kmsgstack.py), the real kube-apiserver.

Without the override, XID 13 publishes nothing: proved by a fatal XID 79 logged after it, whose
event is then the node's only one (no fixed wait).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kmsg"))

from kmsgstack import PCIS, SERIALS, UUIDS, KmsgNode, events, mapping, xid_line  # noqa: E402
from procs import wait_until  # noqa: E402

from nvsentinel.policy.healthevent import ENTITY_GPU, ENTITY_GPU_SERIAL, ENTITY_PCI, LABEL_IS_FATAL, Entity  # noqa: E402
from nvsentinel.service.settings import XID_OVERRIDES_ENV  # noqa: E402
from nvsentinel.xid import Action  # noqa: E402

TIMEOUT = 60.0
XID13 = "Graphics SM Warp Exception on (GPC 0, TPC 1, SM 2): Out Of Range Address"


@pytest.mark.parametrize("override", [True, False], ids=["with-override", "without-override"])
def test_xid13_is_fatal_only_with_the_site_override(control_plane, crd_installed, kube, unique, tmp_path,
                                                    override):
    node = f"xid13-{'on' if override else 'off'}-{unique}"
    env = {}
    if override:
        path = tmp_path / "xid-overrides.json"
        path.write_text(json.dumps({"version": 1, "overrides": {
            "13": {"action": "COMPONENT_RESET", "reason": "recurring SM faults on this fleet"}}}))
        env[XID_OVERRIDES_ENV] = str(path)
    stack = KmsgNode(control_plane.kubeconfig, node, env)
    try:
        wait_until(stack.publisher_ready, TIMEOUT, "publisher ready", daemons=stack.daemons)
        stack.append(mapping(2) + xid_line(2, 13, f"pid=4242, name=train.py, {XID13}"))
        wait_until(lambda: stack.kmsg_metric("nvsentinel_kmsg_events_decoded_total", kind="xid") == 1, TIMEOUT,
                   "XID 13 decoded", daemons=stack.daemons)
        if override:
            (ev,) = wait_until(lambda: events(kube, node), TIMEOUT, "the XID 13 event", daemons=stack.daemons)
            s = ev.spec
            assert (s.is_fatal, s.recommended_action, s.error_codes, s.check_name) == (
                True, Action.COMPONENT_RESET, ("13",), "xid-error-check")
            assert (s.source, dict(s.metadata)) == ("kmsg-monitor", {"conditionType": "KmsgHealthy", "reason": "Xid13"})
            assert s.entities_impacted == (Entity(ENTITY_GPU, UUIDS[2]), Entity(ENTITY_PCI, PCIS[2]),
                                           Entity(ENTITY_GPU_SERIAL, SERIALS[2]))
            assert ev.labels[LABEL_IS_FATAL] == "true"
            assert stack.kmsg_condition(UUIDS[2]) == ("False", "Xid13")
            assert stack.client.get_gpu(UUIDS[2]).status.recommended_action == "COMPONENT_RESET"
        else:
            assert stack.kmsg_condition(UUIDS[2]) is None
            assert stack.kmsg_metric("nvsentinel_kmsg_condition_writes_total", status="False") == 0
            # a fatal line after it: once its event is there, the publisher has seen all that came before
            stack.append(mapping(5) + xid_line(5, 79, "pid=1, name=python, GPU has fallen off the bus."))
            evs = wait_until(lambda: events(kube, node), TIMEOUT, "the XID 79 event", daemons=stack.daemons)
            assert [(e.spec.error_codes, e.gpu_uuids, e.spec.is_fatal) for e in evs] == [(("79",), (UUIDS[5],), True)]
        for d in stack.daemons:
            assert "Traceback" not in d.text(), d.text()[-3000:]
        if override:
            assert str(tmp_path / "xid-overrides.json") in stack.monitor.text()
    finally:
        stack.close()
