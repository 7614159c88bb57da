"""The fake libnvidia-ml: run the real pynvml against a fake GPU node, and inject faults into it.

FOR TESTS AND DEMOS ONLY. The library (built from csrc/fake_nvml/, see docs/fake-nvml.md) answers
the NVML calls the NVML provider makes, for a topology of 8x "NVIDIA H100 80GB HBM3" by default,
and delivers XID, ECC and GPU-lost faults, recovery actions, hangs and board swaps that any process
can inject.

Contract:
- Nothing loads the fake implicitly. `load()` is the only way in; a daemon calls it only when its
  flag or environment variable explicitly asks, and `load()` logs a loud WARNING.
- `load()` must run before pynvml loads a library (the first `pynvml.nvmlInit()`); it preloads the
  fake by path with RTLD_GLOBAL, and its SONAME ``libnvidia-ml.so.1`` makes pynvml's own
  ``CDLL("libnvidia-ml.so.1")`` resolve to it (SPEC §5). A process holds one NVML library for life.
- `FaultInjector` works from any process: each command is one line appended to the control file
  with a single ``O_APPEND`` write, applied by the library at its next NVML call (a blocked
  ``nvmlEventSetWait`` looks every 5 ms).

This module imports neither pynvml nor anything that does.
"""
from __future__ import annotations

import atexit
import ctypes
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nvsentinel.node.nvml.library import NvmlLibraryError, NvmlLoader
from nvsentinel.node.nvml.reset import DEFAULT_RESET_COMMAND, ResetError, Resetter
from nvsentinel.node.nvml.reset import make_resetter as make_command_resetter

__all__ = [
    "FakeResetter",
    "make_resetter",
    "load_library",
    "nvml_loader",
    "TOPOLOGY_ENV",
    "CONTROL_ENV",
    "SONAME",
    "FakeNvml",
    "FaultInjector",
    "library_path",
    "default_control_path",
    "load",
    "loaded",
    "RECOVERY_ACTIONS",
    "replacement_uuid",
    "replacement_serial",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the JSON topology file (read by the library at nvmlInit).
TOPOLOGY_ENV = "NVSENTINEL_FAKE_NVML_TOPOLOGY"
#: Environment variable naming the control file (read here and by the library).
CONTROL_ENV = "NVSENTINEL_FAKE_NVML_CONTROL"
#: The name pynvml loads; the fake carries it as its SONAME.
SONAME = "libnvidia-ml.so.1"

_FILE = ("_fake_nvml", "libnvidia-ml-fake.so")  # where setup.py's build_ext puts it
_IDENTITY = b"nvsentinel-fake-nvml/1"
_UUID = re.compile(r"GPU-[0-9A-Fa-f-]+")
_SERIAL = re.compile(r"[0-9A-Za-z-]{1,29}")
_HANG_MAX_S = 3600
_U64 = (1 << 64) - 1

#: NVML_GPU_RECOVERY_ACTION_* by name, as the `recovery-action` command spells them.
RECOVERY_ACTIONS: Mapping[str, int] = {
    "NONE": 0,
    "GPU_RESET": 1,
    "NODE_REBOOT": 2,
    "DRAIN_P2P": 3,
    "DRAIN_AND_RESET": 4,
    "RECOVER_IMEX_DOMAIN": 5,
    "BUS_RESET": 6,
    "SYSTEM_REBOOT": 7,
}

#: A GPU for a fault: its index, its UUID ("GPU-..."), or "all".
Gpu = int | str

_lock = threading.Lock()
_loaded: FakeNvml | None = None


def library_path() -> Path:
    """The built fake library inside the installed package; FileNotFoundError if it was not built."""
    path = Path(__file__).resolve().parent.joinpath(*_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"the fake libnvidia-ml is not built: {path} is missing "
            "(it is built on Linux by `pip install .`, unless NVSENTINEL_NO_FAKE_NVML was set)"
        )
    return path


def default_control_path() -> Path:
    """$NVSENTINEL_FAKE_NVML_CONTROL, else a per-user file in the temp directory.

    Per user so two users of one machine never drive each other's fake GPUs.
    """
    env = os.environ.get(CONTROL_ENV)
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"nvsentinel-fake-nvml-{os.getuid()}.ctl"


@dataclasses.dataclass(frozen=True)
class FakeNvml:
    """The fake library loaded in this process (what `load()` returns)."""

    path: Path
    """The shared library that was preloaded."""
    topology: str
    """The topology file, or "built-in" (8x H100)."""
    control: Path
    """The control file the library reads and `injector()` writes."""
    cdll: ctypes.CDLL = dataclasses.field(repr=False, compare=False)

    def injector(self) -> FaultInjector:
        """A FaultInjector writing to this library's control file."""
        return FaultInjector(self.control)

    def last_error(self) -> str:
        """The library's last error message for this thread ("" if none), e.g. a bad topology."""
        return self.cdll.fakeNvmlLastError().decode(errors="replace")


def loaded() -> FakeNvml | None:
    """The fake loaded in this process by `load()`, or None."""
    return _loaded


def _declare(cdll: ctypes.CDLL) -> None:
    cdll.fakeNvmlIdentity.restype = ctypes.c_char_p
    cdll.fakeNvmlIdentity.argtypes = []
    cdll.fakeNvmlConfigure.restype = ctypes.c_int
    cdll.fakeNvmlConfigure.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    cdll.fakeNvmlInject.restype = ctypes.c_int
    cdll.fakeNvmlInject.argtypes = [ctypes.c_char_p]
    cdll.fakeNvmlLastError.restype = ctypes.c_char_p
    cdll.fakeNvmlLastError.argtypes = []


def _is_fake(cdll: ctypes.CDLL) -> bool:
    try:
        identity = cdll.fakeNvmlIdentity
    except AttributeError:
        return False
    identity.restype = ctypes.c_char_p
    return identity() == _IDENTITY


def _topology_file(topology: str | os.PathLike[str] | Mapping[str, Any] | None) -> str | None:
    """A path for the library: None defers to $NVSENTINEL_FAKE_NVML_TOPOLOGY at nvmlInit."""
    if topology is None:
        return None
    if isinstance(topology, Mapping):
        # the library reads the file at every first nvmlInit, so it lives until the process exits
        fd, name = tempfile.mkstemp(prefix="nvsentinel-fake-nvml-topology-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(topology, fh)
        atexit.register(_unlink_quietly, name)
        return name
    return os.fspath(topology)


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def load(
    topology: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    control: str | os.PathLike[str] | None = None,
) -> FakeNvml:
    """Preload the fake libnvidia-ml so the unmodified pynvml uses it; call before pynvml's nvmlInit.

    `topology`: a JSON topology file, a mapping with the same content, or None for
    $NVSENTINEL_FAKE_NVML_TOPOLOGY (unset: the built-in 8x H100). `control`: the control file, or
    None for `default_control_path()`. Both take effect at the next nvmlInit that finds NVML
    uninitialised; calling `load()` again only changes them. A bad topology file is reported by
    nvmlInit (NVMLError_Unknown, one line on stderr, `FakeNvml.last_error()`).

    Raises FileNotFoundError when the fake was not built, and RuntimeError when pynvml, or anything
    else, already loaded another libnvidia-ml.so.1 into this process.
    """
    global _loaded
    with _lock:
        if _loaded is None:
            pynvml = sys.modules.get("pynvml")
            if pynvml is not None and getattr(pynvml, "nvmlLib", None) is not None:
                raise RuntimeError(
                    "pynvml already loaded a libnvidia-ml in this process: "
                    "call nvsentinel.devtools.fake_nvml.load() before the first pynvml.nvmlInit()"
                )
            path = library_path()
            cdll = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            _declare(cdll)
            # what pynvml will get: the SONAME must resolve to the library just loaded
            if not _is_fake(ctypes.CDLL(SONAME)):
                raise RuntimeError(
                    f"another {SONAME} was loaded into this process before the fake; "
                    "the fake must be the first NVML library a process loads"
                )
        else:
            path, cdll = _loaded.path, _loaded.cdll
        topology_file = _topology_file(topology)
        control_path = Path(control) if control is not None else default_control_path()
        rc = cdll.fakeNvmlConfigure(
            None if topology_file is None else os.fsencode(topology_file), os.fsencode(control_path)
        )
        if rc != 0:
            raise ValueError(f"fake NVML configuration refused: {cdll.fakeNvmlLastError().decode()}")
        shown = topology_file or os.environ.get(TOPOLOGY_ENV) or "built-in"
        _loaded = FakeNvml(path=path, topology=shown, control=control_path, cdll=cdll)
    logger.warning(
        "FAKE NVML IN USE: pynvml will talk to nvsentinel's fake libnvidia-ml, not a GPU driver "
        "(tests and demos only)",
        extra={"kv": {"library": str(path), "topology": shown, "control": str(control_path)}},
    )
    return _loaded


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & _U64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return state, z ^ (z >> 31)


def _fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for b in text.encode().lower():  # ASCII case folding, as the library does
        h = ((h ^ b) * 0x100000001B3) & _U64
    return h


def replacement_uuid(old_uuid: str) -> str:
    """The UUID the library gives the board swapped in for `old_uuid` by `replace` without a UUID.

    Mirrors csrc/fake_nvml/topology.c (FNV-1a of the old UUID, case-folded, seeding splitmix64), so
    a test can predict the new identity.
    """
    state, hi = _splitmix64(_fnv1a(old_uuid))
    _, lo = _splitmix64(state)
    return f"GPU-{hi >> 32:08x}-{(hi >> 16) & 0xFFFF:04x}-{hi & 0xFFFF:04x}-{lo >> 48:04x}-{lo & 0xFFFFFFFFFFFF:012x}"


def replacement_serial(old_serial: str) -> str:
    """The serial the library gives the board swapped in for one with `old_serial` (13 digits)."""
    _, z = _splitmix64(_fnv1a(old_serial))
    return str(1000000000000 + z % 9000000000000)


def _recovery_action(action: int | str) -> str:
    if isinstance(action, bool):
        raise TypeError("a recovery action is a name or an integer, not a bool")
    if isinstance(action, int):
        if not 0 <= action <= 0xFFFFFFFF:
            raise ValueError(f"recovery action must be in 0..4294967295, got {action}")
        return str(action)
    if isinstance(action, str) and action.upper() in RECOVERY_ACTIONS:
        return action.upper()
    raise ValueError(f"recovery action must be one of {', '.join(RECOVERY_ACTIONS)} or 0..4294967295, got {action!r}")


def _seconds(seconds: float) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"hang seconds must be a number, got {seconds!r}")
    if not 0 <= seconds <= _HANG_MAX_S:  # NaN fails this too
        raise ValueError(f"hang seconds must be in 0..{_HANG_MAX_S} (0 ends a hang), got {seconds!r}")
    if isinstance(seconds, int):
        return str(seconds)
    return f"{seconds:.6f}".rstrip("0").rstrip(".")  # plain decimal, no exponent: what the library parses


def _target(gpu: Gpu) -> str:
    if isinstance(gpu, bool):
        raise TypeError("gpu must be an index, a GPU-... UUID or 'all', not a bool")
    if isinstance(gpu, int):
        if gpu < 0:
            raise ValueError(f"gpu index must be >= 0, got {gpu}")
        return str(gpu)
    if gpu in ("all", "*"):
        return "*"
    if isinstance(gpu, str) and _UUID.fullmatch(gpu):
        return gpu
    raise ValueError(f"gpu must be an index, a GPU-... UUID or 'all', got {gpu!r}")


class FaultInjector:
    """Inject faults into the fake GPUs: from any process through the control file, or in process.

    The writer does not know the reader's topology: a command naming a GPU the library does not
    have is reported on the library's stderr and ignored. Faults aimed at a lost GPU are dropped
    (a GPU off the bus raises nothing) until `recover` or `reset`.
    """

    def __init__(self, control: str | os.PathLike[str] | None = None) -> None:
        self.control = Path(control) if control is not None else default_control_path()
        self._cdll: ctypes.CDLL | None = None

    @classmethod
    def in_process(cls) -> FaultInjector:
        """An injector applying each command at once in this process's fake (after nvmlInit).

        Raises RuntimeError if `load()` was not called.
        """
        fake = loaded()
        if fake is None:
            raise RuntimeError("the fake NVML is not loaded in this process (call fake_nvml.load())")
        injector = cls(fake.control)
        injector._cdll = fake.cdll
        return injector

    def __repr__(self) -> str:
        where = "in-process" if self._cdll is not None else str(self.control)
        return f"FaultInjector({where})"

    def send(self, command: str) -> str:
        """Send one raw command line (docs/fake-nvml.md, "Control channel"); returns it."""
        if "\n" in command or "\0" in command:
            raise ValueError("a command is one line")
        if self._cdll is not None:
            if self._cdll.fakeNvmlInject(command.encode()) != 0:
                raise ValueError(f"fake NVML refused {command!r}: {self._cdll.fakeNvmlLastError().decode()}")
            return command
        data = (command + "\n").encode()
        # O_APPEND + one write: concurrent writers never interleave, the reader never sees half a
        # line. O_NOFOLLOW: a planted symlink in a shared temp dir cannot redirect the write.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.control, flags, 0o600)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {self.control}")
        finally:
            os.close(fd)
        return command

    def inject_xid(self, gpu: Gpu, xid: int) -> str:
        """An XID critical error event (eventData = xid) on `gpu`."""
        if isinstance(xid, bool) or not isinstance(xid, int) or not 1 <= xid <= 0xFFFFFFFF:
            raise ValueError(f"xid must be an integer in 1..4294967295, got {xid!r}")
        return self.send(f"xid {_target(gpu)} {xid}")

    def inject_ecc(self, gpu: Gpu, double_bit: bool = True) -> str:
        """A double-bit (uncorrectable) or single-bit ECC error event on `gpu`."""
        return self.send(f"{'dbe' if double_bit else 'sbe'} {_target(gpu)}")

    def inject_event(self, gpu: Gpu, event_type: int, data: int = 0) -> str:
        """Any one NVML event type bit (e.g. 0x8000, GPU recovery action) with its eventData."""
        return self.send(f"event {_target(gpu)} {int(event_type):#x} {int(data)}")

    def lose(self, gpu: Gpu) -> str:
        """The GPU falls off the bus: its calls and event waits answer GPU_IS_LOST."""
        return self.send(f"lose {_target(gpu)}")

    def recover(self, gpu: Gpu) -> str:
        """The GPU is reachable again; events queued behind the loss are delivered."""
        return self.send(f"recover {_target(gpu)}")

    def reset(self, gpu: Gpu) -> str:
        """A GPU reset: reachable again, recovery action NONE, and its undelivered events discarded."""
        return self.send(f"reset {_target(gpu)}")

    def recovery_action(self, gpu: Gpu, name_or_value: int | str) -> str:
        """The driver's recommended recovery action changes (field 230, plus its event where registered).

        A NAME of `RECOVERY_ACTIONS` (any case) or any 32-bit value, so unknown actions can be tested.
        """
        return self.send(f"recovery-action {_target(gpu)} {_recovery_action(name_or_value)}")

    def hang(self, gpu: Gpu, seconds: float) -> str:
        """Calls naming the GPU block for `seconds` from when the library reads this (0 ends a hang)."""
        return self.send(f"hang {_target(gpu)} {_seconds(seconds)}")

    def replace(self, gpu: Gpu, uuid: str | None = None, serial: str | None = None) -> str:
        """The board in the slot is swapped: a new UUID and serial (given, or `replacement_uuid()` /
        `replacement_serial()` of the old ones), same index, PCI bus id and name, clean state."""
        words = ["replace", _target(gpu)]
        if uuid is not None and not (isinstance(uuid, str) and _UUID.fullmatch(uuid)):
            raise ValueError(f"uuid must look like GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, got {uuid!r}")
        if serial is not None and not (isinstance(serial, str) and _SERIAL.fullmatch(serial)):
            raise ValueError(f"serial must be 1 to 29 letters, digits or dashes, got {serial!r}")
        if (uuid is not None or serial is not None) and words[1] == "*":
            raise ValueError("a replacement with a given uuid or serial names one GPU, not all")
        if uuid is not None or serial is not None:
            words.append(uuid if uuid is not None else "-")
        if serial is not None:
            words.append(serial)
        return self.send(" ".join(words))


# ---- the provider's wiring (`--fake-nvml`) ----

class FakeResetter:
    """Resets a GPU of the fake libnvidia-ml loaded in this process (tests and demos)."""

    description = "fake NVML: fakeNvmlResetGpu(index)"

    def __init__(self, fake: FakeNvml) -> None:
        self._fake = fake
        self._reset = fake.cdll.fakeNvmlResetGpu
        self._reset.argtypes = [ctypes.c_uint]
        self._reset.restype = ctypes.c_int

    def reset(self, index: int, uuid: str) -> None:
        if self._reset(index) != 0:
            raise ResetError(f"fakeNvmlResetGpu({index}) failed: {self._fake.last_error() or 'no reason given'}")


def make_resetter(template: str) -> Resetter | None:
    """The resetter of a provider on the fake: None when resets are disabled (an empty template).

    With the fake loaded, the default template resets the fake GPU, since there is no nvidia-smi to
    run; any other template is run as given, so a demo or a test can still drive a command (a
    failing one, say) against the fake.
    """
    fake = loaded()
    if fake is not None and template.strip() == DEFAULT_RESET_COMMAND:
        return FakeResetter(fake)
    return make_command_resetter(template)


def load_library(topology: str = "", control: str = "") -> str:
    """`load()` for a provider: a description for its log, or NvmlLibraryError with one line."""
    try:
        fake = load(topology=topology or None, control=control or None)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise NvmlLibraryError(f"cannot load the fake NVML: {exc}") from None
    return f"fake:{fake.path}"


def nvml_loader(topology: str, control: str, reset_command: str) -> NvmlLoader:
    """What a daemon's `--fake-nvml` hands its NVML provider instead of `NvmlLoader.real`."""
    return NvmlLoader(lambda: load_library(topology, control), lambda: make_resetter(reset_command))
