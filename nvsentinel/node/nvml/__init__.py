"""The NVML provider: watches GPUs through pynvml and writes the `NvmlHealthy` condition to the
Device API (SPEC §3 condition contract, §5; docs/conditions.md). Never imports kubernetes."""
from __future__ import annotations

from nvsentinel.node.nvml.config import ENV_PREFIX, NvmlProviderSettings
from nvsentinel.policy.conditions import CONDITION_TYPE

__all__ = ["ENV_PREFIX", "NvmlProviderSettings", "CONDITION_TYPE"]
