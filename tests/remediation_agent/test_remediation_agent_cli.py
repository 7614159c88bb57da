"""`nvsentinel remediation-agent`: settings precedence, validation (exit 2), start errors (exit 1),
probes with nothing reachable, SIGTERM, and the subcommand's registration."""
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

from nvsentinel.node.remediation_agent.config import ENV_PREFIX, RemediationAgentSettings, effective_node_name
from nvsentinel.service.settings import SettingsError, add_arguments, resolve


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, RemediationAgentSettings, ENV_PREFIX)
    return parser.parse_args(argv)


def test_flags_beat_environment_beat_defaults():
    """Verify flag > REMEDIATION_AGENT_* env > default."""
    env = {"REMEDIATION_AGENT_RESYNC_PERIOD": "12.5", "REMEDIATION_AGENT_NODE_NAME": "env-node",
           "REMEDIATION_AGENT_HEALTH_PORT": "9001"}
    s = resolve(RemediationAgentSettings, parse(["--health-port", "9002", "--address", "127.0.0.1:1"]), env,
                prefix=ENV_PREFIX)
    assert (s.resync_period, s.node_name, s.health_port, s.address) == (12.5, "env-node", 9002, "127.0.0.1:1")
    d = resolve(RemediationAgentSettings, parse([]), {}, prefix=ENV_PREFIX)
    assert (d.resync_period, d.backoff_max, d.health_port, d.metrics_port, d.node_name, d.address) == (
        30.0, 30.0, 8084, 0, "", "")


@pytest.mark.parametrize("argv, env, text", [
    (["--resync-period", "0"], {}, "--resync-period must be 0.1..86400"),
    (["--backoff-max", "0"], {}, "--backoff-max must be 0.1..3600"),
    (["--health-port", "70000"], {}, "--health-port must be 0..65535"),
    (["--health-port", "9000", "--metrics-port", "9000"], {}, "must differ"),
    (["--node-name", "Node_1"], {}, "is not a Kubernetes node name"),
    ([], {"REMEDIATION_AGENT_RESYNC_PERIOD": "often"}, "REMEDIATION_AGENT_RESYNC_PERIOD"),
    (["--log-format", "xml"], {}, "--log-format"),
    (["--log-level", "chatty"], {}, "--log-level"),
])
def test_bad_settings_are_refused(argv, env, text):
    """Verify each bad setting is refused with a message naming it."""
    with pytest.raises(SettingsError, match=text):
        resolve(RemediationAgentSettings, parse(argv), env, prefix=ENV_PREFIX)


def test_node_name_is_the_flag_else_node_name_and_never_the_hostname(monkeypatch):
    """Verify --node-name, else $NODE_NAME, else nothing (the daemon then refuses to start)."""
    monkeypatch.setenv("NODE_NAME", "from-env")
    assert effective_node_name("flag") == "flag"
    assert effective_node_name("") == "from-env"
    monkeypatch.delenv("NODE_NAME")
    assert effective_node_name("") == ""


def daemon(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "NODE_NAME" and not k.startswith(ENV_PREFIX)}
    return subprocess.run([sys.executable, "-m", "nvsentinel.daemons.remediation_agent", *argv],
                          capture_output=True, text=True, timeout=60, env={**base, **(env or {})})


def test_cli_exit_codes():
    """Verify a missing or bad node name and bad flags exit 2, an unusable kubeconfig exits 1."""
    missing_node = daemon()
    assert missing_node.returncode == 2 and "--node-name is required" in missing_node.stderr
    assert "set --node-name or $NODE_NAME" in missing_node.stderr
    bad_node = daemon(env={"NODE_NAME": "Not A Node"})
    assert bad_node.returncode == 2 and "is not a Kubernetes node name" in bad_node.stderr
    bad = daemon("--node-name", "n1", "--resync-period", "-1")
    assert bad.returncode == 2 and "--resync-period" in bad.stderr
    no_kube = daemon("--kubeconfig", "/nonexistent/kubeconfig", env={"NODE_NAME": "n1"})
    assert no_kube.returncode == 1 and "no kubeconfig at /nonexistent/kubeconfig" in no_kube.stderr


def test_subcommand_registers_every_flag():
    """Verify `register` adds `remediation-agent` with the settings and the shared Kubernetes flags."""
    from nvsentinel.daemons import remediation_agent

    parser = argparse.ArgumentParser()
    remediation_agent.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["remediation-agent", "--node-name", "n1", "--kubeconfig", "/k", "--context", "c",
                              "--request-timeout", "7", "--address", "unix:///run/x.sock"])
    assert (args.command, args.node_name, args.kubeconfig, args.context, args.request_timeout, args.address) == (
        "remediation-agent", "n1", "/k", "c", 7.0, "unix:///run/x.sock")
    assert callable(args.func)
    text = parser._subparsers._group_actions[0].choices["remediation-agent"].format_help()
    for flag in ("--address", "--node-name", "--resync-period", "--backoff-max", "--health-port",
                 "--metrics-port", "--http-bind-address", "--log-format", "--log-level", "--kubeconfig",
                 "--context", "--request-timeout", "REMEDIATION_AGENT_RESYNC_PERIOD"):
        assert flag in text, flag


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


def test_daemon_serves_probes_with_nothing_reachable_and_stops_on_sigterm(tmp_path):
    """Verify the daemon starts with no API server and no Device API, answers /healthz 200 and
    /readyz 503 (not synced), serves its metrics, and exits 0 on SIGTERM."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    port, mport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nvsentinel.daemons.remediation_agent", "--kubeconfig", str(kubeconfig),
             "--address", f"unix://{tmp_path}/nothing.sock", "--health-port", str(port), "--metrics-port", str(mport)],
            stdout=subprocess.DEVNULL, stderr=log,
            env={**env, "PYTHONUNBUFFERED": "1", "REMEDIATION_AGENT_NODE_NAME": "n1"})
        try:
            deadline = time.monotonic() + 20
            while get(port, "/healthz") != 200 and time.monotonic() < deadline:
                assert proc.poll() is None
                time.sleep(0.05)
            assert get(port, "/healthz") == 200
            assert get(port, "/readyz") == 503
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as r:
                metrics = r.read().decode()
            assert 'nvsentinel_remediation_agent_errors_total{kind="kube"} 0.0' in metrics
            time.sleep(1.0)  # both informers are failing and retrying meanwhile
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        text = log.read().decode()
    assert 'msg="remediation agent started"' in text and "node=n1" in text
    assert 'selector="nvsentinel.nvidia.com/node=n1"' in text
    assert 'msg="informer retrying"' in text  # the API server is unreachable: retried, not fatal
    assert 'msg=stopping' in text
