"""The container image, built from the Dockerfile and run the way the chart runs it.

tools/build-image.sh builds it with podman (rootful, daemonless) on a local Debian base, the same
script `.ci/run` and users run. Each container below is one container of the rendered chart: its
command, args, environment, emptyDir volumes and securityContext, translated by podman.py, plus only
test ports, the test's host paths and, for the controllers, a kubeconfig for the test API server on
loopback. Every running container's process is then read from the host's /proc and must be exactly
what its securityContext says (uid, gid, no capabilities, no_new_privs, seccomp, read-only root).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import ControlPlane, free_port
from ctlhelpers import clean_up
from kubelet import make_node
from podman import (
    ChartContainer, ProcessState, Unsupported, expected_process, inspect_image, podman, security_flags,
)
from procs import http_get, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helm"))
from helmchart import ALL_FEATURES, Helm  # noqa: E402

from nvsentinel import __version__  # noqa: E402
from nvsentinel.k8s import Kube  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS, NAMESPACES, NODES  # noqa: E402
from nvsentinel.policy.healthevent import HealthEvent, HealthEventSpec, utcnow  # noqa: E402

LABEL = "nvsentinel-test/image"
TAINT = "nvsentinel.nvidia.com/quarantine"
#: the image's own budget (docs/operations.md): on the local Debian base it measured 276 MB in 2 layers
MAX_IMAGE_BYTES = 350_000_000
MAX_LAYERS = 3


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> list[dict[str, Any]]:
    return helm.render(release="img", namespace="default")


def workload(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] in ("Deployment", "DaemonSet") and o["metadata"]["name"] == name)


def in_image(image: str, *argv: str, user: str = "65532:65532") -> subprocess.CompletedProcess[str]:
    return podman("run", "--rm", "--pull=never", "--network=none", f"--user={user}", "--read-only",
                  "--entrypoint", argv[0], image, *argv[1:], check=False)


# ---- what the image is -------------------------------------------------------------------------------

def test_image_is_small_non_root_and_holds_no_build_tools(image: str) -> None:
    info = inspect_image(image)
    print(f"\n{image}: {info['Size'] / 1e6:.0f} MB in {len(info['RootFS']['Layers'])} layers")
    assert info["Size"] < MAX_IMAGE_BYTES, info["Size"]
    assert len(info["RootFS"]["Layers"]) <= MAX_LAYERS
    cfg = info["Config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["nvsentinel"] and cfg["Cmd"] == ["--help"]
    assert cfg["Labels"]["org.opencontainers.image.version"] == __version__
    # no compiler, no build inputs or outputs, no caches, no tests; the client's unused asyncio copy gone
    probe = in_image(image, "sh", "-c", "for p in gcc cc c++ ld; do command -v $p; done; "
                     "ls -d /wheels /src /root/.cache /tmp/* /usr/local/lib/python3*/*-packages/tests "
                     "/usr/local/lib/python3*/*-packages/kubernetes/aio 2>/dev/null; true")
    assert probe.returncode == 0 and probe.stdout.strip() == "", probe.stdout + probe.stderr


def test_image_holds_the_checked_out_sources(image: str) -> None:
    """A stale build (a cached install over a rebuilt wheel) would run old code under a new tag."""
    script = ("import hashlib, pathlib, nvsentinel\n"
              "root = pathlib.Path(nvsentinel.__file__).parent\n"
              "for f in sorted(root.rglob('*.py')):\n"
              "    print(f.relative_to(root), hashlib.sha256(f.read_bytes()).hexdigest())")
    proc = in_image(image, "python3", "-c", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    in_img = dict(line.split() for line in proc.stdout.splitlines())
    src = Path(__file__).resolve().parents[2] / "nvsentinel"
    here = {str(f.relative_to(src)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(src.rglob("*.py"))
            if "_proto" not in f.parts}  # generated at build time, in each place
    assert {k: in_img.get(k) for k in here} == here
    # the daemons/ tree is packaged as nvsentinel.daemons
    for f in (src.parent / "daemons").glob("*.py"):
        assert in_img[f"daemons/{f.name}"] == hashlib.sha256(f.read_bytes()).hexdigest(), f.name


def test_every_module_imports_in_the_image_and_none_needs_the_asyncio_client(image: str) -> None:
    script = ("import importlib, pkgutil, sys, nvsentinel\n"
              "mods = [m.name for m in pkgutil.walk_packages(nvsentinel.__path__, 'nvsentinel.') if not m.name.endswith('__main__')]\n"
              "for m in mods: importlib.import_module(m)\n"
              "assert not [m for m in sys.modules if m.startswith('kubernetes.aio')]\n"
              "print(len(mods))")
    proc = in_image(image, "python3", "-c", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip()) > 100  # the daemons (nvsentinel.daemons) among them


def test_version_runs_as_the_non_root_user_on_a_read_only_root(image: str, rendered: list[dict[str, Any]]) -> None:
    # the controllers' pod and container securityContext: runAsNonRoot, uid 65532, read-only root, no caps
    ctl = workload(rendered, "img-quarantine-controller")["spec"]["template"]["spec"]
    flags = security_flags(ctl["securityContext"], ctl["containers"][0]["securityContext"], "65532:65532")
    run = ["run", "--rm", "--pull=never", "--network=none", *flags]
    version = podman(*run, image, "--version")
    assert version.stdout.strip() == f"nvsentinel {__version__}"
    ident = podman(*run, "--entrypoint=id", image)
    assert ident.stdout.split()[0] == "uid=65532(nonroot)"
    write = podman(*run, "--entrypoint=python3", image, "-c", "open('/home/nonroot/x', 'w')", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


# ---- the chart's securityContexts are the ones these runs use --------------------------------------

@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["defaults", "all-features"])
def test_every_chart_container_translates_to_podman(helm: Helm, values: dict[str, Any] | None) -> None:
    """A securityContext key the translation does not know fails here, not silently in a run."""
    seen = 0
    for obj in helm.render(values):
        if obj["kind"] not in ("Deployment", "DaemonSet", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        for c in pod["containers"]:
            flags = security_flags(pod.get("securityContext") or {}, c.get("securityContext") or {}, "65532:65532")
            assert flags[0].startswith("--user=")
            seen += 1
    assert seen >= 10


def test_translation_refuses_what_it_does_not_know() -> None:
    with pytest.raises(Unsupported):
        security_flags({}, {"procMount": "Unmasked"}, "0")
    with pytest.raises(Unsupported):
        security_flags({"fsGroup": 2000}, {}, "0")
    with pytest.raises(Unsupported):
        security_flags({}, {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}, "0")
    with pytest.raises(AssertionError):
        security_flags({"runAsNonRoot": True}, {"runAsUser": 0}, "65532:65532")
    want = expected_process({}, {"runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["SYSLOG"]}}, "65532:65532")
    assert want == ProcessState(uid=0, gid=65532, cap_eff=1 << 34, no_new_privs=False, seccomp_filtered=True,
                                root_read_only=False)


# ---- the node side: Device API server + NVML provider on the fake library ---------------------------

@pytest.fixture
def containers() -> Iterator[list[ChartContainer]]:
    started: list[ChartContainer] = []
    try:
        yield started
    finally:
        for c in started:
            c.close()


def started(c: ChartContainer, containers: list[ChartContainer]) -> ChartContainer:
    containers.append(c)
    c.start()
    wait_until(c.pid, timeout=60, what=f"{c.name} running", daemons=[c])
    return c


def assert_process_matches_chart(c: ChartContainer) -> None:
    assert ProcessState.of(c.pid()) == c.expected(), c.name


def test_device_api_server_with_fake_nvml_answers_the_host(image: str, rendered: list[dict[str, Any]],
                                                          tmp_path: Path, unique: str,
                                                          containers: list[ChartContainer]) -> None:
    node = workload(rendered, "img-node")
    socket_dir = tmp_path / "sock"
    socket_dir.mkdir()
    field_env = {"NODE_NAME": f"img-node-{unique}"}
    health, metrics = free_port(), free_port()
    server = started(ChartContainer(
        image, node, "device-api-server", name=f"img-dapi-{unique}", field_env=field_env,
        volumes={"socket-dir": str(socket_dir)},
        extra_args=[f"--health-port={health}", f"--metrics-port={metrics}", "--http-bind-address=127.0.0.1"],
    ), containers)
    wait_until(lambda: http_get(health, "/healthz")[0] == 200, timeout=90, what="device-api-server /healthz",
               daemons=[server])
    provider = started(ChartContainer(
        image, node, "nvml-provider", name=f"img-nvml-{unique}", field_env=field_env,
        volumes={"socket-dir": str(socket_dir)},
        extra_args=[f"--health-port={free_port()}", f"--metrics-port={free_port()}", "--http-bind-address=127.0.0.1",
                    "--fake-nvml", "--fake-nvml-control=/tmp/fake-nvml.ctl"],
    ), containers)

    # ready: the provider has registered a GPU (before that, reads are UNAVAILABLE by design)
    wait_until(lambda: http_get(health, "/readyz")[0] == 200, timeout=120, what="device-api-server /readyz",
               daemons=[server, provider])
    errors: list[str] = []

    def gpus() -> list[str]:
        # the host's CLI (the installed package, not the source tree: PYTHONSAFEPATH) through the socket
        out = subprocess.run([sys.executable, "-m", "nvsentinel", "get", "gpus", "--address",
                              f"unix://{socket_dir}/device.sock", "-o", "json"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONSAFEPATH": "1"})
        if out.returncode != 0:
            errors.append(f"{time.time():.1f} {out.stderr.strip()}")
            return []
        return [item["metadata"]["name"] for item in json.loads(out.stdout)["items"]]

    try:
        got = wait_until(lambda: (lambda names: len(names) == 8 and names)(gpus()), timeout=120,
                         what="8 fake GPUs through the socket", daemons=[server, provider])
    except AssertionError as exc:  # say what the CLI saw and what the server refused, not only the last try
        refused = [line for line in http_get(metrics, "/metrics")[1].splitlines() if "refused" in line]
        raise AssertionError(f"{exc}\nCLI errors: {errors[:5]} ... {errors[-5:]}\nserver: {refused}") from None
    assert all(name.startswith("GPU-") for name in got), got
    assert all(name in provider.text() for name in got)  # the ones the provider found in the fake library
    for c in (server, provider):
        assert_process_matches_chart(c)


# ---- the cluster side: the quarantine controller cordons on an XID ---------------------------------

def container_kubeconfig(control_plane: ControlPlane, path: Path) -> Path:
    """The admin kubeconfig with the CA inline and readable by uid 65532 (the container mounts one file)."""
    cfg = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    cluster = cfg["clusters"][0]["cluster"]
    ca = Path(cluster.pop("certificate-authority")).read_bytes()
    cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    path.write_text(json.dumps(cfg))
    path.chmod(0o644)
    return path


def test_controllers_container_cordons_a_node_on_an_xid(image: str, helm: Helm, control_plane: ControlPlane,
                                                        crd_installed: None, kube: Kube, tmp_path: Path,
                                                        unique: str, containers: list[ChartContainer]) -> None:
    ns = f"img-{unique}"
    kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    objs = helm.render(release=f"img{unique}", namespace=ns)
    node_name = f"img-{unique}"
    make_node(kube, node_name, labels={LABEL: unique})
    health = free_port()
    kubeconfig = container_kubeconfig(control_plane, tmp_path / "kubeconfig")
    ctl = started(ChartContainer(
        image, workload(objs, f"img{unique}-quarantine-controller"), "controller", name=f"img-ctl-{unique}",
        field_env={"POD_NAME": f"quarantine-{unique}", "POD_NAMESPACE": ns},
        extra_args=["--kubeconfig=/etc/nvsentinel/kubeconfig", "--bind-address=127.0.0.1",
                    f"--health-port={health}", f"--metrics-port={free_port()}",
                    f"--node-selector={LABEL}={unique}", f"--event-selector={LABEL}={unique}",
                    "--breaker-percent=100"],
        extra_flags=[f"--volume={kubeconfig}:/etc/nvsentinel/kubeconfig:ro"],
    ), containers)
    try:
        wait_until(lambda: http_get(health, "/readyz")[0] == 200, timeout=120, what="controller /readyz",
                   daemons=[ctl])
        spec = HealthEventSpec(source="test", node_name=node_name, component_class="GPU", check_name="xid-error-check",
                               is_fatal=True, is_healthy=False, detected_at=utcnow(), error_codes=("79",),
                               agent="test", message="Xid 79: GPU has fallen off the bus")
        kube.create(HEALTHEVENTS, HealthEvent(name=f"img-{unique}", spec=spec, labels={LABEL: unique}).create_body())

        def cordoned() -> bool:
            n = kube.get(NODES, node_name)
            return bool(n["spec"].get("unschedulable")) and any(t["key"] == TAINT for t in n["spec"].get("taints", ()))

        wait_until(cordoned, timeout=120, what="the node cordoned and tainted by the container", daemons=[ctl])
        assert_process_matches_chart(ctl)
    finally:
        clean_up(kube, events=[f"img-{unique}"], nodes=[node_name], namespace=ns)
