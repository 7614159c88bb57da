"""A real Kubernetes control plane on loopback: etcd + kube-apiserver + kube-controller-manager.

For tests and `nvsentinel demo` only. Binaries: etcd from Debian's etcd-server, kube-apiserver and
kube-controller-manager v1.20.2 built once by `build-kube.sh` (shipped beside this module; the
repository's `tools/build-kube.sh` runs the same script) into a cache outside any checkout
(`$NVSENTINEL_KUBE_CACHE`, default `~/.cache/nvsentinel-kube`). Everything listens on 127.0.0.1 on
free ports; state lives in a temp dir removed at stop. Children die with their parent
(PR_SET_PDEATHSIG), so a killed test run or demo leaves no process behind.

By hand (from the repository root):

    .venv/bin/python tests/k8s/cluster.py up          # prints KUBECONFIG=...; Ctrl-C stops it
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parent / "build-kube.sh"
WANT_VERSION = "Kubernetes v1.20.2"
BINARIES = ("kube-apiserver", "kube-controller-manager")

#: progress(elapsed seconds, the build log's last line); called about twice a second while building
Progress = Callable[[float, str], None]


def kube_cache_dir() -> Path:
    base = os.environ.get("NVSENTINEL_KUBE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nvsentinel-kube")
    return Path(base)


def _default_progress(elapsed: float, line: str) -> None:
    if int(elapsed * 2) % 60 == 0:  # every 30 s: a test log stays readable
        print(f"[k8s] building ({elapsed:.0f} s): {line[:120]}", file=sys.__stderr__, flush=True)


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def build(progress: Progress | None = None) -> None:
    """Run build-kube.sh once into the cache (about 7 minutes on 2 cores), reporting progress."""
    progress = progress or _default_progress
    cache = kube_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    log_path = cache / "build.log"
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(["bash", str(BUILD_SCRIPT)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        while proc.poll() is None:
            progress(time.monotonic() - t0, _last_line(log_path))
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.5)
    if proc.returncode != 0:
        raise RuntimeError(f"build-kube.sh failed (exit {proc.returncode}); see {log_path}:\n"
                           f"{_last_line(log_path)}")


def binaries_ready() -> bool:
    bin_dir = kube_cache_dir() / "bin"
    return all((bin_dir / b).exists() for b in BINARIES) and shutil.which("etcd") is not None


def kube_bin_dir(build_missing: bool = True, progress: Progress | None = None) -> Path:
    """The directory with kube-apiserver and kube-controller-manager v1.20.2, building it if missing.

    Never skips: no binaries and no way to build them is an error that names the fix.
    """
    bin_dir = kube_cache_dir() / "bin"
    if not binaries_ready() and build_missing:
        print(f"\n[k8s] building kube-apiserver v1.20.2 into {bin_dir} once (about 7 minutes on 2 cores; "
              f"log: {kube_cache_dir()}/build.log)", file=sys.__stderr__, flush=True)
        build(progress)
    for b in BINARIES:
        exe = bin_dir / b
        if not exe.exists():
            raise RuntimeError(f"{exe} is missing: run tools/build-kube.sh (or {BUILD_SCRIPT})")
        version = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.strip()
        if version != WANT_VERSION:
            raise RuntimeError(f"{exe} reports {version!r}, want {WANT_VERSION!r}: rerun tools/build-kube.sh")
    if not shutil.which("etcd"):
        raise RuntimeError("etcd not found: apt-get install etcd-server (build-kube.sh does it)")
    return bin_dir


def with_parent_death(argv: list[str]) -> list[str]:
    """`argv`, run so that the child gets SIGTERM when its parent dies, even by SIGKILL: a killed test run
    or demo never leaves an API server and etcd behind (Linux PR_SET_PDEATHSIG, set by util-linux's
    `setpriv` right before it execs the command).

    Not a `preexec_fn`: Python code between fork and exec in a multi-threaded parent crashed in CI
    (threading's after-fork hook). Without setpriv the child is stopped by `stop()` only.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager). `start()`, `stop()`; the apiserver alone can
    be stopped and started again on the same port and etcd (to test an unreachable API server)."""

    TOKEN = "nvsentinel-test-admin-token"  # loopback only, a throwaway cluster

    #: kube-controller-manager's --controllers by default: what the stages rely on (PDB status, owner
    #: references, namespace deletion); a real kubelet's tests add "job"
    CONTROLLERS = ("disruption", "garbagecollector", "namespace")

    def __init__(self, *, controller_manager: bool = True, apiserver_args: tuple[str, ...] = (),
                 controllers: tuple[str, ...] = CONTROLLERS, progress: Progress | None = None) -> None:
        self.bin = kube_bin_dir(progress=progress)
        self.dir = Path(tempfile.mkdtemp(prefix="nvsentinel-kube-"))
        self.etcd_port, self.peer_port, self.port = free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = str(self.dir / "kubeconfig")
        self.ca_file = str(self.dir / "certs" / "apiserver.crt")
        self.with_controller_manager = controller_manager
        self.apiserver_args = apiserver_args
        self.controllers = controllers
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        try:
            self._prepare()
            self._start_etcd()
            self.start_apiserver()
            if self.with_controller_manager:
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._stop_proc(name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop_apiserver(self) -> None:
        self._stop_proc("kube-apiserver")

    def start_apiserver(self, timeout: float = 60.0) -> None:
        args = [
            str(self.bin / "kube-apiserver"),
            "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.port), "--insecure-port", "0",
            "--cert-dir", str(self.dir / "certs"), "--token-auth-file", str(self.dir / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--allow-privileged=true",  # as real clusters run it: the reboot Job is privileged
            "--service-account-key-file", str(self.dir / "sa.pub"),
            "--service-account-signing-key-file", str(self.dir / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", "10.0.0.0/24",
            "--disable-admission-plugins", "ServiceAccount",
            "--max-requests-inflight", "2000", "--max-mutating-requests-inflight", "1000",
            *self.apiserver_args,
        ]
        self._spawn("kube-apiserver", args)
        self._wait_ready(timeout)

    # -- clients -----------------------------------------------------------------------------------
    def kube(self, **kw: object):  # -> nvsentinel.k8s.Kube
        from nvsentinel.k8s import Kube

        return Kube.connect(self.kubeconfig, **kw)  # type: ignore[arg-type]

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    # -- internals ---------------------------------------------------------------------------------
    def _prepare(self) -> None:
        (self.dir / "certs").mkdir(parents=True)
        (self.dir / "tokens.csv").write_text(f"{self.TOKEN},admin,admin-uid,system:masters\n")
        subprocess.run(["openssl", "genrsa", "-out", str(self.dir / "sa.key"), "2048"], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(self.dir / "sa.key"), "-pubout", "-out",
                        str(self.dir / "sa.pub")], check=True, capture_output=True)
        Path(self.kubeconfig).write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": self.ca_file}}],
            "users": [{"name": "admin", "user": {"token": self.TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        }))

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(with_parent_death(args), stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _start_etcd(self) -> None:
        ep, pp = self.etcd_port, self.peer_port
        self._spawn("etcd", [
            "etcd", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{ep}", "--advertise-client-urls", f"http://127.0.0.1:{ep}",
            "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
            "--initial-cluster", f"default=http://127.0.0.1:{pp}", "--log-level", "warn", "--logger", "zap",
            "--unsafe-no-fsync",
        ])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_alive("etcd")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{ep}/health", timeout=1) as r:
                    if json.load(r).get("health") == "true":
                        return
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy in 30 s; log: {self._tail('etcd')}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("kube-apiserver")
            if os.path.exists(self.ca_file):
                ctx = ssl.create_default_context(cafile=self.ca_file)
                req = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.TOKEN}"})
                with contextlib.suppress(OSError, ssl.SSLError):
                    with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                        if r.status == 200:
                            return
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready in {timeout} s; log: {self._tail('kube-apiserver')}")

    def _start_controller_manager(self) -> None:
        self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"), "--kubeconfig", self.kubeconfig,
            f"--controllers={','.join(self.controllers)}", "--leader-elect=false",
            "--port=0", "--secure-port=0",
        ])

    def _check_alive(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; log: {self._tail(name)}")

    def _tail(self, name: str, n: int = 2000) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"
