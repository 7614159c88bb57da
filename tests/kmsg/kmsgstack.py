"""One GPU node's kernel-log path as real processes, for the replays on the real API server
(tests/k8s/test_replay_*.py): a Device API server (real gRPC, in a thread) with eight GPUs, the
kmsg-monitor daemon following a log file, and the publisher daemon creating HealthEvents.

The two daemons get the environment a node pod gives them (the chart sets NVSENTINEL_XID_OVERRIDES
on every node container when `xidOverrides` is set).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for sub in ("api", "k8s"):
    if str(TESTS / sub) not in sys.path:
        sys.path.insert(0, str(TESTS / sub))

from apiserver import ThreadServer, make_settings  # noqa: E402
from cluster import free_port  # noqa: E402
from procs import Daemon, http_get  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.k8s import Kube  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.policy.healthevent import LABEL_NODE, HealthEvent  # noqa: E402

UUIDS = [f"GPU-{0x196b7c10 + i:08x}-b6d3-9791-4798-481be2406bdb" for i in range(8)]
PCIS = [f"00000000:{0x18 + 0x10 * i:02X}:00.0" for i in range(8)]
SERIALS = [f"16509240600{i:02d}" for i in range(8)]


def mapping(i: int) -> str:
    """The driver's PCI → UUID line (the kernel spells the PCI id in lower case, 4-digit domain)."""
    return f"[   10.000000] NVRM: GPU at PCI:{PCIS[i][4:].lower()}: {UUIDS[i]}\n"


def xid_line(i: int, n: int, tail: str = "pid=1234, name=python, Ch 00000001") -> str:
    return f"[  100.000000] NVRM: Xid (PCI:{PCIS[i][4:].lower()}): {n}, {tail}\n"


def events(kube: Kube, node: str) -> list[HealthEvent]:
    items, _ = kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")
    return sorted((HealthEvent.from_dict(i) for i in items), key=lambda e: int(e.resource_version))


class KmsgNode:
    """The node side: Device API + kmsg-monitor + publisher, all real; `close()` stops them."""

    def __init__(self, kubeconfig: str, node: str, env: dict[str, str] | None = None) -> None:
        self.node = node
        self.dir = Path(tempfile.mkdtemp(prefix="nvs-", dir="/tmp"))
        self.log = self.dir / "kern.log"
        self.log.write_bytes(b"")
        self.server = ThreadServer(make_settings(str(self.dir))).start()
        self.client = DeviceApiClient(self.server.tcp, timeout=5)
        for uuid, pci, serial in zip(UUIDS, PCIS, SERIALS):
            self.client.create_gpu(gpu_pb2.Gpu(metadata=gpu_pb2.ObjectMeta(name=uuid),
                                               spec=gpu_pb2.GpuSpec(uuid=uuid, pci_bus_id=pci, serial=serial)))
        daemon_env = {**os.environ, **(env or {})}
        self.kmsg_metrics = free_port()
        self.monitor = Daemon("kmsg_monitor", [
            "--address", self.server.tcp, "--source", str(self.log), "--state-file", str(self.dir / "kmsg.json"),
            "--poll-interval", "0.02", "--metrics-port", str(self.kmsg_metrics), "--node-name", node,
        ], env=daemon_env, name=f"kmsg-monitor-{node}").start()
        self.health = free_port()
        self.publisher = Daemon("publisher", [
            "--address", self.server.tcp, "--kubeconfig", kubeconfig, "--node-name", node, "--debounce", "0.2",
            "--health-port", str(self.health), "--metrics-port", "0", "--log-level", "DEBUG",
        ], env=daemon_env, name=f"publisher-{node}").start()
        self.daemons = [self.monitor, self.publisher]

    def append(self, text: str) -> None:
        with open(self.log, "ab") as fh:
            fh.write(text.encode())

    def publisher_ready(self) -> bool:
        return http_get(self.health, "/readyz")[0] == 200

    def kmsg_metric(self, name: str, **labels: str) -> float | None:
        """A sample of the monitor's /metrics (None while it does not answer, or absent)."""
        status, text = http_get(self.kmsg_metrics, "/metrics")
        if status != 200:
            return None
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return None

    def kmsg_condition(self, uuid: str) -> tuple[str, str] | None:
        for c in self.client.get_gpu(uuid).status.conditions:
            if c.type == "KmsgHealthy":
                return c.status, c.reason
        return None

    def close(self) -> None:
        for d in self.daemons:
            d.close()
        self.client.close()
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
