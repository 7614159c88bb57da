"""The chart's admission webhook, run for real next to the test API server.

The chart's ValidatingWebhookConfiguration calls a Service, which nothing routes on these machines (no kube-proxy,
no pod network). So the test runs `nvsentinel admission-webhook` as a process with the chart's own arguments and a
serving certificate for 127.0.0.1 (made by openssl), then points the chart's configuration at it: the same rules,
failure policies and timeouts, with `clientConfig.url` in place of `clientConfig.service`.
"""
from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Any

from procs import Daemon

from nvsentinel.k8s import Kube
from nvsentinel.k8s.resources import Resource

VWCS = Resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                "ValidatingWebhookConfiguration", False)


def serving_cert(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, tls.crt, tls.key): a throwaway CA and a certificate for IP 127.0.0.1 signed by it."""
    ca_key, ca, key, csr, crt = (directory / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt"))
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def openssl(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=120)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
            "-subj", "/CN=nvsentinel-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
            str(crt), "-days", "2", "-extfile", str(ext))
    return ca, crt, key


def start_webhook(chart_args: list[str], kubeconfig: str, directory: Path) -> tuple[Daemon, Path, int]:
    """The webhook process with the chart's rules; (daemon, CA file, port)."""
    ca, crt, key = serving_cert(directory)
    drop = ("--bind-address", "--port", "--health-port", "--tls-cert-file", "--tls-key-file", "--log-format")
    args = [a for a in chart_args if not a.startswith(drop)]
    daemon = Daemon("admission_webhook", [*args, "--bind-address", "127.0.0.1", "--port", "0", "--health-port", "0",
                                          "--tls-cert-file", str(crt), "--tls-key-file", str(key),
                                          "--kubeconfig", kubeconfig], name="admission-webhook").start()
    daemon.wait_log("admission webhook serving", timeout=60)
    match = re.search(r"address=127\.0\.0\.1:(\d+)", daemon.text())
    assert match, daemon.text()
    return daemon, ca, int(match.group(1))


def route_to(kube: Kube, name: str, port: int, ca: Path) -> dict[str, Any]:
    """Point every webhook of the chart's configuration `name` at the local process; the patched object."""
    vwc = kube.get(VWCS, name)
    bundle = base64.b64encode(ca.read_bytes()).decode()
    hooks = []
    for hook in vwc["webhooks"]:
        path = hook["clientConfig"]["service"]["path"]
        hooks.append({**hook, "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}})
    return kube.patch(VWCS, name, {"webhooks": hooks})
