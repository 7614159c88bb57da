"""docs/architecture.md stays true: every function its walk names exists, and its rooms are the tree's."""
from __future__ import annotations

import importlib
import pathlib
import re

import pytest

import nvsentinel

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
PKG = pathlib.Path(nvsentinel.__file__).resolve().parent
#: `node.kmsg.monitor.KmsgMonitor.step`, `policy.conditions.decide`, `xid.Decoder.feed`, ...
NAME = re.compile(r"`((?:node|cluster|k8s|policy|service|cli|devtools|xid|store|fanout)(?:\.\w+)+)`")


def walk_names() -> list[str]:
    walk = DOC.split("## One XID", 1)[1].split("## Where to add", 1)[0]
    return sorted(set(NAME.findall(walk)))


def resolve(dotted: str) -> object:
    """The object a dotted name below `nvsentinel` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module("nvsentinel." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_walk_names_enough_steps():
    """Verify the walk names functions in every room it passes through."""
    names = walk_names()
    assert len(names) >= 30, names
    assert {n.split(".")[0] for n in names} >= {"node", "cluster", "k8s", "policy", "xid", "store"}


@pytest.mark.parametrize("dotted", walk_names())
def test_every_function_the_walk_names_exists(dotted):
    """Verify each `room.module.Name.attr` of the XID walk resolves in the installed package."""
    assert resolve(dotted) is not None


def test_the_layout_table_names_every_room():
    """Verify each subpackage of nvsentinel has a row (or is the generated `_proto`)."""
    rooms = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()} - {"_proto"}
    table = DOC.split("## The layout", 1)[1].split("The contracts", 1)[0]
    for room in rooms:
        assert f"| `{room}/`" in table or f"| `{room}/` (installed" in table, room
