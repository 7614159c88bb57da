"""The documented example runs, and the CLI plumbing answers as documented."""
from __future__ import annotations

import pathlib
import subprocess
import sys

from nvsentinel import __version__, cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_embedding_example_runs():
    """Verify docs/examples/embed_store.py runs to completion and prints what the docs promise."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "embed_store.py")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "unhealthy at rv 2" in out
    assert "watch saw: [('ADDED', 1), ('MODIFIED', 2)]" in out


def test_version(capsys):
    """Verify `nvsentinel --version` prints the package version."""
    try:
        cli.main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"nvsentinel {__version__}"


def test_no_subcommand_prints_help_and_fails(capsys):
    """Verify a bare `nvsentinel` prints usage and exits 2."""
    assert cli.main([]) == 2
    assert "usage: nvsentinel" in capsys.readouterr().out


def test_console_script_is_installed():
    """Verify the `nvsentinel` entry point and `python -m nvsentinel` both work."""
    out = subprocess.run([sys.executable, "-m", "nvsentinel", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"nvsentinel {__version__}"
    script = pathlib.Path(sys.executable).parent / "nvsentinel"
    assert script.exists(), "console script missing: is the package installed?"


def test_bad_log_format_is_refused(capsys):
    """Verify an unknown --log-format is refused with a clear message."""
    try:
        cli.main(["--log-format", "xml", "--version"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_structured_log_formats():
    """Verify plain logs are one key=value line and json logs one JSON object, with kv fields."""
    import json
    import logging

    from nvsentinel.service.logs import JsonFormatter, KeyValueFormatter

    record = logging.LogRecord("nvsentinel.x", logging.INFO, __file__, 1, "watch evicted", (), None)
    record.kv = {"subscriber": 3, "reason": "fell behind"}
    assert KeyValueFormatter().format(record) == 'level=info msg="watch evicted" subscriber=3 reason="fell behind"'
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "watch evicted" and doc["subscriber"] == 3 and doc["level"] == "info"
