"""The device API server's embedded NVML provider builds its catalog with the site's XID overrides
(`EmbeddedNvmlProvider(xid_overrides=...)`): the real pynvml on the fake library in a child process,
a real Device API server over a real socket."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from apiserver import ThreadServer, make_settings  # noqa: E402
from nvml_fake_helpers import UUIDS, Child, clean_env  # noqa: E402
from test_nvml_provider_e2e import nvml_status  # noqa: E402

from nvsentinel import errors  # noqa: E402
from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.node.nvml.embedded import EmbeddedNvmlProvider  # noqa: E402
from nvsentinel.node.nvml.library import NvmlLoader  # noqa: E402

EMBEDDED = """\
import threading
from nvsentinel.node.nvml.embedded import EmbeddedNvmlProvider
loader = fake_nvml.nvml_loader("", os.environ["CONTROL"], "")
p = EmbeddedNvmlProvider(os.environ["ADDRESS"], loader, xid_overrides=os.environ["OVERRIDES"])
p.start()
print("started", flush=True)
threading.Event().wait()
"""


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="nvs-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_embedded_provider_applies_the_xid_overrides(sock_dir, tmp_path):
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"version": 1, "overrides": {"13": {"action": "COMPONENT_RESET"}}}))
    control = tmp_path / "fake-nvml.ctl"
    server = ThreadServer(make_settings(sock_dir)).start()
    client = DeviceApiClient(server.tcp, timeout=5)
    env = clean_env(CONTROL=str(control), ADDRESS=server.tcp, OVERRIDES=str(overrides))
    try:
        with Child(EMBEDDED, env) as child:
            assert child.readline(60) == "started"
            FaultInjector(control).inject_xid(5, 13)
            FaultInjector(control).inject_xid(6, 31)  # benign and not overridden: stays healthy
            deadline = time.monotonic() + 60
            last = None
            while time.monotonic() < deadline:
                try:
                    last = nvml_status(client, UUIDS[5])
                except errors.NvsentinelError as exc:
                    last = exc
                if last == ("False", "Xid13", "COMPONENT_RESET"):
                    break
                assert child.proc.poll() is None, child.stderr()
                time.sleep(0.01)
            assert last == ("False", "Xid13", "COMPONENT_RESET"), (last, child.stderr())
            FaultInjector(control).inject_xid(7, 48)  # after the 31: once it shows, the 31 was handled
            while nvml_status(client, UUIDS[7])[1] != "Xid48":
                assert time.monotonic() < deadline + 60 and child.proc.poll() is None, child.stderr()
                time.sleep(0.01)
            assert nvml_status(client, UUIDS[6])[:2] == ("True", "NvmlOk")
    finally:
        client.close()
        server.stop()


def test_a_bad_override_file_fails_the_embedded_start_with_one_line(tmp_path):
    bad = tmp_path / "overrides.json"
    bad.write_text("{not json")
    p = EmbeddedNvmlProvider("127.0.0.1:1", NvmlLoader.real(str(tmp_path), ""), xid_overrides=str(bad))
    with pytest.raises(RuntimeError, match=r"^--xid-overrides: ValueError: .*not JSON"):
        p.start()
    assert p.provider is None


def test_the_device_api_server_daemon_passes_the_overrides_variable_to_its_provider(sock_dir, tmp_path):
    """`nvsentinel device-api-server --enable-nvml-provider` reads NVSENTINEL_XID_OVERRIDES like every
    other classifier (the chart sets it in each container that classifies)."""
    from apiserver import SubprocessServer

    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"version": 1, "overrides": {"13": {"action": "RESTART_BM"}}}))
    control = tmp_path / "fake-nvml.ctl"
    server = SubprocessServer.start(sock_dir, "--enable-nvml-provider", "--fake-nvml", "--fake-nvml-control",
                                    str(control), "--nvml-call-timeout", "20", "--nvml-health-poll-interval", "1",
                                    env={"NVSENTINEL_XID_OVERRIDES": str(overrides)})
    client = DeviceApiClient(server.unix, timeout=5)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if len(client.list_gpus()[1]) == 8:
                    break
            except errors.NvsentinelError:
                pass
            assert time.monotonic() < deadline and server.proc.poll() is None, "".join(server.log)
            time.sleep(0.02)
        FaultInjector(control).inject_xid(2, 13)
        while nvml_status(client, UUIDS[2]) != ("False", "Xid13", "RESTART_BM"):
            assert time.monotonic() < deadline + 60 and server.proc.poll() is None, "".join(server.log)
            time.sleep(0.02)
    finally:
        client.close()
        server.close()


def test_the_device_api_server_refuses_bad_nvml_timings_with_exit_2(tmp_path):
    import subprocess

    for flag, value in (("--nvml-call-timeout", "0"), ("--nvml-health-poll-interval", "1e9")):
        r = subprocess.run([sys.executable, "-m", "nvsentinel.daemons.device_api_server", "--enable-nvml-provider",
                            flag, value], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and flag in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
