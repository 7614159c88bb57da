"""Settings of `nvsentinel admission-webhook`: flags > ADMISSION_* environment > defaults."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import shlex

from nvsentinel.cluster.ownership import TAINT_KEY
from nvsentinel.policy.admission import AdmissionRules
from nvsentinel.service.settings import check_logging, setting

__all__ = ["ENV_PREFIX", "AdmissionSettings"]

ENV_PREFIX = "ADMISSION_"


def _users(text: str) -> frozenset[str]:
    return frozenset(u.strip() for u in text.split(",") if u.strip())


@dataclasses.dataclass(frozen=True)
class AdmissionSettings:
    kubeconfig: str = setting("", help="kubeconfig path (empty: $KUBECONFIG, ~/.kube/config, else in-cluster)",
                              metavar="PATH")
    context: str = setting("", help="kubeconfig context (empty: the current one)")
    bind_address: str = setting("127.0.0.1", help="address the HTTPS webhook and the probe ports listen on "
                                "(0.0.0.0 in a pod)")
    port: int = setting(9443, help="HTTPS port the API server calls (0: any free one, logged)")
    tls_cert_file: str = setting("", help="PEM certificate (chain) the webhook serves; re-read when it changes "
                                 "(cert-manager renewals)", metavar="PATH")
    tls_key_file: str = setting("", help="PEM private key of --tls-cert-file", metavar="PATH")
    health_port: int = setting(8085, help="HTTP /healthz /readyz and /metrics port (0: off)")
    node_identities: str = setting("", help="comma-separated usernames held to their own node (the publisher's and "
                                   "the remediation agent's service accounts)", metavar="USERS")
    node_writers: str = setting("", help="comma-separated usernames whose Node updates may touch only the cordon, "
                                "the taint and nvsentinel.nvidia.com/ keys (quarantine, resolution)", metavar="USERS")
    breaker_writer: str = setting("", help="username that may write only --breaker-configmap (quarantine)",
                                  metavar="USER")
    breaker_configmap: str = setting("nvsentinel-circuit-breaker", help="the breaker's ConfigMap", metavar="NAME")
    job_creator: str = setting("", help="username that may create only reboot Jobs of the template "
                               "(remediation)", metavar="USER")
    reboot_image: str = setting("", help="the reboot Job image the remediation stage is configured with (its "
                                "--reboot-image; empty: its default)", metavar="IMAGE")
    reboot_command: str = setting("", help="the reboot Job command the remediation stage is configured with (its "
                                  "--reboot-command; empty: its default)", metavar="CMD")
    taint_key: str = setting(TAINT_KEY, help="the quarantine taint key")
    condition_writer: str = setting("", help="username whose Node status updates may change only conditions of "
                                    "--condition-types (the conditions stage)", metavar="USER")
    condition_types: str = setting("NVSentinelGPUHealthy", help="comma-separated Node condition types the conditions "
                                   "stage writes (AcceleratedHardwareReady too when its mirror is on)",
                                   metavar="TYPES")
    max_clock_skew: float = setting(60.0, help="seconds a node's spec.detectedAt may run ahead of the object's "
                                    "creation time")
    require_gpu_on_healthy: bool = setting(True, help="a healthy HealthEvent from a node must name its GPU")
    log_format: str = setting("plain", help="plain, full or json")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")

    def validate(self) -> None:
        check_logging(self.log_format, self.log_level)
        for flag, port in (("--port", self.port), ("--health-port", self.health_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{flag} must be a TCP port (0-65535), got {port}")
        if not self.tls_cert_file or not self.tls_key_file:
            raise ValueError("--tls-cert-file and --tls-key-file are required: the API server calls webhooks "
                             "over HTTPS only")
        if not 0 <= self.max_clock_skew <= 86400:
            raise ValueError(f"--max-clock-skew must be between 0 and 86400 seconds, got {self.max_clock_skew}")
        try:
            shlex.split(self.reboot_command)
        except ValueError as exc:
            raise ValueError(f"--reboot-command: {exc}") from None

    def rules(self, default_reboot_image: str, default_reboot_argv: tuple[str, ...]) -> AdmissionRules:
        """The rules; the reboot Job defaults are the remediation stage's (passed in: stages stay independent)."""
        argv = tuple(shlex.split(self.reboot_command)) if self.reboot_command.strip() else default_reboot_argv
        return AdmissionRules(
            node_identities=_users(self.node_identities), node_writers=_users(self.node_writers),
            breaker_writer=self.breaker_writer.strip(), breaker_configmap=self.breaker_configmap,
            job_creator=self.job_creator.strip(), reboot_image=self.reboot_image.strip() or default_reboot_image,
            reboot_command=argv,
            taint_key=self.taint_key, condition_writer=self.condition_writer.strip(),
            condition_types=_users(self.condition_types), max_clock_skew=_dt.timedelta(seconds=self.max_clock_skew),
            require_gpu_on_healthy=self.require_gpu_on_healthy)
