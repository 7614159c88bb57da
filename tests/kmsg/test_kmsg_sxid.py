"""The kernel-log monitor and NVSwitch SXids, site overrides and its metrics (issue 17).

The pure rules table-driven; the monitor in-process against a real Device API server (real gRPC);
the daemon in a subprocess with its /metrics scraped over HTTP.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings  # noqa: E402
from kmsghelpers import Monitor, append, wait_for  # noqa: E402

from nvsentinel import xid as xidmod  # noqa: E402
from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.node.kmsg import logic  # noqa: E402
from nvsentinel.node.kmsg.metrics import KmsgMetrics  # noqa: E402
from nvsentinel.node.kmsg.monitor import KmsgMonitor  # noqa: E402
from nvsentinel.policy.conditions import Finding, GpuView, Reason, merge_status  # noqa: E402
from nvsentinel.xid import Action, Classification, Override, load_catalog  # noqa: E402

UUIDS = [
    "GPU-196b7c1a-b6d3-9791-4798-481be2406bdb",
    "GPU-976baef6-3b1f-dc48-2908-168925b1cdbf",
    "GPU-0d1b0f43-1453-595a-d607-8ca6a707ec5e",
]
PCIS = ["0000:b3:00.0", "0000:3b:00.0", "0000:c1:00.0"]
T_SXID = 1725018189.5  # 2024-08-30T11:43:09.5Z
FATAL = ("2024-08-30T11:43:09.500000+00:00 gpu-node-7 kernel: nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, "
         "Fatal, Link 28 sourcetrack timeout error (First)\n")
NONFATAL = ("[ 1108.858286] nvidia-nvswitch1: SXid (PCI:0000:c4:00.0): 12028, Non-fatal, Link 10 egress "
            "non-posted PRIV error (First)\n")
SXID = Reason.for_sxid(24007)
CLS_FATAL = Classification(Action.CONTACT_SUPPORT, True, "NVSWITCH_SXID", source="line")
CLS_BENIGN = Classification(Action.NONE, False, "NVSWITCH_SXID", source="line")


def mapping(i: int) -> str:
    return f"[   10.000000] NVRM: GPU at PCI:{PCIS[i]}: {UUIDS[i]}\n"


def xid_line(i: int, n: int) -> str:
    return f"[  100.000000] NVRM: Xid (PCI:{PCIS[i]}): {n}, pid=1234, name=python, Ch 00000001\n"


def kmsg(client: DeviceApiClient, uuid: str) -> gpu_pb2.Condition | None:
    return next((c for c in client.get_gpu(uuid).status.conditions if c.type == "KmsgHealthy"), None)


def ltt(c: gpu_pb2.Condition) -> float:
    return c.last_transition_time.seconds + c.last_transition_time.nanos / 1e9


# ---- the pure rules ----

@pytest.mark.parametrize("view, cls, changed, note, reason", [
    (GpuView(None, "KmsgOk", ""), CLS_FATAL, True, "fatal", "SXid24007"),
    (GpuView(None, "KmsgOk", ""), CLS_BENIGN, False, "benign", None),
    (GpuView(None, "KmsgOk", ""), Classification(Action.NONE, False, "X", ignored=True), False, "ignored", None),
    (GpuView(Finding("Xid48", "m", Action.COMPONENT_RESET)), CLS_FATAL, True, "worse", "SXid24007"),
    (GpuView(Finding("Xid79", "m", Action.RESTART_BM)), CLS_FATAL, False, "not-worse", "Xid79"),
    (GpuView(Finding("SXid24007", "m", Action.CONTACT_SUPPORT)), CLS_FATAL, False, "not-worse", "SXid24007"),
    (GpuView(Finding("Xid48", "m", Action.COMPONENT_RESET)),
     Classification(Action.RESTART_BM, True, "NVSWITCH_SXID", source="override"), True, "worse", "SXid24007"),
])
def test_decide_sxid(view, cls, changed, note, reason):
    """Verify an SXid's decision per GPU: fatal writes, benign/ignored change nothing, worse-only."""
    d = logic.decide_sxid(view, 24007, cls, "switch")
    assert (d.changed, d.note) == (changed, note)
    assert (d.view.finding.reason.wire if d.view.finding else None) == reason
    if changed:
        assert d.view.finding.action is cls.action and d.view.finding.message == "switch"


@pytest.mark.parametrize("ts, clock, same_boot, want", [
    (900.0, xidmod.CLOCK_REALTIME, False, 900.0),        # a syslog stamp, as is
    (1500.0, xidmod.CLOCK_REALTIME, False, 1000.0),      # ahead of now (dmesg -T local time): clamped
    (40.0, xidmod.CLOCK_MONOTONIC, True, 1000.0 - 60.0),  # this boot's ring: converted
    (40.0, xidmod.CLOCK_MONOTONIC, False, 1000.0),       # a file's stamp of an unknown boot: now
    (200.0, xidmod.CLOCK_MONOTONIC, True, 1000.0),       # after "now" since boot: nonsense, now
    (5.0, xidmod.CLOCK_YEARLESS, False, 1000.0),
    (None, "", False, 1000.0),
])
def test_record_time(ts, clock, same_boot, want):
    """Verify when a record happened, never later than now."""
    assert logic.record_time(ts, clock, now=1000.0, monotonic_now=100.0, same_boot=same_boot) == want


def test_shared_time_joins_an_open_fault():
    """Verify a GPU already reporting the SXid gives its time to the others (a replay joins)."""
    old = merge_status(gpu_pb2.GpuStatus(), GpuView(Finding(SXID, "m", Action.CONTACT_SUPPORT)), 500, 250_000_000,
                       condition_type="KmsgHealthy")
    other = merge_status(gpu_pb2.GpuStatus(), GpuView(Finding("Xid48", "m", Action.COMPONENT_RESET)), 100,
                         condition_type="KmsgHealthy")
    assert logic.shared_sxid_time([other, old], SXID, 900.0) == 500.25
    assert logic.shared_sxid_time([other, gpu_pb2.GpuStatus()], SXID, 900.0) == 900.0


def test_sxid_message_names_the_switch():
    """Verify the message names nvidia-nvswitchN and its PCI id, and bounds the driver's text."""
    ev = xidmod.decode_line(FATAL)
    assert logic.sxid_message(ev) == ("NVSwitch fault on nvidia-nvswitch0 (PCI 0000:c3:00): SXid 24007, link 28: "
                                      "sourcetrack timeout error (First)")
    long = xidmod.decode_line("SXid (PCI:0000:c3:00.0): 24007, Fatal, " + "x" * 5000)
    text = logic.sxid_message(long)
    assert text.startswith("NVSwitch fault on an NVSwitch (PCI 0000:c3:00): SXid 24007: x")
    assert len(text) < logic.MAX_SXID_MESSAGE + 80


# ---- the monitor, in process, against a real Device API server ----

@pytest.fixture
def api():
    sock_dir = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    server = ThreadServer(make_settings(sock_dir)).start()
    client = DeviceApiClient(server.tcp, timeout=5)
    for uuid in UUIDS:
        client.create_gpu(gpu_pb2.Gpu(metadata=gpu_pb2.ObjectMeta(name=uuid), spec=gpu_pb2.GpuSpec(uuid=uuid)))
    try:
        yield server, client
    finally:
        client.close()
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_fatal_sxid_is_written_on_every_gpu_with_one_time(api, tmp_path):
    """Verify a fatal SXid line → KmsgHealthy False SXid24007 on every GPU, one shared transition
    time (the record's), the switch in the message, CONTACT_SUPPORT; worse-only per GPU; a repeat and
    a non-fatal SXid write nothing; the decoded-events and writes counters move."""
    _server, client = api
    log = tmp_path / "kern.log"
    log.write_text(mapping(0) + mapping(1) + xid_line(0, 79) + xid_line(1, 48))
    metrics = KmsgMetrics()
    mon = KmsgMonitor(client, str(log), str(tmp_path / "state.json"), metrics=metrics)
    try:
        assert mon.step()
        before = {u: kmsg(client, u) for u in UUIDS}
        assert before[UUIDS[0]].reason == "Xid79" and before[UUIDS[1]].reason == "Xid48"
        append(log, FATAL)
        assert mon.step()
        c0, c1, c2 = (kmsg(client, u) for u in UUIDS)
        assert (c0.status, c0.reason) == ("False", "Xid79")  # RESTART_BM is worse: kept
        assert c0 == before[UUIDS[0]]
        for c in (c1, c2):  # Xid48 (COMPONENT_RESET) is not as bad; GPU 2 had no condition
            assert (c.status, c.reason) == ("False", "SXid24007")
            assert ltt(c) == pytest.approx(T_SXID)
            assert c.message == ("NVSwitch fault on nvidia-nvswitch0 (PCI 0000:c3:00): SXid 24007, link 28: "
                                 "sourcetrack timeout error (First)")
        assert c1.last_transition_time == c2.last_transition_time
        assert client.get_gpu(UUIDS[2]).status.recommended_action == "CONTACT_SUPPORT"
        assert metrics.value("nvsentinel_kmsg_events_decoded", kind="sxid") == 1
        assert metrics.value("nvsentinel_kmsg_condition_writes", status="False") == 4  # 79, 48, two SXids
        assert metrics.registry.get_sample_value("nvsentinel_kmsg_gpu_healthy", {"gpu": UUIDS[2]}) == 0

        rvs = {u: client.get_gpu(u).resource_version for u in UUIDS}
        append(log, FATAL.replace("(First)", "(Repeat)") + NONFATAL)
        assert mon.step()
        assert {u: client.get_gpu(u).resource_version for u in UUIDS} == rvs
        assert metrics.value("nvsentinel_kmsg_events_decoded", kind="sxid") == 3
        assert metrics.value("nvsentinel_kmsg_condition_writes", status="False") == 4
    finally:
        mon.close()


def test_nonfatal_sxid_and_overridden_sxid_write_nothing(api, tmp_path):
    """Verify a non-fatal SXid changes nothing, and neither does a fatal one a site override makes
    non-fatal (the decoder classifies with the monitor's catalog)."""
    _server, client = api
    log = tmp_path / "kern.log"
    log.write_text(NONFATAL)
    catalog = load_catalog({"SXID.24007": Override(fatal=False)})
    mon = KmsgMonitor(client, str(log), str(tmp_path / "state.json"), catalog=catalog)
    rvs = {u: client.get_gpu(u).resource_version for u in UUIDS}
    try:
        assert mon.step()
        append(log, FATAL)
        assert mon.step()
        assert {u: client.get_gpu(u).resource_version for u in UUIDS} == rvs
        assert all(kmsg(client, u) is None for u in UUIDS)
    finally:
        mon.close()


def test_override_makes_xid13_fatal_in_the_monitor(api, tmp_path):
    """Verify an override file making XID 13 fatal gives KmsgHealthy False Xid13 with its action;
    without it, XID 13 is benign and nothing is written."""
    _server, client = api
    log = tmp_path / "kern.log"
    log.write_text(mapping(0) + xid_line(0, 13))
    plain = KmsgMonitor(client, str(log), str(tmp_path / "plain.json"))
    try:
        assert plain.step()
        assert kmsg(client, UUIDS[0]) is None
    finally:
        plain.close()
    over = tmp_path / "overrides.json"
    over.write_text(json.dumps({"version": 1, "overrides": {"13": {"action": "COMPONENT_RESET"}}}))
    from nvsentinel.node.catalog import site_catalog

    mon = KmsgMonitor(client, str(log), str(tmp_path / "over.json"), catalog=site_catalog(str(over)))
    try:
        assert mon.step()
        c = kmsg(client, UUIDS[0])
        assert (c.status, c.reason) == ("False", "Xid13")
        assert client.get_gpu(UUIDS[0]).status.recommended_action == "COMPONENT_RESET"
    finally:
        mon.close()


def test_site_catalog_errors_name_the_file(tmp_path):
    """Verify the shared loader: "" is the package catalog, a bad file is one OverridesError naming it."""
    from nvsentinel.node.catalog import OverridesError, site_catalog

    assert site_catalog("") is xidmod.default_catalog()
    bad = tmp_path / "bad.json"
    bad.write_text('{"overrides": {"13": {"action": "EXPLODE"}}}')
    for path in (str(bad), str(tmp_path / "missing.json")):
        with pytest.raises(OverridesError, match="--xid-overrides"):
            site_catalog(path)


# ---- the daemon: env override, metrics over HTTP ----

def test_daemon_overrides_from_env_and_metrics_over_http(api, tmp_path, monkeypatch):
    """Verify NVSENTINEL_XID_OVERRIDES reaches the daemon (XID 13 fatal), and /metrics shows the
    decoded events by kind, the condition writes and each GPU's health gauge move."""
    server, client = api
    log, state = tmp_path / "kern.log", tmp_path / "state" / "kmsg.json"
    log.write_text("")
    over = tmp_path / "overrides.json"
    over.write_text(json.dumps({"version": 1, "overrides": {"13": {"fatal": True}}}))
    monkeypatch.setenv("NVSENTINEL_XID_OVERRIDES", str(over))
    mon = Monitor("--address", server.tcp, "--source", str(log), "--state-file", str(state),
                  "--poll-interval", "0.02")
    monkeypatch.delenv("NVSENTINEL_XID_OVERRIDES")
    try:
        wait_for("metrics up", lambda: mon.counter("nvsentinel_kmsg_events_decoded", kind="xid") == 0, mon)
        assert mon.gauge("nvsentinel_kmsg_gpu_healthy", gpu=UUIDS[0]) is None
        append(log, mapping(0) + xid_line(0, 13))
        wait_for("KmsgHealthy False Xid13", lambda: (c := kmsg(client, UUIDS[0])) and c.reason == "Xid13", mon)
        assert client.get_gpu(UUIDS[0]).status.recommended_action == "CONTACT_SUPPORT"
        wait_for("xid decoded", lambda: mon.counter("nvsentinel_kmsg_events_decoded", kind="xid") == 1, mon)
        assert mon.counter("nvsentinel_kmsg_events_decoded", kind="pci_mapping") == 1
        # counted once the write's answer is back, which can be just after the server shows it
        wait_for("the write counted", lambda: mon.counter("nvsentinel_kmsg_condition_writes", status="False") == 1,
                 mon)
        wait_for("GPU 0 unhealthy", lambda: mon.gauge("nvsentinel_kmsg_gpu_healthy", gpu=UUIDS[0]) == 0, mon)
        append(log, FATAL)
        wait_for("sxid decoded", lambda: mon.counter("nvsentinel_kmsg_events_decoded", kind="sxid") == 1, mon)
        # decoded first, then written to GPUs 1 and 2, one after the other
        wait_for("both SXid writes counted",
                 lambda: mon.counter("nvsentinel_kmsg_condition_writes", status="False") == 3, mon)
        assert {kmsg(client, u).reason for u in UUIDS[1:]} == {"SXid24007"}
        wait_for("GPU 2 unhealthy", lambda: mon.gauge("nvsentinel_kmsg_gpu_healthy", gpu=UUIDS[2]) == 0, mon)
        append(log, f"GPU reset executed: {UUIDS[2]}\n")
        wait_for("GPU 2 healthy", lambda: mon.gauge("nvsentinel_kmsg_gpu_healthy", gpu=UUIDS[2]) == 1, mon)
        wait_for("the recovery write counted",
                 lambda: mon.counter("nvsentinel_kmsg_condition_writes", status="True") == 1, mon)
        assert kmsg(client, UUIDS[2]).status == "True"
        assert "xid_overrides=" in mon.log() and str(over) in mon.log()
        assert mon.stop() == 0
    finally:
        mon.close()


def test_daemon_bad_override_file_exits_1(tmp_path):
    """Verify a bad --xid-overrides file stops the daemon at start with one line naming it."""
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    log = tmp_path / "kern.log"
    log.write_text("")
    mon = Monitor("--address", "127.0.0.1:1", "--source", str(log), "--state-file", str(tmp_path / "s.json"),
                  "--xid-overrides", str(bad))
    try:
        assert mon.proc.wait(60) == 1
        assert "cannot start" in mon.log() and "--xid-overrides" in mon.log() and "not JSON" in mon.log()
    finally:
        mon.close()
