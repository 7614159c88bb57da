"""Kubernetes label selectors, parsed once and matched in memory (the API server's own grammar).

The controllers' informers hand selectors to the server; the remediation-mode rules must match a Node already in the
cache, so the same grammar is read here: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, joined by
commas. An empty selector matches everything.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

__all__ = ["Requirement", "Selector", "parse_selector"]

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_SET = re.compile(r"^(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


@dataclasses.dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str
    """in, notin, exists, !exists"""
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values


@dataclasses.dataclass(frozen=True, slots=True)
class Selector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _split(text: str) -> list[str]:
    """Split on the commas outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ')'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError("unbalanced '('")
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _key(key: str) -> str:
    if not _KEY.match(key) or len(key) > 317:
        raise ValueError(f"{key!r} is not a label key")
    return key


def _value(value: str) -> str:
    if not _VALUE.match(value):
        raise ValueError(f"{value!r} is not a label value")
    return value


def _requirement(part: str) -> Requirement:
    m = _SET.match(part)
    if m:
        values = frozenset(_value(v.strip()) for v in m["values"].split(","))
        if not m["values"].strip():
            raise ValueError(f"{m['op']} needs at least one value")
        return Requirement(_key(m["key"]), m["op"], values)
    for op, name in (("!=", "notin"), ("==", "in"), ("=", "in")):
        if op in part:
            key, _, value = part.partition(op)
            return Requirement(_key(key.strip()), name, frozenset({_value(value.strip())}))
    if part.startswith("!"):
        return Requirement(_key(part[1:].strip()), "!exists")
    return Requirement(_key(part), "exists")


def parse_selector(text: str) -> Selector:
    """The selector `text` means; ValueError naming the bad part otherwise."""
    text = text.strip()
    if not text:
        return Selector("", ())
    reqs = []
    for part in _split(text):
        if not part:
            raise ValueError(f"empty requirement in selector {text!r}")
        try:
            reqs.append(_requirement(part))
        except ValueError as exc:
            raise ValueError(f"selector {text!r}: {exc}") from None
    return Selector(text, tuple(reqs))
