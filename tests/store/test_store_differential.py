"""Differential property test: compiled store + fan-out vs the twin vs a minimal model.

A hypothesis RuleBasedStateMachine applies the same random operations to all three and asserts
equal results *and* equal exception types at every step; every subscriber's stream is checked to
be the model's event log, in RV order, gap-free (or ended by an explicit eviction).
"""
from __future__ import annotations

import pytest
from gpus import gpu, gpu_name, status, wire
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nvsentinel import _store_py
from nvsentinel.errors import NvsentinelError

try:
    from nvsentinel import _store_c
except ImportError:  # pragma: no cover - the test below then fails loudly
    _store_c = None

NAMES = [gpu_name(i) for i in range(5)] + ["not-a-gpu"]
MAX_GPUS = 4
MAX_CONDITIONS = 3
MAX_LAG = 3

condition = st.tuples(
    st.sampled_from(["Ready", "Xid", "Ecc", "Nvlink", "Power", ""]),
    st.sampled_from(["True", "False", "Unknown", "Maybe"]),
)
conditions = st.lists(condition, max_size=5, unique_by=lambda c: c[0]).map(tuple)
rv_choice = st.sampled_from(["right", "stale", "zero", "negative"])


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def outcome(fn):
    """Run fn; return ("ok", value) or ("err", exception type)."""
    try:
        return ("ok", fn())
    except NvsentinelError as exc:
        return ("err", type(exc))


def rec_key(rec):
    return (rec.name, rec.resource_version, rec.data, rec.health)


def event_key(ev):
    return (ev.type, ev.resource_version, ev.name, ev.data)


def normalise(result):
    kind, value = result
    if kind == "err":
        return result
    if isinstance(value, tuple):  # create
        return ("ok", (rec_key(value[0]), value[1]))
    return ("ok", rec_key(value))


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        kwargs = dict(
            max_gpus=MAX_GPUS,
            max_conditions=MAX_CONDITIONS,
            max_lag=MAX_LAG,
            max_subscribers=4,
            subscribe_burst=10**6,
            clock=Clock(),
        )
        self.c = _store_c.GpuStore(**kwargs)
        self.py = _store_py.GpuStore(**kwargs)
        self.rv = 0  # the model
        self.objects: dict[str, int] = {}  # name -> rv of last change
        self.log: list[tuple[str, int, str]] = []  # (type, rv, name)
        self.subs: list[dict] = []

    # -- helpers --

    def both(self, call):
        rc = outcome(lambda: call(self.c))
        rp = outcome(lambda: call(self.py))
        assert normalise(rc) == normalise(rp)
        return rc

    def expected_rv(self, name, choice):
        current = self.objects.get(name, 0)
        return {"right": current, "stale": current + 1000, "zero": 0, "negative": -1}[choice]

    def record_mutation(self, kind, name):
        self.rv += 1
        self.log.append((kind, self.rv, name))
        if kind == "DELETED":
            del self.objects[name]
        else:
            self.objects[name] = self.rv

    # -- mutations --

    @rule(name=st.sampled_from(NAMES), conds=conditions)
    def create(self, name, conds):
        result = self.both(lambda s: s.create(wire(gpu(name, conditions=conds))))
        valid = name != "not-a-gpu" and all(c[0] and c[1] != "Maybe" for c in conds)
        if not valid:
            assert result[0] == "err"
        elif name in self.objects:
            assert result[0] == "ok" and result[1][1] is False
        elif len(self.objects) >= MAX_GPUS:
            assert result[0] == "err"
        else:
            assert result[0] == "ok" and result[1][1] is True
            assert result[1][0].resource_version == self.rv + 1
            self.record_mutation("ADDED", name)

    @rule(name=st.sampled_from(NAMES), conds=conditions, choice=rv_choice)
    def update_status(self, name, conds, choice):
        expected = self.expected_rv(name, choice)
        result = self.both(lambda s: s.update_status(name, status(*conds), expected_rv=expected))
        ok = (
            name in self.objects
            and choice in ("right", "zero")
            and all(c[0] and c[1] != "Maybe" for c in conds)
        )
        assert (result[0] == "ok") == ok, (result, name, choice, conds)
        if ok:
            assert result[1].resource_version == self.rv + 1
            assert len(result[1].message().status.conditions) == min(len(conds), MAX_CONDITIONS)
            self.record_mutation("MODIFIED", name)

    @rule(name=st.sampled_from(NAMES), conds=conditions, choice=rv_choice)
    def update(self, name, conds, choice):
        g = gpu(name, conditions=conds)
        expected = self.expected_rv(name, choice)
        result = self.both(lambda s: s.update(wire(g), expected_rv=expected))
        ok = (
            name in self.objects
            and choice in ("right", "zero")
            and all(c[0] and c[1] != "Maybe" for c in conds)
        )
        assert (result[0] == "ok") == ok
        if ok:
            self.record_mutation("MODIFIED", name)

    @rule(name=st.sampled_from(NAMES), choice=rv_choice)
    def delete(self, name, choice):
        expected = self.expected_rv(name, choice)
        result = self.both(lambda s: s.delete(name, expected_rv=expected))
        ok = name in self.objects and choice in ("right", "zero")
        assert (result[0] == "ok") == ok
        if ok:
            assert result[1].resource_version == self.rv + 1
            self.record_mutation("DELETED", name)

    @rule(data=st.binary(max_size=64))
    def garbage(self, data):
        result = self.both(lambda s: s.create(data))
        if result[0] == "ok" and result[1][1]:
            self.record_mutation("ADDED", result[1][0].name)

    @rule(name=st.sampled_from(NAMES))
    def get(self, name):
        result = self.both(lambda s: s.get(name))
        assert (result[0] == "ok") == (name in self.objects)
        if name in self.objects:
            assert result[1].resource_version == self.objects[name]

    # -- watches --

    @rule(fresh=st.booleans(), back=st.integers(min_value=-1, max_value=12))
    def subscribe(self, fresh, back):
        since = None if fresh else self.rv - back
        rc = outcome(lambda: self.c.watch(since_rv=since))
        rp = outcome(lambda: self.py.watch(since_rv=since))
        assert (rc[0], rc[1] if rc[0] == "err" else "ok") == (rp[0], rp[1] if rp[0] == "err" else "ok")
        if rc[0] == "ok":
            if fresh:
                expected = [("ADDED", rv, name) for name, rv in sorted(self.objects.items(), key=lambda kv: kv[1])]
                start = self.rv
            else:
                expected = []
                start = since
            self.subs.append({"c": rc[1], "py": rp[1], "expected": expected, "after": start, "seen": 0})
        elif since is not None and 0 <= since <= self.rv and len(self.subs) < 4:
            # refused only when the RV has left the window
            assert self.rv - since > MAX_LAG or rc[1].__name__ in ("LimitExceeded",), rc

    @precondition(lambda self: self.subs)
    @rule(i=st.integers(min_value=0, max_value=3))
    def drain(self, i):
        sub = self.subs[i % len(self.subs)]
        got_c, end_c = self._drain(sub["c"])
        got_py, end_py = self._drain(sub["py"])
        assert [event_key(e) for e in got_c] == [event_key(e) for e in got_py]
        assert end_c == end_py
        # the stream is exactly the snapshot then the model log after the start RV (gap-free)
        full = sub["expected"] + [e for e in self.log if e[1] > sub["after"]]
        seen = sub["seen"]
        got = [(e.type, e.resource_version, e.name) for e in got_c if e.type != "BOOKMARK"]
        if end_c is None:
            assert got == full[seen : seen + len(got)]
            assert seen + len(got) == len(full)
        else:
            assert end_c in ("Evicted", "Closed")
            assert got == full[seen : seen + len(got)]
        sub["seen"] = seen + len(got)
        if end_c is not None:
            self.subs.remove(sub)

    @staticmethod
    def _drain(sub):
        events = []
        while True:
            try:
                ev = sub.get_nowait()
            except NvsentinelError as exc:
                return events, type(exc).__name__
            if ev is None:
                return events, None
            events.append(ev)

    @precondition(lambda self: self.subs)
    @rule(i=st.integers(min_value=0, max_value=3))
    def unsubscribe(self, i):
        sub = self.subs.pop(i % len(self.subs))
        sub["c"].close()
        sub["py"].close()

    @rule()
    def bookmark(self):
        self.c.bookmark()
        self.py.bookmark()

    # -- invariants --

    @invariant()
    def same_state(self):
        rv_c, recs_c = self.c.list()
        rv_py, recs_py = self.py.list()
        assert rv_c == rv_py == self.rv == self.c.resource_version
        assert [rec_key(r) for r in recs_c] == [rec_key(r) for r in recs_py]
        assert {r.name: r.resource_version for r in recs_c} == self.objects
        assert self.c.counts() == self.py.counts()
        assert self.c.list_wire() == self.py.list_wire()
        assert self.c.stats() == self.py.stats()


@pytest.mark.c_extension
def test_compiled_store_matches_twin_and_model():
    """Verify random operation sequences give equal results and errors on c, py and the model."""
    assert _store_c is not None, "the compiled store is not built"
    StoreMachine.TestCase.settings = settings(
        max_examples=150,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    StoreMachine.TestCase().runTest()
