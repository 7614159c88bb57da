"""The HealthEvent CRD on a real kube-apiserver (v1.20.2): install, defaults, rejections, status, columns.

Objects get a uuid suffix and node names no Node has, so controllers other tests run never act on
them; each test deletes what it created.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest

from nvsentinel.k8s import Invalid, KubeNotFound
from nvsentinel.k8s.crd import CRD_NAME, crd_manifest, install_crd, is_established
from nvsentinel.k8s.resources import CRDS, HEALTHEVENTS
from nvsentinel.policy.healthevent import (
    API_VERSION, GROUP, KIND, VERSION, Condition, Entity, HealthEvent, HealthEventSpec, HealthEventStatus, Maintenance,
    OverrideFlags, Overrides, Phase,
)
from nvsentinel.xid import Action

REQUIRED = ("source", "nodeName", "componentClass", "checkName", "isFatal", "isHealthy", "detectedAt")
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
T = dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc)


def field_pattern(path: str) -> str:
    """`status.conditions[].type` matches 1.20's `status.conditions.type` and newer servers' `[0]`."""
    return re.escape(path).replace(r"\[\]", r"(\[\d+\])?")


@pytest.fixture
def created(kube, crd_installed):
    """Names to delete after the test."""
    names: list[str] = []
    yield names
    for n in names:
        try:
            kube.delete(HEALTHEVENTS, n)
        except KubeNotFound:
            pass


def name() -> str:
    return f"crd-test-{uuid.uuid4().hex[:10]}"


def minimal(n: str) -> dict:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": n}, "spec": {
        "source": "test", "nodeName": f"no-such-node-{n}", "componentClass": "GPU", "checkName": "xid-error-check",
        "isFatal": True, "isHealthy": False, "detectedAt": "2024-05-01T12:00:00Z"}}


def full(n: str) -> HealthEvent:
    flags = OverrideFlags(force=True, skip=False)
    spec = HealthEventSpec(
        source="nvml-provider", node_name=f"no-such-node-{n}", component_class="GPU", check_name="xid-error-check",
        is_fatal=True, is_healthy=False, detected_at=T, agent="agent", message="Xid 79",
        recommended_action=Action.RESTART_BM, error_codes=("79", "48"),
        entities_impacted=(Entity("GPU", "GPU-1"), Entity("PCI", "0000:3b:00.0")),
        overrides=Overrides(flags, OverrideFlags()), metadata={"pci": "0000:3b:00.0"},
        maintenance=Maintenance("aws", "ev-1", "reboot", T, None),
    )
    return HealthEvent(name=n, spec=spec, labels={"nvsentinel.nvidia.com/node": spec.node_name})


def test_install_is_idempotent(kube, crd_installed):
    """Verify installing again replaces in place: Established, same uid, spec generation unchanged, schema as shipped."""
    before = kube.get(CRDS, CRD_NAME)
    again = install_crd(kube)
    third = install_crd(kube, timeout=10)
    assert is_established(again) and is_established(third)
    assert again["metadata"]["uid"] == third["metadata"]["uid"] == before["metadata"]["uid"]
    assert third["metadata"]["generation"] == before["metadata"]["generation"]
    served = kube.get(CRDS, CRD_NAME)
    want = crd_manifest()["spec"]["versions"][0]
    got = served["spec"]["versions"][0]
    assert got["schema"] == want["schema"]
    assert got["additionalPrinterColumns"] == want["additionalPrinterColumns"]
    assert served["spec"]["names"]["shortNames"] == ["he", "hevt"]


def test_valid_minimal_event_gets_defaults(kube, created):
    """Verify a minimal event is accepted and the server fills recommendedAction, overrides, lists and phase."""
    n = name()
    out = kube.create(HEALTHEVENTS, minimal(n))
    created.append(n)
    spec = out["spec"]
    assert spec["recommendedAction"] == "NONE"
    assert spec["overrides"] == {"quarantine": {"force": False, "skip": False}, "drain": {"force": False, "skip": False}}
    assert (spec["errorCodes"], spec["entitiesImpacted"], spec["metadata"]) == ([], [], {})
    assert out["status"] == {"phase": "New"}
    e = HealthEvent.from_dict(kube.get(HEALTHEVENTS, n))
    assert e.spec.recommended_action is Action.NONE and e.status.phase is Phase.NEW and e.generation == 1


def test_full_model_event_round_trips_through_the_server(kube, created):
    """Verify every field the model writes is stored and read back unchanged (nothing pruned)."""
    ev = full(name())
    out = kube.create(HEALTHEVENTS, ev.create_body())
    created.append(ev.name)
    back = HealthEvent.from_dict(out)
    assert back.spec == ev.spec
    assert back.spec.to_dict() == ev.spec.to_dict()
    assert dict(back.labels) == dict(ev.labels)


def bad_bodies():
    for field in REQUIRED:
        yield f"missing-{field}", ("del", field), f"spec.{field}"
    yield "bad-action", ("set", "recommendedAction", "REBOOT_PLEASE"), "spec.recommendedAction"
    yield "fatal-as-string", ("set", "isFatal", "true"), "spec.isFatal"
    yield "errorcodes-as-string", ("set", "errorCodes", "79"), "spec.errorCodes"
    yield "too-many-errorcodes", ("set", "errorCodes", [str(i) for i in range(65)]), "spec.errorCodes"
    yield "empty-node", ("set", "nodeName", ""), "spec.nodeName"
    yield "long-node", ("set", "nodeName", "n" * 254), "spec.nodeName"
    yield "bad-time", ("set", "detectedAt", "yesterday"), "spec.detectedAt"
    yield "entity-without-value", ("set", "entitiesImpacted", [{"type": "GPU"}]), "spec.entitiesImpacted"
    yield "metadata-not-strings", ("set", "metadata", {"n": 1}), "spec.metadata"
    yield "override-not-bool", ("set", "overrides", {"drain": {"skip": "yes"}}), "spec.overrides.drain.skip"


@pytest.mark.parametrize(("change", "path"), [(c, p) for _, c, p in bad_bodies()],
                         ids=[i for i, _, _ in bad_bodies()])
def test_malformed_events_are_rejected(kube, created, change, path):
    """Verify the server refuses each malformed spec with Invalid naming the offending field."""
    n = name()
    body = minimal(n)
    if change[0] == "del":
        del body["spec"][change[1]]
    else:
        body["spec"][change[1]] = change[2]
    with pytest.raises(Invalid) as info:
        kube.create(HEALTHEVENTS, body)
    assert path in str(info.value)
    with pytest.raises(KubeNotFound):
        kube.get(HEALTHEVENTS, n)


def test_status_is_dropped_on_create_and_written_via_subresource(kube, created):
    """Verify create ignores status, the main endpoint ignores status, and the status subresource writes it."""
    n = name()
    body = minimal(n)
    body["status"] = {"phase": "Resolved"}
    out = kube.create(HEALTHEVENTS, body)
    created.append(n)
    assert out["status"] == {"phase": "New"}
    ignored = kube.patch(HEALTHEVENTS, n, {"status": {"phase": "Cancelled"}})
    assert ignored["status"]["phase"] == "New"

    st = HealthEventStatus(phase=Phase.QUARANTINED).with_condition(
        Condition("NodeQuarantined", "True", "FatalEvent", "cordoned", T, 1))
    patched = kube.patch(HEALTHEVENTS, n, {"status": st.to_dict()}, subresource="status")
    assert HealthEventStatus.from_dict(patched["status"]) == st
    assert patched["metadata"]["generation"] == out["metadata"]["generation"] == 1
    assert HealthEvent.from_dict(kube.get(HEALTHEVENTS, n)).status == st


@pytest.mark.parametrize(("status", "path"), [
    ({"phase": "Exploded"}, "status.phase"),
    ({"conditions": [{"type": "Rebooted", "status": "True", "lastTransitionTime": "2024-05-01T12:00:00Z"}]},
     "status.conditions[].type"),
    ({"conditions": [{"type": "Detected", "status": "Maybe", "lastTransitionTime": "2024-05-01T12:00:00Z"}]},
     "status.conditions[].status"),
    ({"conditions": [{"type": "Detected", "status": "True"}]}, "status.conditions[].lastTransitionTime"),
    ({"resolvedAt": "later"}, "status.resolvedAt"),
], ids=["phase", "condition-type", "condition-status", "condition-time", "resolved-at"])
def test_bad_status_is_rejected(kube, created, status, path):
    """Verify the status subresource refuses a bad phase or condition, naming the field."""
    n = name()
    kube.create(HEALTHEVENTS, minimal(n))
    created.append(n)
    with pytest.raises(Invalid) as info:
        kube.patch(HEALTHEVENTS, n, {"status": status}, subresource="status")
    assert re.search(field_pattern(path), str(info.value)), str(info.value)
    assert kube.get(HEALTHEVENTS, n)["status"] == {"phase": "New"}


def table(kube, path: str, query: str = "") -> dict:
    """GET as a meta.k8s.io Table (what kubectl get prints); Kube.raw always asks for plain JSON."""
    api = kube.api_client
    method, url, headers, body, post = api.param_serialize(
        method="GET", resource_path=path, header_params={"Accept": TABLE}, auth_settings=["BearerToken"])
    resp = api.call_api(method, url + query, header_params=headers)
    assert resp.status == 200, resp.read()
    return json.loads(resp.read())


def test_printer_columns_through_the_table_api(kube, created):
    """Verify the server's Table for a HealthEvent has Name, Node, Source, Fatal, Phase, Action (priority 1), Age."""
    ev = full(name())
    kube.create(HEALTHEVENTS, ev.create_body())
    created.append(ev.name)
    kube.patch(HEALTHEVENTS, ev.name, {"status": {"phase": "Draining"}}, subresource="status")
    t = table(kube, HEALTHEVENTS.path(ev.name))
    cols = [(c["name"], c["type"], c.get("priority", 0)) for c in t["columnDefinitions"]]
    assert cols == [("Name", "string", 0), ("Node", "string", 0), ("Source", "string", 0), ("Fatal", "boolean", 0),
                    ("Phase", "string", 0), ("Action", "string", 1), ("Age", "date", 0)]
    (row,) = t["rows"]
    assert row["cells"][:6] == [ev.name, ev.spec.node_name, "nvml-provider", True, "Draining", "RESTART_BM"]


def test_discovery_lists_short_names_and_category(kube, crd_installed):
    """Verify API discovery serves the short names he/hevt, the nvsentinel category and the status subresource."""
    doc = kube.request("GET", f"/apis/{GROUP}/{VERSION}")
    res = {r["name"]: r for r in doc["resources"]}
    he = res["healthevents"]
    assert (he["kind"], he["namespaced"], he["singularName"]) == (KIND, False, "healthevent")
    assert he["shortNames"] == ["he", "hevt"] and he["categories"] == ["nvsentinel"]
    assert set(res["healthevents/status"]["verbs"]) >= {"get", "patch", "update"}
