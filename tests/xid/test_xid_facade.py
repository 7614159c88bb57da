"""The facade picks the compiled decoder by default; both implementations look and act the same."""
from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from nvsentinel import xid

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_compiled_decoder_is_active_by_default():
    """Verify nvsentinel.xid loads the compiled module unless NVSENTINEL_NO_EXTENSIONS is set."""
    expected = "py" if os.environ.get("NVSENTINEL_NO_EXTENSIONS") else "c"
    assert xid.IMPLEMENTATION == expected
    assert xid.Decoder.__module__ == f"nvsentinel._xid_{expected}"


def test_env_var_forces_the_twin():
    """Verify NVSENTINEL_NO_EXTENSIONS=1 makes the facade load the pure-Python twin."""
    env = dict(os.environ, NVSENTINEL_NO_EXTENSIONS="1")
    code = "from nvsentinel import xid; print(xid.IMPLEMENTATION, xid.Decoder.__module__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["py", "nvsentinel._xid_py"]


@pytest.mark.c_extension
def test_both_implementations_expose_the_same_names():
    """Verify the compiled module and the twin export the same public API, down to Decoder's members."""
    c = importlib.import_module("nvsentinel._xid_c")
    py = importlib.import_module("nvsentinel._xid_py")
    assert sorted(c.__all__) == sorted(py.__all__) == ["Decoder", "decode_line"]
    public = lambda obj: {n for n in dir(obj) if not n.startswith("_")}  # noqa: E731
    assert public(c.Decoder()) == public(py.Decoder()) == {"feed", "finish", "pci_to_uuid", "catalog"}


def test_facade_exports_resolve():
    """Verify every name in nvsentinel.xid.__all__ exists."""
    for name in xid.__all__:
        assert hasattr(xid, name), name


def test_documented_example_runs(tmp_path):
    """Verify the runnable example in docs/xid.md runs and prints what the doc says it prints."""
    doc = (ROOT / "docs" / "xid.md").read_text()
    section = doc.split("## Runnable example", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    expected = section.split("```text\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out == expected
