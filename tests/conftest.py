"""Shared fixtures: every core test runs against both implementations (compiled and twin)."""
from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from types import ModuleType

import pytest

# Child Pythons (`python -m nvsentinel ...` in tests) must import the installed package, never the
# source tree in the working directory, which has no compiled modules in a non-editable install.
os.environ["PYTHONSAFEPATH"] = "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="deselect the tests of the compiled implementation",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--no-c-extensions"):
        return
    kept = [i for i in items if "c_extension" not in i.keywords]
    deselected = [i for i in items if "c_extension" in i.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation family: tag "c" loads nvsentinel._<name>_c, tag "py" nvsentinel._<name>_py."""

    is_pure_python: bool

    @property
    def tag(self) -> str:
        return "py" if self.is_pure_python else "c"

    def load(self, name: str) -> ModuleType:
        return importlib.import_module(f"nvsentinel._{name}_{self.tag}")

    def __str__(self) -> str:
        return self.tag


IMPLS = [
    pytest.param(Impl(is_pure_python=False), id="c", marks=pytest.mark.c_extension),
    pytest.param(Impl(is_pure_python=True), id="py"),
]


@pytest.fixture(scope="session", params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Impl:
    return request.param


@pytest.fixture(autouse=True)
def _no_leftover_threads():
    """Fail a test that leaves non-daemon threads running behind it."""
    before = set(threading.enumerate())
    yield
    leftover = [
        t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
    ]
    for t in leftover:
        t.join(timeout=5)
    still = [t.name for t in leftover if t.is_alive()]
    assert not still, f"test left threads running: {still}"
