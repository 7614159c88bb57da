"""Build the compiled core and generate the protobuf modules; nothing else lives here.

NVSENTINEL_NO_EXTENSIONS=1 builds a pure-Python package (the twins); otherwise a compile error
fails the build (no silent fallback, STYLE §4). NVSENTINEL_DEBUG_BUILD=1 gives a debug build.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import sys
import tempfile

from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE / "protos"
PROTO_OUT = HERE / "nvsentinel" / "_proto"
PROTOS = ["nvidia/device/v1alpha1/gpu.proto"]
MIN_CYTHON = (3, 1)

NO_EXTENSIONS = bool(os.environ.get("NVSENTINEL_NO_EXTENSIONS"))
DEBUG_BUILD = bool(os.environ.get("NVSENTINEL_DEBUG_BUILD"))


def generate_protos() -> None:
    """Run protoc (grpcio-tools) into a temp dir and move flat modules into nvsentinel/_proto."""
    from grpc_tools import protoc  # build requirement
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        for proto in PROTOS:
            args = [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                proto,
            ]
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed for {proto}")
            src = pathlib.Path(tmp) / pathlib.Path(proto).parent
            for generated in sorted(src.glob("*_pb2*.py*")):
                text = generated.read_text()
                # The generated imports assume protos/ is on sys.path; point them at our package.
                text = re.sub(
                    r"^from nvidia\.device\.v1alpha1 import (\w+)",
                    r"from nvsentinel._proto import \1",
                    text,
                    flags=re.M,
                )
                dest = PROTO_OUT / generated.name
                if not dest.exists() or dest.read_text() != text:
                    dest.write_text(text)


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


def extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        print("*" * 72)
        print("* NVSENTINEL_NO_EXTENSIONS is set: building the pure-Python twins only *")
        print("*" * 72)
        return []
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError:
        raise SystemExit("nvsentinel needs Cython>=%d.%d to build (pip install 'Cython>=3.1')" % MIN_CYTHON)
    version = tuple(int(p) for p in re.findall(r"\d+", Cython.__version__)[:2])
    if version < MIN_CYTHON:
        raise SystemExit(f"nvsentinel needs Cython>=3.1, found {Cython.__version__}")

    cflags = ["-O0", "-g3", "-UNDEBUG", "-DNVSENTINEL_DEBUG=1"] if DEBUG_BUILD else ["-O2"]
    cflags += ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
    macros = [("CYTHON_TRACE", "1")] if DEBUG_BUILD else []
    exts = [
        Extension(
            f"nvsentinel.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            include_dirs=["csrc"],
            extra_compile_args=cflags,
            define_macros=macros,
        )
        for pyx in sorted((HERE / "csrc").glob("_*_c.pyx"))
    ]
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG_BUILD,
            "wraparound": False,
            "linetrace": DEBUG_BUILD,
        },
        annotate=DEBUG_BUILD,
        quiet=True,
    )


setup(
    # daemons/ is installed as nvsentinel.daemons (SPEC §1): thin wrappers beside the library.
    packages=find_packages(include=["nvsentinel", "nvsentinel.*"])
    + ["nvsentinel.daemons"]
    + [f"nvsentinel.daemons.{p}" for p in find_packages("daemons")],
    package_dir={"nvsentinel.daemons": "daemons"},
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPyWithProtos},
)
