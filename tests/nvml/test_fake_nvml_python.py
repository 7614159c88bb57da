"""nvsentinel.devtools.fake_nvml and `nvsentinel nvml`: explicit loading, the injector, the CLI."""
from __future__ import annotations

import os
import pathlib
import re
import stat
import subprocess
import sys
import threading

import pytest
from nvml_fake_helpers import clean_env, last_json, run_script

from nvsentinel import cli
from nvsentinel.devtools import fake_nvml

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "fake-nvml.md"


def test_docs_example_runs_as_printed():
    """Verify the runnable example in docs/fake-nvml.md prints exactly what the page shows."""
    text = DOC.read_text()
    code = re.search(r"## Runnable example\n\n```python\n(.*?)```", text, re.S)
    shown = re.search(r"compares the output\.\n\n```text\n(.*?)```", text, re.S)
    assert code and shown
    out = subprocess.run(
        [sys.executable, "-c", code.group(1)], capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == shown.group(1)


def test_load_preloads_by_soname_and_logs_a_loud_warning(tmp_path):
    """Verify load() makes CDLL("libnvidia-ml.so.1") the fake and logs one WARNING naming it."""
    control = tmp_path / "c.ctl"
    body = f"""\
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    fake = fake_nvml.load(control={str(control)!r})
    lib = ctypes.CDLL("libnvidia-ml.so.1")
    lib.fakeNvmlIdentity.restype = ctypes.c_char_p
    import pynvml
    pynvml.nvmlInit()
    print(json.dumps([lib.fakeNvmlIdentity().decode(), str(fake.control), fake.topology,
                      pynvml.nvmlLib.fakeNvmlIdentity is not None, fake_nvml.loaded() is fake]))
    """
    proc = run_script(body)
    assert last_json(proc) == ["nvsentinel-fake-nvml/1", str(control), "built-in", True, True]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING nvsentinel.devtools.fake_nvml FAKE NVML IN USE: pynvml will talk to nvsentinel's fake "
        "libnvidia-ml, not a GPU driver (tests and demos only)"
    ]


def test_nothing_loads_the_fake_implicitly():
    """Verify importing nvsentinel, its CLI and pynvml, and calling nvmlInit, never maps the fake."""
    code = (
        "import nvsentinel, nvsentinel.devtools.fake_nvml, nvsentinel.cli, pynvml\n"
        "nvsentinel.cli.build_parser()\n"
        "try:\n    pynvml.nvmlInit()\nexcept pynvml.NVMLError:\n    pass\n"
        "print(nvsentinel.devtools.fake_nvml.loaded(), open('/proc/self/maps').read().count('libnvidia-ml-fake'))\n"
    )
    env = clean_env(NVSENTINEL_FAKE_NVML_TOPOLOGY="/nonexistent", NVSENTINEL_FAKE_NVML_CONTROL="/nonexistent")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["None", "0"]


def test_importing_fake_nvml_does_not_import_pynvml():
    """Verify nvsentinel.devtools.fake_nvml and the nvml command import no pynvml at module import time."""
    code = "import sys, nvsentinel.devtools.fake_nvml, nvsentinel.cli.commands.nvml; print('pynvml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_load_after_pynvml_loaded_a_library_is_refused():
    """Verify load() refuses once pynvml holds an NVML library (it would be too late to swap it)."""
    body = """\
    import pynvml
    pynvml.nvmlLib = ctypes.CDLL(None)  # as if pynvml had loaded a real driver's library
    try:
        fake_nvml.load(control="")
    except RuntimeError as exc:
        print(json.dumps(str(exc)))
    """
    assert "before the first pynvml.nvmlInit()" in last_json(run_script(body))


def test_load_accepts_a_topology_mapping():
    """Verify load(topology={...}) writes it for the library, which reads it at nvmlInit."""
    body = """\
    fake = fake_nvml.load(topology={"gpu_count": 2, "defaults": {"name": "NVIDIA H200"}}, control="")
    import pynvml as N
    N.nvmlInit()
    print(json.dumps([N.nvmlDeviceGetCount(), N.nvmlDeviceGetName(N.nvmlDeviceGetHandleByIndex(1)),
                      os.path.exists(fake.topology)]))
    """
    assert last_json(run_script(body)) == [2, "NVIDIA H200", True]


def test_default_control_path(monkeypatch):
    """Verify the control file is $NVSENTINEL_FAKE_NVML_CONTROL, else a per-user temp file."""
    monkeypatch.delenv(fake_nvml.CONTROL_ENV, raising=False)
    default = fake_nvml.default_control_path()
    assert default.name == f"nvsentinel-fake-nvml-{os.getuid()}.ctl"
    monkeypatch.setenv(fake_nvml.CONTROL_ENV, "/run/x.ctl")
    assert str(fake_nvml.default_control_path()) == "/run/x.ctl"
    assert str(fake_nvml.FaultInjector().control) == "/run/x.ctl"


def test_injector_writes_one_line_per_command(tmp_path):
    """Verify each fault is one appended line in the documented language, in a 0600 file."""
    control = tmp_path / "c.ctl"
    injector = fake_nvml.FaultInjector(control)
    sent = [
        injector.inject_xid(0, 79),
        injector.inject_xid("GPU-196b7c1a-b6d3-9791-4798-481be2406bdb", 48),
        injector.inject_ecc(1),
        injector.inject_ecc(1, double_bit=False),
        injector.inject_event("all", 0x8000, 2),
        injector.lose(3),
        injector.recover("*"),
        injector.reset(3),
    ]
    assert control.read_text().splitlines() == sent == [
        "xid 0 79",
        "xid GPU-196b7c1a-b6d3-9791-4798-481be2406bdb 48",
        "dbe 1",
        "sbe 1",
        "event * 0x8000 2",
        "lose 3",
        "recover *",
        "reset 3",
    ]
    assert stat.S_IMODE(control.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "call",
    [
        lambda i: i.inject_xid(-1, 79),
        lambda i: i.inject_xid(0, 0),
        lambda i: i.inject_xid(0, 2**32),
        lambda i: i.inject_xid(True, 79),
        lambda i: i.lose("gpu3"),
        lambda i: i.send("xid 0 79\nlose 1"),
    ],
)
def test_injector_rejects_bad_arguments(tmp_path, call):
    """Verify bad GPUs, XIDs and multi-line commands raise and write nothing."""
    control = tmp_path / "c.ctl"
    with pytest.raises((ValueError, TypeError)):
        call(fake_nvml.FaultInjector(control))
    assert not control.exists()


def test_injector_refuses_a_planted_symlink(tmp_path):
    """Verify the injector never follows a symlink at the control path (shared temp dirs)."""
    target = tmp_path / "victim"
    target.write_text("")
    (tmp_path / "c.ctl").symlink_to(target)
    with pytest.raises(OSError):
        fake_nvml.FaultInjector(tmp_path / "c.ctl").lose(0)
    assert target.read_text() == ""


def test_concurrent_writers_never_interleave(tmp_path):
    """Verify many threads injecting at once leave only whole, well-formed lines."""
    control = tmp_path / "c.ctl"

    def writer(gpu: int) -> None:
        injector = fake_nvml.FaultInjector(control)
        for xid in range(1, 201):
            injector.inject_xid(gpu, xid)

    threads = [threading.Thread(target=writer, args=(g,)) for g in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = control.read_text().splitlines()
    assert len(lines) == 1600
    assert sorted(lines) == sorted(f"xid {g} {x}" for g in range(8) for x in range(1, 201))


def test_in_process_injector_needs_load():
    """Verify FaultInjector.in_process() refuses when this process has not loaded the fake."""
    if fake_nvml.loaded() is not None:  # pragma: no cover - the test process never loads it
        raise AssertionError("the pytest process must not load the fake NVML")
    with pytest.raises(RuntimeError, match="not loaded"):
        fake_nvml.FaultInjector.in_process()


def test_cli_usage_and_errors(tmp_path, capsys):
    """Verify `nvsentinel nvml` exit codes: 2 for usage and bad values, 1 for an unwritable file."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["nvml", "inject", "--gpu", "0"])  # no fault named
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["nvml", "inject", "--gpu", "0", "--lose", "--recover"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert cli.main(["nvml", "inject", "--gpu", "0", "--xid", "0", "--control", str(tmp_path / "c")]) == 2
    assert "xid must be an integer in 1..4294967295" in capsys.readouterr().err
    assert cli.main(["nvml", "inject", "--gpu", "x", "--lose", "--control", str(tmp_path / "c")]) == 2
    missing = tmp_path / "no" / "such" / "dir.ctl"
    assert cli.main(["nvml", "inject", "--gpu", "0", "--lose", "--control", str(missing)]) == 1
    assert "No such file or directory" in capsys.readouterr().err
    assert cli.main(["nvml"]) == 2
    assert "usage: nvsentinel nvml" in capsys.readouterr().out
    assert cli.main(["nvml", "library-path"]) == 0
    assert capsys.readouterr().out.strip() == str(fake_nvml.library_path())


def test_cli_all_gpus_and_recover_reset(tmp_path, capsys):
    """Verify --lose/--recover/--reset accept `all` and write the documented commands."""
    control = tmp_path / "c.ctl"
    for flag in ("--lose", "--recover", "--reset"):
        assert cli.main(["nvml", "inject", flag, "--gpu", "all", "--control", str(control)]) == 0
    assert control.read_text().splitlines() == ["lose *", "recover *", "reset *"]
    assert capsys.readouterr().out.splitlines()[0] == f"lose * -> {control}"


def test_cli_uses_the_environment_control_file(tmp_path, capsys):
    """Verify `inject` without --control writes to $NVSENTINEL_FAKE_NVML_CONTROL."""
    control = tmp_path / "env.ctl"
    env = clean_env(NVSENTINEL_FAKE_NVML_CONTROL=str(control))
    subprocess.run(
        [sys.executable, "-m", "nvsentinel", "nvml", "inject", "--xid", "79", "--gpu", "0"],
        env=env, check=True, capture_output=True,
    )
    assert control.read_text() == "xid 0 79\n"
