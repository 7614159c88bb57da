"""`nvsentinel get` and `nvsentinel watch` against a real server, as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from gpus import gpu, gpu_name

A, B = gpu_name(1), gpu_name(2)


def cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "nvsentinel", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def populated(server):
    server.run_sync(server.store.create, gpu(A, conditions=(("Ready", "True"),)))
    server.run_sync(server.store.create, gpu(B, conditions=(("Ready", "True"), ("XidHealthy", "False")), action="RESTART_BM"))
    return server


def test_get_gpus_table_and_wide(populated):
    """Verify the table lists every GPU with health, action and conditions; wide adds reasons."""
    out = cli("get", "gpus", "--address", populated.unix)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "HEALTH", "ACTION", "RV", "CONDITIONS"]
    assert lines[1].split() == [A, "HEALTHY", "-", "1", "Ready=True"]
    assert lines[2].split() == [B, "UNHEALTHY", "RESTART_BM", "2", "Ready=True,XidHealthy=False"]
    wide = cli("get", "gpus", "-o", "wide", "--address", populated.tcp).stdout.splitlines()
    assert wide[0].split()[-2:] == ["REASONS", "NAMESPACE"]
    assert "XidHealthyReason" in wide[2]


def test_get_gpus_json_yaml_and_one_gpu(populated):
    """Verify -o json / yaml carry the list RV and the objects; `get gpu NAME` shows one."""
    doc = json.loads(cli("get", "gpus", "-o", "json", "--address", populated.tcp).stdout)
    assert doc["metadata"]["resourceVersion"] == "2"
    assert [item["metadata"]["name"] for item in doc["items"]] == [A, B]
    ydoc = yaml.safe_load(cli("get", "gpus", "-o", "yaml", "--address", populated.tcp).stdout)
    assert ydoc == doc
    one = json.loads(cli("get", "gpu", B, "-o", "json", "--address", populated.tcp).stdout)
    assert one["status"]["recommendedAction"] == "RESTART_BM"


def test_get_errors_are_clear(populated):
    """Verify a missing GPU, a bad address and an unreachable server give one-line errors and exit 1."""
    missing = cli("get", "gpu", gpu_name(9), "--address", populated.tcp)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    bad = cli("get", "gpus", "--address", "nowhere")
    assert bad.returncode == 1 and "unix:///path or host:port" in bad.stderr
    down = cli("get", "gpus", "--address", "127.0.0.1:1", "--timeout", "1")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_watch_gpus_prints_events(populated):
    """Verify `watch gpus` prints the snapshot and then live changes, one line (or JSON object) per event."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nvsentinel", "watch", "gpus", "-o", "json", "--address", populated.unix],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in first] == [("ADDED", A), ("ADDED", B)]
        populated.run_sync(populated.store.delete, A)
        event = json.loads(proc.stdout.readline())
        assert (event["type"], event["resourceVersion"]) == ("DELETED", 3)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
