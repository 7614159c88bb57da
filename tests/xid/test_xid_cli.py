"""`nvsentinel xid decode|explain`, through the real CLI entry point."""
from __future__ import annotations

import io
import json
import sys

import pytest
from xid_samples import UUID

from nvsentinel import cli

LOG = f"""\
[ 1100.000001] NVRM: GPU at PCI:0000:b3:00.0: {UUID}
[ 1108.858286] NVRM: Xid (PCI:0000:b3:00.0): 79, pid=1234, name=python, Ch 00000001
[ 1109.000000] NVRM: Xid (PCI:0000:3b:00): 95, pid=1, name=a, Uncontained: FBHUB
[ 1109.500000] NVRM: Xid (PCI:0000:3b:00): 95, pid=2, name=b, Uncontained: FBHUB
[ 1110.000000] usb 1-4: new high-speed USB device number 5 using xhci_hcd
[ 1111.000000] NVRM: Xid (PCI:0000:3b:00): 43, pid=3, name=c, Ch 00000008
[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0
               NVRM: (PCI ID: 10de:26b5) installed in this system has
               NVRM: fallen off the bus and is not responding to commands.
"""


@pytest.fixture
def logfile(tmp_path):
    path = tmp_path / "kern.log"
    path.write_text(LOG)
    return str(path)


def test_decode_table(logfile, capsys):
    """Verify the table lists each run once with PCI, UUID, XID, mnemonic, action, fatal and count."""
    assert cli.main(["xid", "decode", logfile]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["TIME", "PCI", "GPU", "XID", "MNEMONIC", "ACTION", "FATAL", "COUNT"]
    rows = [r.split() for r in out[1:]]
    assert rows[0] == ["1108.858286", "0000:b3:00", UUID, "79", "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "RESTART_BM", "yes", "1"]
    assert rows[1][3:] == ["95", "ROBUST_CHANNEL_UNCONTAINED_ERROR", "COMPONENT_RESET", "yes", "2"]
    assert rows[1][2] == "-"
    assert rows[2][3:] == ["43", "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR", "NONE", "no", "1"]
    assert rows[3][3:] == ["GPU_FALLEN_OFF_BUS", "GPU_FALLEN_OFF_BUS", "RESTART_BM", "yes", "1"]
    assert len(rows) == 4


def test_decode_json_stdin_window_overrides_and_all(logfile, tmp_path, capsys, monkeypatch):
    """Verify --json lines, reading stdin, --window 0, --overrides and --all."""
    overrides = tmp_path / "o.json"
    overrides.write_text(json.dumps({"overrides": {"43": {"ignore": True}}}))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(LOG.encode())))
    assert cli.main(["xid", "decode", "-", "--json", "--window", "0", "--overrides", str(overrides), "--all"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["kind"] for d in docs] == ["pci_mapping", "xid", "xid", "xid", "xid", "fallen_off_bus"]
    assert [d["count"] for d in docs] == [1, 1, 1, 1, 1, 1]
    x43 = docs[4]
    assert x43["classification"] == {"action": "NONE", "fatal": False, "mnemonic": "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR",
                                     "ignored": True, "source": "override"}
    assert docs[5]["pci_device_id"] == "10de:26b5" and docs[5]["gpu_uuid"] == UUID
    assert docs[1]["first_timestamp"] == docs[1]["last_timestamp"] == 1108.858286


def test_decode_uuid_from_a_later_mapping_line(tmp_path, capsys):
    """Verify a mapping line after the error (a log excerpt) still names the GPU in the table."""
    path = tmp_path / "late.log"
    path.write_text(f"NVRM: Xid (PCI:0000:b3:00): 48, DBE\nNVRM: GPU at PCI:0000:b3:00.0: {UUID}\n")
    assert cli.main(["xid", "decode", str(path)]) == 0
    assert UUID in capsys.readouterr().out.splitlines()[1]


def test_decode_empty_and_errors(tmp_path, capsys):
    """Verify an empty log says so, and a missing file, bad overrides or bad window fail clearly."""
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    assert cli.main(["xid", "decode", str(empty)]) == 0
    assert "(no GPU errors found)" in capsys.readouterr().out
    assert cli.main(["xid", "decode", str(tmp_path / "missing.log")]) == 1
    assert "missing.log" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert cli.main(["xid", "decode", str(empty), "--overrides", str(bad)]) == 1
    assert "not JSON" in capsys.readouterr().err
    assert cli.main(["xid", "decode", str(empty), "--window", "-1"]) == 2


def test_explain(capsys, tmp_path):
    """Verify explain prints the catalog row and what nvsentinel would do, as text and JSON."""
    assert cli.main(["xid", "explain", "79"]) == 0
    out = capsys.readouterr().out
    assert "XID 79: ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS" in out
    assert "RESTART_BM" in out and "reboot" in out and "GPU has fallen off the bus" in out
    assert cli.main(["xid", "explain", "154"]) == 0
    assert "'gpu reset required' -> COMPONENT_RESET" in capsys.readouterr().out
    assert cli.main(["xid", "explain", "999", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["known"] is False and doc["action"] == "CONTACT_SUPPORT" and doc["source"] == "default"
    overrides = tmp_path / "o.json"
    overrides.write_text(json.dumps({"overrides": {"13": {"ignore": True}}}))
    assert cli.main(["xid", "explain", "13", "--json", "--overrides", str(overrides)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ignored"] is True and doc["nvsentinel_does"].startswith("nothing")


def test_usage(capsys):
    """Verify `nvsentinel xid` without a subcommand prints help and exits 2; a bad XID is a usage error."""
    assert cli.main(["xid"]) == 2
    assert "decode" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["xid", "explain", "seventy-nine"])
    assert exc.value.code == 2
