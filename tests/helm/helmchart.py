"""The official helm binary, driven from tests: render, lint and install charts/nvsentinel.

`tools/get-helm.sh` fetches helm once into ~/.cache/nvsentinel-helm (0 s when cached) and fails
loudly when it cannot; the tests never skip for a missing helm. Helm's own state (cache, config,
repositories) lives in a temp dir per session, so a developer's ~/.config/helm is neither read nor
written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "nvsentinel"
GET_HELM = REPO / "tools" / "get-helm.sh"


class HelmError(AssertionError):
    """helm exited non-zero; carries its stderr so a failing test shows helm's reason."""

    def __init__(self, argv: Sequence[str], rc: int, stdout: str, stderr: str) -> None:
        super().__init__(f"helm {' '.join(argv)} exited {rc}:\n{stderr.strip() or stdout.strip()}")
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


def fetch_helm() -> str:
    """Path of the official helm binary; runs tools/get-helm.sh (cached after the first run)."""
    proc = subprocess.run(["bash", str(GET_HELM)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"tools/get-helm.sh failed (exit {proc.returncode}):\n{proc.stderr}")
    path = proc.stdout.strip().splitlines()[-1]
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"tools/get-helm.sh printed {path!r}, which is not an executable")
    return path


@dataclasses.dataclass
class Helm:
    binary: str
    home: Path

    @classmethod
    def create(cls) -> Helm:
        home = Path(tempfile.mkdtemp(prefix="nvsentinel-helm-home-"))
        return cls(fetch_helm(), home)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
            env[var] = str(self.home / sub)
        env.pop("KUBECONFIG", None)
        return env

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.binary, *argv], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise HelmError(argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def values_file(self, values: Mapping[str, Any]) -> str:
        fd, path = tempfile.mkstemp(prefix="values-", suffix=".json", dir=self.home)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        return path

    def value_args(self, values: Mapping[str, Any] | None, sets: Iterable[str] = ()) -> list[str]:
        args: list[str] = []
        if values:
            args += ["-f", self.values_file(values)]
        for s in sets:
            args += ["--set", s]
        return args

    def template(self, values: Mapping[str, Any] | None = None, *, sets: Iterable[str] = (),
                 release: str = "nvs", namespace: str = "nvsentinel", kube_version: str | None = None,
                 api_versions: Iterable[str] = (), include_crds: bool = False, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        argv = ["template", release, str(CHART), "--namespace", namespace, *self.value_args(values, sets)]
        if kube_version:
            argv += ["--kube-version", kube_version]
        for av in api_versions:
            argv += ["--api-versions", av]
        if include_crds:
            argv.append("--include-crds")
        return self.run(*argv, check=check)

    def render(self, values: Mapping[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
        """The rendered objects, parsed (empty documents dropped)."""
        return [d for d in yaml.safe_load_all(self.template(values, **kw).stdout) if d]

    def lint(self, values: Mapping[str, Any] | None = None, *, sets: Iterable[str] = (), check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        return self.run("lint", "--strict", str(CHART), *self.value_args(values, sets), check=check)


#: Every optional feature on, every list non-empty, every default changed somewhere: what lint,
#: validation and the flag check must also accept.
ALL_FEATURES: dict[str, Any] = {
    "fullnameOverride": "gpu-health",
    "image": {"repository": "registry.example.com/nvsentinel", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "xidOverrides": {"13": {"action": "COMPONENT_RESET", "reason": "site policy"}},
    "commonLabels": {"team": "sre"},
    "logging": {"format": "plain", "level": "DEBUG"},
    "chain": {"taint": {"key": "example.com/gpu-broken", "value": "yes", "effect": "NoExecute"},
              "nodeSelector": "pool=gpu", "eventSelector": "nvsentinel.nvidia.com/component-class=GPU",
              "dryRun": True},
    "node": {
        "runtimeClassName": "nvidia-cdi",
        "podAnnotations": {"a": "b"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
        "maxUnavailable": "10%",
        "deviceApiServer": {"grpcAddress": "0.0.0.0:50051", "allowRemoteGrpc": True, "extraArgs": ["--max-watchers=512"]},
        "nvmlProvider": {"mountDriverRoot": True, "ignoredXids": [13, 43], "privileged": True,
                         "resetCommand": "", "extraArgs": ["--wait-timeout-ms=1000"]},
        "kmsgMonitor": {"ignoredXids": [31], "source": "kmsg", "extraArgs": ["--dedup-window=10"]},
        "publisher": {"debounce": 2.5, "kubeQps": 5, "kubeBurst": 10, "extraArgs": ["--conditions=NvmlHealthy"],
                      "podResources": {"enabled": True, "socketDir": "/var/lib/kubelet/pod-resources/",
                                       "resourceName": "nvidia.com/gpu-shared"}},
    },
    # the test API server routes nothing to the webhook's Service: Ignore keeps creates working after install
    "admission": {"maxClockSkewSeconds": 30, "webhook": {"replicas": 3, "failurePolicy": "Ignore"}},
    "remediationAgent": {"resyncPeriod": 60, "podAnnotations": {"c": "d"}, "extraArgs": ["--backoff-max=10"]},
    "controllers": {
        "replicas": 3, "leaderElect": True, "workers": 8, "kubeQps": 100, "kubeBurst": 200,
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
        "podAnnotations": {"e": "f"},
        "extraArgs": ["--resync-period=120"],
        "quarantine": {"breaker": {"percent": 5.5, "maxNodes": 20, "window": 1200},
                       "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                       "remediationMode": "external",
                       "remediationModeRules": [{"nodeSelector": "pool=gpu-b", "mode": "approve"},
                                                {"nodeSelector": "", "mode": "nvsentinel"}],
                       "extraArgs": ["--hold-requeue=10"]},
        "conditions": {"mirror": "always", "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}},
                       "extraArgs": ["--workers=8"]},
        "drain": {"scope": "gpu", "skipNamespaces": ["kube-system", "gpu-operator"], "pdbRetry": 10, "timeout": 1800,
                  "forceDelete": True, "gracePeriod": 60, "extraArgs": ["--drain-poll=5"]},
        "remediation": {"rebootImage": "registry.example.com/tools:1", "rebootCommand": "/bin/reboot -f",
                        "rebootJobDeadline": 900, "maxAttempts": 5, "backoff": 60, "gpuResetTimeout": 600,
                        "escalationThreshold": 0, "escalationWindow": 604800,
                        "extraArgs": ["--remediation-poll=10"]},
    },
    "exporter": {"enabled": True, "sink": "https://events.example.com/ingest", "clusterName": "gpu-east-1",
                 "extraArgs": ["--concurrency=16"]},
    "policy": {"ttlAfterResolved": "72h", "retentionMode": "compliance", "complianceRetention": "4320h",
               "batchSize": 500, "cleanupInterval": "1m30s", "maxEventsPerNode": 50, "maxTotalEvents": 10000},
    "metrics": {"service": {"enabled": True},
                "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
                "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "drainStuckFor": "1h",
                                   "runbookBaseUrl": "https://git.example.com/sre/nvsentinel/runbooks.md"},
                "grafanaDashboard": {"enabled": True, "label": "example.com/dashboard", "labelValue": "nvsentinel",
                                     "labels": {"team": "gpu"},
                                     "annotations": {"grafana_folder": "GPU"}}},
}

CONTROLLERS = ("quarantine", "conditions", "drain", "remediation", "resolution", "ttl")


def by_kind(objs: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Mapping[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def containers(objs: Iterable[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(workload, container) for every container of every DaemonSet and Deployment."""
    return [(o, c) for o in objs if o["kind"] in ("DaemonSet", "Deployment")
            for c in o["spec"]["template"]["spec"]["containers"]]

