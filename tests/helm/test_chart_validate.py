"""The rendered chart is valid Kubernetes, checked offline against the OpenAPI schemas of
Kubernetes 1.28 and 1.32 with kubernetes-validate in strict mode (unknown fields are errors).

kubernetes-validate knows the built-in kinds only; the prometheus-operator kinds are checked by
name here, and everything is created for real (server-side) in tests/k8s/test_chart_install.py.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from helmchart import ALL_FEATURES, Helm

CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def _validate(objs: list[dict[str, Any]], version: str) -> set[tuple[str, str]]:
    """Validate every built-in object; the custom kinds met are returned."""
    custom = set()
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.add((obj["apiVersion"], obj["kind"]))
    return custom


@pytest.mark.parametrize("version", ["1.28.0", "1.32.0"])
@pytest.mark.parametrize("features", ["defaults", "all"])
def test_rendered_objects_validate_strictly(helm: Helm, version: str, features: str) -> None:
    objs = helm.render(ALL_FEATURES if features == "all" else None, kube_version=version, include_crds=True)
    kinds = {o["kind"] for o in objs}
    assert {"CustomResourceDefinition", "DaemonSet", "Deployment", "ServiceAccount", "ClusterRole",
            "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "Service", "PodDisruptionBudget"} <= kinds
    custom = _validate(objs, version)
    assert custom == (CUSTOM_KINDS if features == "all" else set())
    # policy/v1 where the server has it; the 1.20 fallback (policy/v1beta1) is proved by the install
    # into the test API server (tests/k8s/test_chart_install.py): `helm template` cannot unlearn an API
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert {p["apiVersion"] for p in pdbs} == {"policy/v1"}


def test_validation_is_live(rendered: list[dict[str, Any]]) -> None:
    """A control: the same check refuses an unknown field and a wrong type, so a pass means something."""
    (ds,) = [o for o in rendered if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "nvs-node"]
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.32.0", strict=True)
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8081"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.32.0", strict=True)



def test_kubernetes_validate_cli_accepts_the_rendered_file(helm: Helm, tmp_path: Path) -> None:
    """The same check as an operator would run it: `kubernetes-validate -k 1.32.0 --strict`."""
    out = tmp_path / "rendered.yaml"
    out.write_text(helm.template(kube_version="1.32.0").stdout)
    cli = Path(sys.executable).with_name("kubernetes-validate")
    proc = subprocess.run([str(cli), "-k", "1.32.0", "--strict", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("INFO") >= 40 and "ERROR" not in proc.stdout, proc.stdout
