"""The one XID table: NVIDIA's XID catalog plus an optional site override file.

Part of the XID core: the decoder classifies every event with it, so it sits beside the decoder
and is exported by the `nvsentinel.xid` facade (import it from there).

Every detection path (NVML provider, kernel-log monitor, publisher) classifies through
`classify()` / `Catalog.classify()`, so they cannot disagree (upstream kept three lists that did).
Pure policy: no I/O except reading the catalog and an override file when asked; no clock reads.

Rules (SPEC §2.3, data/README):

- The catalog ships as package data (`nvsentinel/data/xid-catalog.csv`, 172 XIDs) and is read with
  `importlib.resources`; `recommended_action` is the action, and fatal ⇔ action ≠ NONE.
- An XID not in the catalog → CONTACT_SUPPORT (like asyncpg's unknown-error fallback class).
- XID 154 takes its action from the line: the new recovery action's name (table
  `RECOVERY_ACTION_NAMES`; unknown names are matched on meaning), else its code.
- NVLink5 XIDs 144–150 printed with a sub-code: the printed severity decides (Nonfatal → NONE,
  otherwise the catalog action); a site override may name a sub-code (`145.RLW_SRC_TRACK`).
- Fallen off the bus → RESTART_BM (always fatal); a failed `GPU reset executed` → CONTACT_SUPPORT;
  a successful one is a recovery signal (NONE, not fatal).
- NVSwitch SXids: Fatal → CONTACT_SUPPORT, otherwise NONE.
- A site override (JSON, format in docs/xid.md) may change any error code's action or fatality,
  mark it ignored, or add XIDs the catalog lacks. An override beats every rule above.
"""
from __future__ import annotations

import csv
import enum
import functools
import importlib.resources
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

logger = logging.getLogger(__name__)

__all__ = [
    "Action",
    "CatalogEntry",
    "Classification",
    "Override",
    "Catalog",
    "RECOVERY_ACTION_NAMES",
    "RECOVERY_ACTION_CODES",
    "NVLINK5_XIDS",
    "recovery_action_to_action",
    "read_catalog_csv",
    "parse_overrides",
    "load_overrides",
    "default_catalog",
    "load_catalog",
    "classify",
]


class Action(enum.StrEnum):
    """Recommended actions: upstream's enum (a str, so it compares and serialises as its name)."""

    NONE = "NONE"
    COMPONENT_RESET = "COMPONENT_RESET"
    CONTACT_SUPPORT = "CONTACT_SUPPORT"
    RUN_FIELDDIAG = "RUN_FIELDDIAG"
    RESTART_VM = "RESTART_VM"
    RESTART_BM = "RESTART_BM"
    REPLACE_VM = "REPLACE_VM"
    RUN_DCGMEUD = "RUN_DCGMEUD"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One row of NVIDIA's catalog (or an XID a site override added)."""

    xid: int
    mnemonic: str
    description: str
    catalog_action: str
    """NVIDIA's "Resolution Bucket (Immediate Action)" as printed (may be empty)."""
    action: Action
    """What nvsentinel emits for this XID (the bucket mapped as upstream maps it)."""
    applies_to: tuple[str, ...] = ()
    """GPU families the catalog marks: a subset of ("A100", "H100", "B100", "GB200")."""

    @property
    def fatal(self) -> bool:
        return self.action is not Action.NONE


@dataclass(frozen=True, slots=True)
class Classification:
    """What an event means and what to do about it. Invariant: fatal ⇔ action ≠ NONE."""

    action: Action
    fatal: bool
    mnemonic: str
    ignored: bool = False
    """A site override said to ignore it: action NONE, never acted on."""
    source: str = "catalog"
    """Which rule decided: `catalog`, `default` (unknown XID), `line` (XID 154, NVLink5 or SXid
    severity), `rule` (fixed rules: fallen off the bus, GPU reset, PCI mapping) or `override`."""


@dataclass(frozen=True, slots=True)
class Override:
    """One site override entry (see `parse_overrides`)."""

    action: Action | None = None
    fatal: bool | None = None
    """Without `action`: False → NONE; True → keep a fatal action, or CONTACT_SUPPORT."""
    ignore: bool = False
    mnemonic: str | None = None
    description: str | None = None
    reason: str = ""


#: XID 154: the new recovery action's printed name (lower-case, single spaces) → action. The one
#: place these names live. Names seen in public driver logs; unknown names fall to meaning rules.
RECOVERY_ACTION_NAMES: Final[Mapping[str, Action]] = {
    "none": Action.NONE,
    "gpu reset required": Action.COMPONENT_RESET,
    "drain and reset": Action.COMPONENT_RESET,
    "pf flr": Action.COMPONENT_RESET,  # PCIe function-level reset of the GPU: a GPU reset
    "node reboot required": Action.RESTART_BM,
    "os reboot": Action.RESTART_BM,  # newer drivers' wording of a node reboot
    "drain p2p": Action.CONTACT_SUPPORT,  # not a reset or a reboot: a human decides
}

#: XID 154 codes (NVML's nvmlGpuRecoveryAction_t), used only when the line prints no usable name.
RECOVERY_ACTION_CODES: Final[Mapping[int, Action]] = {
    0: Action.NONE,
    1: Action.COMPONENT_RESET,
    2: Action.RESTART_BM,
    3: Action.CONTACT_SUPPORT,
    4: Action.COMPONENT_RESET,
}

NVLINK5_XIDS: Final = range(144, 151)

_BUCKET_ALIASES: Final[Mapping[str, Action]] = {
    "RESTART_APP": Action.NONE,
    "IGNORE": Action.NONE,
    "XID_154_EVAL": Action.NONE,
    "WORKFLOW_XID_48": Action.COMPONENT_RESET,
    "RESET_GPU": Action.COMPONENT_RESET,
    "RESET_FABRIC": Action.COMPONENT_RESET,
}
_FAMILIES: Final = ("a100", "h100", "b100", "gb200")
_OVERRIDE_KEY = re.compile(
    r"\d{1,6}|\d{1,6}\.[A-Za-z0-9_]{1,64}|SXID\.\d{1,6}|GPU_FALLEN_OFF_BUS|GPU_RESET"
)
_OVERRIDE_FIELDS: Final = frozenset({"action", "fatal", "ignore", "mnemonic", "description", "reason"})
_CACHE_LIMIT: Final = 4096
_KINDS: Final = frozenset({"xid", "sxid", "fallen_off_bus", "pci_mapping", "gpu_reset"})


def recovery_action_to_action(name: str, code: int | None = None) -> Action:
    """Map an XID 154 new recovery action to an action, matching on meaning.

    The printed name wins: a known name from `RECOVERY_ACTION_NAMES`; else a name that mentions a
    reboot → RESTART_BM, a reset or FLR → COMPONENT_RESET, anything else → CONTACT_SUPPORT. Only
    when no name was printed does the code decide (`RECOVERY_ACTION_CODES`, else CONTACT_SUPPORT).
    """
    key = " ".join(name.lower().split())
    if key:
        known = RECOVERY_ACTION_NAMES.get(key)
        if known is not None:
            return known
        if "reboot" in key:
            return Action.RESTART_BM
        if "reset" in key or "flr" in key:
            return Action.COMPONENT_RESET
        return Action.CONTACT_SUPPORT
    if code is not None:
        return RECOVERY_ACTION_CODES.get(code, Action.CONTACT_SUPPORT)
    return Action.CONTACT_SUPPORT


def _bucket_to_action(bucket: str) -> Action:
    bucket = bucket.strip()
    if bucket in Action.__members__:
        return Action(bucket)
    return _BUCKET_ALIASES.get(bucket, Action.CONTACT_SUPPORT)


def read_catalog_csv(text: str) -> dict[int, CatalogEntry]:
    """Parse the catalog CSV (columns documented in data/README). Raises ValueError on a bad row."""
    entries: dict[int, CatalogEntry] = {}
    for lineno, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            xid = int(row["xid"])
            action_text = row["recommended_action"].strip()
            action = Action(action_text) if action_text else _bucket_to_action(row["catalog_action"])
            fatal = row["fatal"].strip().lower() == "true"
        except (KeyError, ValueError, AttributeError) as exc:
            raise ValueError(f"xid-catalog.csv line {lineno}: {exc}") from exc
        if fatal != (action is not Action.NONE):
            raise ValueError(f"xid-catalog.csv line {lineno}: fatal={fatal} contradicts action {action}")
        applies = tuple(f.upper() for f in _FAMILIES if (row.get(f) or "").strip().lower() == "true")
        entries[xid] = CatalogEntry(
            xid=xid,
            mnemonic=row["mnemonic"].strip(),
            description=(row.get("description") or "").strip(),
            catalog_action=row["catalog_action"].strip(),
            action=action,
            applies_to=applies,
        )
    return entries


def parse_overrides(doc: Mapping[str, Any]) -> dict[str, Override]:
    """Validate an override document (the parsed JSON) and return error code → Override.

    Format: `{"version": 1, "overrides": {"<error code>": {...}}}` where the error code is an XID
    (`"13"`), an NVLink5 sub-code (`"145.RLW_SRC_TRACK"`), an NVSwitch SXid (`"SXID.24007"`),
    `"GPU_FALLEN_OFF_BUS"` or `"GPU_RESET"`, and the entry has any of `action` (an `Action` name),
    `fatal` (bool), `ignore` (bool), `mnemonic`, `description`, `reason` (strings). Raises
    ValueError naming the bad field.
    """
    if not isinstance(doc, Mapping):
        raise ValueError("override file: top level must be an object")
    version = doc.get("version", 1)
    if version != 1:
        raise ValueError(f"override file: version must be 1, got {version!r}")
    unknown_top = set(doc) - {"version", "overrides"}
    if unknown_top:
        raise ValueError(f"override file: unknown keys {sorted(unknown_top)}")
    table = doc.get("overrides", {})
    if not isinstance(table, Mapping):
        raise ValueError("override file: 'overrides' must be an object")
    out: dict[str, Override] = {}
    for code, spec in table.items():
        where = f"override file: overrides[{code!r}]"
        if not isinstance(code, str) or not _OVERRIDE_KEY.fullmatch(code):
            raise ValueError(f"{where}: not an error code (XID, 145.SUBCODE, SXID.N, GPU_FALLEN_OFF_BUS)")
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: must be an object")
        unknown = set(spec) - _OVERRIDE_FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
        action: Action | None = None
        if "action" in spec:
            if spec["action"] not in Action.__members__:
                raise ValueError(f"{where}.action: {spec['action']!r} is not one of {list(Action.__members__)}")
            action = Action(spec["action"])
        fatal = spec.get("fatal")
        if fatal is not None and not isinstance(fatal, bool):
            raise ValueError(f"{where}.fatal: must be true or false")
        if action is not None and fatal is not None and fatal != (action is not Action.NONE):
            raise ValueError(f"{where}.fatal: {fatal} contradicts action {action} (fatal ⇔ action ≠ NONE)")
        ignore = spec.get("ignore", False)
        if not isinstance(ignore, bool):
            raise ValueError(f"{where}.ignore: must be true or false")
        texts: dict[str, str | None] = {}
        for field in ("mnemonic", "description", "reason"):
            value = spec.get(field)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{where}.{field}: must be a string")
            texts[field] = value
        out[code] = Override(
            action=action,
            fatal=fatal,
            ignore=ignore,
            mnemonic=texts["mnemonic"],
            description=texts["description"],
            reason=texts["reason"] or "",
        )
    return out


def load_overrides(path: str | os.PathLike[str]) -> dict[str, Override]:
    """Read and validate a JSON override file (see `parse_overrides`)."""
    with open(path, encoding="utf-8") as fh:
        try:
            doc = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"override file {os.fspath(path)}: not JSON: {exc}") from exc
    return parse_overrides(doc)


class Catalog:
    """The XID catalog with site overrides applied; immutable once built (safe to share).

    `classify` memoises its answers, so calling it per event is cheap.
    """

    __slots__ = ("_entries", "_overrides", "_cache")

    def __init__(
        self,
        entries: Mapping[int, CatalogEntry],
        overrides: Mapping[str, Override] | None = None,
    ) -> None:
        self._entries: dict[int, CatalogEntry] = dict(entries)
        self._overrides: dict[str, Override] = dict(overrides or {})
        self._cache: dict[tuple[Any, ...], Classification] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def overrides(self) -> Mapping[str, Override]:
        return dict(self._overrides)

    def with_overrides(self, overrides: Mapping[str, Override]) -> Catalog:
        """A new catalog with `overrides` layered over this one's (later keys win)."""
        return Catalog(self._entries, {**self._overrides, **overrides})

    def entry(self, xid: int) -> CatalogEntry | None:
        """The catalog row for `xid` with its XID-level override applied, or None if unknown."""
        base = self._entries.get(xid)
        ov = self._overrides.get(str(xid))
        if ov is None:
            return base
        if base is None:
            if ov.action is None and ov.mnemonic is None and ov.description is None and ov.fatal is None:
                return None
            base = CatalogEntry(xid, "UNKNOWN_XID", "", "", Action.CONTACT_SUPPORT)
        action = self.classify(xid).action
        return CatalogEntry(
            xid=xid,
            mnemonic=ov.mnemonic or base.mnemonic,
            description=ov.description if ov.description is not None else base.description,
            catalog_action=base.catalog_action,
            action=action,
            applies_to=base.applies_to,
        )

    def classify(
        self,
        xid: int | None = None,
        *,
        kind: str = "xid",
        error_code: str | None = None,
        recovery_action: str = "",
        recovery_code: int | None = None,
        severity: str = "",
        healthy: bool = False,
    ) -> Classification:
        """Classify one event; the single source of truth for what an XID means.

        `kind` is an event kind (`xid`, `sxid`, `fallen_off_bus`, `pci_mapping`, `gpu_reset`).
        For `xid`, `error_code` defaults to `str(xid)`; pass `145.RLW_SRC_TRACK` with
        `severity` for NVLink5, and `recovery_action` / `recovery_code` for XID 154. Raises
        ValueError for an unknown kind or an `xid` event without a number.
        """
        key = (kind, xid, error_code, recovery_action, recovery_code, severity, healthy)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = self._classify(kind, xid, error_code, recovery_action, recovery_code, severity, healthy)
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[key] = result
        return result

    def _classify(
        self,
        kind: str,
        xid: int | None,
        error_code: str | None,
        recovery_action: str,
        recovery_code: int | None,
        severity: str,
        healthy: bool,
    ) -> Classification:
        if kind not in _KINDS:
            raise ValueError(f"kind: unknown event kind {kind!r}")
        if kind == "xid":
            if xid is None:
                raise ValueError("xid: an xid event needs its number")
            code = error_code or str(xid)
            base = self._classify_xid(xid, code, recovery_action, recovery_code, severity)
        elif kind == "sxid":
            code = error_code or (f"SXID.{xid}" if xid is not None else "")
            action = Action.CONTACT_SUPPORT if severity == "fatal" else Action.NONE
            base = Classification(action, action is not Action.NONE, "NVSWITCH_SXID", source="line")
        elif kind == "fallen_off_bus":
            code = error_code or "GPU_FALLEN_OFF_BUS"
            base = Classification(Action.RESTART_BM, True, "GPU_FALLEN_OFF_BUS", source="rule")
        elif kind == "gpu_reset":
            code = error_code or "GPU_RESET"
            if healthy:
                base = Classification(Action.NONE, False, "GPU_RESET_EXECUTED", source="rule")
            else:
                base = Classification(Action.CONTACT_SUPPORT, True, "GPU_RESET_FAILED", source="rule")
        else:
            return Classification(Action.NONE, False, "PCI_MAPPING", source="rule")
        ov = self._overrides.get(code)
        if ov is None and kind == "xid" and "." in code:
            ov = self._overrides.get(str(xid))  # a sub-code falls back to its XID's override
        if ov is None:
            return base
        return _apply_override(base, ov)

    def _classify_xid(
        self, xid: int, code: str, recovery_action: str, recovery_code: int | None, severity: str
    ) -> Classification:
        entry = self._entries.get(xid)
        mnemonic = entry.mnemonic if entry is not None else "UNKNOWN_XID"
        if xid == 154:
            action = recovery_action_to_action(recovery_action, recovery_code)
            return Classification(action, action is not Action.NONE, mnemonic, source="line")
        if xid in NVLINK5_XIDS and "." in code:
            if severity == "nonfatal":
                action = Action.NONE
            else:
                action = entry.action if entry is not None else Action.CONTACT_SUPPORT
            return Classification(action, action is not Action.NONE, mnemonic, source="line")
        if entry is None:
            return Classification(Action.CONTACT_SUPPORT, True, mnemonic, source="default")
        return Classification(entry.action, entry.fatal, mnemonic, source="catalog")


def _apply_override(base: Classification, ov: Override) -> Classification:
    mnemonic = ov.mnemonic or base.mnemonic
    if ov.ignore:
        return Classification(Action.NONE, False, mnemonic, ignored=True, source="override")
    action = ov.action
    if action is None:
        if ov.fatal is False:
            action = Action.NONE
        elif ov.fatal is True:
            action = base.action if base.action is not Action.NONE else Action.CONTACT_SUPPORT
        else:
            action = base.action
    return Classification(action, action is not Action.NONE, mnemonic, source="override")


@functools.cache
def _package_entries() -> Mapping[int, CatalogEntry]:
    text = (importlib.resources.files("nvsentinel") / "data" / "xid-catalog.csv").read_text("utf-8")
    return read_catalog_csv(text)


@functools.cache
def default_catalog() -> Catalog:
    """NVIDIA's catalog as shipped in the package, without overrides (built once)."""
    return Catalog(_package_entries())


def load_catalog(
    overrides: str | os.PathLike[str] | Mapping[str, Override] | None = None,
    *,
    ignored_xids: Iterable[int] = (),
) -> Catalog:
    """The package catalog with a site override file (path) or table, plus XIDs to ignore.

    `ignored_xids` is the NVML provider's `--nvml-ignored-xids`; the override file wins for an XID
    that appears in both.
    """
    table: dict[str, Override] = {str(int(x)): Override(ignore=True) for x in ignored_xids}
    if overrides is not None:
        loaded = overrides if isinstance(overrides, Mapping) else load_overrides(overrides)
        table.update(loaded)
        logger.info("xid catalog overrides loaded", extra={"kv": {"entries": len(loaded)}})
    return Catalog(_package_entries(), table)


def classify(
    xid: int | None = None,
    *,
    kind: str = "xid",
    error_code: str | None = None,
    recovery_action: str = "",
    recovery_code: int | None = None,
    severity: str = "",
    healthy: bool = False,
    catalog: Catalog | None = None,
) -> Classification:
    """Classify with `catalog` (default: the package catalog). See `Catalog.classify`."""
    cat = catalog if catalog is not None else default_catalog()
    return cat.classify(
        xid,
        kind=kind,
        error_code=error_code,
        recovery_action=recovery_action,
        recovery_code=recovery_code,
        severity=severity,
        healthy=healthy,
    )
