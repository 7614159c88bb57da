"""Settings of the remediation controller: a documented dataclass the `controllers` command turns into flags."""
from __future__ import annotations

import dataclasses
import shlex

from nvsentinel.service.settings import setting

__all__ = ["RemediationConfig"]

DEFAULT_REBOOT_COMMAND = "nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl reboot"


@dataclasses.dataclass(frozen=True)
class RemediationConfig:
    reboot_image: str = setting("busybox:1.36", help="image of the privileged reboot Job (needs nsenter)",
                                metavar="IMAGE")
    reboot_command: str = setting(DEFAULT_REBOOT_COMMAND, help="the reboot Job's command, run with the host's "
                                  "PID namespace (split like a shell would)", metavar="CMD")
    reboot_job_deadline: int = setting(600, help="activeDeadlineSeconds of a reboot Job: past it the Job fails")
    remediation_max_attempts: int = setting(3, help="reboot Jobs tried per HealthEvent before a human is "
                                            "asked for (RemediationFailed)")
    remediation_backoff: float = setting(30.0, help="seconds after a failed reboot Job before the next "
                                         "attempt; doubles per attempt")
    gpu_reset_timeout: float = setting(300.0, help="seconds the node agent has to reset and re-verify a GPU "
                                       "before a human is asked for (RemediationFailed)")
    escalation_threshold: int = setting(3, help="a node/GPU already remediated this many times within "
                                        "--escalation-window goes to a human instead (CONTACT_SUPPORT); 0: never")
    escalation_window: float = setting(86400.0, help="seconds the escalation count looks back")
    max_event_age: float = setting(86400.0, help="seconds: a fatal event observed longer ago than this (its "
                                   "detectedAt, at most creation + 60 s) when its remediation would start is "
                                   "quarantined and drained but not remediated without fresh evidence "
                                   "(StaleEvidence); 0: off")
    remediation_poll: float = setting(5.0, help="seconds between re-checks while a remediation runs (Job and "
                                      "HealthEvent changes wake it sooner)")
    # no flags of their own: `nvsentinel controllers` passes its --namespace (where reboot Jobs run)
    # and the chain's --node-selector / --event-selector
    namespace: str = "nvsentinel"
    node_selector: str = ""
    event_selector: str = ""

    @property
    def reboot_argv(self) -> list[str]:
        return shlex.split(self.reboot_command)

    def validate(self) -> None:
        if not self.reboot_image.strip():
            raise ValueError("--reboot-image must not be empty")
        try:
            argv = shlex.split(self.reboot_command)
        except ValueError as exc:
            raise ValueError(f"--reboot-command: {exc}") from None
        if not argv:
            raise ValueError("--reboot-command must not be empty")
        if not 1 <= self.reboot_job_deadline <= 86400:
            raise ValueError(f"--reboot-job-deadline must be 1..86400 seconds, got {self.reboot_job_deadline}")
        if not 1 <= self.remediation_max_attempts <= 20:
            raise ValueError(f"--remediation-max-attempts must be 1..20, got {self.remediation_max_attempts}")
        for name in ("remediation_backoff", "remediation_poll"):
            value = getattr(self, name)
            if not 0.01 <= value <= 86400:
                raise ValueError(f"--{name.replace('_', '-')} must be 0.01..86400 seconds, got {value}")
        if not 1 <= self.gpu_reset_timeout <= 86400:
            raise ValueError(f"--gpu-reset-timeout must be 1..86400 seconds, got {self.gpu_reset_timeout}")
        if not 0 <= self.max_event_age <= 365 * 86400:
            raise ValueError(f"--max-event-age must be 0..31536000 seconds (0: off), got {self.max_event_age}")
        if not 0 <= self.escalation_threshold <= 1000:
            raise ValueError(f"--escalation-threshold must be 0..1000, got {self.escalation_threshold}")
        if not 1 <= self.escalation_window <= 365 * 86400:
            raise ValueError(f"--escalation-window must be 1..31536000 seconds, got {self.escalation_window}")
