"""The chart's ValidatingAdmissionPolicies (templates/admission-policy.yaml), checked offline.

The test API server is Kubernetes 1.20, which serves no ValidatingAdmissionPolicy, so the policies are
proved here instead, in three ways:

* rendered by the real helm for admission.mode policy/both/auto (auto only with the capability), and
  validated strictly against the Kubernetes schemas of the first release with the v1 kind (1.30) and of
  the newest one kubernetes-validate ships;
* evaluated, matchConstraints, matchConditions, variables and validations, with a real CEL implementation
  (cel-python, `celpy`) against every case of admission_cases.py: allowed or denied, and by which rule,
  for the chart's defaults and for a changed release, namespace, taint, reboot image and command, skew
  and requireGpuOnHealthy;
* their identities are the chart's ServiceAccounts, and what they compare against (reboot image and
  command, taint key, breaker ConfigMap) is what the controllers are started with.

Where Kubernetes' CEL (cel-go) and cel-python could differ, the policies keep to what both evaluate alike,
and this evaluator follows Kubernetes:
* objects are untyped maps at admission (as in the API server, which hands the policy unstructured
  objects): has() on a map field tests the key, `in` tests a map key; nothing calls has() on anything else;
* times are RFC 3339 strings read with timestamp() (cel-go parses RFC 3339; celpy parses more leniently,
  so the cases use only RFC 3339: format_time's and the API server's);
* == compares values of the same type only (old cel-go errors on mixed types; newer returns false);
* string.substring is Kubernetes' strings library, not standard CEL: registered below with its semantics
  (code points, an error out of range); test_only_portable_functions keeps every other call standard;
* Kubernetes turns an expression error into failurePolicy (Fail: deny) and evaluates variables lazily;
  here every expression and variable is evaluated and must not error on any case, so no verdict rests
  on an error.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

import celpy
import kubernetes_validate
import pytest
from admission_cases import CASES, DEFAULT, NODE_NAME_CLAIM, RULE_ORDER, Setup, build_cases, user_of
from celpy import celtypes
from helmchart import Helm, HelmError, by_kind

VAP = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
POLICIES = ("node-healthevents", "stage-nodes", "breaker-configmap", "reboot-jobs", "node-conditions")
#: case kind → (API group, resource, subresource); a policy's resourceRules name a subresource as `nodes/status`
RESOURCES = {"healthevents": ("nvsentinel.nvidia.com", "healthevents", ""), "nodes": ("", "nodes", ""),
             "nodes/status": ("", "nodes", "status"), "configmaps": ("", "configmaps", ""),
             "jobs": ("batch", "jobs", "")}
RULE_ID = re.compile(r"^\[([NS]\d)\] ")

#: A release with every input of the rules changed; a reboot command that only a shell-like split gets right.
ALT = Setup(namespace="gpu-system", prefix="gpu-health", reboot_image="registry.example.com/tools:1",
            reboot_command="""sh -c 'echo "rebooting $(hostname)" >/dev/kmsg; exec systemctl reboot' -- \\ x""",
            taint_key="example.com/gpu-broken", max_clock_skew_seconds=5, require_gpu_on_healthy=False,
            mirror="external")
ALT_VALUES = {
    "fullnameOverride": ALT.prefix,
    "chain": {"taint": {"key": ALT.taint_key}},
    "controllers": {"remediation": {"rebootImage": ALT.reboot_image, "rebootCommand": ALT.reboot_command},
                    "conditions": {"mirror": ALT.mirror}},
    "admission": {"mode": "policy", "maxClockSkewSeconds": ALT.max_clock_skew_seconds,
                  "requireGpuOnHealthy": ALT.require_gpu_on_healthy},
}


# ---- a ValidatingAdmissionPolicy evaluator on celpy --------------------------------------------------------

def _substring(s: celtypes.StringType, start: celtypes.IntType, end: celtypes.IntType | None = None) -> Any:
    """Kubernetes' strings library `substring(start[, end])`: code points; out of range is an error."""
    stop = len(s) if end is None else int(end)
    if not 0 <= int(start) <= stop <= len(s):
        return celpy.CELEvalError(f"substring({start}, {end}) out of range for a string of {len(s)}")
    return celtypes.StringType(str(s)[int(start):stop])


ENV = celpy.Environment()
FUNCTIONS = {"substring": _substring}


class ExpressionError(AssertionError):
    pass


@dataclasses.dataclass
class Expr:
    text: str
    program: Any

    @classmethod
    def of(cls, text: str) -> Expr:
        return cls(text, ENV.program(ENV.compile(text), functions=FUNCTIONS))

    def __call__(self, activation: Mapping[str, Any]) -> Any:
        try:
            return self.program.evaluate(dict(activation))
        except celpy.CELEvalError as exc:
            raise ExpressionError(f"{self.text!r} failed: {exc}") from None


@dataclasses.dataclass
class Policy:
    name: str
    rules: list[Mapping[str, Any]]
    match: list[Expr]
    variables: list[tuple[str, Expr]]
    validations: list[tuple[Expr, str]]

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Policy:
        spec = obj["spec"]
        assert spec["failurePolicy"] == "Fail"
        return cls(obj["metadata"]["name"], spec["matchConstraints"]["resourceRules"],
                   [Expr.of(m["expression"]) for m in spec.get("matchConditions", ())],
                   [(v["name"], Expr.of(v["expression"])) for v in spec.get("variables", ())],
                   [(Expr.of(v["expression"]), v["message"]) for v in spec["validations"]])

    def covers(self, kind: str, operation: str) -> bool:
        group, resource, sub = RESOURCES[kind]
        name = f"{resource}/{sub}" if sub else resource
        return any(group in r["apiGroups"] and name in r["resources"] and operation in r["operations"]
                   for r in self.rules)

    def failing(self, activation: dict[str, Any]) -> list[int] | None:
        """Indexes of the failing validations; None when a matchCondition leaves the request alone."""
        for m in self.match:
            if not _bool(m, activation):
                return None
        values: dict[celtypes.StringType, Any] = {}
        for name, expr in self.variables:  # in order: a variable may read the ones before it
            values[celtypes.StringType(name)] = expr({**activation, "variables": celtypes.MapType(values)})
        activation = {**activation, "variables": celtypes.MapType(values)}
        return [i for i, (v, _) in enumerate(self.validations) if not _bool(v, activation)]


def _bool(expr: Expr, activation: Mapping[str, Any]) -> bool:
    out = expr(activation)
    assert isinstance(out, celtypes.BoolType), f"{expr.text!r} gave {out!r}, not a bool"
    return bool(out)


def request_of(case: Mapping[str, Any]) -> dict[str, Any]:
    """The admission request as a policy sees it (`request`); a bound token carries its pod and node."""
    group, resource, sub = RESOURCES[case["kind"]]
    meta = (case["object"] or case["old_object"] or {}).get("metadata") or {}
    user: dict[str, Any] = {"username": case["user"], "uid": "4f8d0e1c-1111-4222-8333-944455566677",
                            "groups": ["system:serviceaccounts", "system:authenticated"]}
    if case["node_claim"] is not None:
        user["extra"] = {"authentication.kubernetes.io/pod-name": ["nvs-node-x2x9k"],
                         "authentication.kubernetes.io/pod-uid": ["0c1d2e3f-aaaa-4bbb-8ccc-ddddeeeeffff"],
                         NODE_NAME_CLAIM: [case["node_claim"]]}
    return {"operation": case["operation"], "name": meta.get("name", ""), "namespace": meta.get("namespace", ""),
            "resource": {"group": group, "version": "v1", "resource": resource}, "subResource": sub,
            "userInfo": user, "dryRun": False}


@dataclasses.dataclass
class Verdict:
    failing: list[tuple[str, int, str]]  # (policy, validation index, message)

    @property
    def allowed(self) -> bool:
        return not self.failing

    @property
    def rules(self) -> set[str]:
        out = set()
        for _, _, message in self.failing:
            m = RULE_ID.match(message)
            assert m, f"message without a rule id: {message!r}"
            out.add(m.group(1))
        return out

    @property
    def rule(self) -> str | None:
        return min(self.rules, key=RULE_ORDER.index) if self.failing else None


def decide(policies: list[Policy], case: Mapping[str, Any]) -> Verdict:
    activation = {"object": celpy.json_to_cel(case["object"]), "oldObject": celpy.json_to_cel(case["old_object"]),
                  "request": celpy.json_to_cel(request_of(case)), "params": None}
    failing = []
    for p in policies:
        if p.covers(case["kind"], case["operation"]):
            for i in p.failing(activation) or ():
                failing.append((p.name, i, p.validations[i][1]))
    return Verdict(failing)


# ---- renders ----------------------------------------------------------------------------------------------------

def _admission_objects(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in KINDS]


@pytest.fixture(scope="module")
def rendered_policy(helm: Helm) -> list[dict[str, Any]]:
    return helm.render(sets=["admission.mode=policy"])


@pytest.fixture(scope="module")
def rendered_alt(helm: Helm) -> list[dict[str, Any]]:
    return helm.render(ALT_VALUES, release="gpu", namespace=ALT.namespace)


def _policies(objs: list[dict[str, Any]]) -> list[Policy]:
    return [Policy.of(o) for o in objs if o["kind"] == "ValidatingAdmissionPolicy"]


@pytest.fixture(scope="module")
def policies(rendered_policy: list[dict[str, Any]]) -> list[Policy]:
    return _policies(rendered_policy)


@pytest.fixture(scope="module")
def policies_alt(rendered_alt: list[dict[str, Any]]) -> list[Policy]:
    return _policies(rendered_alt)


# ---- when the chart renders them -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, capability, rendered", [
    ("auto", False, False), ("auto", True, True), ("policy", False, True), ("policy", True, True),
    ("both", False, True), ("webhook", True, False), ("off", True, False),
])
def test_policies_render_for_the_mode(helm: Helm, mode: str, capability: bool, rendered: bool) -> None:
    objs = helm.render(sets=[f"admission.mode={mode}"], api_versions=[VAP] if capability else [])
    names = {(o["kind"], o["metadata"]["name"]) for o in _admission_objects(objs)}
    want = {(k, f"nvs-{p}") for k in KINDS for p in POLICIES} if rendered else set()
    assert names == want


def test_default_mode_is_auto(helm: Helm) -> None:
    """Defaults: policies exactly where the server serves the kind."""
    assert not _admission_objects(helm.render())
    assert len(_admission_objects(helm.render(api_versions=[VAP]))) == 2 * len(POLICIES)


def test_each_policy_is_bound_to_deny(rendered_policy: list[dict[str, Any]]) -> None:
    policies = by_kind(rendered_policy, "ValidatingAdmissionPolicy")
    bindings = by_kind(rendered_policy, "ValidatingAdmissionPolicyBinding")
    assert set(policies) == set(bindings) == {f"nvs-{p}" for p in POLICIES}
    for name, b in bindings.items():
        assert b["spec"] == {"policyName": name, "validationActions": ["Deny"]}
        assert b["metadata"]["labels"]["app.kubernetes.io/component"] == "admission-policy"
    for p in policies.values():
        assert p["spec"]["failurePolicy"] == "Fail"
        for v in p["spec"]["validations"]:
            assert v["reason"] == "Forbidden" and RULE_ID.match(v["message"]), v
            # the API server refuses a message with a line break (kubernetes-validate's schema does not say so)
            assert "\n" not in v["message"], v


# ---- valid Kubernetes ---------------------------------------------------------------------------------------

NEWEST = kubernetes_validate.utils.latest_version()


@pytest.mark.parametrize("version", ["1.30.0", NEWEST])
@pytest.mark.parametrize("which", ["defaults", "alt"])
def test_policies_validate_strictly(rendered_policy: list[dict[str, Any]], rendered_alt: list[dict[str, Any]],
                                    version: str, which: str) -> None:
    objs = _admission_objects(rendered_policy if which == "defaults" else rendered_alt)
    assert len(objs) == 2 * len(POLICIES)
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)


def test_schema_validation_is_live(rendered_policy: list[dict[str, Any]]) -> None:
    """A control: the same check refuses a misspelt field and a wrong type in a policy and a binding."""
    vap = by_kind(rendered_policy, "ValidatingAdmissionPolicy")["nvs-node-healthevents"]
    bad = {**vap, "spec": {**vap["spec"], "validation": vap["spec"]["validations"]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, NEWEST, strict=True)
    binding = by_kind(rendered_policy, "ValidatingAdmissionPolicyBinding")["nvs-node-healthevents"]
    bad = {**binding, "spec": {**binding["spec"], "validationActions": "Deny"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, NEWEST, strict=True)


# ---- what they decide ---------------------------------------------------------------------------------------------

def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


def _check(policies: list[Policy], case: Mapping[str, Any]) -> Verdict:
    verdict = decide(policies, case)
    got = "allow" if verdict.allowed else "deny"
    assert (got, verdict.rule) == (case["expect"], case["rule"]), (
        f"{case['name']}: want {case['expect']} {case['rule'] or ''}, got {got} by "
        f"{[(p, RULE_ID.sub('', m)[:70]) for p, _, m in verdict.failing]}")
    return verdict


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_case_with_the_default_chart(policies: list[Policy], case: dict[str, Any]) -> None:
    _check(policies, case)


ALT_CASES = build_cases(ALT)


@pytest.mark.parametrize("case", ALT_CASES, ids=_ids(ALT_CASES))
def test_case_with_a_changed_release(policies_alt: list[Policy], case: dict[str, Any]) -> None:
    _check(policies_alt, case)


def test_the_cases_cover_every_rule_both_ways() -> None:
    denied = {c["rule"] for c in CASES if c["expect"] == "deny"}
    assert denied == set(RULE_ORDER)
    for kind in RESOURCES:
        assert {c["expect"] for c in CASES if c["kind"] == kind} == {"allow", "deny"}
    # the changed release turns N7 off: its healthy events naming no GPU are allowed there
    assert not any(c["rule"] == "N7" for c in ALT_CASES)
    # and turns the mirror on: AcceleratedHardwareReady is then the conditions stage's to write
    mirror = "the conditions stage writes the AcceleratedHardwareReady mirror"
    assert [c["expect"] for c in CASES if c["name"] == mirror] == ["deny"]
    assert [c["expect"] for c in ALT_CASES if c["name"] == mirror] == ["allow"]


def test_every_validation_alone_denies_some_case(policies: list[Policy]) -> None:
    """No validation is dead or only ever fails together with another: each is the sole reason somewhere."""
    alone = set()
    for case in CASES:
        v = decide(policies, case)
        if len(v.failing) == 1:
            alone.add(v.failing[0][:2])
    every = {(p.name, i) for p in policies for i in range(len(p.validations))}
    assert every - alone == set()


def test_a_bound_token_without_the_node_claim_is_denied(policies: list[Policy]) -> None:
    """A pod-bound token from a server before the node claim (pod-name and pod-uid only): N2, not an error."""
    case = next(c for c in CASES if c["name"] == "publisher creates a fatal event for its own node")
    request = request_of(case)
    del request["userInfo"]["extra"][NODE_NAME_CLAIM]
    request["userInfo"]["extra"]["authentication.kubernetes.io/node-name"] = []
    activation = {"object": celpy.json_to_cel(case["object"]), "oldObject": None,
                  "request": celpy.json_to_cel(request), "params": None}
    (policy,) = [p for p in policies if p.name == "nvs-node-healthevents"]
    failing = policy.failing(activation)
    assert failing is not None and [RULE_ID.match(policy.validations[i][1]).group(1) for i in failing] == ["N2"]
    del request["userInfo"]["extra"][NODE_NAME_CLAIM]
    activation["request"] = celpy.json_to_cel(request)
    assert [RULE_ID.match(policy.validations[i][1]).group(1) for i in policy.failing(activation)] == ["N2"]


# ---- the identities and values they name are the chart's ----------------------------------------------------------

def _usernames(policies: list[Policy]) -> dict[str, set[str]]:
    return {p.name: set(re.findall(r'"(system:serviceaccount:[^"]+)"', " ".join(m.text for m in p.match)))
            for p in policies}


@pytest.mark.parametrize("which", ["defaults", "alt"])
def test_identities_are_the_charts_service_accounts(rendered_policy: list[dict[str, Any]],
                                                    rendered_alt: list[dict[str, Any]], which: str) -> None:
    objs, setup = (rendered_policy, DEFAULT) if which == "defaults" else (rendered_alt, ALT)
    sas = {f"system:serviceaccount:{o['metadata']['namespace']}:{o['metadata']['name']}"
           for o in objs if o["kind"] == "ServiceAccount"}
    named = _usernames(_policies(objs))
    p = setup.prefix
    assert named == {
        f"{p}-node-healthevents": {user_of(setup, "publisher"), user_of(setup, "remediation-agent")},
        f"{p}-stage-nodes": {user_of(setup, "quarantine-controller"), user_of(setup, "resolution-controller")},
        f"{p}-breaker-configmap": {user_of(setup, "quarantine-controller")},
        f"{p}-reboot-jobs": {user_of(setup, "remediation-controller")},
        f"{p}-node-conditions": {user_of(setup, "conditions-controller")},
    }
    assert set().union(*named.values()) <= sas
    # and the workloads run as them
    deployments = by_kind(objs, "Deployment")
    for comp in ("quarantine", "resolution", "remediation", "conditions"):
        dep = deployments[f"{p}-{comp}-controller"]
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == f"{p}-{comp}-controller"


def test_the_matchconditions_hold_exactly_those_users(policies: list[Policy]) -> None:
    """Evaluated, not read: each policy applies to its own identities and to no other identity of the chart."""
    components = ("publisher", "remediation-agent", "quarantine-controller", "drain-controller",
                  "remediation-controller", "resolution-controller", "ttl-controller", "admission",
                  "conditions-controller")
    for p in policies:
        applies = set()
        for comp in components:
            act = {"request": celpy.json_to_cel({"userInfo": {"username": user_of(DEFAULT, comp)}})}
            if all(_bool(m, act) for m in p.match):
                applies.add(user_of(DEFAULT, comp))
        assert applies == _usernames([p])[p.name], p.name


def _flags(objs: list[dict[str, Any]], name: str) -> dict[str, str]:
    (c,) = by_kind(objs, "Deployment")[name]["spec"]["template"]["spec"]["containers"]
    return dict(a.removeprefix("--").split("=", 1) for a in c["args"] if "=" in a)


@pytest.mark.parametrize("which", ["defaults", "alt"])
def test_setup_is_what_the_controllers_are_started_with(rendered_policy: list[dict[str, Any]],
                                                        rendered_alt: list[dict[str, Any]], which: str) -> None:
    """The cases' Setup (and so the policies' expectations) equals the controllers' own flags."""
    objs, setup = (rendered_policy, DEFAULT) if which == "defaults" else (rendered_alt, ALT)
    remediation = _flags(objs, f"{setup.prefix}-remediation-controller")
    quarantine = _flags(objs, f"{setup.prefix}-quarantine-controller")
    resolution = _flags(objs, f"{setup.prefix}-resolution-controller")
    assert (remediation["reboot-image"], remediation["reboot-command"]) == (setup.reboot_image, setup.reboot_command)
    assert quarantine["taint-key"] == resolution["taint-key"] == setup.taint_key
    assert quarantine["breaker-configmap"] == setup.breaker_configmap
    conditions = _flags(objs, f"{setup.prefix}-conditions-controller")
    assert conditions["node-condition-mirror"] == setup.mirror
    assert remediation["namespace"] == setup.namespace


# ---- the reboot command, split like the controller splits it ------------------------------------------------------

COMMANDS = [
    "nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl reboot",
    "/bin/reboot -f",
    """sh -c 'echo "a b"; reboot'""",
    """a"b c"d '' "" x\\ y""",
    """"a\\"b\\\\c\\n" 'it'\\''s'""",
    "\ttab\tsep\r\nnl  ",
    "é ü 'ö ä'",
    "#c ;d | e $HOME",
]


def _argv(policies: list[Policy]) -> list[str]:
    (jobs,) = [p for p in policies if p.name.endswith("-reboot-jobs")]
    (expr,) = [e for e, _ in jobs.validations if "command ==" in e.text]
    literal = re.search(r"command == (\[.*?\])\s*&&", expr.text, re.S)
    assert literal, expr.text
    return list(Expr.of(literal.group(1))({}))


@pytest.mark.parametrize("command", COMMANDS)
def test_reboot_command_is_split_like_shlex(helm: Helm, command: str) -> None:
    objs = helm.render({"admission": {"mode": "policy"}, "controllers": {"remediation": {"rebootCommand": command}}})
    assert _argv(_policies(objs)) == shlex.split(command)


@pytest.mark.parametrize("command", ["reboot 'now", 'reboot "now', "reboot now\\"])
def test_a_command_shlex_refuses_fails_the_render(helm: Helm, command: str) -> None:
    with pytest.raises(ValueError):
        shlex.split(command)
    with pytest.raises(HelmError, match="is not a shell command line"):
        helm.template({"admission": {"mode": "policy"}, "controllers": {"remediation": {"rebootCommand": command}}})


# ---- portable CEL ---------------------------------------------------------------------------------------------

#: Standard CEL (functions and macros both implementations have) plus Kubernetes' string.substring.
PORTABLE = {"has", "size", "timestamp", "duration", "startsWith", "matches", "all", "exists", "filter", "substring"}


def _expressions(policies: list[Policy]) -> Iterator[str]:
    for p in policies:
        yield from (m.text for m in p.match)
        yield from (e.text for _, e in p.variables)
        yield from (e.text for e, _ in p.validations)


def test_only_portable_functions(policies: list[Policy]) -> None:
    called = set()
    for text in _expressions(policies):
        bare = re.sub(r"'[^']*'|\"[^\"]*\"", "''", text)  # no calls inside string literals
        called |= set(re.findall(r"([A-Za-z_]\w*)\s*\(", bare))
    assert called <= PORTABLE, called - PORTABLE
    assert {"has", "timestamp", "substring"} <= called
