"""The container image: the Dockerfile's shape, its build context, and the wheel the image installs.

The image itself is built with podman and run as the chart runs it in tests/k8s/test_image.py. These
are the recipe's checks that need no container runtime (they run in the pure-Python pass too):

- the Dockerfile is read with the small parser below and its stages are checked;
- the build stage is replayed: the working tree is filtered through .dockerignore with Docker's own
  matching rules, the build stage's COPY lines are applied, and `pip wheel` runs there. The wheel
  that comes out is the one the runtime stage installs, so its contents are checked against every
  entry point the Dockerfile and the chart use.

Why a hand parser and not `dockerfile-parse`: that library is sound, but it would add a test
dependency for about forty lines. The Dockerfile uses a small subset of the syntax (no heredocs,
no escape directive), and the parser refuses what it does not handle, so it never misreads.
"""
from __future__ import annotations

import configparser
import dataclasses
import fnmatch
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator

import pytest

from nvsentinel import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: The image's entry points: `nvsentinel <command>`, one per daemon (docs/operations.md).
IMAGE_COMMANDS = ("device-api-server", "nvml-provider", "kmsg-monitor", "publisher", "remediation-agent",
                  "controllers", "admission-webhook", "exporter")
#: Build switches of setup.py. The image build sets none, so the replayed build must not inherit them
#: from the test run (`make test-py` sets NVSENTINEL_NO_EXTENSIONS).
BUILD_SWITCHES = ("NVSENTINEL_NO_EXTENSIONS", "NVSENTINEL_DEBUG_BUILD", "NVSENTINEL_NO_FAKE_NVML")


# ---- a small Dockerfile parser ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str                        # upper case: RUN, COPY, ...
    flags: tuple[tuple[str, str], ...]  # leading --name=value options, in order
    args: str                           # the rest, as written (continuations joined)

    def flag(self, name: str) -> str | None:
        return next((v for n, v in self.flags if n == name), None)

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array form (`["nvsentinel"]`), or None for the shell form."""
        if not self.args.startswith("["):
            return None
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.args
        return value

    def pairs(self) -> dict[str, str]:
        """LABEL / ENV `key=value ...` (quotes removed as the shell would)."""
        out = {}
        for token in shlex.split(self.args):
            key, sep, value = token.partition("=")
            assert sep, f"{self.keyword} {self.args!r}: only the key=value form is parsed"
            out[key] = value
        return out


@dataclasses.dataclass(frozen=True)
class Stage:
    base: str           # the FROM image, global ARGs substituted
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


_FLAGGED = {"FROM", "RUN", "COPY", "ADD"}


def _logical_lines(text: str) -> list[str]:
    assert not re.search(r"^#\s*escape\s*=", text, re.M), "escape directive not supported by this parser"
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue  # comments and parser directives; a comment inside a continuation is dropped too
        if not stripped:
            continue  # an empty line never ends a continuation
        if stripped.endswith("\\"):
            current += stripped[:-1].strip() + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    assert not current.strip(), "Dockerfile ends inside a line continuation"
    return lines


def _substitute(value: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in variables, f"${name} is not a global ARG with a default"
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Refuses heredocs and ONBUILD rather than misread them."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    base = name = None
    body: list[Instruction] = []
    for line in _logical_lines(text):
        assert "<<" not in line, f"heredoc not supported by this parser: {line!r}"
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        assert keyword != "ONBUILD", "ONBUILD not supported by this parser"
        flags = []
        if keyword in _FLAGGED:
            while rest.startswith("--"):
                flag, _, rest = rest.partition(" ")
                fname, _, fvalue = flag[2:].partition("=")
                flags.append((fname, fvalue))
                rest = rest.lstrip()
        instruction = Instruction(keyword, tuple(flags), rest.strip())
        if keyword == "FROM":
            if base is not None:
                stages.append(Stage(base, name, tuple(body)))
            words = instruction.args.split()
            assert len(words) in (1, 3) and (len(words) == 1 or words[1].upper() == "AS"), line
            base, name, body = _substitute(words[0], global_args), (words[2] if len(words) == 3 else None), []
        elif base is None:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            arg, _, default = instruction.args.partition("=")
            global_args[arg] = default
        else:
            body.append(instruction)
    assert base is not None, "no FROM"
    stages.append(Stage(base, name, tuple(body)))
    return global_args, stages


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def build_and_runtime() -> tuple[Stage, Stage]:
    _, stages = dockerfile()
    by_name = {s.name: s for s in stages}
    assert "build" in by_name, "the build stage must be named `build`"
    return by_name["build"], stages[-1]


# ---- .dockerignore, matched the way Docker matches it -------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    exclusion: bool     # a `!pattern` line: re-includes


def _compile(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher: `**` any number of directories, `*` and `?` never cross `/`."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i + 1)
            out += pattern[i:end + 1]
            i = end
        elif ch == "\\":
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


class DockerIgnore:
    """The rules of a .dockerignore: last matching line wins; a line matching a parent excludes its tree."""

    def __init__(self, text: str) -> None:
        self.patterns: list[_Pattern] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            line = os.path.normpath(line[1:].strip() if exclusion else line).lstrip("/")
            self.patterns.append(_Pattern(_compile(line), exclusion))

    @property
    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def excluded(self, path: str) -> bool:
        """Whether `path` (relative to the context root, `/`-separated) stays out of the context."""
        parents = path.split("/")[:-1]
        matched = False
        for p in self.patterns:
            if p.exclusion != matched:
                continue  # an exclude already matched, or a re-include with nothing to re-include
            match = bool(p.regex.match(path)) or any(
                p.regex.match("/".join(parents[:i + 1])) for i in range(len(parents)))
            if match:
                matched = not p.exclusion
        return matched


def dockerignore() -> DockerIgnore:
    return DockerIgnore(DOCKERIGNORE.read_text())


def context_files(top: pathlib.Path, ignore: DockerIgnore) -> list[str]:
    """Files under `top` (inside ROOT) that reach the build context, as ROOT-relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = pathlib.Path(dirpath).relative_to(ROOT).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        if not ignore.has_exclusions:  # Docker prunes the same way: nothing below can come back
            dirnames[:] = [d for d in dirnames if not ignore.excluded(rel_dir + d)]
        out += [rel_dir + f for f in filenames if not ignore.excluded(rel_dir + f)]
    return sorted(out)


def build_copies(build: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each build-stage COPY from the context (no --from)."""
    copies = []
    for ins in build.all("COPY"):
        if ins.flag("from") is not None:
            continue
        *sources, dest = shlex.split(ins.args)
        assert sources, ins
        for src in sources:
            assert not any(c in src for c in "*?["), f"COPY wildcard not replayed by this test: {src}"
            assert not src.startswith(("/", "..")), src
        assert not dest.startswith("/"), f"COPY into WORKDIR only (relative destination): {dest}"
        copies.append((sources, dest))
    return copies


def replay_build_context(build: Stage, into: pathlib.Path) -> None:
    """What the build stage's WORKDIR holds after its COPY lines: the context, filtered, copied."""
    ignore = dockerignore()
    for sources, dest in build_copies(build):
        target_dir = dest in (".", "./") or dest.endswith("/") or len(sources) > 1
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY source {src} does not exist"
            assert not ignore.excluded(src), f"COPY source {src} is excluded by .dockerignore"
            if path.is_dir():
                for rel in context_files(path, ignore):
                    target = into / dest / pathlib.Path(rel).relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / rel, target)
            else:
                target = into / dest / path.name if target_dir else into / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


# ---- the parser and the matcher themselves ------------------------------------------------------------

def test_parser_reads_stages_flags_continuations_and_exec_form():
    """Verify the parser joins continuations, drops comments, substitutes global ARGs and splits flags."""
    args, stages = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\nFROM ${BASE} AS build\n"
        "RUN apt-get update \\\n # a comment inside\n && apt-get install -y gcc\n"
        "FROM $BASE\nCOPY --from=build /wheels /wheels\nLABEL a=\"x y\" b=z\nENTRYPOINT [\"nvsentinel\"]\n")
    assert args == {"BASE": "python:3.11-slim"}
    assert [(s.base, s.name) for s in stages] == [("python:3.11-slim", "build"), ("python:3.11-slim", None)]
    assert stages[0].all("RUN")[0].args == "apt-get update && apt-get install -y gcc"
    copy = stages[1].all("COPY")[0]
    assert copy.flag("from") == "build" and copy.args == "/wheels /wheels"
    assert stages[1].all("LABEL")[0].pairs() == {"a": "x y", "b": "z"}
    assert stages[1].all("ENTRYPOINT")[0].exec_form == ["nvsentinel"]
    with pytest.raises(AssertionError, match="heredoc"):
        parse_dockerfile("FROM x\nRUN <<EOF\necho\nEOF\n")


@pytest.mark.parametrize(("pattern", "path", "excluded"), [
    (".venv", ".venv/bin/python", True),            # a match on a parent excludes the tree
    (".venv", "a/.venv/bin/python", False),         # patterns are anchored at the context root
    ("*.egg-info", "nvsentinel.egg-info/PKG-INFO", True),
    ("*.so", "nvsentinel/_store_c.so", False),      # `*` does not cross `/`
    ("**/*.so", "nvsentinel/_store_c.so", True),
    ("**/*.so", "top.so", True),                    # `**/` also matches no directory
    ("**/__pycache__", "a/b/__pycache__/x.pyc", True),
    ("nvsentinel/_proto/*_pb2*", "nvsentinel/_proto/gpu_pb2_grpc.py", True),
    ("nvsentinel/_proto/*_pb2*", "nvsentinel/_proto/__init__.py", False),
    ("**/*.py[cod]", "x/y.pyc", True),
    ("docs\n!docs/keep.md", "docs/keep.md", False),  # the last matching line wins
    ("docs\n!docs/keep.md", "docs/other.md", True),
    ("/build", "build/lib/x.py", True),             # a leading slash means the root too
])
def test_dockerignore_matcher_follows_docker(pattern, path, excluded):
    """Verify the matcher gives Docker's answers (moby/patternmatcher) on the cases this file relies on."""
    assert DockerIgnore(pattern).excluded(path) is excluded


# ---- the Dockerfile -----------------------------------------------------------------------------------

def test_multi_stage_on_one_pinned_slim_python_base():
    """Verify ≥2 stages (build, then runtime last), both on the same digest-free python:3.11-slim tag."""
    _, stages = dockerfile()
    build, runtime = build_and_runtime()
    assert len(stages) >= 2 and runtime == stages[-1] and build.name != runtime.name
    for stage in stages:
        assert stage.base.startswith("python:3.11-slim"), stage.base
        assert "@" not in stage.base, f"a tag, not a digest: {stage.base}"
    assert build.base == runtime.base, "the compiled wheel must match the runtime's Python and glibc"
    requires = PYPROJECT["project"]["requires-python"]
    assert requires == ">=3.11", f"update the base image check for requires-python {requires}"


def test_build_stage_compiles_and_collects_wheels():
    """Verify the build stage installs the C toolchain and `pip wheel`s the project with its deps."""
    build, _ = build_and_runtime()
    runs = " && ".join(i.args for i in build.all("RUN"))
    assert re.search(r"apt-get install\b.*\bgcc\b", runs), "the build stage needs gcc (Cython, fake NVML)"
    wheel = [shlex.split(cmd) for i in build.all("RUN") for cmd in i.args.split("&&") if "pip wheel" in cmd]
    assert len(wheel) == 1, "one `pip wheel` of the project"
    argv = wheel[0]
    assert "--no-deps" not in argv, "the runtime installs offline: every dependency must be a wheel too"
    assert argv[-1] == "." and "--wheel-dir" in argv


def test_runtime_installs_only_the_built_wheels_without_a_compiler():
    """Verify the runtime stage installs no OS packages and no compiler, and pip installs only the
    build stage's wheels (--no-index --only-binary), bind-mounted from it."""
    build, runtime = build_and_runtime()
    wheel_dir = shlex.split(next(cmd for i in build.all("RUN") for cmd in i.args.split("&&") if "pip wheel" in cmd))
    wheel_dir = wheel_dir[wheel_dir.index("--wheel-dir") + 1]
    build_runs = " && ".join(i.args for i in build.all("RUN"))
    compilers = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|libc6-dev|python3?-dev|make|cython)\b", re.I)
    for ins in runtime.instructions:
        if ins.keyword == "RUN":
            assert not re.search(r"\b(apt-get|apt|apk|dnf|yum|microdnf)\b.*\binstall\b", ins.args), ins.args
            assert not compilers.search(ins.args), ins.args
    # from the build stage, only the wheels' checksums (a text file it writes with sha256sum), which the
    # install checks the mounted wheels against
    copies = [i for i in runtime.instructions if i.keyword in ("COPY", "ADD")]
    assert len(copies) == 1 and copies[0].keyword == "COPY" and copies[0].flag("from") == build.name, copies
    source, target = shlex.split(copies[0].args)
    assert re.search(rf"sha256sum \*\.whl > {re.escape(source)}", build_runs), build_runs
    installs = [i for i in runtime.all("RUN") if "pip install" in i.args]
    assert len(installs) == 1
    install = installs[0]
    assert f"sha256sum --check --quiet {target}" in install.args
    argv = shlex.split(next(cmd for cmd in install.args.split("&&") if "pip install" in cmd))
    assert "--no-index" in argv and "--only-binary=:all:" in argv
    assert f"--find-links={wheel_dir}" in argv
    mount = dict(kv.partition("=")[::2] for kv in (install.flag("mount") or "").split(","))
    assert mount == {"type": "bind", "from": build.name, "source": wheel_dir, "target": wheel_dir}


def test_runtime_runs_as_numeric_non_root_user():
    """Verify the runtime's last USER is uid:gid 65532 (numeric, so runAsNonRoot can check it)."""
    _, runtime = build_and_runtime()
    users = runtime.all("USER")
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].args.partition(":")
    assert (uid, gid) == ("65532", "65532")
    last_user = max(i for i, ins in enumerate(runtime.instructions) if ins.keyword == "USER")
    assert not any(ins.keyword == "RUN" for ins in runtime.instructions[last_user:]), "RUN after USER"
    assert any("useradd --uid 65532" in i.args for i in runtime.all("RUN")), "a passwd entry for the uid"


def test_entrypoint_is_nvsentinel_and_default_command_is_help(capsys):
    """Verify ENTRYPOINT ["nvsentinel"] (the wheel's console script) and CMD ["--help"], which exits 0."""
    _, runtime = build_and_runtime()
    assert runtime.all("ENTRYPOINT")[-1].exec_form == ["nvsentinel"]
    cmd = runtime.all("CMD")[-1].exec_form
    assert cmd == ["--help"]
    with pytest.raises(SystemExit) as exc:
        cli.main(cmd)
    assert exc.value.code == 0
    assert "usage: nvsentinel" in capsys.readouterr().out


@pytest.mark.parametrize("command", IMAGE_COMMANDS)
def test_every_image_command_is_a_cli_command(command, capsys):
    """Verify each entry point `nvsentinel <command>` exists in the CLI (its --help exits 0)."""
    assert command in cli.COMMAND_MODULES
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: nvsentinel {command}" in capsys.readouterr().out


def test_oci_labels_match_the_project():
    """Verify the OCI labels, and that the default version and licence are pyproject's."""
    global_args, stages = dockerfile()
    _, runtime = build_and_runtime()
    labels = {}
    for ins in runtime.all("LABEL"):
        labels.update(ins.pairs())
    args = {}
    for ins in runtime.all("ARG"):
        name, _, default = ins.args.partition("=")
        args[name] = default or global_args.get(name, "")
    resolved = {k: re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], v) for k, v in labels.items()}
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert resolved.get(f"org.opencontainers.image.{key}"), f"label org.opencontainers.image.{key}"
    assert resolved["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    assert resolved["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert resolved["org.opencontainers.image.description"] == PYPROJECT["project"]["description"]
    assert resolved["org.opencontainers.image.base.name"] == stages[-1].base


def test_fake_nvml_is_never_loaded_implicitly():
    """Verify no stage preloads a library or turns the fake NVML on through the environment (SPEC §5)."""
    _, stages = dockerfile()
    for stage in stages:
        for ins in stage.all("ENV"):
            for key, value in ins.pairs().items():
                assert key not in ("LD_PRELOAD", "LD_LIBRARY_PATH"), f"ENV {key}"
                assert "FAKE_NVML" not in key and "fake_nvml" not in value, f"ENV {key}={value}"


# ---- the build context --------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", "build/lib/nvsentinel/cli.py", "dist/nvsentinel-0.1.0.whl",
    "nvsentinel.egg-info/PKG-INFO", "tests/test_container.py", "bench/run", "docs/operations.md",
    "charts/nvsentinel/values.yaml", ".pytest_cache/README.md", ".hypothesis/examples/x",
    "nvsentinel/__pycache__/cli.cpython-311.pyc", "nvsentinel/_store_c.cpython-311-x86_64-linux-gnu.so",
    "nvsentinel/devtools/_fake_nvml/libnvidia-ml-fake.so", "nvsentinel/_proto/gpu_pb2.py", "csrc/_store_c.c",
])
def test_dockerignore_keeps_out_what_the_image_must_not_contain(path):
    """Verify local environments, VCS, tests and in-place build output never reach the context."""
    assert dockerignore().excluded(path)


def test_dockerignore_keeps_every_tracked_build_source():
    """Verify every tracked file the build stage COPYs survives .dockerignore."""
    build, _ = build_and_runtime()
    ignore = dockerignore()
    sources = [src for srcs, _ in build_copies(build) for src in srcs]
    files = tracked(*sources)
    assert any(f.startswith("csrc/") for f in files) and "setup.py" in files
    lost = [f for f in files if ignore.excluded(f)]
    assert not lost, f".dockerignore drops files the build needs: {lost}"


# ---- the wheel the image installs ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def image_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel the build stage makes, built once per session from the replayed build context."""
    build, _ = build_and_runtime()
    context = tmp_path_factory.mktemp("build-context")
    replay_build_context(build, context)
    out = tmp_path_factory.mktemp("wheels")
    env = {k: v for k, v in os.environ.items() if k not in BUILD_SWITCHES}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out), "."],
        cwd=context, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheels = list(out.glob("nvsentinel-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        yield zf


def _chart_commands() -> set[str]:
    templates = ROOT / "charts" / "nvsentinel" / "templates"
    found = set()
    for path in templates.glob("*.yaml"):
        for m in re.finditer(r"command:\s*\[\s*(\S+?)\s*,\s*(\S+?)\s*\]", path.read_text()):
            assert m.group(1) == "nvsentinel", f"{path.name}: a container runs {m.group(1)}, not the console script"
            found.add(m.group(2))
    return found


# The wheel tests below are marked c_extension: they check the compiled wheel the image installs,
# and the pure-Python pass (--no-c-extensions) would only rebuild the same wheel a second time.


@pytest.mark.c_extension
def test_wheel_has_the_console_script(image_wheel):
    """Verify the wheel declares `nvsentinel = nvsentinel.cli:main`, the image's ENTRYPOINT."""
    dist_info = next(n.split("/")[0] for n in image_wheel.namelist() if n.endswith(".dist-info/WHEEL"))
    entry_points = configparser.ConfigParser()
    entry_points.read_string(image_wheel.read(f"{dist_info}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == {"nvsentinel": "nvsentinel.cli:main"}


@pytest.mark.c_extension
def test_wheel_has_every_entry_point_the_image_and_chart_use(image_wheel):
    """Verify each command the chart runs and each image command has its module in the wheel (a daemon
    is both `nvsentinel <command>` and `python -m nvsentinel.daemons.<module>`)."""
    names = set(image_wheel.namelist())
    chart = _chart_commands()
    assert chart, "no `command: [nvsentinel, ...]` found in charts/nvsentinel/templates"
    assert chart <= set(IMAGE_COMMANDS), f"the chart runs commands the image does not list: {chart}"
    for command in set(IMAGE_COMMANDS) | chart:
        assert command in cli.DAEMONS, command
        assert f"{cli.module_of(command).replace('.', '/')}.py" in names, command
    for command in cli.COMMAND_MODULES:
        assert f"{cli.module_of(command).replace('.', '/')}.py" in names, command


@pytest.mark.c_extension
def test_wheel_has_all_sources_compiled_core_protos_and_data(image_wheel):
    """Verify nothing tracked is lost, the compiled core and generated protos are in, and only the
    package is (no tests, no benches)."""
    names = set(image_wheel.namelist())
    expected = [p for p in tracked("nvsentinel") if p.endswith(".py")]
    expected += ["nvsentinel/daemons/" + p.removeprefix("daemons/") for p in tracked("daemons") if p.endswith(".py")]
    missing = sorted(set(expected) - names)
    assert not missing, f"missing from the wheel: {missing}"
    for pyx in sorted((ROOT / "csrc").glob("_*_c.pyx")):
        assert any(re.fullmatch(rf"nvsentinel/{pyx.stem}\.cpython-\d+[^/]*\.so", n) for n in names), pyx.stem
    for generated in ("gpu_pb2.py", "gpu_pb2_grpc.py", "gpu_pb2.pyi"):
        assert f"nvsentinel/_proto/{generated}" in names
    for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["nvsentinel"]:
        data = [p for p in tracked("nvsentinel") if fnmatch.fnmatch(p, f"nvsentinel/{pattern}")]
        assert all(p in names for p in data), pattern
    assert "nvsentinel/data/crds/healthevents.nvsentinel.nvidia.com.yaml" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"nvsentinel", f"nvsentinel-{PYPROJECT['project']['version']}.dist-info"}, tops


@pytest.mark.c_extension
def test_wheel_ships_the_fake_nvml_under_a_name_nothing_loads_by_accident(image_wheel):
    """Verify the fake libnvidia-ml is in the wheel for explicit --fake-nvml use only: no file is named
    like the real library, so no loader search can pick it up (SPEC §5)."""
    names = image_wheel.namelist()
    assert "nvsentinel/devtools/_fake_nvml/libnvidia-ml-fake.so" in names
    assert not [n for n in names if pathlib.PurePosixPath(n).name.startswith("libnvidia-ml.so")]

