"""Hypothesis strategies for HealthEvents: every field, every optional part present or absent.

Names and values stay within what the CRD accepts (non-empty required strings, bounded lists), so the
same events also serve the schema-conformance tests.
"""
from __future__ import annotations

import datetime as dt

from hypothesis import strategies as st

from nvsentinel.policy.healthevent import (
    Condition, ConditionType, DrainRecord, DrainScope, Entity, HealthEvent, HealthEventSpec, HealthEventStatus,
    Maintenance, OverrideFlags, Overrides, Phase, PodMapping, PodRef, RemediationMode,
)
from nvsentinel.xid import Action

# format_time writes years below 1000 without zero padding, which nothing parses back (see the
# report to the model's owner); real events are recent, so draw from a generous modern range.
times = st.datetimes(
    min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9000, 12, 31),
    timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30)),
                               dt.timezone(dt.timedelta(hours=-8))]),
)
text = st.text(max_size=40)
word = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=20)
label_value = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?\Z")

entities = st.builds(Entity, type=st.sampled_from(["GPU", "PCI", "NVLINK"]) | word, value=word)
override_flags = st.builds(OverrideFlags, force=st.booleans(), skip=st.booleans())
overrides = st.builds(Overrides, quarantine=override_flags, drain=override_flags)
maintenance = st.builds(Maintenance, csp=text, event_id=text, maintenance_type=text,
                        scheduled_start=st.none() | times, scheduled_end=st.none() | times)

pod_refs = st.builds(PodRef, namespace=label_value, name=label_value, devices=st.lists(word, max_size=3).map(tuple))
pod_mappings = st.builds(PodMapping, resource_name=text, pods=st.lists(pod_refs, max_size=4).map(tuple), error=text,
                         read_at=st.none() | times)
drain_records = st.builds(DrainRecord, scope=st.sampled_from([str(s) for s in DrainScope]),
                          gpus=st.lists(word, max_size=3).map(tuple),
                          pods=st.lists(st.builds(PodRef, namespace=label_value, name=label_value), max_size=4).map(tuple),
                          reason=text)

specs = st.builds(
    HealthEventSpec,
    source=word, node_name=word, component_class=word, check_name=word,
    is_fatal=st.booleans(), is_healthy=st.booleans(), detected_at=times,
    agent=text, message=text, recommended_action=st.sampled_from(list(Action)),
    error_codes=st.lists(word, max_size=8).map(tuple),
    entities_impacted=st.lists(entities, max_size=8).map(tuple),
    overrides=overrides,
    metadata=st.dictionaries(word, text, max_size=5),
    maintenance=st.none() | maintenance,
    pod_mapping=st.none() | pod_mappings,
)

conditions = st.builds(
    Condition, type=st.sampled_from([str(t) for t in ConditionType]),
    status=st.sampled_from(["True", "False", "Unknown"]), reason=text, message=text,
    last_transition_time=times, observed_generation=st.integers(0, 2**40),
)


@st.composite
def statuses(draw: st.DrawFn) -> HealthEventStatus:
    conds = draw(st.lists(conditions, max_size=5, unique_by=lambda c: c.type))
    return HealthEventStatus(
        phase=draw(st.sampled_from(list(Phase))), conditions=tuple(conds),
        last_remediation_time=draw(st.none() | times), resolved_at=draw(st.none() | times),
        observed_generation=draw(st.integers(0, 2**40)),
        remediation_mode=draw(st.sampled_from(["", *(str(m) for m in RemediationMode)])),
        node_uid=draw(st.just("") | label_value), drain=draw(st.none() | drain_records),
    )


events = st.builds(
    HealthEvent,
    name=label_value, spec=specs, status=statuses(),
    labels=st.dictionaries(st.sampled_from(["nvsentinel.nvidia.com/node", "nvsentinel.nvidia.com/source", "app"]),
                           label_value, max_size=3),
    annotations=st.dictionaries(word, text, max_size=3),
    resource_version=st.integers(0, 10**9).map(lambda n: str(n) if n else ""),
    uid=st.uuids().map(str) | st.just(""),
    generation=st.integers(0, 100),
    creation_timestamp=st.none() | times,
)
