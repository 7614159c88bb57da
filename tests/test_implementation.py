"""The compiled core is what users get by default, and both implementations look the same."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nvsentinel import errors, fanout, store

CORE = ("store", "fanout")


def test_compiled_implementation_is_active_by_default():
    """Verify the facades load the compiled modules unless NVSENTINEL_NO_EXTENSIONS is set."""
    expected = "py" if os.environ.get("NVSENTINEL_NO_EXTENSIONS") else "c"
    assert store.IMPLEMENTATION == expected
    assert fanout.IMPLEMENTATION == expected
    if expected == "c":
        assert type(store.GpuStore).__name__ == "type"
        assert store.GpuStore.__module__ == "nvsentinel._store_c"
        assert fanout.FanOut.__module__ == "nvsentinel._fanout_c"


@pytest.mark.parametrize("module", CORE)
def test_env_var_forces_the_twin(module):
    """Verify NVSENTINEL_NO_EXTENSIONS=1 makes every facade load its pure-Python twin."""
    env = dict(os.environ, NVSENTINEL_NO_EXTENSIONS="1")
    out = subprocess.run(
        [sys.executable, "-c", f"import nvsentinel.{module} as m; print(m.IMPLEMENTATION, m.__dict__[[n for n in m.__all__ if n[0].isupper() and n != 'IMPLEMENTATION'][0]].__module__)"],
        env=env, capture_output=True, text=True, check=True,
    )
    tag, origin = out.stdout.split()
    assert tag == "py"
    assert origin == f"nvsentinel._{module}_py"


@pytest.mark.c_extension
@pytest.mark.parametrize("module", CORE)
def test_both_implementations_expose_the_same_names(module):
    """Verify the compiled module and the twin export the same public API, class by class."""
    import importlib

    c = importlib.import_module(f"nvsentinel._{module}_c")
    py = importlib.import_module(f"nvsentinel._{module}_py")
    assert sorted(c.__all__) == sorted(py.__all__)
    instances_c, instances_py = _instances(c), _instances(py)
    assert set(instances_c) == set(instances_py) == {n for n in py.__all__ if isinstance(getattr(py, n), type)}
    for name, obj_py in instances_py.items():
        public_c = {n for n in dir(instances_c[name]) if not n.startswith("_")}
        public_py = {n for n in dir(obj_py) if not n.startswith("_")}
        assert public_c == public_py, (name, public_c ^ public_py)


def _instances(module):
    """One live instance of each public class, made through the public API."""
    from gpus import gpu, gpu_name

    if hasattr(module, "GpuStore"):
        s = module.GpuStore()
        rec, _ = s.create(gpu(gpu_name(1)))
        return {"GpuStore": s, "GpuRecord": rec}
    f = module.FanOut()
    sub = f.subscribe()
    f.publish("ADDED", 1, "x", b"")
    return {"FanOut": f, "Subscription": sub, "WatchEvent": sub.get_nowait()}


def test_grpc_code_mapping_is_total_and_unique():
    """Verify every store error maps to exactly one gRPC status name, and no two leaves share one."""
    import grpc

    declared = [cls for cls in _all_subclasses(errors.NvsentinelError) if "grpc_code" in vars(cls)]
    codes = [cls.grpc_code for cls in declared]
    assert len(codes) == len(set(codes))
    for cls in _all_subclasses(errors.StoreError):
        assert cls.grpc_code in grpc.StatusCode.__members__, cls
        assert cls.grpc_code != "UNKNOWN", cls
    assert set(errors.GRPC_CODES) == set(codes)
    assert errors.GRPC_CODES["ABORTED"] is errors.Conflict
    assert errors.GRPC_CODES["OUT_OF_RANGE"] is errors.Expired


def _all_subclasses(cls):
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out
