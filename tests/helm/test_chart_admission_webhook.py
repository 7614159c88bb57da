"""The chart's admission webhook: rendered where the API server has no ValidatingAdmissionPolicy, with a
certificate the API server will accept for the Service, the identities of this release, and tokens that expire.

(That the webhook really refuses each attack on a real API server: tests/k8s/test_admission.py.)
"""
from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from helmchart import Helm, by_kind

VAP = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"


def flags(c: dict[str, Any]) -> dict[str, str]:
    return dict(a[2:].partition("=")[::2] for a in c["args"])


def webhook_kinds(objs: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objs if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "admission"}


def test_auto_renders_the_webhook_only_where_the_policy_is_not_served(helm: Helm) -> None:
    old = helm.render(kube_version="1.20.2")
    assert webhook_kinds(old) >= {"Deployment", "Service", "Secret", "ValidatingWebhookConfiguration",
                                  "ServiceAccount", "Role", "RoleBinding"}
    new = webhook_kinds(helm.render(kube_version="1.31.0", api_versions=[VAP]))
    assert "ValidatingWebhookConfiguration" not in new
    assert "Deployment" in new, "the node view runs on every version"
    both = helm.render(sets=["admission.mode=both"], kube_version="1.31.0", api_versions=[VAP])
    assert "ValidatingWebhookConfiguration" in webhook_kinds(both)
    assert "ValidatingWebhookConfiguration" not in webhook_kinds(helm.render(sets=["admission.mode=off"],
                                                                             kube_version="1.20.2"))
    assert not webhook_kinds(helm.render(sets=["admission.mode=off", "admission.nodeView=false"],
                                         kube_version="1.20.2"))


def test_the_agent_reads_through_the_node_view_with_its_ca(helm: Helm) -> None:
    objs = helm.render(kube_version="1.20.2")
    spec = by_kind(objs, "DaemonSet")["nvs-remediation-agent"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    f = flags(c)
    assert f["healthevents-server"] == "https://nvs-admission.nvsentinel.svc:443"
    assert f["healthevents-ca-file"] == "/etc/nvsentinel/node-view/ca.crt"
    (vol,) = [v for v in spec["volumes"] if v["name"] == "node-view-ca"]
    assert vol["secret"] == {"secretName": "nvs-admission-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert "nvs-admission-tls" in by_kind(objs, "Secret")
    off = by_kind(helm.render(sets=["admission.nodeView=false"]), "DaemonSet")["nvs-remediation-agent"]
    assert "healthevents-server" not in flags(off["spec"]["template"]["spec"]["containers"][0])


def test_the_certificate_is_for_the_service_and_signed_by_the_ca_bundle(helm: Helm) -> None:
    objs = helm.render(kube_version="1.20.2")
    secret = by_kind(objs, "Secret")["nvs-admission-tls"]
    (vwc,) = by_kind(objs, "ValidatingWebhookConfiguration").values()
    for hook in vwc["webhooks"]:
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        assert hook["clientConfig"]["service"] == {"name": "nvs-admission", "namespace": "nvsentinel",
                                                   "path": "/validate", "port": 443}
        assert hook["sideEffects"] == "None" and "matchConditions" not in hook  # 1.20: no matchConditions
    with tempfile.TemporaryDirectory() as d:
        ca, crt = Path(d, "ca.pem"), Path(d, "tls.pem")
        ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
        crt.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(crt)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
        text = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-text"], capture_output=True,
                              text=True, check=True).stdout
        assert "DNS:nvs-admission.nvsentinel.svc" in text


def test_failure_policies_and_rules(helm: Helm) -> None:
    (vwc,) = by_kind(helm.render(kube_version="1.20.2"), "ValidatingWebhookConfiguration").values()
    hooks = {h["name"]: h for h in vwc["webhooks"]}
    events = hooks["healthevents.admission.nvsentinel.nvidia.com"]
    assert events["failurePolicy"] == "Fail"
    # creates only: the stages' status writes and the TTL's deletes never wait on the webhook
    assert events["rules"] == [{"apiGroups": ["nvsentinel.nvidia.com"], "apiVersions": ["*"],
                                "resources": ["healthevents"], "operations": ["CREATE"], "scope": "Cluster"}]
    stages = hooks["stages.admission.nvsentinel.nvidia.com"]
    assert stages["failurePolicy"] == "Ignore"
    assert {(tuple(r["resources"]), tuple(r["operations"])) for r in stages["rules"]} == {
        (("nodes",), ("UPDATE",)), (("nodes/status",), ("UPDATE",)), (("configmaps",), ("CREATE", "UPDATE", "DELETE")),
        (("jobs",), ("CREATE",))}


def test_from_1_28_the_webhook_sees_only_our_identities(helm: Helm) -> None:
    (vwc,) = by_kind(helm.render(sets=["admission.mode=webhook"], kube_version="1.29.0"),
                     "ValidatingWebhookConfiguration").values()
    conds = {h["name"]: h["matchConditions"][0]["expression"] for h in vwc["webhooks"]}
    assert conds["healthevents.admission.nvsentinel.nvidia.com"] == (
        "request.userInfo.username in ['system:serviceaccount:nvsentinel:nvs-publisher', "
        "'system:serviceaccount:nvsentinel:nvs-remediation-agent']")
    assert "nvs-quarantine-controller" in conds["stages.admission.nvsentinel.nvidia.com"]
    assert "nvs-conditions-controller" in conds["stages.admission.nvsentinel.nvidia.com"]


def test_the_webhook_holds_exactly_the_chart_identities(helm: Helm) -> None:
    objs = helm.render(kube_version="1.20.2")
    (c,) = by_kind(objs, "Deployment")["nvs-admission"]["spec"]["template"]["spec"]["containers"]
    f = flags(c)
    sa = "system:serviceaccount:nvsentinel:nvs-"
    assert f["node-identities"] == f"{sa}publisher,{sa}remediation-agent"
    assert f["node-writers"] == f"{sa}quarantine-controller,{sa}resolution-controller"
    assert f["breaker-writer"] == f"{sa}quarantine-controller" and f["breaker-configmap"] == "nvs-circuit-breaker"
    assert f["job-creator"] == f"{sa}remediation-controller"
    assert f["condition-writer"] == f"{sa}conditions-controller"
    assert f["condition-types"] == "NVSentinelGPUHealthy", "the mirror is off by default"
    mirrored = by_kind(helm.render(sets=["controllers.conditions.mirror=external"], kube_version="1.20.2"),
                       "Deployment")["nvs-admission"]["spec"]["template"]["spec"]["containers"][0]
    assert flags(mirrored)["condition-types"] == "NVSentinelGPUHealthy,AcceleratedHardwareReady"
    remediation = flags(by_kind(objs, "Deployment")["nvs-remediation-controller"]["spec"]["template"]["spec"]
                        ["containers"][0])
    assert (f["reboot-image"], f["reboot-command"]) == (remediation["reboot-image"], remediation["reboot-command"])
    for name in ("nvs-publisher", "nvs-remediation-agent", "nvs-quarantine-controller", "nvs-resolution-controller",
                 "nvs-remediation-controller", "nvs-conditions-controller"):
        assert name in by_kind(objs, "ServiceAccount")


def test_cert_manager_replaces_the_generated_certificate(helm: Helm) -> None:
    objs = helm.render(sets=["admission.webhook.certManager.enabled=true"], kube_version="1.20.2")
    assert "nvs-admission-tls" not in by_kind(objs, "Secret")
    cert = by_kind(objs, "Certificate")["nvs-admission"]
    assert cert["spec"]["secretName"] == "nvs-admission-tls"
    assert cert["spec"]["issuerRef"] == {"kind": "Issuer", "name": "nvs-admission"}
    (vwc,) = by_kind(objs, "ValidatingWebhookConfiguration").values()
    assert vwc["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "nvsentinel/nvs-admission"}
    assert all("caBundle" not in h["clientConfig"] for h in vwc["webhooks"])


def test_tokens_expire_in_an_hour_and_3607_is_refused(helm: Helm) -> None:
    objs = helm.render()
    node = by_kind(objs, "DaemonSet")["nvs-node"]["spec"]["template"]["spec"]
    agent = by_kind(objs, "DaemonSet")["nvs-remediation-agent"]["spec"]["template"]["spec"]
    for spec, volume in ((node, "publisher-token"), (agent, "agent-token")):
        (vol,) = [v for v in spec["volumes"] if v["name"] == volume]
        assert vol["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 3600
    for key in ("node.publisher.tokenExpirationSeconds", "remediationAgent.tokenExpirationSeconds"):
        proc = helm.template(sets=[f"{key}=3607"], check=False)
        assert proc.returncode != 0 and "tokenExpirationSeconds" in proc.stderr


def test_the_reboot_job_runs_our_own_image_pinned_by_digest(helm: Helm) -> None:
    digest = "sha256:" + "ab" * 32
    objs = helm.render(sets=[f"image.digest={digest}"])
    remediation = flags(by_kind(objs, "Deployment")["nvs-remediation-controller"]["spec"]["template"]["spec"]
                        ["containers"][0])
    assert remediation["reboot-image"].startswith("nvsentinel:") and remediation["reboot-image"].endswith(f"@{digest}")
    assert helm.template(sets=["image.digest=latest"], check=False).returncode != 0
