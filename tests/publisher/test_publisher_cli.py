"""`nvsentinel publisher`: settings precedence, validation (exit 2), start errors (exit 1), signals."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from nvsentinel.node.publisher.config import ENV_PREFIX, PublisherSettings, effective_node_name
from nvsentinel.service.settings import SettingsError, add_arguments, resolve


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, PublisherSettings, ENV_PREFIX)
    return parser.parse_args(argv)


def test_flags_beat_environment_beat_defaults():
    """Verify flag > PUBLISHER_* env > default, with lists and numbers converted."""
    env = {"PUBLISHER_DEBOUNCE": "2.5", "PUBLISHER_CONDITIONS": "NvmlHealthy, DcgmHealthy",
           "PUBLISHER_KUBE_QPS": "7"}
    s = resolve(PublisherSettings, parse(["--kube-qps", "9"]), env, prefix=ENV_PREFIX)
    assert (s.debounce, s.conditions, s.kube_qps) == (2.5, ("NvmlHealthy", "DcgmHealthy"), 9.0)
    d = resolve(PublisherSettings, parse([]), {}, prefix=ENV_PREFIX)
    assert (d.debounce, d.conditions, d.health_port, d.metrics_port) == (5.0, ("NvmlHealthy", "KmsgHealthy"), 8083, 0)


@pytest.mark.parametrize("argv, env, text", [
    (["--debounce", "-1"], {}, "--debounce must be 0..3600"),
    (["--conditions", "Nvml-Healthy"], {}, "--conditions: 'Nvml-Healthy'"),
    (["--conditions", ""], {}, "--conditions must name at least one"),
    (["--kube-burst", "0"], {}, "--kube-burst must be 1..100000"),
    (["--health-port", "70000"], {}, "--health-port must be 0..65535"),
    (["--health-port", "9000", "--metrics-port", "9000"], {}, "must differ"),
    (["--node-name", "Node_1"], {}, "is not a Kubernetes node name"),
    ([], {"PUBLISHER_DEBOUNCE": "soon"}, "PUBLISHER_DEBOUNCE"),
    (["--log-format", "xml"], {}, "--log-format"),
])
def test_bad_settings_are_refused(argv, env, text):
    """Verify each bad setting is refused with a message naming it."""
    with pytest.raises(SettingsError, match=text.replace("(", r"\(")):
        resolve(PublisherSettings, parse(argv), env, prefix=ENV_PREFIX)


def test_node_name_defaults(monkeypatch):
    """Verify --node-name, else $NODE_NAME, else the hostname."""
    monkeypatch.setenv("NODE_NAME", "from-env")
    assert effective_node_name("flag") == "flag"
    assert effective_node_name("") == "from-env"
    monkeypatch.delenv("NODE_NAME")
    assert effective_node_name("") == socket.gethostname()


def daemon(*argv: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvsentinel.daemons.publisher", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, **kw)


def test_cli_exit_codes():
    """Verify bad flags exit 2 and an unusable kubeconfig exits 1, each with a clear message."""
    bad = daemon("--debounce", "-1")
    assert bad.returncode == 2 and "--debounce must be 0..3600" in bad.stderr
    bad_node = daemon(env={"NODE_NAME": "Not A Node"})
    assert bad_node.returncode == 2 and "set --node-name or $NODE_NAME" in bad_node.stderr
    missing = daemon("--kubeconfig", "/nonexistent/kubeconfig", "--node-name", "n1")
    assert missing.returncode == 1 and "no kubeconfig at /nonexistent/kubeconfig" in missing.stderr
    out = subprocess.run([sys.executable, "-m", "nvsentinel", "publisher", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    for flag in ("--address", "--kubeconfig", "--context", "--node-name", "--debounce", "--conditions",
                 "--kube-qps", "--kube-burst", "--health-port", "--metrics-port", "--log-format",
                 "--log-level", "PUBLISHER_DEBOUNCE"):
        assert flag in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_daemon_serves_probes_and_stops_on_sigterm(tmp_path):
    """Verify the daemon starts with nothing reachable, answers /healthz 200 and /readyz 503 (not
    synced), and exits 0 on SIGTERM."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nvsentinel.daemons.publisher", "--kubeconfig", str(kubeconfig),
             # a socket path nothing listens on: a free TCP port could be taken by another server meanwhile
             "--address", f"unix://{tmp_path}/nothing.sock", "--node-name", "n1", "--health-port", str(port)],
            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 60  # a busy machine starts Python slowly
            while get(port, "/healthz") != 200 and time.monotonic() < deadline:
                assert proc.poll() is None
                time.sleep(0.05)
            assert get(port, "/healthz") == 200
            assert get(port, "/readyz") == 503
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        text = log.read().decode()
    assert 'msg="publisher started"' in text and "node=n1" in text
    assert "stopping: flushing pending health events" in text
