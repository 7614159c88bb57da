"""The layout is enforced (SPEC §1, docs/architecture.md): import-linter checks the contracts in
pyproject.toml against the installed package; what it cannot read (Cython sources, the tree's
shape) is checked here by hand."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

import nvsentinel
import nvsentinel.daemons

PKG = pathlib.Path(nvsentinel.__file__).resolve().parent
DAEMONS = pathlib.Path(nvsentinel.daemons.__file__).resolve().parent
ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"
LINT_IMPORTS = pathlib.Path(sys.executable).parent / "lint-imports"

#: The embeddable core: everything a module at the package root may be.
CORE = {"store", "fanout", "xid", "errors", "types", "_compat", "_pbwire", "_store_py", "_fanout_py", "_xid_py",
        "_xid_types", "_xid_dedup", "_xid_catalog"}
#: The rooms (subpackages of nvsentinel) and what else lives at the root.
ROOMS = {"policy", "service", "k8s", "node", "cluster", "cli", "devtools", "daemons"}
ROOT_EXTRAS = {"__init__", "__main__", "_proto", "data"}
COMPILED = {"_store_c", "_fanout_c", "_xid_c"}
FORBIDDEN_IN_COMPILED_CORE = {"grpc", "kubernetes", "pynvml"}


def package_tree(dest: pathlib.Path) -> pathlib.Path:
    """The installed package's Python sources as one tree (an editable install maps daemons/ apart)."""
    root = dest / "nvsentinel"
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.html", "_fake_nvml", "data")
    shutil.copytree(PKG, root, ignore=skip)
    if not (root / "daemons").exists():
        shutil.copytree(DAEMONS, root / "daemons", ignore=skip)
    return dest


def lint_imports(tree: pathlib.Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: pip install '.[test]' installs import-linter"
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(CONFIG)], cwd=tree, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def contract_names() -> list[str]:
    return [c["name"] for c in tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]]


def test_import_contracts_hold(tmp_path):
    """Verify every import-linter contract (rooms, purity, independence, private modules) is kept."""
    proc = lint_imports(package_tree(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(contract_names())} kept, 0 broken." in proc.stdout, proc.stdout


@pytest.mark.parametrize(("where", "line", "contract"), [
    ("policy/bad.py", "import socket", "Policy and every stage's pure decisions"),
    ("cluster/drain/logic_bad.py", "import nvsentinel.cluster.quarantine.logic", "The stages share only"),
    ("node/kmsg/bad.py", "from nvsentinel.node.nvml import reset", "What runs on a GPU node"),
    ("node/bad.py", "from nvsentinel.cluster import registry", "Rooms are layered"),
    ("node/nvml/bad.py", "from nvsentinel.devtools import fake_nvml", "Only the CLI and the daemons"),
    ("node/publisher/bad.py", "import kubernetes", "Only nvsentinel.k8s.kube talks"),
    ("daemons/bad.py", "from nvsentinel.daemons import controllers", "Daemons never import each other"),
    ("cli/bad.py", "from nvsentinel.node.api import _bad_private", "No package imports another's private"),
])
def test_import_contracts_catch_a_violation(tmp_path, where, line, contract):
    """Verify each kind of contract breaks, naming itself, when one module violates it."""
    tree = package_tree(tmp_path)
    (tree / "nvsentinel" / "node" / "api" / "_bad_private.py").write_text("")
    (tree / "nvsentinel" / where).write_text(line + "\n")
    (name,) = [n for n in contract_names() if n.startswith(contract)]
    proc = lint_imports(tree)
    report = " ".join(proc.stdout.split())  # the report wraps long names across lines
    assert proc.returncode != 0
    assert f"{name} BROKEN" in report, proc.stdout


def test_every_component_is_under_a_contract():
    """Verify each subpackage of node/ and cluster/ is in its independence contract, so a new
    component cannot escape the rules by not being listed."""
    contracts = tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]
    listed = {m for c in contracts if c["type"] == "independence" for m in c["modules"]}
    for room in ("node", "cluster"):
        subpackages = {f"nvsentinel.{room}.{p.name}" for p in (PKG / room).iterdir() if (p / "__init__.py").exists()}
        assert subpackages and subpackages <= listed, subpackages - listed


def test_package_root_holds_only_the_core_and_the_rooms():
    """Verify no module that belongs to a room sits at the package root."""
    modules = {p.stem for p in PKG.glob("*.py")}
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert modules - ROOT_EXTRAS == CORE, modules ^ (CORE | ROOT_EXTRAS)
    assert packages - ROOT_EXTRAS - {"daemons"} == ROOMS - {"daemons"}, packages


def test_compiled_core_imports_no_transport_or_cluster_library():
    """Verify the Cython sources (which import-linter cannot read) import no grpc, kubernetes or pynvml,
    and nothing of nvsentinel outside the core."""
    sources = sorted((ROOT / "csrc").glob("_*_c.pyx"))
    assert {p.name for p in sources} >= {"_store_c.pyx", "_fanout_c.pyx", "_xid_c.pyx"}
    for path in sources:
        lines = [line for line in path.read_text().splitlines()
                 if line.startswith(("import ", "from ")) and " cimport " not in line]
        modules = {line.split()[1] for line in lines}
        assert not {m.split(".")[0] for m in modules} & FORBIDDEN_IN_COMPILED_CORE, (path.name, modules)
        ours = {m for m in modules if m.startswith("nvsentinel.")}
        assert {m.split(".")[1] for m in ours} <= CORE | COMPILED, (path.name, ours)


def test_package_root_import_is_cheap():
    """Verify `import nvsentinel` alone pulls in no grpc, kubernetes or pynvml."""
    code = "import sys, nvsentinel; print(sorted(m for m in ('grpc','kubernetes','pynvml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_source_directory_is_an_installed_package():
    """Verify each directory of .py files under nvsentinel/ and daemons/ has an __init__.py: without
    one, setuptools' find_packages leaves it out of the wheel and only an editable install works."""
    for top in (ROOT / "nvsentinel", ROOT / "daemons"):
        for d in [top, *(p for p in top.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            if any(d.glob("*.py")):
                assert (d / "__init__.py").exists(), f"{d} has modules but no __init__.py"
