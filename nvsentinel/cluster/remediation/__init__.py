"""The remediation stage: Drained → Remediating → Remediated (reboot Job, terminate, gpu-reset, manual)."""
from nvsentinel.cluster.remediation.config import RemediationConfig
from nvsentinel.cluster.remediation.controller import RemediationController

__all__ = ["RemediationConfig", "RemediationController"]
