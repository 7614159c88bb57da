"""Daemon settings: flags > environment > defaults, validated once at start.

A daemon declares its settings as a dataclass whose fields carry `setting(...)` metadata (flag,
help, unit). `add_arguments` turns them into argparse flags whose default is "not given";
`resolve` then takes, per field, the flag if given, else `<PREFIX><FIELD>` from the environment,
else the dataclass default, converts it to the field's type and runs the class's `validate()`.
Errors are `ValueError`s naming the flag and the environment variable, so the daemon can print
one clear line and exit 2.

Numbers are parsed strictly, once, here: integers are ASCII (Python's `int()` also takes other
scripts' digits and "1_0"), floats must be finite (an `inf` timeout or interval reaches code that
multiplies or sleeps on it), and permission modes (`setting(..., octal=True)`) are read as octal
("0660", "660" or "0o660") and shown that way in `--help`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from nvsentinel.service.sanitize import printable

__all__ = ["XID_OVERRIDES_ENV", "setting", "add_arguments", "resolve", "load_settings", "check_logging", "check_range", "env_name",
           "config_error", "SettingsError"]

T = TypeVar("T")
_UNSET: Any = object()


class SettingsError(ValueError):
    """A setting failed to parse or validate; the message names the flag and the env variable."""


#: The one environment variable for `--xid-overrides` in every daemon that classifies XIDs.
XID_OVERRIDES_ENV = "NVSENTINEL_XID_OVERRIDES"


def setting(default: Any, *, help: str, flag: str | None = None, metavar: str | None = None,
            octal: bool = False, env: str | None = None) -> Any:
    """A dataclass field for a daemon setting (`help` says the unit and why the default).

    `octal=True` (an int field holding permission bits): parsed and shown in octal. `env`: one
    environment variable every daemon shares for this setting (`NVSENTINEL_XID_OVERRIDES`), in
    place of the daemon's prefixed name, so one value in a pod reaches all its containers alike.
    """
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar,
                                                         "octal": octal, "env": env})


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def env_name(prefix: str, field: dataclasses.Field) -> str:
    return field.metadata.get("env") or prefix + field.name.upper()


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """Add one flag per field of `cls`; the help text names the env variable and the default."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        kind = hints[field.name]
        default = f"{field.default:#05o}".replace("0o", "0") if field.metadata.get("octal") else repr(field.default)
        text = f"{field.metadata['help']} [env {env_name(prefix, field)}; default {default}]"
        if kind is bool:
            parser.add_argument(_flag(field), dest=field.name, default=_UNSET,
                                action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(_flag(field), dest=field.name, default=_UNSET,
                                metavar=field.metadata.get("metavar"), help=text)


_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|[0-9]+)")
_OCTAL = re.compile(r"(?:0[oO])?[0-7]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _integer(text: str, octal: bool) -> int:
    if octal:
        if not _OCTAL.fullmatch(text):
            raise ValueError(f"expected an octal mode such as 0660, got {text!r}")
        return int(text.lower().removeprefix("0o"), 8)
    if not _INT.fullmatch(text):
        raise ValueError(f"expected an integer, got {text!r}")
    digits = text.lstrip("+-")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit() and digits.strip("0"):
        # "0660": decimal 660 or octal 0o660? Refused rather than guessed (only modes are octal)
        raise ValueError(f"expected an integer without a leading 0 (or 0o… for octal), got {text!r}")
    return int(text, 0)


def _float(text: str) -> float:
    if not _FLOAT.fullmatch(text):  # refuses inf, nan and non-ASCII digits alike
        raise ValueError(f"expected a finite number, got {text!r}")
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def _convert(kind: Any, raw: Any, where: str, octal: bool = False) -> Any:
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected true or false, got {raw!r}")
        if kind is int:
            return _integer(text, octal)
        if kind is float:
            return _float(text)
        if typing.get_origin(kind) is tuple:  # tuple[int, ...]: comma-separated
            item = typing.get_args(kind)[0]
            parse = {int: lambda p: _integer(p, False), float: _float}.get(item, item)
            return tuple(parse(p.strip()) for p in text.split(",") if p.strip())
        return raw
    except ValueError as exc:
        raise SettingsError(f"{where}: {printable(exc, 500)}") from None


def resolve(cls: type[T], args: argparse.Namespace | None, environ: Mapping[str, str] | None = None, *, prefix: str) -> T:
    """Build `cls` from flags > environment > defaults, then call its `validate()` if it has one."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        flag, env = _flag(field), env_name(prefix, field)
        given = getattr(args, field.name, _UNSET) if args is not None else _UNSET
        octal = bool(field.metadata.get("octal"))
        if given is not _UNSET:
            values[field.name] = _convert(hints[field.name], given, flag, octal)
        elif env in environ:
            values[field.name] = _convert(hints[field.name], environ[env], env, octal)
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        try:
            validate()
        except SettingsError:
            raise
        except ValueError as exc:
            raise SettingsError(printable(exc, 500)) from None
    return settings


def load_settings(cls: type[T], args: argparse.Namespace, *, prefix: str, prog: str) -> T | None:
    """Settings from flags > environment > defaults, then logging configured from them.

    On a bad setting, one line naming it goes to stderr and None comes back: the daemon exits 2.
    """
    from nvsentinel.service.logs import configure_logging

    try:
        settings = resolve(cls, args, prefix=prefix)
    except SettingsError as exc:
        config_error(prog, str(exc))
        return None
    configure_logging(settings.log_format, settings.log_level)  # type: ignore[attr-defined]
    return settings


def config_error(prog: str, message: str) -> int:
    """Say what is wrong with the configuration, on one line of stderr; returns 2, the exit status."""
    import sys

    print(f"{prog}: error: {printable(message, 500)}", file=sys.stderr)
    return 2


def check_range(flag: str, value: float, low: float, high: float, unit: str = "") -> None:
    """ValueError naming `flag` unless `low <= value <= high` (an upper bound keeps a typo from
    reaching a C library, a gRPC option or a sleep loop as an absurd number)."""
    if not low <= value <= high:
        def num(v: float) -> str:
            return str(v) if isinstance(v, int) else f"{v:g}"

        raise ValueError(f"{flag} must be between {num(low)} and {num(high)}{unit}, got {num(value)}")


def check_ports(**ports: int) -> None:
    """The probe and metrics ports every daemon takes, by setting name (`health_port=...`): 0..65535, 0 = a free
    one (ValueError naming the flag)."""
    for name, port in ports.items():
        if not 0 <= port <= 65535:
            raise ValueError(f"--{name.replace('_', '-')} must be 0..65535, got {port}")


def check_lease_timing(retry_period: float, renew_deadline: float, lease_duration: float) -> None:
    """Leader election's order (client-go's): a leader retries before its renewal deadline, which ends before
    another candidate may take the Lease."""
    if not 0 < retry_period < renew_deadline < lease_duration:
        raise ValueError("need 0 < --retry-period < --renew-deadline < --lease-duration, got "
                         f"{retry_period}, {renew_deadline}, {lease_duration}")


def check_logging(log_format: str, log_level: str) -> None:
    """The `--log-format` / `--log-level` check every daemon's settings share (ValueError naming the flag)."""
    if log_format not in ("plain", "full", "json"):
        raise ValueError(f"--log-format must be plain, full or json, got {log_format!r}")
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
