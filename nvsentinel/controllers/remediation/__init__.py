"""The remediation stage: Drained → Remediating → Remediated (reboot Job, terminate, gpu-reset, manual)."""
from nvsentinel.controllers.remediation.config import RemediationConfig
from nvsentinel.controllers.remediation.controller import RemediationController

__all__ = ["RemediationConfig", "RemediationController"]
