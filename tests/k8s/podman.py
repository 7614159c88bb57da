"""The project's image, built and run with podman as the chart runs it (tests only).

`build_image()` runs tools/build-image.sh (the same script `.ci/run` and users run). `ChartContainer`
turns one container of the rendered chart into a `podman run`: the chart's command and args (with
Kubernetes' `$(VAR)` expansion), its environment, its volumes (emptyDir → tmpfs; host paths and
files the test provides → bind mounts) and, above all, its securityContext. `security_flags()`
refuses a securityContext key it does not translate, so a chart change cannot go unverified, and
`expected_process()` says what the kernel must then show for the container's process
(/proc/PID/status and mountinfo), which `ProcessState.of()` reads from the host.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from procs import Daemon

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "tools" / "build-image.sh"
#: runc and rlimits this host can grant: see the file
CONTAINERS_CONF = ROOT / "tools" / "containers.conf"
#: every container a test starts carries it, so a crashed run's leftovers can be found
TEST_LABEL = "nvsentinel-test=image"
#: capabilities the chart adds anywhere, by number (linux/capability.h)
CAPABILITY_BITS = {"SYSLOG": 34}


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} → rc={proc.returncode}\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def build_image(log: Path, timeout: float = 1800) -> str:
    """Build (or reuse) the image; its reference. Fails loudly, with the build log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=out, text=True,
                              timeout=timeout, env=podman_env())
    if proc.returncode != 0:
        raise AssertionError(f"tools/build-image.sh failed (rc={proc.returncode}); log {log}:\n"
                             f"{log.read_text()[-6000:]}")
    return proc.stdout.strip().splitlines()[-1]


def inspect_image(image: str) -> dict[str, Any]:
    return json.loads(podman("image", "inspect", image).stdout)[0]


# ---- securityContext → podman, and what the kernel must show ------------------------------------------

class Unsupported(ValueError):
    """A securityContext or volume this translation does not know: the test must learn it first."""


POD_KEYS = {"runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"}
CONTAINER_KEYS = {"runAsNonRoot", "runAsUser", "runAsGroup", "allowPrivilegeEscalation", "readOnlyRootFilesystem",
                  "capabilities", "privileged", "seccompProfile"}


def effective(pod_sc: Mapping[str, Any], sc: Mapping[str, Any]) -> dict[str, Any]:
    """The container's securityContext over the pod's, as Kubernetes merges them."""
    if set(pod_sc) - POD_KEYS:
        raise Unsupported(f"pod securityContext keys {sorted(set(pod_sc) - POD_KEYS)}")
    if set(sc) - CONTAINER_KEYS:
        raise Unsupported(f"container securityContext keys {sorted(set(sc) - CONTAINER_KEYS)}")
    return {**pod_sc, **sc}


def _user(ctx: Mapping[str, Any], image_user: str) -> tuple[int, int]:
    image_uid, _, image_gid = image_user.partition(":")
    if not image_uid.isdigit() or (image_gid and not image_gid.isdigit()):
        raise Unsupported(f"image user {image_user!r} is not numeric")
    uid = int(ctx.get("runAsUser", image_uid))
    gid = int(ctx.get("runAsGroup", image_gid or 0))
    return uid, gid


def security_flags(pod_sc: Mapping[str, Any], sc: Mapping[str, Any], image_user: str) -> list[str]:
    """`podman run` flags that give a container exactly this securityContext."""
    ctx = effective(pod_sc, sc)
    uid, gid = _user(ctx, image_user)
    if ctx.get("runAsNonRoot") and uid == 0:
        raise AssertionError("runAsNonRoot with uid 0: the kubelet would refuse to start it")
    flags = [f"--user={uid}:{gid}"]
    if ctx.get("privileged"):
        flags.append("--privileged")
    if ctx.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    # podman adds tmpfs on /tmp, /run and /var/tmp to a read-only root; Kubernetes adds nothing
    flags.append("--read-only-tmpfs=false")
    if ctx.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    caps = ctx.get("capabilities") or {}
    if set(caps) - {"drop", "add"}:
        raise Unsupported(f"capabilities keys {sorted(caps)}")
    flags += [f"--cap-drop={c}" for c in caps.get("drop", ())]
    for cap in caps.get("add", ()):
        if cap not in CAPABILITY_BITS:
            raise Unsupported(f"capability {cap} (add it to CAPABILITY_BITS)")
        flags.append(f"--cap-add={cap}")
    seccomp = (ctx.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        flags.append("--security-opt=seccomp=unconfined")
    elif seccomp != "RuntimeDefault":  # podman's default profile is the runtime's default
        raise Unsupported(f"seccompProfile {seccomp}")
    return flags


@dataclasses.dataclass(frozen=True)
class ProcessState:
    """What the kernel says about a process: the ground truth the securityContext must produce."""

    uid: int
    gid: int
    cap_eff: int
    no_new_privs: bool
    seccomp_filtered: bool
    root_read_only: bool

    @classmethod
    def of(cls, pid: int) -> ProcessState:
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
        root = next(line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                    if line.split()[4] == "/")
        return cls(uid=int(status["Uid"].split()[1]), gid=int(status["Gid"].split()[1]),
                   cap_eff=int(status["CapEff"], 16), no_new_privs=status["NoNewPrivs"].strip() == "1",
                   seccomp_filtered=status["Seccomp"].strip() == "2",
                   root_read_only="ro" in root[5].split(","))


def expected_process(pod_sc: Mapping[str, Any], sc: Mapping[str, Any], image_user: str) -> ProcessState:
    ctx = effective(pod_sc, sc)
    uid, gid = _user(ctx, image_user)
    caps = ctx.get("capabilities") or {}
    if ctx.get("privileged") or "ALL" not in caps.get("drop", ()):
        raise Unsupported("only containers that drop ALL capabilities have a predictable set")
    cap_eff = 0
    for cap in caps.get("add", ()):
        # a non-root process holds no effective capability without ambient ones (Kubernetes sets none)
        cap_eff |= (1 << CAPABILITY_BITS[cap]) if uid == 0 else 0
    seccomp = (ctx.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    return ProcessState(uid=uid, gid=gid, cap_eff=cap_eff, no_new_privs=ctx.get("allowPrivilegeEscalation") is False,
                        seccomp_filtered=seccomp != "Unconfined",
                        root_read_only=bool(ctx.get("readOnlyRootFilesystem")))


# ---- one container of the rendered chart --------------------------------------------------------------

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values (unknown names stay as written)."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def _size(quantity: str) -> str:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", quantity)
    if not m:
        raise Unsupported(f"sizeLimit {quantity!r}")
    return f"{m.group(1)}{(m.group(2) or '')[:1].lower()}"


class ChartContainer(Daemon):
    """`podman run` (foreground, logs through Daemon's pump) of one container of a rendered workload.

    `field_env`: the values of env vars that come from the downward API (`valueFrom.fieldRef`).
    `volumes`: host paths for the workload's non-emptyDir volumes, by volume name; an emptyDir becomes a
    tmpfs; a volume neither given nor an emptyDir is not mounted (the test does not need it).
    `extra_args` come after the chart's: a flag given twice takes the last value. `extra_flags` go to podman
    (a file the test mounts that the chart does not have, such as a kubeconfig).
    """

    def __init__(self, image: str, workload: Mapping[str, Any], container: str, *, name: str,
                 field_env: Mapping[str, str] = {}, volumes: Mapping[str, str] = {}, extra_args: Sequence[str] = (),
                 extra_flags: Sequence[str] = ()) -> None:
        pod = workload["spec"]["template"]["spec"]
        self.spec = next(c for c in pod["containers"] if c["name"] == container)
        self.pod_sc = pod.get("securityContext") or {}
        self.image_user = inspect_image(image)["Config"].get("User") or "0"
        super().__init__("unused", (), name=name)
        env: dict[str, str] = {}
        for item in self.spec.get("env", ()):
            if "value" in item:
                env[item["name"]] = expand(item["value"], env)
            elif "fieldRef" in item.get("valueFrom", {}):
                env[item["name"]] = field_env[item["name"]]
            else:
                raise Unsupported(f"env {item['name']}: {item.get('valueFrom')}")
        argv = [*self.spec["command"], *self.spec.get("args", ()), *extra_args]
        argv = [expand(a, env) for a in argv]
        mounts: list[str] = []
        by_name = {v["name"]: v for v in pod.get("volumes", ())}
        for m in self.spec.get("volumeMounts", ()):
            vol = by_name[m["name"]]
            if m["name"] in volumes:
                mounts.append(f"--volume={volumes[m['name']]}:{m['mountPath']}{':ro' if m.get('readOnly') else ''}")
            elif "emptyDir" in vol:
                size = (vol["emptyDir"] or {}).get("sizeLimit")
                opts = f"rw,mode=1777{',size=' + _size(size) if size else ''}"
                mounts.append(f"--tmpfs={m['mountPath']}:{opts}")
        self.cmd = ["podman", "run", "--rm", "--pull=never", f"--name={name}", f"--label={TEST_LABEL}",
                    # the test API server and the probes are on the host's loopback
                    "--network=host", "--init=false",
                    *security_flags(self.pod_sc, self.spec.get("securityContext") or {}, self.image_user),
                    *mounts, *extra_flags, *(f"--env={k}={v}" for k, v in env.items()),
                    f"--entrypoint={argv[0]}", image, *argv[1:]]
        self.env = podman_env()

    def expected(self) -> ProcessState:
        return expected_process(self.pod_sc, self.spec.get("securityContext") or {}, self.image_user)

    def pid(self) -> int:
        """The container's main process, as the host sees it (0 while it is not running yet)."""
        proc = podman("inspect", "--format", "{{.State.Pid}}", self.name, check=False)
        return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0

    def close(self) -> None:
        podman("rm", "--force", "--time=5", self.name, check=False)
        super().close()


def remove_leftovers() -> None:
    """Containers a killed test run left behind (they hold host ports)."""
    ids = podman("ps", "--all", "--quiet", f"--filter=label={TEST_LABEL}", check=False).stdout.split()
    if ids:
        podman("rm", "--force", *ids, check=False)
