"""The quarantine circuit breaker (pure): limit, counting, trip, hold, window expiry, operator reset."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvsentinel.policy.breaker import (
    CLOSED, TRIPPED, BreakerPolicy, BreakerState, CordonLedger, counted_cordons, evaluate,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
POLICY = BreakerPolicy(percent=10, max_nodes=50, window=600)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(("percent", "max_nodes", "gpu", "limit"), [
    (10, 50, 200, 20),
    (10, 50, 1000, 50),      # the absolute cap
    (10, 50, 5, 1),          # at least one when there are GPU nodes
    (10, 50, 0, 0),          # no GPU nodes: nothing to quarantine
    (10, 50, 19, 1),
    (10, 50, 29, 2),         # floor, never round up
    (100, 50, 7, 7),
    (33.3, 50, 100, 33),
    (10, 3, 200, 3),
])
def test_limit(percent, max_nodes, gpu, limit):
    """Verify limit = min(floor(pct * gpu / 100), max), at least 1 with GPU nodes."""
    assert BreakerPolicy(percent, max_nodes, 600).limit(gpu) == limit


def test_counted_cordons_window_and_reset():
    """Verify cordons count only inside (now - window, now] and not before the last reset."""
    cordons = {"old": at(0), "edge": at(100), "mid": at(400), "new": at(700), "future": at(2000)}
    assert counted_cordons(cordons, now=at(700), window=600, reset_at=None) == {"mid", "new"}
    assert counted_cordons(cordons, now=at(699), window=600, reset_at=None) == {"edge", "mid"}
    assert counted_cordons(cordons, now=at(700), window=600, reset_at=at(500)) == {"new"}


def test_allows_until_the_limit_then_trips_once_and_holds():
    """Verify the limit-th node is allowed, the next trips the breaker once, and later ones are held."""
    cordons = {f"n{i}": at(i) for i in range(19)}
    ok = evaluate(POLICY, BreakerState(), node="n19", cordons=cordons, gpu_nodes=200, now=at(20))
    assert ok.allowed and not ok.changed and ok.counted == 20 and ok.limit == 20
    cordons["n19"] = at(20)
    trip = evaluate(POLICY, BreakerState(), node="n20", cordons=cordons, gpu_nodes=200, now=at(21))
    assert not trip.allowed and trip.tripped_now and trip.changed
    assert trip.state.state == TRIPPED and trip.state.tripped_at == at(21)
    assert "over the limit of 20" in trip.state.reason and "20" in trip.message
    held = evaluate(POLICY, trip.state, node="n21", cordons=cordons, gpu_nodes=200, now=at(30))
    assert not held.allowed and not held.tripped_now and not held.changed
    assert held.message.startswith("circuit breaker open since")


def test_tripped_stays_tripped_even_when_the_count_drops():
    """Verify a trip holds for the whole window since the trip, even after the counted cordons expired."""
    state = BreakerState(TRIPPED, tripped_at=at(500), reason="x")
    held = evaluate(POLICY, state, node="n", cordons={}, gpu_nodes=200, now=at(1000))
    assert not held.allowed


def test_window_expiry_closes_the_breaker():
    """Verify the breaker closes by itself once the window has passed since the trip, and says so."""
    state = BreakerState(TRIPPED, tripped_at=at(0), reason="x")
    v = evaluate(POLICY, state, node="n", cordons={"a": at(1)}, gpu_nodes=200, now=at(600))
    assert v.allowed and v.changed and v.state.state == CLOSED and "window" in v.state.reason
    assert v.state.tripped_at == at(0)  # history kept for the operator


def test_reset_resumes_and_only_later_cordons_count():
    """Verify an operator reset closes the breaker and cordons before resetAt stop counting."""
    cordons = {f"n{i}": at(i) for i in range(20)}
    tripped = evaluate(POLICY, BreakerState(), node="x", cordons=cordons, gpu_nodes=200, now=at(30)).state
    reset = dataclasses.replace(tripped, state=CLOSED, reason="reset by operator", reset_at=at(40))
    allowed = evaluate(POLICY, reset, node="x", cordons=cordons, gpu_nodes=200, now=at(41))
    assert allowed.allowed and allowed.counted == 1 and not allowed.changed


def test_a_node_already_counted_is_allowed_even_when_tripped():
    """Verify re-cordoning a counted node (a retry) is allowed and adds nothing, breaker open or not."""
    state = BreakerState(TRIPPED, tripped_at=at(10), reason="x")
    v = evaluate(POLICY, state, node="n1", cordons={"n1": at(5)}, gpu_nodes=200, now=at(11))
    assert v.allowed and v.already_counted and v.counted == 1


def test_force_bypasses_but_is_counted_and_never_trips():
    """Verify the force override cordons past the limit and through a trip without changing the state."""
    cordons = {f"n{i}": at(i) for i in range(20)}
    v = evaluate(POLICY, BreakerState(), node="x", cordons=cordons, gpu_nodes=200, now=at(30), force=True)
    assert v.allowed and v.forced and v.counted == 21 and not v.changed and v.state.state == CLOSED
    assert "force" in v.message
    tripped = BreakerState(TRIPPED, tripped_at=at(25))
    assert evaluate(POLICY, tripped, node="y", cordons=cordons, gpu_nodes=200, now=at(30), force=True).allowed


def test_no_gpu_nodes_holds():
    """Verify with no GPU nodes the limit is 0 and a cordon trips the breaker rather than passing."""
    v = evaluate(POLICY, BreakerState(), node="x", cordons={}, gpu_nodes=0, now=at(0))
    assert not v.allowed and v.tripped_now and v.limit == 0


def test_state_configmap_data_round_trip():
    """Verify the ConfigMap data has state, trippedAt, reason, resetAt and parses back; junk reads as Closed."""
    s = BreakerState(TRIPPED, tripped_at=at(1), reason="why", reset_at=at(0))
    data = s.to_data()
    assert data == {"state": "Tripped", "trippedAt": "2026-03-01T12:00:01Z", "reason": "why",
                    "resetAt": "2026-03-01T12:00:00Z"}
    assert BreakerState.from_data(data) == s
    assert BreakerState.from_data(None) == BreakerState()
    assert BreakerState().to_data() == {"state": "Closed", "trippedAt": "", "reason": "", "resetAt": ""}
    assert BreakerState.from_data({"state": "Bogus", "trippedAt": "never"}) == BreakerState()


# ---- property: a simulated controller never overshoots ---------------------------------------------------------

STEP = st.one_of(
    st.tuples(st.just("new"), st.floats(0, 200)),        # a fatal event on a node not yet cordoned
    st.tuples(st.just("retry"), st.floats(0, 200)),      # the same event again on an already-cordoned node
    st.tuples(st.just("force"), st.floats(0, 200)),      # a forced event on a new node
    st.tuples(st.just("reset"), st.floats(0, 200)),      # `nvsentinel breaker reset`
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(STEP, max_size=120), gpu=st.integers(1, 300),
       percent=st.sampled_from([1, 5, 10, 25, 100]), max_nodes=st.integers(1, 40),
       window=st.sampled_from([60.0, 300.0, 600.0]))
def test_never_more_than_limit_in_any_window(steps, gpu, percent, max_nodes, window):
    """Verify a simulated run never counts more cordons than the limit in a window and holds while tripped."""
    policy = BreakerPolicy(percent, max_nodes, window)
    limit = policy.limit(gpu)
    state = BreakerState()
    cordons: dict[str, dt.datetime] = {}
    forced: set[str] = set()
    resets: list[dt.datetime] = []
    allowed_times: list[tuple[dt.datetime, str]] = []
    trips: list[dt.datetime] = []
    now = T0
    for i, (op, advance) in enumerate(steps):
        now += dt.timedelta(seconds=advance)
        if op == "reset":
            state = dataclasses.replace(state, state=CLOSED, reason="reset", reset_at=now)
            resets.append(now)
            continue
        if op == "retry" and cordons:
            node = sorted(cordons)[i % len(cordons)]
        else:
            node = f"n{i}"
        was_open = state.effective(now, window).tripped
        v = evaluate(policy, state, node=node, cordons=cordons, gpu_nodes=gpu, now=now, force=op == "force")
        assert not (v.tripped_now and was_open), "a trip is announced once"
        if v.tripped_now:
            trips.append(now)
        if v.allowed and not v.already_counted:
            cordons[node] = now
            if op != "force":
                assert not was_open, "nothing new is cordoned while the breaker is open"
                allowed_times.append((now, node))
                last_reset = resets[-1] if resets else None
                assert len(counted_cordons(cordons, now=now, window=window, reset_at=last_reset)) <= limit
            else:
                forced.add(node)
        if not v.allowed:
            assert op != "force"
        state = v.state
        # after a reset or once the window passed since the trip, a new node under the limit must pass
        if was_open is False and not v.allowed:
            assert v.tripped_now and v.counted + 1 > limit
    # and afterwards, over every window that ends at a cordon: the unforced cordons never exceed the limit
    unforced = {n: t for n, t in cordons.items() if n not in forced}
    for t, _node in allowed_times:
        last_reset = max((r for r in resets if r <= t), default=None)
        in_window = counted_cordons(unforced, now=t, window=window, reset_at=last_reset)
        assert len(in_window) <= limit, (t, sorted(in_window), limit)


def test_sequence_trip_reset_trip_again():
    """Verify 20 pass, the 21st trips, a reset lets exactly 20 more pass, then it trips again."""
    state = BreakerState()
    cordons: dict[str, dt.datetime] = {}
    outcomes = []
    now = T0
    for i in range(25):
        now += dt.timedelta(seconds=1)
        v = evaluate(POLICY, state, node=f"a{i}", cordons=cordons, gpu_nodes=200, now=now)
        state = v.state
        outcomes.append(v.allowed)
        if v.allowed:
            cordons[f"a{i}"] = now
    assert outcomes == [True] * 20 + [False] * 5 and state.tripped
    now += dt.timedelta(seconds=1)
    state = dataclasses.replace(state, state=CLOSED, reset_at=now, reason="reset")
    again = []
    for i in range(25):
        now += dt.timedelta(seconds=1)
        v = evaluate(POLICY, state, node=f"b{i}", cordons=cordons, gpu_nodes=200, now=now)
        state = v.state
        again.append(v.allowed)
        if v.allowed:
            cordons[f"b{i}"] = now
    assert again == [True] * 20 + [False] * 5 and state.tripped and state.reset_at is not None


_NODES = st.sampled_from([f"n{i}" for i in range(12)])
_SECONDS = st.integers(min_value=0, max_value=1500)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(_NODES, st.none() | _SECONDS), max_size=40), now=_SECONDS,
       reset=st.none() | _SECONDS, node=_NODES, gpu=st.integers(min_value=0, max_value=300),
       tripped=st.booleans(), force=st.booleans())
def test_the_ledger_counts_and_decides_as_the_scan_does(ops, now, reset, node, gpu, tripped, force):
    """The controller's incremental ledger (set / forget per Node change) gives every verdict the full
    scan of the same cordons gives: the same count, the same node-already-counted answer."""
    ledger, plain = CordonLedger(), {}
    for name, when in ops:
        ledger.set(name, None if when is None else at(when))
        if when is None:
            plain.pop(name, None)
        else:
            plain[name] = at(when)
    assert dict(ledger) == plain and len(ledger) == len(plain)
    reset_at = None if reset is None else at(reset)
    assert ledger.count(now=at(now), window=600, reset_at=reset_at) == len(
        counted_cordons(plain, now=at(now), window=600, reset_at=reset_at))
    state = BreakerState(TRIPPED, at(now - 10), "x") if tripped else BreakerState(reset_at=reset_at)
    args = {"node": node, "gpu_nodes": gpu, "now": at(now), "force": force}
    assert evaluate(POLICY, state, cordons=ledger, **args) == evaluate(POLICY, state, cordons=plain, **args)
