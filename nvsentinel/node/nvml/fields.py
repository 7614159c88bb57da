"""The NVML reads behind health as a level and the GPU's spec: the recovery action (field 230,
NVML_FI_DEV_GET_GPU_RECOVERY_ACTION) and the board serial. Each runs on the GPU's worker thread
(`calls.GpuCaller`); `nvml` is the pynvml module."""
from __future__ import annotations

from typing import Any, Final

__all__ = ["RECOVERY_ACTION_FIELD", "FunctionMissing", "read_recovery_action", "read_serial", "not_supported"]

#: nvml.h NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (drivers from R570); pynvml names it when new enough.
RECOVERY_ACTION_FIELD: Final = 230


class FunctionMissing(RuntimeError):
    """The pynvml in use has no binding for the call (older than the field or function)."""


def not_supported(nvml: Any, exc: BaseException) -> bool:
    """The driver does not have it: NOT_SUPPORTED, a library without the function, or no binding."""
    kinds = tuple(getattr(nvml, n) for n in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound") if hasattr(nvml, n))
    return isinstance(exc, (FunctionMissing, *kinds))


def read_recovery_action(nvml: Any, handle: Any) -> int:
    """The GPU's recovery action (an NVML_GPU_RECOVERY_ACTION_* value, or one nvsentinel does not know).

    The call can succeed while the field fails: each value carries its own return code, raised
    here as the matching NVMLError (NOT_SUPPORTED on a driver that predates the field)."""
    field = getattr(nvml, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", RECOVERY_ACTION_FIELD)
    get = getattr(nvml, "nvmlDeviceGetFieldValues", None)
    if get is None:
        raise FunctionMissing("nvmlDeviceGetFieldValues")
    values = get(handle, [field])
    value = values[0]
    if value.nvmlReturn != nvml.NVML_SUCCESS:
        raise nvml.NVMLError(value.nvmlReturn)
    return int(value.value.uiVal)


def read_serial(nvml: Any, handle: Any) -> str:
    """The board serial; "" where NVML does not give one (consumer boards, an older library)."""
    get = getattr(nvml, "nvmlDeviceGetSerial", None)
    if get is None:
        return ""
    try:
        serial = get(handle)
    except nvml.NVMLError as exc:
        if not_supported(nvml, exc):
            return ""
        raise
    return serial.decode(errors="replace") if isinstance(serial, bytes) else str(serial)
