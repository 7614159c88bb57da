"""Untrusted text, made safe to echo: bounded in length, with no control or ANSI characters.

Anything a client, a CR author or a kernel log line controls (a GPU name, a condition message, a
resource version string, an error detail from a server) can reach an error message, a log line or
a terminal. Echoed raw it can be megabytes long, forge extra log lines (newlines) or drive the
reader's terminal (ANSI escape sequences: colours, cursor moves, hyperlinks, title changes). Every
echo point passes such text through `printable` first.

Pure functions of their input (no I/O), so the CLI's views may use them too.
"""
from __future__ import annotations

import re

__all__ = ["printable", "printable_lines", "DEFAULT_LIMIT"]

#: Characters kept from an echoed value by default: enough to recognise it, never a flood.
DEFAULT_LIMIT = 200

# ANSI/VT escape sequences as a terminal parses them: CSI (ESC [ ... final), OSC (ESC ] ... BEL or
# ESC \), the other ESC-introduced two-byte forms, and the 8-bit C1 introducers (CSI U+009B,
# OSC U+009D). Removed whole, so no stray "[31m" remains.
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
# What is left that is not printable: C0 controls, DEL, C1 controls, and the Unicode format and
# separator characters that reorder or hide text (bidi overrides, zero-width joiners, line and
# paragraph separators). Tabs and line breaks become spaces; the rest U+FFFD, so it shows.
_INVISIBLE = "\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
_CONTROL = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_INVISIBLE}]")
_SPACES = re.compile(r"[\t\n\r]")
_CONTROL_KEEP_NEWLINE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_INVISIBLE}]")


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def _clean(text: str, limit: int, control: re.Pattern[str], spaces: bool) -> str:
    total = len(text)
    if 0 < 4 * limit < total:  # never scan megabytes to show a few hundred characters
        text = text[: 4 * limit]
    text = control.sub("\ufffd", _ANSI.sub("", text))
    if spaces:
        text = _SPACES.sub(" ", text)
    if limit > 0 and (len(text) > limit or total > 4 * limit):
        return f"{text[:limit]}…({total} chars)"
    return text


def printable(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """`value` as one line of plain text: escape sequences removed, tabs and line breaks made
    spaces, every other control or invisible character shown as U+FFFD, then cut to `limit`
    characters followed by `…(N chars)`, N the original length (`limit` <= 0: no cut). Bytes are
    decoded as UTF-8 with replacement."""
    return _clean(_text(value), limit, _CONTROL, spaces=True)


def printable_lines(value: object, limit: int = 0) -> str:
    """Like `printable`, but newlines and tabs survive (a multi-line message stays multi-line);
    carriage returns and every other control character do not."""
    return _clean(_text(value), limit, _CONTROL_KEEP_NEWLINE, spaces=False)
