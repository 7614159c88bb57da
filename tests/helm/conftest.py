"""The helm binary for the chart tests (fetched once by tools/get-helm.sh; never skipped)."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from helmchart import ALL_FEATURES, Helm


@pytest.fixture(scope="session")
def helm() -> Iterator[Helm]:
    h = Helm.create()
    try:
        yield h
    finally:
        shutil.rmtree(h.home, ignore_errors=True)


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> list[dict[str, Any]]:
    """The chart with its defaults, release `nvs` in namespace `nvsentinel`."""
    return helm.render()


@pytest.fixture(scope="session")
def rendered_all(helm: Helm) -> list[dict[str, Any]]:
    """The chart with every optional feature on (helmchart.ALL_FEATURES)."""
    return helm.render(ALL_FEATURES)
