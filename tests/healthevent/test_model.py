"""The typed HealthEvent: exact round trips through the wire JSON, time parsing, clear rejection."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
from healthevent_strategies import events, statuses, times
from hypothesis import given

from nvsentinel.policy.healthevent import (
    API_VERSION, KIND, Condition, ConditionType, Entity, HealthEvent, HealthEventSpec, HealthEventStatus, Phase,
    format_time, parse_time,
)
from nvsentinel.xid import Action

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def spec_dict(**over):
    d = {"source": "nvml-provider", "nodeName": "node-1", "componentClass": "GPU", "checkName": "xid-error-check",
         "isFatal": True, "isHealthy": False, "detectedAt": "2024-05-01T12:00:00Z"}
    d.update(over)
    return d


def event_dict(**spec_over):
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "he-1"}, "spec": spec_dict(**spec_over)}


@given(events)
def test_round_trip_through_dict(event):
    """Verify from_dict(to_dict(e)) == e for any event, and to_dict is stable under a second trip."""
    d = event.to_dict()
    back = HealthEvent.from_dict(d)
    assert back == event
    assert back.to_dict() == d


@given(events)
def test_round_trip_through_json(event):
    """Verify the dict survives JSON encoding (what the API server stores) unchanged."""
    d = event.to_dict()
    assert HealthEvent.from_dict(json.loads(json.dumps(d))) == event


@given(events)
def test_create_body_has_no_server_fields(event):
    """Verify the create body drops status and the server-owned metadata, and keeps spec and labels."""
    body = event.create_body()
    assert "status" not in body
    assert not {"resourceVersion", "uid", "generation", "creationTimestamp"} & set(body["metadata"])
    assert body["spec"] == event.spec.to_dict()
    assert body["metadata"].get("labels", {}) == dict(event.labels)


@given(times)
def test_format_time_is_utc_z_and_parses_back(t):
    """Verify format_time writes UTC with a Z, microseconds only when non-zero, and parse_time inverts it."""
    s = format_time(t)
    assert s.endswith("Z") and "+" not in s
    assert ("." in s) == bool(t.microsecond)
    back = parse_time(s)
    assert back == t and back.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(("text", "want"), [
    ("2024-05-01T12:00:00Z", T0),
    ("2024-05-01T12:00:00z", T0),
    ("2024-05-01T14:30:00+02:30", T0),
    ("2024-05-01T07:00:00-05:00", T0),
    ("2024-05-01T12:00:00.250Z", T0.replace(microsecond=250000)),
    ("2024-05-01T12:00:00.123456Z", T0.replace(microsecond=123456)),
    ("2024-05-01T12:00:00.000001+00:00", T0.replace(microsecond=1)),
])
def test_parse_time_accepts_rfc3339(text, want):
    """Verify Z, lower-case z, offsets and fractional seconds parse to the same UTC instant."""
    got = parse_time(text)
    assert got == want and got.tzinfo == UTC


@pytest.mark.parametrize("text", ["2024-05-01T12:00:00", "2024-05-01", "yesterday", "", "12:00:00Z"])
def test_parse_time_rejects_naive_and_garbage(text):
    """Verify a time without an offset, or not a time at all, raises ValueError quoting it."""
    with pytest.raises(ValueError, match="RFC 3339") as info:
        parse_time(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("value", [None, 1714564800, dt.datetime(2024, 5, 1)])
def test_parse_time_rejects_non_strings(value):
    """Verify a non-string detectedAt is refused, not guessed."""
    with pytest.raises(ValueError):
        parse_time(value)


def test_format_time_rejects_naive():
    """Verify a naive datetime is refused when writing, so no local time is ever published as UTC."""
    with pytest.raises(ValueError, match="naive"):
        format_time(dt.datetime(2024, 5, 1, 12))


def test_from_dict_applies_defaults():
    """Verify the optional spec fields take the CRD's defaults when absent."""
    e = HealthEvent.from_dict(event_dict())
    s = e.spec
    assert (s.agent, s.message, s.recommended_action) == ("", "", Action.NONE)
    assert (s.error_codes, s.entities_impacted, dict(s.metadata), s.maintenance) == ((), (), {}, None)
    assert not any((s.overrides.quarantine.force, s.overrides.quarantine.skip, s.overrides.drain.force,
                    s.overrides.drain.skip))
    assert e.status == HealthEventStatus() and e.status.phase is Phase.NEW
    assert s.detected_at == T0


@pytest.mark.parametrize("field", ["source", "nodeName", "componentClass", "checkName", "isFatal", "isHealthy",
                                   "detectedAt"])
def test_missing_required_field_names_it(field):
    """Verify a spec without a required field raises KeyError naming that field."""
    d = event_dict()
    del d["spec"][field]
    with pytest.raises(KeyError) as info:
        HealthEvent.from_dict(d)
    assert info.value.args == (field,)


def test_missing_name_or_spec_names_it():
    """Verify an object without metadata.name or spec raises KeyError naming what is missing."""
    with pytest.raises(KeyError, match="name"):
        HealthEvent.from_dict({"kind": KIND, "metadata": {}, "spec": spec_dict()})
    with pytest.raises(KeyError, match="spec"):
        HealthEvent.from_dict({"kind": KIND, "metadata": {"name": "x"}})


def test_bad_enums_quote_the_value():
    """Verify an unknown recommendedAction or phase raises ValueError quoting the bad value."""
    with pytest.raises(ValueError, match="'REBOOT_PLEASE'"):
        HealthEvent.from_dict(event_dict(recommendedAction="REBOOT_PLEASE"))
    d = event_dict()
    d["status"] = {"phase": "Exploded"}
    with pytest.raises(ValueError, match="'Exploded'"):
        HealthEvent.from_dict(d)


def test_bad_times_quote_the_value():
    """Verify a naive or malformed detectedAt / lastTransitionTime raises ValueError quoting it."""
    with pytest.raises(ValueError, match="without an offset"):
        HealthEvent.from_dict(event_dict(detectedAt="2024-05-01T12:00:00"))
    d = event_dict()
    d["status"] = {"conditions": [{"type": "Detected", "status": "True", "lastTransitionTime": "soon"}]}
    with pytest.raises(ValueError, match="'soon'"):
        HealthEvent.from_dict(d)


def test_wrong_kind_is_refused():
    """Verify another kind's object is not read as a HealthEvent."""
    d = event_dict()
    d["kind"] = "Node"
    with pytest.raises(ValueError, match="not a HealthEvent"):
        HealthEvent.from_dict(d)


def cond(type_, status, t, reason="r", message="m", gen=1):
    return Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=t,
                     observed_generation=gen)


def test_with_condition_keeps_transition_time_when_status_unchanged():
    """Verify re-setting a condition with the same status keeps lastTransitionTime but takes the new reason."""
    st0 = HealthEventStatus().with_condition(cond("Detected", "True", T0, reason="XidCritical"))
    later = T0 + dt.timedelta(minutes=5)
    st1 = st0.with_condition(cond("Detected", "True", later, reason="XidCriticalAgain", message="again", gen=2))
    c = st1.condition("Detected")
    assert c.last_transition_time == T0
    assert (c.reason, c.message, c.observed_generation) == ("XidCriticalAgain", "again", 2)
    assert len(st1.conditions) == 1


def test_with_condition_moves_transition_time_when_status_changes():
    """Verify a status change takes the new lastTransitionTime."""
    st0 = HealthEventStatus().with_condition(cond("NodeQuarantined", "False", T0))
    later = T0 + dt.timedelta(minutes=5)
    assert st0.with_condition(cond("NodeQuarantined", "True", later)).condition("NodeQuarantined") \
        .last_transition_time == later


def test_with_condition_keeps_order_and_others():
    """Verify replacing a condition keeps its position and leaves the other conditions untouched."""
    s = HealthEventStatus()
    for t in (ConditionType.DETECTED, ConditionType.NODE_QUARANTINED, ConditionType.PODS_DRAINED):
        s = s.with_condition(cond(str(t), "True", T0))
    s2 = s.with_condition(cond("NodeQuarantined", "False", T0 + dt.timedelta(seconds=1)))
    assert [c.type for c in s2.conditions] == ["Detected", "NodeQuarantined", "PodsDrained"]
    assert s2.conditions[0] == s.conditions[0] and s2.conditions[2] == s.conditions[2]
    assert s2.condition("NodeQuarantined").status == "False"
    assert s.condition("NodeQuarantined").status == "True", "with_condition must not mutate"


@given(statuses())
def test_with_condition_is_idempotent(status):
    """Verify setting a condition it already has (same status) changes nothing."""
    for c in status.conditions:
        assert status.with_condition(dataclasses.replace(c, last_transition_time=T0)) == status


def test_gpu_uuids_lists_only_gpu_entities():
    """Verify gpu_uuids picks the GPU entities in order and ignores PCI ones."""
    spec = HealthEventSpec.from_dict(spec_dict(entitiesImpacted=[
        {"type": "GPU", "value": "GPU-a"}, {"type": "PCI", "value": "0000:3b:00.0"}, {"type": "GPU", "value": "GPU-b"}]))
    e = HealthEvent(name="x", spec=spec)
    assert e.gpu_uuids == ("GPU-a", "GPU-b")
    assert spec.entities_impacted[1] == Entity("PCI", "0000:3b:00.0")
