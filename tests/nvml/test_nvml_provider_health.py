"""The NVML provider end to end, health as a level and a hung driver: the real daemon in a subprocess,
the real pynvml on the fake libnvidia-ml (field 230, `hang`), a real Device API server over real
sockets, /healthz and /metrics scraped over HTTP (docs/conditions.md, "Recovery action", "A hung
driver", "The nvml-provider daemon")."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings  # noqa: E402
from nvml_fake_helpers import UUIDS, clean_env  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from test_nvml_provider_e2e import Provider, all_have, cond, nvml_status, wait_for  # noqa: E402

from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.service.settings import XID_OVERRIDES_ENV  # noqa: E402

#: Seconds to wait for any state: generous, the states come in milliseconds.
WAIT = 60.0
FIELD = "nvmlDeviceGetFieldValues"


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_port(provider: Provider) -> int:
    m = re.search(r"health_port=(\d+)", provider.log())
    assert m, provider.log()
    return int(m.group(1))


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Scrape:
    """One /metrics scrape: `value(name, **labels)` (None: no such sample)."""

    def __init__(self, port: int) -> None:
        status, body = http_get(port, "/metrics")
        assert status == 200, body
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for fam in text_string_to_metric_families(body) for s in fam.samples}

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))


def metric(port: int, name: str, **labels: str) -> float | None:
    return Scrape(port).value(name, **labels)


def start(sock_dir: str, control: Path, *flags: str, env: dict[str, str] | None = None):
    server = ThreadServer(make_settings(sock_dir)).start()
    client = DeviceApiClient(server.tcp, timeout=5)
    mport = free_port()
    provider = Provider("--fake-nvml", "--fake-nvml-control", str(control), "--address", server.tcp,
                        "--wait-timeout-ms", "100", "--metrics-port", str(mport), *flags, env=env)
    return server, client, provider, mport


def stop(server, client, provider) -> None:
    provider.close()
    client.close()
    server.stop()


def test_recovery_action_is_a_level_reported_at_start_with_overrides_and_metrics(sock_dir, tmp_path):
    control = tmp_path / "fake-nvml.ctl"
    # set while the provider is down: the library reads the whole control file at nvmlInit
    FaultInjector(control).recovery_action(4, "NODE_REBOOT")
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"version": 1, "overrides": {"13": {"action": "COMPONENT_RESET"}}}))
    # a driver that has the recovery-action event (the default topology leaves it out), and a poll
    # interval longer than the test: what changes at runtime comes through the event
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps({"defaults": {"supported_events": [
        "single_bit_ecc", "double_bit_ecc", "xid", "gpu_unavailable", "gpu_recovery_action"]}}))
    server, client, provider, mport = start(
        sock_dir, control, "--fake-nvml-topology", str(topology), "--health-poll-interval", "3600",
        env=clean_env(PYTHONUNBUFFERED="1", **{XID_OVERRIDES_ENV: str(overrides)}))
    fault = FaultInjector(control)
    try:
        wait_for("8 GPUs with a condition", lambda: all(cond(client.get_gpu(u)) for u in UUIDS)
                 if len(client.list_gpus()[1]) == 8 else False, provider, WAIT)
        # reported at start: the first write already says it (no poll ran, the event predates the set)
        assert nvml_status(client, UUIDS[4]) == ("False", "RecoveryActionNodeReboot", "RESTART_BM")
        log = provider.log()
        found = re.search(r'msg="gpu condition changed" gpu=4 .*reason=RecoveryActionNodeReboot', log)
        assert found and found.start() < log.index('msg="device api in sync"'), log  # decided before any write
        assert all(nvml_status(client, UUIDS[i])[:2] == ("True", "NvmlOk") for i in (0, 1, 2, 3, 5, 6, 7))
        assert metric(mport, "nvsentinel_nvml_recovery_action", gpu="4", uuid=UUIDS[4]) == 2
        assert metric(mport, "nvsentinel_nvml_gpu_health", gpu="4", uuid=UUIDS[4]) == 0

        # GpuSpec: the PCI bus id and the serial as NVML gives them
        for uuid in UUIDS:
            spec = client.get_gpu(uuid).spec
            assert spec.uuid == uuid
            assert re.fullmatch(r"[0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]", spec.pci_bus_id), spec
            assert spec.serial.strip(), spec
        assert len({client.get_gpu(u).spec.pci_bus_id for u in UUIDS}) == 8
        assert len({client.get_gpu(u).spec.serial for u in UUIDS}) == 8

        # GPU_RESET → False, COMPONENT_RESET; back to NONE → True Recovered (the publisher's cue)
        fault.recovery_action(1, "GPU_RESET")
        wait_for("GPU 1 RecoveryActionGpuReset",
                 lambda: nvml_status(client, UUIDS[1]) == ("False", "RecoveryActionGpuReset", "COMPONENT_RESET"),
                 provider, WAIT)
        assert "GPU_RESET" in cond(client.get_gpu(UUIDS[1])).message
        assert metric(mport, "nvsentinel_nvml_recovery_action", gpu="1", uuid=UUIDS[1]) == 1
        fault.recovery_action(1, "NONE")
        wait_for("GPU 1 Recovered", lambda: nvml_status(client, UUIDS[1]) == ("True", "Recovered", "NONE"),
                 provider, WAIT)
        assert metric(mport, "nvsentinel_nvml_recovery_action", gpu="1", uuid=UUIDS[1]) == 0

        # a value nvsentinel does not know: never healthy, a human looks
        fault.recovery_action(2, 42)
        wait_for("GPU 2 RecoveryAction42",
                 lambda: nvml_status(client, UUIDS[2]) == ("False", "RecoveryAction42", "UNKNOWN"), provider, WAIT)

        # the site override (NVSENTINEL_XID_OVERRIDES) makes the benign XID 13 fatal
        fault.inject_xid(5, 13)
        wait_for("GPU 5 Xid13", lambda: nvml_status(client, UUIDS[5]) == ("False", "Xid13", "COMPONENT_RESET"),
                 provider, WAIT)

        m = Scrape(mport)
        for i in range(8):
            assert m.value("nvsentinel_nvml_recovery_action_supported", gpu=str(i)) == 1
        assert m.value("nvsentinel_nvml_events_total", type="recovery_action") >= 3
        assert m.value("nvsentinel_nvml_events_total", type="xid") >= 1
        assert m.value("nvsentinel_nvml_condition_writes_total", status="False") >= 3
        assert m.value("nvsentinel_nvml_condition_writes_total", status="True") >= 8
        assert m.value("nvsentinel_nvml_call_seconds_count", call=FIELD) >= 8 + 3
        assert m.value("nvsentinel_nvml_gpu_health", gpu="1", uuid=UUIDS[1]) == 1
        assert m.value("nvsentinel_nvml_gpu_health", gpu="2", uuid=UUIDS[2]) == 0
        assert m.value("nvsentinel_nvml_call_timeouts_total", call=FIELD, gpu="2") is None  # none timed out
    finally:
        stop(server, client, provider)


def test_a_hung_gpu_is_unknown_while_the_rest_keeps_going(sock_dir, tmp_path):
    control = tmp_path / "fake-nvml.ctl"
    server, client, provider, mport = start(sock_dir, control, "--health-poll-interval", "0.2",
                                            "--nvml-call-timeout", "2")
    fault = FaultInjector(control)
    try:
        wait_for("8 healthy GPUs", lambda: all_have(client, "True", "NvmlOk"), provider, WAIT)
        hport = health_port(provider)

        # no recovery-action event on this driver (the default topology): the poll sees the level
        fault.recovery_action(6, "BUS_RESET")
        wait_for("GPU 6 RecoveryActionBusReset",
                 lambda: nvml_status(client, UUIDS[6]) == ("False", "RecoveryActionBusReset", "COMPONENT_RESET"),
                 provider, WAIT)
        assert metric(mport, "nvsentinel_nvml_events_total", type="recovery_action") == 0

        fault.hang(2, 3600)
        wait_for("GPU 2 Unknown NvmlUnresponsive",
                 lambda: nvml_status(client, UUIDS[2])[:2] == ("Unknown", "NvmlUnresponsive"), provider, WAIT)
        c2 = cond(client.get_gpu(UUIDS[2]))
        assert re.fullmatch(r"nvmlDevice\w+ on GPU 2 did not return within 2 s \(the driver may be hung\)",
                            c2.message), c2.message
        assert client.get_gpu(UUIDS[2]).status.recommended_action == "NONE"  # nothing acted on

        # meanwhile: an XID on GPU 3 still reaches the server, the probes answer, the others stay True
        fault.inject_xid(3, 79)
        wait_for("GPU 3 Xid79", lambda: nvml_status(client, UUIDS[3]) == ("False", "Xid79", "RESTART_BM"),
                 provider, WAIT)
        assert http_get(hport, "/healthz")[0] == 200
        assert http_get(hport, "/readyz")[0] == 200
        assert all(nvml_status(client, UUIDS[i])[0] == "True" for i in (0, 1, 4, 5, 7))

        m = Scrape(mport)
        assert m.value("nvsentinel_nvml_gpu_health", gpu="2", uuid=UUIDS[2]) == -1
        timeouts = sum(v for (name, labels), v in m.samples.items()
                       if name == "nvsentinel_nvml_call_timeouts_total" and ("gpu", "2") in labels)
        assert timeouts == 1  # one hung call, reported once; no new call is issued to the GPU
        # counted once the write's answer is back (the server may show it a moment before)
        wait_for("the Unknown write counted",
                 lambda: (metric(mport, "nvsentinel_nvml_condition_writes_total", status="Unknown") or 0) >= 1,
                 provider, WAIT)

        # a GPU that stays hung does not pile up threads: ten more poll rounds of the other GPUs
        tasks = Path(f"/proc/{provider.proc.pid}/task")
        threads = len(list(tasks.iterdir()))
        reads = m.value("nvsentinel_nvml_call_seconds_count", call=FIELD)
        wait_for("ten more poll rounds",
                 lambda: metric(mport, "nvsentinel_nvml_call_seconds_count", call=FIELD) >= reads + 7 * 10,
                 provider, WAIT)
        assert len(list(tasks.iterdir())) <= threads + 2
        assert nvml_status(client, UUIDS[2])[0] == "Unknown"

        # the hang ends: the hung call returns, a fresh read succeeds, GPU 2 is True again
        fault.hang(2, 0)
        wait_for("GPU 2 back to True", lambda: nvml_status(client, UUIDS[2]) == ("True", "NvmlOk", "NONE"),
                 provider, WAIT)
        assert metric(mport, "nvsentinel_nvml_gpu_health", gpu="2", uuid=UUIDS[2]) == 1
        assert "overdue nvml call returned" in provider.log()
        assert nvml_status(client, UUIDS[3]) == ("False", "Xid79", "RESTART_BM")
    finally:
        stop(server, client, provider)


def test_an_old_driver_falls_back_to_events_and_says_so_once(sock_dir, tmp_path):
    control = tmp_path / "fake-nvml.ctl"
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps({"driver_version": "550.127.05"}))
    server, client, provider, mport = start(sock_dir, control, "--fake-nvml-topology", str(topology),
                                            "--health-poll-interval", "0.2")
    fault = FaultInjector(control)
    try:
        wait_for("8 healthy GPUs", lambda: all_have(client, "True", "NvmlOk"), provider, WAIT)
        m = Scrape(mport)
        for i in range(8):
            assert m.value("nvsentinel_nvml_recovery_action_supported", gpu=str(i)) == 0
        # several polls later (liveness reads of the UUID) it is still one line
        reads = m.value("nvsentinel_nvml_call_seconds_count", call="nvmlDeviceGetUUID") or 0
        wait_for("more polls", lambda: (metric(mport, "nvsentinel_nvml_call_seconds_count",
                                               call="nvmlDeviceGetUUID") or 0) >= reads + 8 * 3, provider, WAIT)
        assert provider.log().count("does not report the gpu recovery action") == 1
        # events still work
        fault.inject_xid(1, 79)
        wait_for("GPU 1 Xid79", lambda: nvml_status(client, UUIDS[1]) == ("False", "Xid79", "RESTART_BM"),
                 provider, WAIT)
        assert all(nvml_status(client, UUIDS[i])[0] == "True" for i in (0, 2, 3, 4, 5, 6, 7))
        assert provider.log().count("does not report the gpu recovery action") == 1
    finally:
        stop(server, client, provider)


def _run(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvsentinel.daemons.nvml_provider", "--health-port", "0", "--address", "127.0.0.1:1",
         "--fake-nvml", *flags], capture_output=True, text=True, timeout=60, env=env or clean_env())


def test_the_new_settings_are_validated_and_a_bad_override_file_stops_the_start(tmp_path):
    for flag, value in (("--nvml-call-timeout", "0"), ("--nvml-call-timeout", "601"), ("--health-poll-interval", "0"),
                        ("--health-poll-interval", "nan"), ("--metrics-port", "70000")):
        proc = _run(flag, value)
        assert proc.returncode == 2 and flag in proc.stderr, (flag, value, proc.stderr)
    bad = tmp_path / "overrides.json"
    bad.write_text('{"version": 1, "overrides": {"13": {"action": "EXPLODE"}}}')
    proc = _run(env=clean_env(**{XID_OVERRIDES_ENV: str(bad)}))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert 'msg="cannot start"' in proc.stderr and "--xid-overrides" in proc.stderr, proc.stderr
