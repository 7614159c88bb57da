"""Build the compiled core and generate the protobuf modules; nothing else lives here.

NVSENTINEL_NO_EXTENSIONS=1 builds a pure-Python package (the twins); otherwise a compile error
fails the build (no silent fallback, STYLE §4). NVSENTINEL_DEBUG_BUILD=1 gives a debug build.

The fake libnvidia-ml (csrc/fake_nvml/, docs/fake-nvml.md) is a plain C shared library, not a Python
extension; build_ext compiles it into nvsentinel/devtools/_fake_nvml/ on Linux. NVSENTINEL_NO_EXTENSIONS does
not turn it off: it stands in for the NVIDIA driver, it has no pure-Python twin, and the pure-Python
test run needs it as much as the compiled one. NVSENTINEL_NO_FAKE_NVML=1 leaves it out (a build
without a C compiler sets both).
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import sys
import tempfile

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE / "protos"
PROTO_OUT = HERE / "nvsentinel" / "_proto"
#: proto file → the flat module stem it is generated as in nvsentinel._proto (the kubelet's files are
#: api.proto: "api_pb2" says nothing, so they become podresources_pb2 and deviceplugin_pb2; their wire
#: packages stay v1 and v1beta1). The device-plugin API serves only the test fake (devtools.deviceplugin).
PROTOS = {
    "nvidia/device/v1alpha1/gpu.proto": "gpu",
    "k8s/podresources/v1/api.proto": "podresources",
    "k8s/deviceplugin/v1beta1/api.proto": "deviceplugin",
}
MIN_CYTHON = (3, 1)

NO_EXTENSIONS = bool(os.environ.get("NVSENTINEL_NO_EXTENSIONS"))
DEBUG_BUILD = bool(os.environ.get("NVSENTINEL_DEBUG_BUILD"))
# pynvml loads "libnvidia-ml.so.1" only on Linux; the fake has nothing to stand in for elsewhere
FAKE_NVML = sys.platform.startswith("linux") and not os.environ.get("NVSENTINEL_NO_FAKE_NVML")
FAKE_NVML_DIR = "csrc/fake_nvml"
# Not named libnvidia-ml.so.1 on purpose: a directory on LD_LIBRARY_PATH can never pick it up by
# accident; nvsentinel.devtools.fake_nvml.load() preloads it by path and the SONAME does the rest (SPEC §5).
FAKE_NVML_FILE = ("nvsentinel", "devtools", "_fake_nvml", "libnvidia-ml-fake.so")
FAKE_NVML_SONAME = "libnvidia-ml.so.1"


def generate_protos() -> None:
    """Run protoc (grpcio-tools) into a temp dir and move flat modules into nvsentinel/_proto."""
    from grpc_tools import protoc  # build requirement
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        for proto, stem in PROTOS.items():
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
            path = pathlib.PurePosixPath(proto)
            src = pathlib.Path(tmp) / path.parent
            package = re.escape(".".join(path.parent.parts))
            for generated in sorted(src.glob(f"{path.stem}_pb2*.py*")):
                text = generated.read_text()
                # The generated imports assume protos/ is on sys.path; point them at our package
                # and at the flat module name.
                text = re.sub(
                    rf"^from {package} import {re.escape(path.stem)}_pb2\b",
                    f"from nvsentinel._proto import {stem}_pb2",
                    text,
                    flags=re.M,
                )
                dest = PROTO_OUT / (stem + generated.name[len(path.stem):])
                if not dest.exists() or dest.read_text() != text:
                    dest.write_text(text)


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


class BuildExtWithFakeNvml(build_ext):
    """build_ext that also links csrc/fake_nvml/*.c into the fake libnvidia-ml (plain shared library)."""

    def run(self) -> None:
        if NO_EXTENSIONS:
            # BinaryDistribution sends even a pure build to the platform build dir, where an earlier
            # compiled build may have left the Cython modules; a pure build must not ship them.
            for stale in pathlib.Path(self.build_lib, "nvsentinel").glob("_*_c.*.so"):
                stale.unlink()
        super().run()
        if FAKE_NVML:
            self.build_fake_nvml()

    def _fake_nvml_paths(self) -> tuple[str, str]:
        built = os.path.join(self.build_lib, *FAKE_NVML_FILE)
        package_dir = self.get_finalized_command("build_py").get_package_dir("nvsentinel")
        return built, os.path.join(package_dir, *FAKE_NVML_FILE[1:])

    def build_fake_nvml(self) -> None:
        # setuptools provides distutils; build_ext's own compiler only exists when there are
        # extensions, so make one the same way (same CC, CFLAGS and LDSHARED as the extensions).
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler

        compiler = new_compiler(
            compiler=self.compiler if isinstance(self.compiler, str) else None,
            verbose=self.verbose,
            force=self.force,
        )
        customize_compiler(compiler)
        sources = sorted(f"{FAKE_NVML_DIR}/{p.name}" for p in (HERE / FAKE_NVML_DIR).glob("*.c"))
        headers = sorted(f"{FAKE_NVML_DIR}/{p.name}" for p in (HERE / FAKE_NVML_DIR).glob("*.h"))
        cflags = ["-O0", "-g3"] if DEBUG_BUILD else ["-O2"]
        cflags += ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden", "-pthread"]
        objects = compiler.compile(
            sources,
            output_dir=os.path.join(self.build_temp, "fake_nvml"),
            extra_postargs=cflags,
            depends=headers,
        )
        built, inplace = self._fake_nvml_paths()
        os.makedirs(os.path.dirname(built), exist_ok=True)
        compiler.link_shared_object(
            objects,
            built,
            extra_postargs=["-pthread", f"-Wl,-soname,{FAKE_NVML_SONAME}", "-Wl,--no-undefined"],
            target_lang="c",
        )
        if self.inplace:
            os.makedirs(os.path.dirname(inplace), exist_ok=True)
            self.copy_file(built, inplace, level=self.verbose)

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()  # in place, these are the keys of get_output_mapping()
        if FAKE_NVML and not self.inplace:
            outputs.append(self._fake_nvml_paths()[0])
        return outputs

    def get_output_mapping(self) -> dict[str, str]:
        mapping = super().get_output_mapping()
        if FAKE_NVML and self.inplace:
            built, inplace = self._fake_nvml_paths()
            mapping[built] = inplace
        return mapping


class BinaryDistribution(Distribution):
    """The package carries the fake NVML's native library even when the Cython extensions are off,
    so build_ext must run and the wheel is platform-specific."""

    def has_ext_modules(self) -> bool:
        return FAKE_NVML or super().has_ext_modules()


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
    packages=find_packages(include=["nvsentinel", "nvsentinel.*"]) + ["nvsentinel.daemons"],
    package_dir={"nvsentinel.daemons": "daemons"},
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPyWithProtos, "build_ext": BuildExtWithFakeNvml},
    distclass=BinaryDistribution,
)
