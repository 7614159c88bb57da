"""`nvsentinel get` and `nvsentinel watch` against a real server, as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from gpus import gpu, gpu_name, status

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


ANSI = "\x1b[2J\x1b[31mPWNED\x1b[0m\x1b]8;;http://evil\x07link\x1b]8;;\x07\rover\x9b1m"


def gpu_with_escapes(name):
    g = gpu(name, conditions=(("Ready\x1b[5m", "False"),), action="RESTART_BM" + ANSI)
    g.status.conditions[0].reason = "Xid79" + ANSI
    g.status.conditions[0].message = "fallen off the bus" + ANSI * 50
    return g


def test_get_and_watch_clean_escapes_from_gpu_fields(server):
    """Verify a GPU whose action, condition type, reason and message carry ANSI escapes prints as plain
    text in `get gpus` (table and wide), `get gpu` and `watch gpus`: no ESC or other control character
    reaches the terminal, while json keeps the exact value (escaped by JSON)."""
    server.run_sync(server.store.create, gpu_with_escapes(A))
    for args in (("get", "gpus"), ("get", "gpus", "-o", "wide"), ("get", "gpu", A)):
        out = cli(*args, "--address", server.unix)
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout and "\r" not in out.stdout and "\x9b" not in out.stdout, repr(out.stdout)
        assert "RESTART_BMPWNED" in out.stdout  # the text survives, the escapes do not
    doc = json.loads(cli("get", "gpu", A, "-o", "json", "--address", server.unix).stdout)
    assert doc["status"]["recommendedAction"] == "RESTART_BM" + ANSI
    proc = subprocess.Popen([sys.executable, "-m", "nvsentinel", "watch", "gpus", "--address", server.unix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ADDED") and A in line
        assert "\x1b" not in line and "\r" not in line.rstrip("\n") and "PWNED" in line
        assert len(line) < 600  # the 50-fold message is cut, not echoed whole
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_healthevent_views_clean_escapes():
    """Verify `get healthevents` (table, wide) and `describe healthevent` output of a HealthEvent and an
    Event carrying ANSI escapes, newlines and a 100 KB message is plain and bounded."""
    import datetime as dt

    from nvsentinel.cli.views import display

    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    obj = {
        "metadata": {"name": "node-a-gpu0-xid79", "creationTimestamp": "2025-12-31T23:00:00Z",
                     "labels": {"team": "gpu" + ANSI}, "annotations": {"note" + ANSI: "x"}},
        "spec": {"nodeName": "node-a" + ANSI, "source": "kmsg", "isFatal": True, "recommendedAction": "RESTART_BM",
                 "message": "line one" + ANSI + "\nline two\x07" + "m" * 100_000, "errorCodes": ["79" + ANSI],
                 "entitiesImpacted": [{"type": "GPU", "value": "GPU-1" + ANSI}]},
        "status": {"phase": "Quarantined" + ANSI,
                   "conditions": [{"type": "NodeQuarantined", "status": "True", "reason": "Cordoned" + ANSI,
                                   "message": "m" + ANSI, "lastTransitionTime": "2025-12-31T23:00:01Z"}]},
    }
    event = {"type": "Warning", "reason": "Cordoned" + ANSI, "message": "cordoned" + ANSI, "count": "x" + ANSI,
             "lastTimestamp": "2025-12-31T23:00:02Z", "source": {"component": "nvsentinel" + ANSI}}
    outputs = [display.render_table([obj], now), display.render_table([obj], now, wide=True),
               display.describe(obj, [event], now)]
    for text in outputs:
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\x9b" not in text, repr(text[:500])
        assert "PWNED" in text
        assert max(len(line) for line in text.splitlines()) < 5000  # the 100 KB message is cut
    described = outputs[2]
    assert "line one" in described and "line two" in described  # its own line breaks are kept


def test_watch_gpus_reconnects_after_a_server_restart(sock_dir):
    """Verify `watch gpus` survives its server stopping and a new one starting on the same socket: it
    says so on stderr, relists (the GPU the new server lacks is DELETED, its new one ADDED) and keeps
    printing the new server's live events."""
    import queue
    import threading

    from apiserver import SubprocessServer

    from nvsentinel.node.client import DeviceApiClient

    server = SubprocessServer.start(sock_dir, "--grpc-address", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nvsentinel", "watch", "gpus", "-o", "json", "--address", server.unix],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue = queue.Queue()
    notices: list[str] = []
    readers = [threading.Thread(target=lambda: [lines.put(json.loads(x)) for x in proc.stdout], daemon=True),
               threading.Thread(target=lambda: [notices.append(x) for x in proc.stderr], daemon=True)]
    for r in readers:
        r.start()

    def next_event():
        return lines.get(timeout=60)

    try:
        with DeviceApiClient(server.unix) as c:
            c.create_gpu(gpu(A))
        first = next_event()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", A)
        assert server.terminate() == 0
        server.close()

        server = SubprocessServer.start(sock_dir, "--grpc-address", "")  # the same socket, a new store
        with DeviceApiClient(server.unix) as c:
            c.create_gpu(gpu(B))
            relisted = {(e["type"], e["object"]["metadata"]["name"]) for e in (next_event(), next_event())}
            assert relisted == {("DELETED", A), ("ADDED", B)}
            c.update_gpu_status(B, status(("Ready", "False")))
            live = next_event()
        assert (live["type"], live["object"]["metadata"]["name"]) == ("MODIFIED", B)
        assert live["object"]["status"]["conditions"][0]["status"] == "False"
        assert proc.poll() is None  # still following
        assert any(n.startswith("watch: connection lost") for n in notices), notices
        assert any("relisted" in n for n in notices), notices
        assert all(n.startswith("watch: ") for n in notices), notices  # one-line notices, no traceback
    finally:
        proc.kill()
        proc.wait(10)
        for r in readers:
            r.join(10)
        proc.stdout.close()
        proc.stderr.close()
        server.close()
