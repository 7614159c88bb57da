"""`helm lint --strict` passes with the defaults and with every optional feature on; the chart's
metadata follows the package (appVersion = pyproject version)."""
from __future__ import annotations

import tomllib

import yaml
from helmchart import ALL_FEATURES, CHART, CONTROLLERS, REPO, Helm


def test_lint_strict_defaults(helm: Helm) -> None:
    out = helm.lint().stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


def test_lint_strict_every_optional_feature(helm: Helm) -> None:
    out = helm.lint(ALL_FEATURES).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


def test_lint_strict_with_everything_off(helm: Helm) -> None:
    """The chart still lints when only the controllers' shared parts are left."""
    off = {"node": {"enabled": False}, "remediationAgent": {"enabled": False},
           "metrics": {"service": {"enabled": False}}, "admission": {"mode": "off"},
           "controllers": {n: {"enabled": False} for n in CONTROLLERS}}
    assert "0 chart(s) failed" in helm.lint(off).stdout
    kinds = {o["kind"] for o in helm.render(off)}
    assert kinds == {"ConfigMap"}, "the policy ConfigMap is all that is left"


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


def test_image_defaults_to_the_app_version(rendered: list) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    images = {c["image"] for o in rendered if o["kind"] in ("DaemonSet", "Deployment")
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {f"nvsentinel:{chart['appVersion']}"}, "one image, several entry points"
