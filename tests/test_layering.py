"""Layering is enforced: the core never imports grpc, kubernetes or pynvml (STYLE §14)."""
from __future__ import annotations

import ast
import pathlib

import nvsentinel

PKG = pathlib.Path(nvsentinel.__file__).resolve().parent
ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = ["store", "fanout", "errors", "types", "_compat", "_store_py", "_fanout_py", "_pbwire", "xid", "_xid_py", "catalog"]
FORBIDDEN_IN_CORE = {"grpc", "kubernetes", "pynvml"}


def imported_roots(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def core_sources() -> list[pathlib.Path]:
    out = []
    for name in CORE:
        for candidate in (PKG / f"{name}.py", ROOT / "csrc" / f"{name}.pyx"):
            if candidate.exists():
                out.append(candidate)
    out.extend((ROOT / "csrc").glob("_*_c.pyx"))
    return out


def test_core_does_not_import_transport_or_cluster_libraries():
    """Verify store, fan-out, XID and their twins/compiled versions import no grpc, kubernetes or pynvml."""
    sources = core_sources()
    assert any(p.name == "_store_c.pyx" for p in sources) and any(p.name == "store.py" for p in sources)
    for path in sources:
        if path.suffix == ".pyx":
            text = "\n".join(
                line for line in path.read_text().splitlines()
                if line.startswith(("import ", "from ")) and " cimport " not in line
            )
            roots = {line.split()[1].split(".")[0] for line in text.splitlines()}
        else:
            roots = imported_roots(path)
        assert not roots & FORBIDDEN_IN_CORE, (path.name, roots & FORBIDDEN_IN_CORE)


def test_package_root_import_is_cheap():
    """Verify `import nvsentinel` alone pulls in no grpc, kubernetes or pynvml."""
    import subprocess
    import sys

    code = "import sys, nvsentinel; print(sorted(m for m in ('grpc','kubernetes','pynvml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


#: Pure decision modules of the cluster side: no I/O libraries, no client, no event loop. They are
#: unit- and property-tested on plain values; the controllers and daemons do the I/O around them.
PURE_DECISIONS = ["healthevent/model.py", "healthevent/display.py", "publisher/logic.py",
                  "controllers/quarantine/logic.py", "controllers/quarantine/breaker.py",
                  "controllers/resolution/logic.py", "controllers/ttl/policy.py", "controllers/drain/logic.py",
                  "controllers/remediation/logic.py", "nvml/handshake.py",
                  "remediation_agent/logic.py", "status.py", "demo/script.py"]
FORBIDDEN_IN_DECISIONS = {"grpc", "kubernetes", "pynvml", "anyio", "urllib3", "threading", "asyncio", "socket"}


def test_decision_logic_is_pure():
    """Verify the HealthEvent model, the publisher's and the quarantine controller's decisions import
    no transport, no Kubernetes client and no concurrency, and not nvsentinel.k8s either."""
    for rel in PURE_DECISIONS:
        path = PKG / rel
        roots = imported_roots(path)
        assert not roots & FORBIDDEN_IN_DECISIONS, (rel, roots & FORBIDDEN_IN_DECISIONS)
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.startswith(("nvsentinel.k8s", "nvsentinel.controllers.runtime")) for m in modules), rel


def test_kubernetes_client_is_used_only_through_nvsentinel_k8s():
    """Verify only nvsentinel/k8s imports the `kubernetes` package, so errors are mapped in one place."""
    users = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "kubernetes" in imported_roots(p))
    assert users == ["k8s/kube.py"], users


def test_every_source_directory_is_an_installed_package():
    """Verify each directory of .py files under nvsentinel/ and daemons/ has an __init__.py: without
    one, setuptools' find_packages leaves it out of the wheel and only an editable install works."""
    for top in (ROOT / "nvsentinel", ROOT / "daemons"):
        for d in [top, *(p for p in top.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            if any(d.glob("*.py")):
                assert (d / "__init__.py").exists(), f"{d} has modules but no __init__.py"
