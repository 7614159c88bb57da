"""The HealthEvent CRD manifest agrees with the typed model, so schema and code cannot drift apart.

The server-side behaviour (defaults, rejections, subresource) is proved in tests/k8s/test_crd.py;
here the schema is checked offline: names, enums, required fields, and that whatever the model
writes is accepted by the schema (a small structural-schema checker below) and vice versa.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
import re

import yaml
from healthevent_strategies import events
from hypothesis import given

from nvsentinel.k8s import crd as crd_mod
from nvsentinel.policy.healthevent import (
    GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, Condition, ConditionType, DrainRecord, DrainScope, RemediationMode, Entity, PodMapping, PodRef, HealthEvent,
    HealthEventSpec, HealthEventStatus, Maintenance, OverrideFlags, Overrides, Phase,
)
from nvsentinel.xid import Action

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGED = ROOT / "nvsentinel" / "data" / "crds" / "healthevents.nvsentinel.nvidia.com.yaml"
CHART = ROOT / "charts" / "nvsentinel" / "crds" / "healthevents.nvsentinel.nvidia.com.yaml"
T = dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.timezone.utc)
RFC3339 = re.compile(r"\A\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")


def version() -> dict:
    (v,) = crd_mod.crd_manifest()["spec"]["versions"]
    return v


def schema() -> dict:
    return version()["schema"]["openAPIV3Schema"]


def full_event() -> HealthEvent:
    """An event with every optional part present, so to_dict emits every field the model knows."""
    flags = OverrideFlags(force=True, skip=False)
    spec = HealthEventSpec(
        source="nvml-provider", node_name="node-1", component_class="GPU", check_name="xid-error-check",
        is_fatal=True, is_healthy=False, detected_at=T, agent="nvsentinel-node-x", message="Xid 79",
        recommended_action=Action.RESTART_BM, error_codes=("79",), entities_impacted=(Entity("GPU", "GPU-1"),),
        overrides=Overrides(flags, flags), metadata={"pci": "0000:3b:00.0"},
        maintenance=Maintenance("aws", "e-1", "reboot", T, T),
        pod_mapping=PodMapping("nvidia.com/gpu", (PodRef("team-a", "train-0", ("GPU-1",)),), "none", T),
    )
    cond = Condition("Detected", "True", "XidCritical", "seen", T, 1)
    status = HealthEventStatus(Phase.QUARANTINED, (cond,), T, T, 1, RemediationMode.APPROVE, "uid-1",
                               DrainRecord(DrainScope.GPU, ("GPU-1",), (PodRef("team-a", "train-0"),), "why"))
    return HealthEvent(name="he-1", spec=spec, status=status, labels={"a": "b"}, annotations={"c": "d"},
                       resource_version="7", uid="u", generation=1, creation_timestamp=T)


def check(value, sch: dict, path: str = "") -> list[str]:
    """What the apiserver's structural validation would refuse (the subset this CRD uses), as paths.

    Unknown fields count as errors here although the server prunes them: a field the model writes
    that the schema lacks would be silently lost, which is the drift this guards against.
    """
    errs: list[str] = []
    typ = sch.get("type")
    ok = {"object": isinstance(value, dict), "array": isinstance(value, list), "string": isinstance(value, str),
          "boolean": isinstance(value, bool),
          "integer": isinstance(value, int) and not isinstance(value, bool)}.get(typ, True)
    if not ok:
        return [f"{path}: {type(value).__name__} is not {typ}"]
    if "enum" in sch and value not in sch["enum"]:
        errs.append(f"{path}: {value!r} not in enum")
    if typ == "string":
        if len(value) < sch.get("minLength", 0) or len(value) > sch.get("maxLength", 10**9):
            errs.append(f"{path}: length {len(value)} out of bounds")
        if sch.get("format") == "date-time" and not RFC3339.match(value):
            errs.append(f"{path}: {value!r} is not date-time")
    if typ == "integer" and value < sch.get("minimum", -(2**63)):
        errs.append(f"{path}: below minimum")
    if typ == "array":
        if len(value) > sch.get("maxItems", 10**9):
            errs.append(f"{path}: too many items")
        for i, item in enumerate(value):
            errs += check(item, sch["items"], f"{path}[{i}]")
    if typ == "object":
        errs += [f"{path}.{k}: required" for k in sch.get("required", ()) if k not in value]
        props, extra = sch.get("properties"), sch.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                errs += check(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                errs += check(v, extra, f"{path}.{k}")
            elif props is not None:
                errs.append(f"{path}.{k}: not in the schema")
    return errs


def schema_fields(sch: dict, path: str = "") -> set[str]:
    """Every property path the schema declares (maps and root metadata are leaves)."""
    out = set()
    for k, sub in (sch.get("properties") or {}).items():
        p = f"{path}.{k}"
        out.add(p)
        out |= schema_fields(sub.get("items", sub), p)
    return out


def emitted_fields(value, path: str = "") -> set[str]:
    out = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(f"{path}.{k}")
            out |= emitted_fields(v, f"{path}.{k}")
    elif isinstance(value, list):
        for item in value:
            out |= emitted_fields(item, path)
    return out


def test_chart_copy_is_byte_identical():
    """Verify the Helm chart ships exactly the packaged CRD file."""
    assert CHART.read_bytes() == PACKAGED.read_bytes()


def test_manifest_loads_from_package_data():
    """Verify crd_manifest reads the packaged file and returns an independent copy each call."""
    a = crd_mod.crd_manifest()
    assert a == yaml.safe_load(PACKAGED.read_text())
    a["spec"]["group"] = "changed"
    assert crd_mod.crd_manifest()["spec"]["group"] == GROUP


def test_names_scope_and_version():
    """Verify the CRD's identity matches the model's constants (SPEC §6)."""
    m = crd_mod.crd_manifest()
    assert (m["apiVersion"], m["kind"]) == ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    assert m["metadata"]["name"] == crd_mod.CRD_NAME == f"{PLURAL}.{GROUP}"
    spec = m["spec"]
    assert (spec["group"], spec["scope"]) == (GROUP, "Cluster")
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (KIND, PLURAL, SINGULAR)
    assert tuple(names["shortNames"]) == SHORT_NAMES == ("he", "hevt")
    assert names["categories"] == ["nvsentinel"]
    v = version()
    assert (v["name"], v["served"], v["storage"]) == (VERSION, True, True)
    assert v["subresources"] == {"status": {}}


def test_printer_columns():
    """Verify the printer columns: Node, Source, Fatal, Phase, Action (wide only), Age."""
    cols = [(c["name"], c["type"], c["jsonPath"], c.get("priority", 0)) for c in version()["additionalPrinterColumns"]]
    assert cols == [
        ("Node", "string", ".spec.nodeName", 0), ("Source", "string", ".spec.source", 0),
        ("Fatal", "boolean", ".spec.isFatal", 0), ("Phase", "string", ".status.phase", 0),
        ("Action", "string", ".spec.recommendedAction", 1), ("Age", "date", ".metadata.creationTimestamp", 0),
    ]


def test_required_spec_fields_are_the_models():
    """Verify the schema requires exactly the spec fields the model has no default for."""
    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(p.title() for p in rest)
    model_required = {camel(f.name) for f in dataclasses.fields(HealthEventSpec)
                      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    spec = schema()["properties"]["spec"]
    assert set(spec["required"]) == model_required == {
        "source", "nodeName", "componentClass", "checkName", "isFatal", "isHealthy", "detectedAt"}
    assert schema()["required"] == ["spec"]
    for field in ("source", "nodeName", "componentClass", "checkName"):
        assert spec["properties"][field]["minLength"] == 1
    assert spec["properties"]["nodeName"]["maxLength"] == 253
    cond = schema()["properties"]["status"]["properties"]["conditions"]
    assert set(cond["items"]["required"]) == {"type", "status", "lastTransitionTime"}
    assert (cond["x-kubernetes-list-type"], cond["x-kubernetes-list-map-keys"]) == ("map", ["type"])


def enums(sch: dict, path: str = "") -> dict[str, list]:
    out = {path: sch["enum"]} if "enum" in sch else {}
    for k, sub in (sch.get("properties") or {}).items():
        out |= enums(sub, f"{path}.{k}")
    if "items" in sch:
        out |= enums(sch["items"], f"{path}[]")
    return out


def test_every_enum_equals_its_python_enum():
    """Verify each schema enum lists exactly the Python enum's values, in order, and no enum is unaccounted."""
    assert enums(schema()) == {
        ".spec.recommendedAction": [str(a) for a in Action],
        ".status.phase": [str(p) for p in Phase],
        ".status.conditions[].type": [str(t) for t in ConditionType],
        ".status.conditions[].status": ["True", "False", "Unknown"],
        ".status.remediationMode": [str(m) for m in RemediationMode],
        ".status.drain.scope": [str(s) for s in DrainScope],
    }
    assert len(Action) == 9 and len(Phase) == 8 and len(ConditionType) == 5


def test_defaults_equal_the_models():
    """Verify the schema's defaults are the model's defaults (what a reader assumes when a field is absent)."""
    props = schema()["properties"]
    spec = props["spec"]["properties"]
    blank = HealthEventSpec("s", "n", "GPU", "c", False, False, T)
    assert spec["recommendedAction"]["default"] == str(blank.recommended_action) == "NONE"
    for stage in ("quarantine", "drain"):
        flags = spec["overrides"]["properties"][stage]["properties"]
        assert {k: flags[k]["default"] for k in ("force", "skip")} == OverrideFlags().to_dict()
    assert spec["overrides"]["default"] == {} and spec["overrides"]["properties"]["drain"]["default"] == {}
    assert spec["errorCodes"]["default"] == list(blank.error_codes)
    assert spec["entitiesImpacted"]["default"] == list(blank.entities_impacted)
    assert spec["metadata"]["default"] == dict(blank.metadata)
    assert props["status"]["properties"]["phase"]["default"] == str(HealthEventStatus().phase) == "New"


def test_every_field_the_model_writes_is_in_the_schema_and_back():
    """Verify the fully populated event's fields equal the schema's spec/status fields, both directions."""
    d = full_event().to_dict()
    assert check(d, schema()) == []
    body_fields = {f for f in emitted_fields(d) if f.startswith((".spec", ".status"))}
    declared = {f for f in schema_fields(schema()) if f.startswith((".spec", ".status"))}
    # metadata is a free map: its keys are data, not fields
    body_fields = {f for f in body_fields if not f.startswith(".spec.metadata.")}
    assert body_fields == declared


@given(events)
def test_generated_events_satisfy_the_schema(event):
    """Verify every event the model can write passes the CRD's structural schema."""
    assert check(event.to_dict(), schema()) == []
    assert check(event.create_body(), schema()) == []


def test_checker_catches_what_the_server_would():
    """Verify the offline checker itself refuses the malformed objects the server refuses (guards the guard)."""
    good = full_event().to_dict()
    bad = [
        ("spec", "recommendedAction", "REBOOT"), ("spec", "isFatal", "true"), ("spec", "errorCodes", "79"),
        ("spec", "nodeName", ""), ("spec", "nodeName", "n" * 254), ("spec", "detectedAt", "yesterday"),
        ("status", "phase", "Done"), ("spec", "errorCodes", ["1"] * 65), ("spec", "brandNew", 1),
    ]
    for part, key, value in bad:
        d = yaml.safe_load(yaml.safe_dump(good))
        d[part][key] = value
        assert check(d, schema()), (part, key, value)
    d = yaml.safe_load(yaml.safe_dump(good))
    del d["spec"]["checkName"]
    assert check(d, schema()) == [".spec.checkName: required"]
