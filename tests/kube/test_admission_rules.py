"""The webhook's rules (nvsentinel/policy/admission.py) decide every case of the shared table exactly as the chart's
ValidatingAdmissionPolicy does (tests/helm/admission_cases.py; the CEL side: tests/helm/test_chart_admission_policy.py).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helm"))
from admission_cases import CASES, DEFAULT, Setup, build_cases, user_of  # noqa: E402

from nvsentinel.policy.admission import AdmissionRules, review  # noqa: E402

KINDS = {"healthevents": ("nvsentinel.nvidia.com", "v1alpha1"), "nodes": ("", "v1"), "configmaps": ("", "v1"),
         "jobs": ("batch", "v1"), "nodes/status": ("", "v1")}
#: a later "now" than any case's creation: N6 must measure against creationTimestamp, not the webhook's clock
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def rules_for(s: Setup) -> AdmissionRules:
    return AdmissionRules(
        node_identities=frozenset({user_of(s, "publisher"), user_of(s, "remediation-agent")}),
        node_writers=frozenset({user_of(s, "quarantine-controller"), user_of(s, "resolution-controller")}),
        breaker_writer=user_of(s, "quarantine-controller"), breaker_configmap=s.breaker_configmap,
        job_creator=user_of(s, "remediation-controller"), reboot_image=s.reboot_image,
        reboot_command=tuple(shlex.split(s.reboot_command)), taint_key=s.taint_key,
        max_clock_skew=dt.timedelta(seconds=s.max_clock_skew_seconds), require_gpu_on_healthy=s.require_gpu_on_healthy,
        condition_writer=user_of(s, "conditions-controller"),
        condition_types=frozenset({"NVSentinelGPUHealthy"} | ({"AcceleratedHardwareReady"} if s.mirror != "off"
                                                              else set())))


def request(case: dict[str, Any]) -> dict[str, Any]:
    group, version = KINDS[case["kind"]]
    resource, _, sub = case["kind"].partition("/")
    obj = case["object"] or case["old_object"] or {}
    return {"uid": "u", "operation": case["operation"], "userInfo": {"username": case["user"]},
            "resource": {"group": group, "version": version, "resource": resource}, "subResource": sub,
            "name": (obj.get("metadata") or {}).get("name"), "object": case["object"], "oldObject": case["old_object"]}


def check(case: dict[str, Any], rules: AdmissionRules) -> None:
    verdict = review(request(case), case["node_claim"], NOW, rules)
    assert verdict.allowed is (case["expect"] == "allow"), f"{case['name']}: {verdict}"
    assert (verdict.rule or None) == case["rule"], f"{case['name']}: {verdict}"
    assert "\n" not in verdict.message


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_webhook_decides_every_case_as_the_policy_does(case: dict[str, Any]) -> None:
    check(case, rules_for(DEFAULT))


OTHER_RELEASE = dataclasses.replace(DEFAULT, namespace="gpu-ops", prefix="gpu-health", reboot_image="r.io/tools:2",
                                    reboot_command="/bin/sh -c 'echo b > /proc/sysrq-trigger'",
                                    taint_key="example.com/gpu-broken", max_clock_skew_seconds=5,
                                    require_gpu_on_healthy=False)
OTHER_CASES = build_cases(OTHER_RELEASE)


@pytest.mark.parametrize("case", OTHER_CASES, ids=[c["name"] for c in OTHER_CASES])
def test_and_for_another_release(case: dict[str, Any]) -> None:
    check(case, rules_for(OTHER_RELEASE))


def test_denial_messages_bound_what_an_attacker_sent() -> None:
    (case,) = [c for c in CASES if c["rule"] == "N2" and c["object"] and c["node_claim"]][:1]
    case = {**case, "object": {**case["object"], "spec": {**case["object"]["spec"],
                                                          "nodeName": "\x1b[31m" + "x" * 100_000}}}
    verdict = review(request(case), case["node_claim"], NOW, rules_for(DEFAULT))
    assert not verdict.allowed and len(verdict.message) < 300 and "\x1b" not in verdict.message
