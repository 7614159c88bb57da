"""A real kubelet (v1.20.2) with containerd and runc as one Node of a test control plane (tests/k8s/realnode.sh).

    with RealNode(control_plane, "node-a", image=image) as node:
        node.pod_resources_socket, node.device_plugin_dir, node.name

`image` (the project image, from podman's storage) is imported into the node's own containerd together with
a sandbox image built FROM it (its entrypoint only waits for a signal): nothing is ever pulled, so pods must
use `imagePullPolicy: Never` or `IfNotPresent`. Entering returns once the Node is Ready, the sysctls the
kubelet sets at start are written back, and the `node.kubernetes.io/not-ready` taint is gone (no
node-lifecycle controller runs to take it off). Leaving stops the node, then checks that nothing is left:
no process, mount, cgroup or bridge of the node, and the sysctls as they were.

The control plane's API server needs `--kubelet-preferred-address-types=InternalIP` for logs and exec (the
kubelet serves on the host's first non-loopback address; the Node's hostname does not resolve).
"""
from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster import BUILD_SCRIPT, WANT_VERSION, kube_cache_dir
from podman import inspect_image, podman

from nvsentinel.devtools.devcluster.controlplane import with_parent_death
from nvsentinel.k8s import Kube
from nvsentinel.k8s.resources import NODES

SCRIPT = Path(__file__).resolve().parent / "realnode.sh"
#: the kubelet sets these at start (kubelet 1.20 has no flag to leave them); written back once the Node is Ready
SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
#: the sandbox ("pause") image's whole job: run until stopped
SANDBOX_ENTRYPOINT = ('["python3", "-c", "import signal, sys; '
                      '[signal.signal(s, lambda *a: sys.exit(0)) for s in (signal.SIGTERM, signal.SIGINT)]; '
                      'signal.pause()"]')


def kubelet_path() -> Path:
    """The kubelet v1.20.2 from `build-kube.sh --kubelet`, built now (about 5 minutes) when missing."""
    exe = kube_cache_dir() / "bin" / "kubelet"

    def version() -> str:
        if not exe.exists():
            return ""
        return subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.strip()

    if version() != WANT_VERSION:
        log = kube_cache_dir() / "build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            rc = subprocess.run(["bash", str(BUILD_SCRIPT), "--kubelet"], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL).returncode
        if rc != 0 or version() != WANT_VERSION:
            raise RuntimeError(f"build-kube.sh --kubelet failed (rc={rc}); see {log}")
    return exe


def sandbox_image(image: str) -> str:
    """A pod sandbox image made FROM `image` (podman's layer cache makes it instant after the first time)."""
    repo = "localhost/nvsentinel-realnode-sandbox"
    ref = f"{repo}:{inspect_image(image)['Id'][:12]}"
    if podman("image", "exists", ref, check=False).returncode != 0:
        with tempfile.TemporaryDirectory(prefix="nvsentinel-sandbox-") as ctx:
            Path(ctx, "Containerfile").write_text(f"FROM {image}\nENTRYPOINT {SANDBOX_ENTRYPOINT}\nCMD []\n")
            podman("build", "--pull=never", "--tag", ref, ctx, timeout=300)
        # sandboxes of older builds would keep those builds' layers alive
        old = [r for r in podman("images", "--format", "{{.Repository}}:{{.Tag}}", repo).stdout.split() if r != ref]
        if old:
            podman("rmi", *old, check=False)
    return ref


def read_sysctls() -> dict[str, str]:
    return {s: Path("/proc/sys", *s.split(".")).read_text().strip() for s in SYSCTLS}


def write_sysctls(values: dict[str, str]) -> None:
    for s, v in values.items():
        Path("/proc/sys", *s.split(".")).write_text(v)


def node_ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (node.get("status") or {}).get("conditions") or ())


class RealNode:
    """One real node; a context manager (see the module docstring)."""

    def __init__(self, control_plane: Any, name: str, *, image: str, kubelet_args: tuple[str, ...] = (),
                 ready_timeout: float = 180.0) -> None:
        self.cp = control_plane
        self.name = name
        self.image = image
        self.kubelet_args = kubelet_args
        self.ready_timeout = ready_timeout
        self.dir = Path(tempfile.mkdtemp(prefix=f"nvsentinel-realnode-{name}-"))
        self.device_plugin_dir = str(self.dir / "device-plugins")
        self.pod_resources_socket = str(self.dir / "kubelet-root" / "pod-resources" / "kubelet.sock")
        self.ip = ""
        self.sysctls_before = read_sysctls()
        self.proc: subprocess.Popen[str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> RealNode:
        try:
            self._start()
        except BaseException:
            self._stop(check=False)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop(check=True)

    def _start(self) -> None:
        kubelet = kubelet_path()
        sandbox = sandbox_image(self.image)
        archive = self.dir / "images.tar"
        podman("save", "--multi-image-archive", "--format", "docker-archive", "--output", str(archive),
               self.image, sandbox, timeout=300)
        self.stderr = open(self.dir / "realnode.log", "w")
        self.proc = subprocess.Popen(
            with_parent_death(["bash", str(SCRIPT), str(self.dir), self.name, self.cp.kubeconfig, sandbox,
                               str(archive), *self.kubelet_args]),
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "KUBELET": str(kubelet)}, start_new_session=True)
        ready = self._read_ready(deadline=time.monotonic() + self.ready_timeout)
        self.ip = ready["ip"]
        assert ready["pod-resources"] == self.pod_resources_socket, ready
        kube = self.cp.kube()
        try:
            self._wait(lambda: node_ready(self._node(kube)), "the Node Ready", kube)
            # Ready means the container manager ran, so the kubelet has set its sysctls by now
            write_sysctls(self.sysctls_before)
            self._untaint(kube)
        finally:
            kube.close()
        archive.unlink()

    def _read_ready(self, deadline: float) -> dict[str, str]:
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=1.0):
                    line = self.proc.stdout.readline()
                    if line.startswith("READY "):
                        return dict(f.split("=", 1) for f in line.split()[1:])
                    if not line:
                        break
                if self.proc.poll() is not None:
                    break
        raise RuntimeError(f"realnode.sh did not get ready (rc={self.proc.poll()}):\n{self.logs()}")

    def _node(self, kube: Kube) -> dict[str, Any]:
        with contextlib.suppress(Exception):
            return kube.get(NODES, self.name)
        return {}

    def _wait(self, pred: Any, what: str, kube: Kube) -> Any:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"realnode.sh exited (rc={self.proc.returncode}) waiting for {what}:\n{self.logs()}")
            value = pred()
            if value:
                return value
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def _untaint(self, kube: Kube) -> None:
        def untainted() -> bool:
            node = self._node(kube)
            taints = (node.get("spec") or {}).get("taints") or []
            if not any(t["key"] == NOT_READY_TAINT for t in taints):
                return True
            keep = [t for t in taints if t["key"] != NOT_READY_TAINT]
            with contextlib.suppress(Exception):  # a conflict with the kubelet's own update: try again
                kube.patch(NODES, self.name, {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                                              "spec": {"taints": keep or None}})
            return False

        self._wait(untainted, f"the {NOT_READY_TAINT} taint removed", kube)

    def _stop(self, *, check: bool) -> None:
        problems: list[str] = []
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(90)
                except subprocess.TimeoutExpired:
                    problems.append("realnode.sh did not stop in 90 s")
                    self.proc.kill()
                    self.proc.wait()
            elif check:
                problems.append(f"realnode.sh had exited before the end (rc={self.proc.returncode})")
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.stderr.close()
        problems += self.leftovers()
        if self.sysctls_before != read_sysctls():
            problems.append(f"sysctls {read_sysctls()} (were {self.sysctls_before})")
            write_sysctls(self.sysctls_before)
        logs = self.logs() if problems else ""
        if not problems:
            shutil.rmtree(self.dir, ignore_errors=True)
        if check and problems:
            raise AssertionError(f"the real node {self.name} did not tear down cleanly: {problems}; state kept in "
                                 f"{self.dir}\n{logs}")

    # -- checks ------------------------------------------------------------------------------------
    def leftovers(self) -> list[str]:
        """What of this node is still on the host (empty after a clean stop)."""
        found: list[str] = []
        here = str(self.dir)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if here in cmdline:
                    found.append(f"process {pid}: {cmdline[:160]}")
        mounts = Path("/proc/self/mountinfo").read_text()
        if here in mounts:
            found.append("mounts under " + here)
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if (hierarchy / f"{self.name}-root").exists():
                found.append(f"cgroup {hierarchy / (self.name + '-root')}")
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        bridge = self._bridge()
        if f" {bridge}:" in links or f" {bridge}@" in links:
            found.append(f"bridge {bridge}")
        return found

    def _bridge(self) -> str:
        import hashlib

        return "nvs" + hashlib.md5(self.name.encode()).hexdigest()[:8]

    def logs(self, n: int = 3000) -> str:
        out = []
        for name in ("realnode.log", "kubelet.log", "containerd.log"):
            with contextlib.suppress(OSError):
                out.append(f"--- {name}:\n" + (self.dir / name).read_text(errors="replace")[-n:])
        return "\n".join(out)
