"""Structured logging: one event per line, `plain` (key=value), `full` (with time/logger) or `json`.

Use `logger.info("watch evicted", extra={"kv": {"subscriber": 3, "lag": 300}})`: the `kv` mapping is
rendered as fields, never interpolated into the message.
"""
from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["configure_logging", "KeyValueFormatter", "JsonFormatter"]


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n') or not text.isprintable():
        return json.dumps(text)  # escapes control characters: a value cannot forge a line or a terminal sequence
    return text


class KeyValueFormatter(logging.Formatter):
    def __init__(self, full: bool = False) -> None:
        super().__init__()
        self.full = full

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.full:
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            parts.append(f"time={ts}.{int(record.msecs):03d}Z")
            parts.append(f"logger={record.name}")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"msg={_quote(record.getMessage())}")
        for key, value in getattr(record, "kv", {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "kv", {}))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(fmt: str = "plain", level: str | int = "INFO") -> None:
    """Install one stderr handler on the root logger; called once by the CLI and the daemons."""
    if fmt not in ("plain", "full", "json"):
        raise ValueError(f"log format must be plain, full or json, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter(full=fmt == "full"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
