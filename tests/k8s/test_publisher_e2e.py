"""The publisher end to end, real everything: the NVML provider daemon on the fake libnvidia-ml, a
real Device API server, the publisher daemon, and the real kube-apiserver v1.20.2 (SPEC §6).

Isolated by node name (a unique suffix per test): the control plane is shared by the session.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "api"))
sys.path.insert(0, str(TESTS / "nvml"))

from apiserver import ThreadServer, make_settings, temp_socket_dir  # noqa: E402
from cluster import free_port  # noqa: E402
from nvml_fake_helpers import UUIDS, clean_env  # noqa: E402
from procs import http_get  # noqa: E402

from nvsentinel import errors  # noqa: E402
from nvsentinel._proto import gpu_pb2  # noqa: E402
from nvsentinel.node.client import DeviceApiClient  # noqa: E402
from nvsentinel.devtools.fake_nvml import FaultInjector  # noqa: E402
from nvsentinel.policy.healthevent import (  # noqa: E402
    LABEL_COMPONENT_CLASS, LABEL_IS_FATAL, LABEL_NODE, LABEL_SOURCE, HealthEvent,
)
from nvsentinel.k8s import Kube  # noqa: E402
from nvsentinel.k8s.resources import HEALTHEVENTS  # noqa: E402
from nvsentinel.policy.conditions import Finding, GpuView, merge_status  # noqa: E402

DEBOUNCE = 0.5


def http_status(port: int, path: str) -> int:
    return http_get(port, path, timeout=2)[0]


def http_text(port: int, path: str) -> str:
    status, body = http_get(port, path)
    assert status == 200, (port, path, status)
    return body


class Daemon:
    """A daemon (`python -m nvsentinel.daemons.<name>`) with its stderr in a temp file."""

    def __init__(self, name: str, *flags: str, env: dict[str, str] | None = None) -> None:
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"nvsentinel.daemons.{name}", *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            env=env if env is not None else clean_env(PYTHONUNBUFFERED="1"),
        )

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


class PublisherDaemon(Daemon):
    def __init__(self, address: str, kubeconfig: str, node: str, *flags: str) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        super().__init__("publisher", "--address", address, "--kubeconfig", kubeconfig, "--node-name", node,
                         "--debounce", str(DEBOUNCE), "--health-port", str(self.health_port),
                         "--metrics-port", str(self.metrics_port), *flags)

    def ready(self) -> bool:
        return http_status(self.health_port, "/readyz") == 200

    def metric(self, line_prefix: str) -> float:
        for line in http_text(self.metrics_port, "/metrics").splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.split()[-1])
        return 0.0


def wait_for(what: str, check: Callable[[], object], daemons: list[Daemon], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except errors.NvsentinelError as exc:  # the Device API is not ready yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        for d in daemons:
            assert d.proc.poll() is None, f"daemon exited rc={d.proc.returncode}:\n{d.log()}"
        time.sleep(0.02)
    logs = "\n----\n".join(d.log()[-6000:] for d in daemons)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r}); logs:\n{logs}")


def events(kube: Kube, node: str) -> list[HealthEvent]:
    items, _ = kube.list(HEALTHEVENTS, label_selector=f"{LABEL_NODE}={node}")
    return sorted((HealthEvent.from_dict(i) for i in items), key=lambda e: int(e.resource_version))


def of_gpu(evs: list[HealthEvent], uuid: str, *, healthy: bool | None = None) -> list[HealthEvent]:
    return [e for e in evs if uuid in e.gpu_uuids and (healthy is None or e.spec.is_healthy is healthy)]


def nvml_state(client: DeviceApiClient, uuid: str, type_: str = "NvmlHealthy") -> tuple[str, str]:
    for c in client.get_gpu(uuid).status.conditions:
        if c.type == type_:
            return c.status, c.reason
    return "", ""


def write_condition(client: DeviceApiClient, uuid: str, type_: str, status: str, reason: str,
                    message: str, action: str = "RESTART_BM") -> None:
    """Merge one condition into a GPU's status exactly like a provider does (docs/conditions.md)."""
    for _ in range(10):
        gpu = client.get_gpu(uuid)
        view = GpuView(Finding(reason, message, action)) if status == "False" else GpuView(None, reason, message)
        now = time.time_ns()
        new = merge_status(gpu.status, view, now // 10**9, now % 10**9, condition_type=type_)
        try:
            client.update_gpu_status(uuid, new, gpu.resource_version)
            return
        except Exception:  # noqa: BLE001 - a Conflict with the provider's own write: read again
            time.sleep(0.01)
    raise AssertionError(f"could not write {type_} on {uuid}")


def test_publisher_e2e_fault_dedup_restart_recovery(control_plane, crd_installed, kube, unique, tmp_path,
                                                     record_property):
    """Verify XID 79 → exactly one HealthEvent with the contract's fields; the kernel log reporting
    the same XID adds none; a publisher restart adds none (409); a fake-NVML loss and recovery give
    one GpuLost event per GPU and then healthy events, held back while the kernel log still reports."""
    node = f"pub-e2e-{unique}"
    with temp_socket_dir() as sock_dir:
        server = ThreadServer(make_settings(sock_dir)).start()
        client = DeviceApiClient(server.tcp, timeout=5)
        control = tmp_path / "fake-nvml.ctl"
        provider = Daemon("nvml_provider", "--health-port", "0", "--fake-nvml", "--fake-nvml-control", str(control),
                          "--address", server.tcp, "--wait-timeout-ms", "100")
        publisher = None
        daemons: list[Daemon] = [provider]
        fault = FaultInjector(control)
        try:
            wait_for("8 GPUs registered and healthy",
                     lambda: all(nvml_state(client, u) == ("True", "NvmlOk") for u in UUIDS)
                     if len(client.list_gpus()[1]) == 8 else False, daemons, 30)
            publisher = PublisherDaemon(server.tcp, control_plane.kubeconfig, node)
            daemons.append(publisher)
            wait_for("publisher ready", publisher.ready, daemons)
            assert events(kube, node) == []  # eight healthy GPUs publish nothing

            # XID 79 on GPU 3 → exactly one fatal event with every contract field
            t0 = time.monotonic()
            fault.inject_xid(3, 79)
            (ev,) = wait_for("the XID 79 event", lambda: events(kube, node), daemons)
            latency = time.monotonic() - t0
            record_property("xid_to_healthevent_seconds", round(latency, 3))
            s = ev.spec
            assert (s.error_codes, s.recommended_action, s.is_fatal, s.is_healthy) == (("79",), "RESTART_BM", True, False)
            assert (s.source, s.agent, s.node_name, s.component_class, s.check_name) == (
                "nvml-provider", "nvsentinel-publisher", node, "GPU", "xid-error-check")
            # the GPU, then its PCI slot and board serial as far as the provider registered them
            spec = client.get_gpu(UUIDS[3]).spec
            want = [("GPU", UUIDS[3])] + [(t, v) for t, v in (("PCI", spec.pci_bus_id), ("GPU_SERIAL", spec.serial)) if v]
            assert [(e.type, e.value) for e in s.entities_impacted] == want
            assert s.message == "XID 79: GPU has fallen off the bus"
            assert dict(s.metadata) == {"conditionType": "NvmlHealthy", "reason": "Xid79"}
            assert dict(ev.labels) == {LABEL_NODE: node, LABEL_COMPONENT_CLASS: "GPU", LABEL_IS_FATAL: "true",
                                       LABEL_SOURCE: "nvml-provider"}
            assert ev.name.startswith(f"{node}.e7b01a4c.xid79.")
            assert ev.name == f"{node}.e7b01a4c.xid79.{int(s.detected_at.timestamp())}"
            assert latency < 5, f"XID 79 took {latency:.2f} s to become a HealthEvent"

            # the kernel log reports the same XID on GPU 3: still one event
            write_condition(client, UUIDS[3], "KmsgHealthy", "False", "Xid79", "XID 79: GPU has fallen off the bus")
            # ... and on GPU 4 the kernel log is first, then NVML: one event, from kmsg-monitor
            write_condition(client, UUIDS[4], "KmsgHealthy", "False", "Xid79", "XID 79: GPU has fallen off the bus")
            wait_for("GPU 4's kmsg event", lambda: of_gpu(events(kube, node), UUIDS[4]), daemons)
            fault.inject_xid(4, 79)
            wait_for("NVML sees GPU 4", lambda: nvml_state(client, UUIDS[4]) == ("False", "Xid79"), daemons)
            time.sleep(DEBOUNCE * 2 + 0.5)
            evs = events(kube, node)
            assert [len(of_gpu(evs, u)) for u in UUIDS] == [0, 0, 0, 1, 1, 0, 0, 0]
            assert of_gpu(evs, UUIDS[4])[0].spec.source == "kmsg-monitor"
            assert of_gpu(evs, UUIDS[4])[0].labels[LABEL_SOURCE] == "kmsg-monitor"

            # restart the publisher: the same names again → AlreadyExists, nothing new
            assert publisher.terminate() == 0
            assert "stopping: flushing pending health events" in publisher.log()
            publisher.close()
            daemons.remove(publisher)
            publisher = PublisherDaemon(server.tcp, control_plane.kubeconfig, node)
            daemons.append(publisher)
            wait_for("publisher ready again", publisher.ready, daemons)
            wait_for("both faults re-judged as already published",
                     lambda: publisher.log().count('msg="health event already published"') >= 2, daemons)
            assert publisher.metric("nvsentinel_publisher_dedup_total") >= 2
            assert publisher.metric('nvsentinel_publisher_events_published_total{kind="fatal"}') == 0
            assert len(events(kube, node)) == 2

            # the fake NVML loses a GPU: every GPU GpuLost (one event each); recover: healthy events
            fault.lose(0)
            wait_for("8 GpuLost events", lambda: len([e for e in events(kube, node)
                                                       if e.spec.metadata.get("reason") == "GpuLost"]) == 8, daemons)
            fault.recover(0)
            wait_for("NVML recovered everywhere",
                     lambda: all(nvml_state(client, u) == ("True", "Recovered") for u in UUIDS), daemons)
            wait_for("6 healthy events", lambda: len([e for e in events(kube, node) if e.spec.is_healthy]) == 6,
                     daemons)
            evs = events(kube, node)
            healthy = of_gpu(evs, UUIDS[0], healthy=True)[0]
            s = healthy.spec
            assert (s.is_healthy, s.is_fatal, s.recommended_action, s.error_codes) == (True, False, "NONE", ("79",))
            assert (s.check_name, s.source) == ("gpu-lost-check", "nvml-provider")
            assert healthy.name == f"{node}.196b7c1a.healthy.{int(s.detected_at.timestamp())}"
            assert healthy.labels[LABEL_IS_FATAL] == "false"
            # GPUs 3 and 4: the kernel log still reports XID 79, so no healthy event yet
            assert of_gpu(evs, UUIDS[3], healthy=True) == [] and of_gpu(evs, UUIDS[4], healthy=True) == []
            # a GPU reset line (the kernel-log monitor's recovery) closes GPU 3's faults
            write_condition(client, UUIDS[3], "KmsgHealthy", "True", "GpuReset",
                            f"kernel log: GPU reset executed: {UUIDS[3]}")
            (h3,) = wait_for("GPU 3 healthy", lambda: of_gpu(events(kube, node), UUIDS[3], healthy=True), daemons)
            assert h3.spec.source == "kmsg-monitor" and h3.spec.error_codes == ("79",)
            # every fault exactly once, each recovery after its faults
            evs = events(kube, node)
            fatal_keys = [(e.gpu_uuids, e.spec.metadata["reason"]) for e in evs if not e.spec.is_healthy]
            assert len(fatal_keys) == len(set(fatal_keys)) == 10
            for u in UUIDS:
                mine = of_gpu(evs, u)
                if any(e.spec.is_healthy for e in mine):
                    assert mine[-1].spec.is_healthy
            assert publisher.terminate() == 0
        finally:
            for d in daemons:
                d.close()
            client.close()
            server.stop()


def test_publisher_e2e_lost_gpu_recovers_then_faults_again(control_plane, crd_installed, kube, unique,
                                                           tmp_path):
    """Verify a GPU with an open XID 79 that is lost and recovered, then hit by XID 79 again at once,
    gets its healthy event and then a new XID 79 event (the provider at its default 5 s wait: the
    new XID is what ends the wait in which the recovery is noticed)."""
    node = f"pub-relapse-{unique}"
    with temp_socket_dir() as sock_dir:
        server = ThreadServer(make_settings(sock_dir)).start()
        client = DeviceApiClient(server.tcp, timeout=5)
        control = tmp_path / "fake-nvml.ctl"
        provider = Daemon("nvml_provider", "--health-port", "0", "--fake-nvml", "--fake-nvml-control", str(control),
                          "--address", server.tcp)
        daemons: list[Daemon] = [provider]
        fault = FaultInjector(control)
        try:
            wait_for("8 GPUs registered and healthy",
                     lambda: all(nvml_state(client, u) == ("True", "NvmlOk") for u in UUIDS)
                     if len(client.list_gpus()[1]) == 8 else False, daemons, 30)
            publisher = PublisherDaemon(server.tcp, control_plane.kubeconfig, node)
            daemons.append(publisher)
            wait_for("publisher ready", publisher.ready, daemons)

            fault.inject_xid(0, 79)
            (first,) = wait_for("the first XID 79 event", lambda: events(kube, node), daemons)
            fault.lose(0)
            wait_for("8 GpuLost events", lambda: len([e for e in events(kube, node)
                                                       if e.spec.metadata.get("reason") == "GpuLost"]) == 8, daemons)
            # event names carry the transition second: the next XID 79 must not share the first one's
            wait_for("a later second", lambda: time.time() >= first.spec.detected_at.timestamp() + 1, daemons)
            fault.recover(0)
            fault.inject_xid(0, 79)

            def relapsed() -> list[HealthEvent]:
                mine = of_gpu(events(kube, node), UUIDS[0])
                return mine if len(mine) == 4 else []

            mine = wait_for("GPU 0 healthy, then XID 79 again", relapsed, daemons)
            assert [(e.spec.is_healthy, e.spec.metadata["reason"]) for e in mine] == [
                (False, "Xid79"), (False, "GpuLost"), (True, "Recovered"), (False, "Xid79")]
            assert mine[3].name != first.name and mine[3].spec.error_codes == ("79",)
            assert mine[2].spec.error_codes == ("79",) and mine[2].spec.detected_at <= mine[3].spec.detected_at
            wait_for("7 more healthy events", lambda: len([e for e in events(kube, node) if e.spec.is_healthy]) == 8,
                     daemons)
            assert nvml_state(client, UUIDS[0]) == ("False", "Xid79")
            assert publisher.terminate() == 0
        finally:
            for d in daemons:
                d.close()
            client.close()
            server.stop()


class Gate:
    """A TCP forwarder to the API server that can be shut (connections refused) and opened: the
    API server seen from the publisher goes away and comes back on the same address."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream = upstream_port
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self.accepted = 0

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        t = threading.Thread(target=self._accept, args=(s,), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self._conns += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        self._conns.clear()
        for t in self._threads:
            t.join(5)
        self._threads.clear()


def test_publisher_e2e_api_server_unreachable(control_plane, crd_installed, kube, unique, tmp_path):
    """Verify a fault and its recovery detected while the API server is unreachable are created,
    once each and in order, when it comes back; readiness is 503 meanwhile."""
    node = f"pub-outage-{unique}"
    gate = Gate(int(control_plane.url.rsplit(":", 1)[1]))
    config = json.loads(Path(control_plane.kubeconfig).read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{gate.port}"
    kubeconfig = tmp_path / "kubeconfig-gated"
    kubeconfig.write_text(json.dumps(config))
    with temp_socket_dir() as sock_dir:
        server = ThreadServer(make_settings(sock_dir)).start()
        client = DeviceApiClient(server.tcp, timeout=5)
        publisher = None
        try:
            for u in UUIDS[:2]:
                g = gpu_pb2.Gpu()
                g.metadata.name = g.spec.uuid = u
                client.create_gpu(g)
                write_condition(client, u, "NvmlHealthy", "True", "NvmlOk", "NVML reports no fatal error")
            publisher = PublisherDaemon(server.tcp, str(kubeconfig), node, "--kube-qps", "0")
            wait_for("publisher ready", publisher.ready, [publisher])
            # the API server goes away (the gate is shut: connection refused), then a fault and its fix
            write_condition(client, UUIDS[1], "NvmlHealthy", "False", "Xid48", "XID 48: Double Bit ECC Error",
                            "COMPONENT_RESET")
            wait_for("a failed create", lambda: publisher.metric(
                'nvsentinel_publisher_create_failures_total{reason="unavailable"}') >= 2, [publisher])
            assert not publisher.ready()
            time.sleep(DEBOUNCE)
            write_condition(client, UUIDS[1], "NvmlHealthy", "True", "Recovered", "NVML healthy again")
            wait_for("both events waiting", lambda: publisher.metric("nvsentinel_publisher_pending") == 2, [publisher])
            time.sleep(1.5)
            assert events(kube, node) == []
            assert 'msg="health event create failed: retrying"' in publisher.log()
            # the API server is back: both created, fatal first, each once
            gate.open()
            evs = wait_for("both events", lambda: (e := events(kube, node)) and len(e) == 2 and e, [publisher], 45)
            assert [e.spec.is_healthy for e in evs] == [False, True]
            assert evs[0].spec.error_codes == ("48",) and evs[0].spec.recommended_action == "COMPONENT_RESET"
            assert evs[1].spec.error_codes == ("48",)
            wait_for("ready again", publisher.ready, [publisher])
            assert publisher.metric("nvsentinel_publisher_pending") == 0
            assert publisher.metric('nvsentinel_publisher_events_published_total{kind="fatal"}') == 1
            assert publisher.metric('nvsentinel_publisher_events_published_total{kind="healthy"}') == 1
            assert publisher.terminate() == 0
        finally:
            if publisher is not None:
                publisher.close()
            gate.close()
            client.close()
            server.stop()
