"""Daemon settings: flags > environment > defaults, validated once at start.

A daemon declares its settings as a dataclass whose fields carry `setting(...)` metadata (flag,
help, unit). `add_arguments` turns them into argparse flags whose default is "not given";
`resolve` then takes, per field, the flag if given, else `<PREFIX><FIELD>` from the environment,
else the dataclass default, converts it to the field's type and runs the class's `validate()`.
Errors are `ValueError`s naming the flag and the environment variable, so the daemon can print
one clear line and exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["setting", "add_arguments", "resolve", "load_settings", "check_logging", "env_name", "SettingsError"]

T = TypeVar("T")
_UNSET: Any = object()


class SettingsError(ValueError):
    """A setting failed to parse or validate; the message names the flag and the env variable."""


def setting(default: Any, *, help: str, flag: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field for a daemon setting (`help` says the unit and why the default)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar})


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def env_name(prefix: str, field: dataclasses.Field) -> str:
    return prefix + field.name.upper()


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """Add one flag per field of `cls`; the help text names the env variable and the default."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        kind = hints[field.name]
        text = f"{field.metadata['help']} [env {env_name(prefix, field)}; default {field.default!r}]"
        if kind is bool:
            parser.add_argument(_flag(field), dest=field.name, default=_UNSET,
                                action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(_flag(field), dest=field.name, default=_UNSET,
                                metavar=field.metadata.get("metavar"), help=text)


def _convert(kind: Any, raw: Any, where: str) -> Any:
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
            return int(text, 0)
        if kind is float:
            return float(text)
        if typing.get_origin(kind) is tuple:  # tuple[int, ...]: comma-separated
            item = typing.get_args(kind)[0]
            return tuple(item(p.strip()) for p in text.split(",") if p.strip())
        return raw
    except ValueError as exc:
        raise SettingsError(f"{where}: {exc}") from None


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
        if given is not _UNSET:
            values[field.name] = _convert(hints[field.name], given, flag)
        elif env in environ:
            values[field.name] = _convert(hints[field.name], environ[env], env)
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        try:
            validate()
        except SettingsError:
            raise
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    return settings


def load_settings(cls: type[T], args: argparse.Namespace, *, prefix: str, prog: str) -> T | None:
    """Settings from flags > environment > defaults, then logging configured from them.

    On a bad setting, one line naming it goes to stderr and None comes back: the daemon exits 2.
    """
    import sys

    from nvsentinel.service.logs import configure_logging

    try:
        settings = resolve(cls, args, prefix=prefix)
    except SettingsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
    configure_logging(settings.log_format, settings.log_level)  # type: ignore[attr-defined]
    return settings


def check_logging(log_format: str, log_level: str) -> None:
    """The `--log-format` / `--log-level` check every daemon's settings share (ValueError naming the flag)."""
    if log_format not in ("plain", "full", "json"):
        raise ValueError(f"--log-format must be plain, full or json, got {log_format!r}")
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
