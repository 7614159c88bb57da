"""Label selectors (policy/selectors.py): the API server's grammar, matched in memory for the mode rules."""
from __future__ import annotations

import pytest

from nvsentinel.policy.selectors import Requirement, parse_selector

LABELS = {"pool": "aws", "tier": "gold", "example.com/rack": "r12", "gpu": ""}


@pytest.mark.parametrize(("selector", "matches"), [
    ("", True),                                   # empty: every node
    ("pool=aws", True), ("pool==aws", True), ("pool=gcp", False),
    ("pool!=gcp", True), ("pool!=aws", False), ("zone!=a", True),   # != matches a missing key (as the server)
    ("pool", True), ("zone", False),                                # exists
    ("!zone", True), ("!pool", False), ("! pool", False),           # does not exist
    ("tier in (gold,silver)", True), ("tier in (silver)", False), ("zone in (a)", False),
    ("tier notin (silver, bronze)", True), ("tier notin (gold)", False), ("zone notin (a)", True),
    ("example.com/rack=r12", True), ("example.com/rack in (r1,r12)", True),
    ("gpu=", True), ("gpu", True),                                  # an empty value is a value
    ("pool=aws,tier in (gold),!zone", True), ("pool=aws,tier=silver", False),
    (" pool = aws , tier notin ( silver ) ", True),                 # spaces around parts and values
])
def test_grammar_matches_like_the_api_server(selector: str, matches: bool) -> None:
    assert parse_selector(selector).matches(LABELS) is matches


def test_parsed_requirements_keep_the_text() -> None:
    sel = parse_selector("a=1,b!=2,c in (x,y),d notin (z),e,!f")
    assert sel.text == "a=1,b!=2,c in (x,y),d notin (z),e,!f"
    assert sel.requirements == (
        Requirement("a", "in", frozenset({"1"})), Requirement("b", "notin", frozenset({"2"})),
        Requirement("c", "in", frozenset({"x", "y"})), Requirement("d", "notin", frozenset({"z"})),
        Requirement("e", "exists"), Requirement("f", "!exists"))


def test_no_labels_at_all() -> None:
    assert parse_selector("!a").matches(None) and parse_selector("a!=b").matches({})
    assert not parse_selector("a").matches(None)


@pytest.mark.parametrize(("selector", "says"), [
    ("a in (b", "unbalanced '('"),
    ("a in b)", "unbalanced ')'"),
    ("a=1,,b=2", "empty requirement"),
    ("a=1,", "empty requirement"),
    ("bad key=1", "'bad key' is not a label key"),
    ("-a=1", "'-a' is not a label key"),
    ("a=b c", "'b c' is not a label value"),
    ("a=" + "v" * 64, "is not a label value"),                       # values are at most 63 characters
    ("a=b=c", "'b=c' is not a label value"),
    ("a in (x,y z)", "'y z' is not a label value"),
    ("!a=b", "'!a' is not a label key"),
    ("Example.com/a=b", "is not a label key"),                       # the prefix is a DNS subdomain
])
def test_errors_name_the_bad_part(selector: str, says: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_selector(selector)
    assert says in str(exc.value)


def test_keys_and_values_at_their_length_limits() -> None:
    assert parse_selector("a=" + "v" * 63).matches({"a": "v" * 63})
    assert parse_selector("k" * 63).matches({"k" * 63: "x"})
    with pytest.raises(ValueError):
        parse_selector("k" * 64)


def test_set_requirements_need_a_value_and_take_no_space_before_the_parenthesis():
    """Verify `a in ()` is refused and `a in(b)` read, as the API server does."""
    with pytest.raises(ValueError):
        parse_selector("a in ()")
    assert parse_selector("a in(b)").matches({"a": "b"}) and not parse_selector("a notin(b)").matches({"a": "b"})
