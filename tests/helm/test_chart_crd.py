"""The chart ships the package's HealthEvent CRD, unchanged, in crds/ (installed before the
templates, never templated, left in place by `helm uninstall`)."""
from __future__ import annotations

from typing import Any

import yaml
from helmchart import CHART, REPO, Helm

PACKAGED = REPO / "nvsentinel" / "data" / "crds" / "healthevents.nvsentinel.nvidia.com.yaml"


def test_chart_crd_is_the_package_crd() -> None:
    files = sorted(p.name for p in (CHART / "crds").iterdir())
    assert files == [PACKAGED.name]
    assert (CHART / "crds" / PACKAGED.name).read_bytes() == PACKAGED.read_bytes()


def test_helm_renders_the_crd_only_from_crds_dir(helm: Helm, rendered: list[dict[str, Any]]) -> None:
    assert not [o for o in rendered if o["kind"] == "CustomResourceDefinition"], "not a template"
    with_crds = helm.render(include_crds=True)
    (crd,) = [o for o in with_crds if o["kind"] == "CustomResourceDefinition"]
    assert crd == yaml.safe_load(PACKAGED.read_text())
