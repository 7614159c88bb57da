"""Benchmark workloads for the GPU store and the watch fan-out, compiled core against its twin.

Shared by `nvsentinel bench` (a self-contained `time.perf_counter` runner, `run_all`) and the
pytest-benchmark suites in `bench/`, so both measure the very same operations. No pytest import.

Each case (SPEC §9) is built per implementation by `build(case, impl)` into a `Workload`: `batch()`
runs `ops` operations and is the only timed part; `setup()`, when present, gives the next batch
fresh state (untimed); `verify(result)` checks a batch's result; `probe()` returns an observable
outcome that must equal the twin's (the `correct` column). Implementations:

* ``c`` / ``py``: `nvsentinel._store_c` / `_store_py` (and `_fanout_c` / `_fanout_py`), imported
  directly, so both run in one process whatever `NVSENTINEL_NO_EXTENSIONS` says;
* ``baseline``: the simplest Python store, a `dict` plus a `threading.Lock`, holding bytes the
  caller already serialized (no parsing, validation or watch) — what the store costs over a dict;
* ``floor``: the physical floor of a case (`dict.get` for get, `b"".join` of the stored per-GPU
  bytes for list).

Drivers: a per-call case is driven from C (`deque(map(fn, args), maxlen=0)`) when the call needs
no feedback, so the harness adds the least it can to both sides; update-status needs the previous
RV, so it is a plain Python loop. Either way the driver is in every number, compiled and twin alike.

Library code: no printing, no exits. `run_all` reports progress through a callback.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import importlib
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from types import ModuleType
from typing import Any

from nvsentinel._proto import gpu_pb2

__all__ = [
    "format_ns",
    "format_ratio",
    "CASES",
    "IMPLS",
    "TARGETS",
    "Target",
    "Workload",
    "Row",
    "DictStore",
    "available_impls",
    "build",
    "gpu_name",
    "gpu_status",
    "gpu_object",
    "agrees",
    "environment",
    "impls_of",
    "judge_targets",
    "measure",
    "reference_of",
    "run_all",
]

#: Implementations under test, compiled first. "py" is the twin every ratio is taken against.
IMPLS: tuple[str, ...] = ("c", "py")
TWIN = "py"

#: A fleet at the store's default bound (SPEC §2.1: at most 1024 GPUs).
FLEET = 1024
#: Conditions per GPU: what a node agent with NVML, kernel-log and fabric sources reports.
CONDITION_TYPES: tuple[str, ...] = (
    "Ready",
    "XidClean",
    "MemoryHealthy",
    "ThermalOk",
    "PowerOk",
    "NVLinkHealthy",
    "PCIeHealthy",
    "DriverHealthy",
)
#: Subscriber counts of the publish case (SPEC §9: 256 subscribers ≤ 2× one).
PUBLISH_SUBSCRIBERS: tuple[int, ...] = (1, 16, 256)
#: Delivery case: events to each of DELIVERY_SUBSCRIBERS subscribers (SPEC §9).
DELIVERY_EVENTS = 10_000
DELIVERY_EVENTS_QUICK = 1_000
DELIVERY_SUBSCRIBERS = 256
#: Publish this many events between drains: half the default lag bound (256), so no subscriber
#: is ever evicted and every one must see every event.
DELIVERY_BATCH = 128
#: Seconds of the epoch the synthetic conditions transitioned at (2025-10-09, any fixed value).
_EPOCH = 1_760_000_000


# ---- realistic objects ----------------------------------------------------------------------


def format_ns(value: float) -> str:
    """A duration in nanoseconds, in the unit a reader expects (ns, µs, ms)."""
    if value >= 1e6:
        return f"{value / 1e6:.2f} ms"
    if value >= 1e3:
        return f"{value / 1e3:.2f} µs"
    return f"{value:.1f} ns"


def format_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def gpu_name(i: int) -> str:
    """A deterministic NVML UUID name (`GPU-8-4-4-4-12` hex) for GPU number `i`."""
    return f"GPU-{uuid.UUID(int=(0x9E5C_4A21 << 96) | (0xB7D0 << 80) | i)}"


def gpu_status(i: int, *, unhealthy: bool = False, generation: int = 0) -> gpu_pb2.GpuStatus:
    """A GpuStatus as a node agent reports it: eight conditions with reasons and messages.

    `unhealthy` reports an XID 79 (fallen off the bus) with the reboot it calls for;
    `generation` moves the transition times, as a later report would.
    """
    st = gpu_pb2.GpuStatus(recommended_action="RESTART_BM" if unhealthy else "NONE")
    for k, ctype in enumerate(CONDITION_TYPES):
        bad = unhealthy and ctype == "XidClean"
        c = st.conditions.add(
            type=ctype,
            status="False" if bad else "True",
            reason="Xid79" if bad else f"{ctype}Checked",
            message=(
                f"NVRM: Xid (PCI:0000:{0x18 + i % 8:02x}:00): 79, GPU has fallen off the bus."
                if bad
                else f"{ctype}: no fault in the last 300 s on gpu-node-{i // 8:04d} (GPU {i % 8})"
            ),
        )
        c.last_transition_time.seconds = _EPOCH + generation * 60 + k
        c.last_transition_time.nanos = (i * 7919 + k) % 1_000_000_000
    return st


def gpu_object(i: int, *, unhealthy: bool = False) -> gpu_pb2.Gpu:
    """A Gpu with metadata, spec and an eight-condition status (about 1.1 KiB on the wire)."""
    g = gpu_pb2.Gpu()
    g.metadata.name = gpu_name(i)
    g.metadata.namespace = "nvsentinel"
    g.spec.uuid = gpu_name(i)
    g.status.CopyFrom(gpu_status(i, unhealthy=unhealthy))
    return g


@functools.lru_cache(maxsize=4)
def _fleet_wire(n: int) -> tuple[bytes, ...]:
    """The first n GPUs of the fleet, serialized (built once: protobuf is not what is timed)."""
    return tuple(gpu_object(i).SerializeToString() for i in range(n))


# ---- implementations ------------------------------------------------------------------------


def _module(kind: str, impl: str) -> ModuleType:
    return importlib.import_module(f"nvsentinel._{kind}_{impl}")


def available_impls() -> tuple[str, ...]:
    """The implementations this installation can run: ("c", "py"), or ("py",) in a pure build."""
    try:
        _module("store", "c")
        _module("fanout", "c")
    except ImportError:
        return (TWIN,)
    return IMPLS


@functools.lru_cache(maxsize=4)
def _stored_fleet(n: int) -> tuple[tuple[str, bytes], ...]:
    """(name, record bytes) of the first n GPUs as the twin stores them, creation order.

    Names are the store's own str objects (decoded from the Gpu bytes), as a dict keyed by the
    stored records would hold them.
    """
    store = _filled_store(TWIN, _fleet_wire(n))
    return tuple((r.name, r.data) for r in store.list()[1])


def _filled_store(impl: str, wire: Sequence[bytes], **kwargs: Any) -> Any:
    store = _module("store", impl).GpuStore(**kwargs)
    for data in wire:
        store.create(data)
    return store


class DictStore:
    """The baseline: a dict and a lock around bytes the caller already serialized.

    It does what a store must do at the least (RV bump and check, replace, delete) and nothing
    it should (no parsing, validation, canonical encoding, bounds or watch events).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[int, bytes]] = {}
        self._rv = 0

    def get(self, name: str) -> tuple[int, bytes]:
        return self._items[name]

    def create(self, name: str, data: bytes) -> int:
        with self._lock:
            if name in self._items:
                return self._items[name][0]
            self._rv += 1
            self._items[name] = (self._rv, data)
            return self._rv

    def update_status(self, name: str, data: bytes, expected_rv: int = 0) -> int:
        with self._lock:
            rv, _ = self._items[name]
            if expected_rv and expected_rv != rv:
                raise ValueError(f"conflict: {name} is at {rv}, not {expected_rv}")
            self._rv += 1
            self._items[name] = (self._rv, data)
            return self._rv

    def delete(self, name: str) -> int:
        with self._lock:
            del self._items[name]
            self._rv += 1
            return self._rv


# ---- workloads ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """A SPEC §9 target, judged on one number of one implementation's row.

    kind "vs_twin": twin time / this time ≥ value; "vs_baseline": this time / the case's baseline
    (or floor) time ≤ value; "vs_case": this time / the same implementation's time in case `ref`
    ≤ value.
    """

    text: str
    kind: str
    value: float
    impls: tuple[str, ...] = ("c",)
    ref: str = ""

    def judge(self, ratio: float) -> bool:
        return ratio >= self.value if self.kind == "vs_twin" else ratio <= self.value

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: SPEC §9 targets of this module's cases.
TARGETS: dict[str, Target] = {
    "store.get": Target("≥ 5× twin", "vs_twin", 5.0),
    "store.update_status": Target("≥ 5× twin", "vs_twin", 5.0),
    "store.list1024": Target("≤ 2× join floor", "vs_baseline", 2.0),
    "fanout.publish[256]": Target("≤ 2× publish[1]", "vs_case", 2.0, ("c", "py"), "fanout.publish[1]"),
    "fanout.delivery": Target("≥ 5× twin", "vs_twin", 5.0),
}


@dataclasses.dataclass
class Workload:
    """One case prepared for one implementation (see the module docstring)."""

    case: str
    impl: str
    ops: int  # operations per batch (ns/op = batch time / ops)
    batch: Callable[[], Any]
    setup: Callable[[], Any] | None = None
    verify: Callable[[Any], bool] | None = None
    probe: Callable[[], dict[str, Any]] | None = None
    unit: str = "op"
    note: str = ""
    keep: Any = None  # objects that must live as long as the workload (idle subscribers)


def _drive(fn: Callable[..., Any], *args: Iterable[Any]) -> None:
    """Call fn over the argument iterables from C, keeping nothing."""
    deque(map(fn, *args), maxlen=0)


def _store_get(impl: str, quick: bool) -> Workload:
    wire = _fleet_wire(FLEET)
    # The caller's names are its own str objects, equal to the stored keys but not identical
    # (as names decoded from a request are): every lookup compares the key bytes. Their hashes
    # are cached, as they are for any str used twice.
    names = [gpu_name(i) for i in range(FLEET)]
    calls = names * 4
    stored = _stored_fleet(FLEET)
    if impl == "floor":
        table = dict(stored)
        get: Callable[[str], Any] = table.get
        return Workload("store.get", impl, len(calls), lambda: _drive(get, calls),
                        probe=lambda: {"data": [table.get(n) for n in names]}, note="dict.get")
    if impl == "baseline":
        base = DictStore()
        for name, data in stored:
            base.create(name, data)
        get = base.get
        return Workload("store.get", impl, len(calls), lambda: _drive(get, calls),
                        probe=lambda: {"data": [base.get(n)[1] for n in names]}, note="dict + Lock")
    store = _filled_store(impl, wire)
    get = store.get
    return Workload(
        "store.get", impl, len(calls), lambda: _drive(get, calls),
        probe=lambda: {"data": [store.get(n).data for n in names],
                       "rvs": [store.get(n).resource_version for n in names]},
    )


def _store_update_status(impl: str, quick: bool) -> Workload:
    names = [gpu_name(i) for i in range(FLEET)]
    # Two reports per GPU, alternating healthy / XID 79, so the health counters move too.
    reports = [
        (gpu_status(i, generation=1).SerializeToString(),
         gpu_status(i, unhealthy=True, generation=2).SerializeToString())
        for i in range(FLEET)
    ]
    wire = _fleet_wire(FLEET)
    # Every GPU of a full store, RV checked; the quick run updates an eighth of them per batch.
    updated = names[: FLEET // 8] if quick else names
    if impl == "baseline":
        target: Any = DictStore()
        for i, data in enumerate(wire):
            target.create(gpu_name(i), data)  # its own key objects, as a store has
        rvs = {n: target.get(n)[0] for n in names}
        flip = [0]

        def batch_base() -> int:
            upd = target.update_status
            k = flip[0] = flip[0] ^ 1
            for n, rep in zip(updated, reports):
                rvs[n] = upd(n, rep[k], rvs[n])
            return rvs[updated[-1]]

        def probe_base() -> dict[str, Any]:
            s = DictStore()
            for n, data in zip(names[:64], wire):
                s.create(n, data)
            out = [s.update_status(n, reports[i][i % 2], s.get(n)[0]) for i, n in enumerate(names[:64])]
            return {"rvs": out}

        return Workload("store.update_status", impl, len(updated), batch_base, probe=probe_base, note="dict + Lock")

    store = _filled_store(impl, wire)
    rvs = {n: store.get(n).resource_version for n in names}
    flip = [0]

    def batch() -> int:
        upd = store.update_status
        k = flip[0] = flip[0] ^ 1
        for n, rep in zip(updated, reports):
            rvs[n] = upd(n, rep[k], rvs[n]).resource_version
        return rvs[updated[-1]]

    def probe() -> dict[str, Any]:
        s = _filled_store(impl, wire[:64])
        recs = [s.update_status(n, reports[i][i % 2], s.get(n).resource_version)
                for i, n in enumerate(names[:64])]
        return {"rvs": [r.resource_version for r in recs], "data": [r.data for r in recs],
                "health": [r.health for r in recs], "counts": tuple(s.counts())}

    return Workload("store.update_status", impl, len(updated), batch, probe=probe)


def _gpulist_items(wire: bytes) -> bytes:
    """The concatenated item payloads of a serialized GpuList, read back through protobuf."""
    return b"".join(item.SerializeToString() for item in gpu_pb2.GpuList.FromString(wire).items)


def _store_list(impl: str, quick: bool) -> Workload:
    wire = _fleet_wire(FLEET)
    if impl == "floor":
        datas = [data for _, data in _stored_fleet(FLEET)]
        return Workload("store.list1024", impl, 1, lambda: b"".join(datas),
                        probe=lambda: {"items": b"".join(datas)}, unit="list",
                        note='b"".join(stored bytes)')
    store = _filled_store(impl, wire)

    def probe() -> dict[str, Any]:
        out = store.list_wire()
        rv, recs = store.list()
        return {"wire": out, "items": _gpulist_items(out), "rv": rv, "names": [r.name for r in recs]}

    return Workload("store.list1024", impl, 1, store.list_wire,
                    verify=lambda out: len(out) > FLEET * 1000, probe=probe, unit="list")


def _store_churn(impl: str, quick: bool) -> Workload:
    resident = _fleet_wire(FLEET - 64)
    idx = range(FLEET - 64, FLEET)
    names = [gpu_name(i) for i in idx]
    fresh = [gpu_object(i).SerializeToString() for i in idx]
    if impl == "baseline":
        base = DictStore()
        for i, data in enumerate(resident):
            base.create(gpu_name(i), data)
        create, delete = base.create, base.delete

        def churn_base() -> None:
            _drive(create, names, fresh)
            _drive(delete, names)

        def probe_base() -> dict[str, Any]:
            s = DictStore()
            rvs = [s.create(n, d) for n, d in zip(names[:16], fresh)] + [s.delete(n) for n in names[:16]]
            return {"rvs": rvs, "len": len(s._items)}

        return Workload("store.churn", impl, len(names), churn_base, probe=probe_base,
                        unit="create+delete", note="dict + Lock")
    store = _filled_store(impl, resident)
    create, delete = store.create, store.delete

    def churn() -> None:
        _drive(create, fresh)
        _drive(delete, names)

    def probe() -> dict[str, Any]:
        s = _module("store", impl).GpuStore()
        made = [s.create(d)[0] for d in fresh[:16]]
        gone = [s.delete(n) for n in names[:16]]
        return {"rvs": [r.resource_version for r in made + gone], "data": [r.data for r in made + gone],
                "len": len(s)}

    return Workload("store.churn", impl, len(names), churn, probe=probe, unit="create+delete")


def _events(n: int) -> list[tuple[str, str, bytes]]:
    """n (type, name, data) watch events over the fleet: a MODIFIED stream of real Gpu bytes."""
    fleet = _stored_fleet(64)
    return [("MODIFIED",) + fleet[i % len(fleet)] for i in range(n)]


def _fanout(impl: str, **kwargs: Any) -> Any:
    # The subscribe rate limit (10/s, burst 20) guards the server, not this benchmark.
    return _module("fanout", impl).FanOut(subscribe_rate=1e9, subscribe_burst=1 << 20, **kwargs)


def _drain_all(subs: Sequence[Any], into: Sequence[list[Any]]) -> None:
    for sub, got in zip(subs, into):
        got.extend(iter(sub.get_nowait, None))


def _in_order(got: Sequence[list[Any]], events: Sequence[tuple[str, str, bytes]], first_rv: int) -> bool:
    """Every subscriber got every event in RV order: RVs first_rv.., and the very same events."""
    rvs = list(range(first_rv, first_rv + len(events)))
    rv_of = attrgetter("resource_version")
    if any(len(g) != len(rvs) or list(map(rv_of, g)) != rvs for g in got):
        return False
    g0 = got[0]
    return all((e.type, e.name, e.data) == want for e, want in zip(g0, events)) and all(
        g[-1] is g0[-1] for g in got  # one shared event object, not a copy per subscriber
    )


def _publish(subscribers: int) -> Callable[[str, bool], Workload]:
    case = f"fanout.publish[{subscribers}]"

    def builder(impl: str, quick: bool) -> Workload:
        events = _events(1024)
        types, names, datas = (list(col) for col in zip(*events))
        fo = _fanout(impl)
        subs = [fo.subscribe() for _ in range(subscribers)]  # attached, idle: cursors only
        next_rv = [1]

        def batch() -> int:
            start = next_rv[0]
            next_rv[0] = start + len(events)
            _drive(fo.publish, types, range(start, start + len(events)), names, datas)
            return start

        def probe() -> dict[str, Any]:
            f = _fanout(impl)
            s = [f.subscribe() for _ in range(subscribers)]
            got: list[list[Any]] = [[] for _ in s]
            for rv, (t, n, d) in enumerate(events[:DELIVERY_BATCH], start=1):
                f.publish(t, rv, n, d)
            _drain_all(s, got)
            ok = _in_order(got, events[:DELIVERY_BATCH], 1)
            return {"in_order": ok,
                    "events": [(e.type, e.resource_version, e.name, e.data) for e in got[0]]}

        return Workload(case, impl, len(events), batch, probe=probe, unit="publish",
                        note=f"{subscribers} idle subscriber{'s' if subscribers > 1 else ''}", keep=subs)

    return builder


def _delivery(impl: str, quick: bool) -> Workload:
    n_events = DELIVERY_EVENTS_QUICK if quick else DELIVERY_EVENTS
    events = _events(n_events)
    state: dict[str, Any] = {}

    def setup() -> None:
        state.clear()
        fo = _fanout(impl)
        state["fo"] = fo
        state["subs"] = [fo.subscribe() for _ in range(DELIVERY_SUBSCRIBERS)]

    def batch() -> list[list[Any]]:
        fo, subs = state["fo"], state["subs"]
        publish = fo.publish
        got: list[list[Any]] = [[] for _ in subs]
        for start in range(0, n_events, DELIVERY_BATCH):
            for rv, (t, n, d) in enumerate(events[start:start + DELIVERY_BATCH], start=start + 1):
                publish(t, rv, n, d)
            _drain_all(subs, got)
        return got

    def verify(got: list[list[Any]]) -> bool:
        ok = _in_order(got, events, 1)
        for sub in state.get("subs", ()):
            sub.close()
        state.clear()
        return ok

    return Workload("fanout.delivery", impl, n_events * DELIVERY_SUBSCRIBERS, batch, setup=setup,
                    verify=verify, unit="delivery",
                    note=f"{n_events} events × {DELIVERY_SUBSCRIBERS} subscribers")


#: case -> (builder(impl, quick), the case's implementations besides c and py).
CASES: dict[str, tuple[Callable[[str, bool], Workload], tuple[str, ...]]] = {
    "store.get": (_store_get, ("baseline", "floor")),
    "store.update_status": (_store_update_status, ("baseline",)),
    "store.list1024": (_store_list, ("floor",)),
    "store.churn": (_store_churn, ("baseline",)),
    **{f"fanout.publish[{k}]": (_publish(k), ()) for k in PUBLISH_SUBSCRIBERS},
    "fanout.delivery": (_delivery, ()),
}


def build(case: str, impl: str, *, quick: bool = False) -> Workload:
    """Prepare `case` for `impl` ("c", "py", or one of the case's baselines)."""
    builder, extra = CASES[case]
    if impl not in IMPLS + extra:
        raise ValueError(f"{case} has no implementation {impl!r} (choose from {IMPLS + extra})")
    return builder(impl, quick)


def impls_of(case: str) -> tuple[str, ...]:
    """Every implementation of a case: c, py, then its baselines."""
    return IMPLS + CASES[case][1]


def reference_of(case: str) -> str | None:
    """The baseline a case's "vs baseline" ratio is taken against (the floor if it has one)."""
    extra = CASES[case][1]
    return "floor" if "floor" in extra else (extra[0] if extra else None)


def agrees(outcome: dict[str, Any] | None, twin: dict[str, Any] | None) -> bool:
    """Outcomes agree when every key they share is equal (a baseline shares fewer keys)."""
    if outcome is None or twin is None:
        return outcome is twin
    shared = outcome.keys() & twin.keys()
    return bool(shared) and all(outcome[k] == twin[k] for k in shared) and outcome.get("in_order", True) is not False


# ---- the perf_counter runner ----------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """ns per operation of every sample (one sample = `loops` batches)."""

    samples: list[float]
    loops: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)


def measure(workloads: Sequence[Workload], *, repeat: int = 7, min_time: float = 0.02) -> tuple[list[Timing], list[Any]]:
    """Time the workloads of one case, samples interleaved so drift hits every one alike.

    A sample runs `loops` batches (enough for `min_time` seconds; 1 for workloads with a setup,
    which runs before each batch, untimed). GC is collected, frozen and disabled while timing.
    Returns the timings and the first batch result of each workload.
    """
    firsts: list[Any] = []
    loops: list[int] = []
    gc_was = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        samples: list[list[float]] = [[] for _ in workloads]
        for k, w in enumerate(workloads):  # warm-up, calibration and the result to verify
            if w.setup:
                w.setup()
            t0 = time.perf_counter()
            firsts.append(w.batch())
            dt = time.perf_counter() - t0
            if w.setup:  # a long batch on fresh state: its first run is a sample already
                loops.append(1)
                samples[k].append(dt * 1e9 / w.ops)
            else:
                loops.append(max(1, int(min_time / max(dt, 1e-9)) + 1))
        for _ in range(repeat):
            for k, w in enumerate(workloads):
                if w.setup and len(samples[k]) >= repeat:
                    continue
                if w.setup:
                    w.setup()
                batch, n = w.batch, loops[k]
                t0 = time.perf_counter()
                for _ in range(n):
                    batch()
                dt = time.perf_counter() - t0
                samples[k].append(dt * 1e9 / (n * w.ops))
    finally:
        gc.unfreeze()
        if gc_was:
            gc.enable()
    return [Timing(s, n) for s, n in zip(samples, loops)], firsts


@dataclasses.dataclass
class Row:
    """One line of the result table (JSON-ready via `dataclasses.asdict`)."""

    case: str
    impl: str
    ns_per_op: float  # median over samples
    best_ns_per_op: float
    ops_per_s: float
    unit: str
    vs_twin: float | None  # twin ns / this ns: > 1 is faster than the twin
    vs_baseline: float | None  # this ns / the case's baseline (or floor) ns
    target: str | None
    target_value: float | None  # the ratio the target is judged on
    met: bool | None
    correct: bool
    note: str = ""


def _rows_for(case: str, impls: Sequence[str], timings: dict[str, Timing], correct: dict[str, bool],
              units: dict[str, str], notes: dict[str, str]) -> list[Row]:
    twin = timings.get(TWIN)
    ref = reference_of(case)
    ref_t = timings.get(ref) if ref else None
    rows = []
    for impl in impls:
        t = timings[impl]
        rows.append(Row(
            case=case, impl=impl, ns_per_op=t.median, best_ns_per_op=t.best,
            ops_per_s=1e9 / t.median if t.median > 0 else float("inf"), unit=units[impl],
            vs_twin=twin.median / t.median if twin and t.median > 0 else None,
            vs_baseline=t.median / ref_t.median if ref_t and impl != ref and ref_t.median > 0 else None,
            target=None, target_value=None, met=None, correct=correct[impl], note=notes[impl],
        ))
    return rows


def judge_targets(rows: list[Row]) -> None:
    """Fill target, target_value and met on the rows a SPEC §9 target applies to."""
    by_key = {(r.case, r.impl): r for r in rows}
    for r in rows:
        target = TARGETS.get(r.case)
        if target is None or r.impl not in target.impls:
            continue
        r.target = target.text
        if target.kind == "vs_twin":
            value = r.vs_twin
        elif target.kind == "vs_baseline":
            value = r.vs_baseline
        else:
            other = by_key.get((target.ref, r.impl))
            value = r.ns_per_op / other.ns_per_op if other and other.ns_per_op > 0 else None
        r.target_value = value
        r.met = None if value is None else target.judge(value)


def _families(cases: Sequence[str]) -> list[list[str]]:
    """Cases grouped by the name before "[" (publish[1], publish[16], ...), in order."""
    out: dict[str, list[str]] = {}
    for case in cases:
        out.setdefault(case.split("[", 1)[0], []).append(case)
    return list(out.values())


def run_all(
    *,
    quick: bool = False,
    cases: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run every case (or `cases`) for every available implementation; rows in case order.

    quick: fewer, shorter samples and 1 000 delivery events instead of 10 000 (a few seconds).
    """
    impls_ok = set(available_impls()) | {"baseline", "floor"}
    repeat, min_time = (3, 0.005) if quick else (7, 0.025)
    rows: list[Row] = []
    for family in _families(cases or list(CASES)):
        # The cases of one family (publish[1], [16], [256]) are timed together, samples
        # interleaved, because a target compares them with each other.
        plan = [(case, [i for i in impls_of(case) if i in impls_ok]) for case in family]
        if progress:
            progress("; ".join(f"{case}: {', '.join(impls)}" for case, impls in plan))
        workloads = [build(case, impl, quick=quick) for case, impls in plan for impl in impls]
        long_batches = any(w.setup for w in workloads)
        timings, firsts = measure(workloads, repeat=(2 if quick else 3) if long_batches else repeat,
                                  min_time=min_time)
        outcomes = {(w.case, w.impl): w.probe() if w.probe else None for w in workloads}
        for case, impls in plan:
            mine = [(w, t, f) for w, t, f in zip(workloads, timings, firsts) if w.case == case]
            correct: dict[str, bool] = {}
            for w, _, first in mine:
                ok = w.verify(first) if w.verify else True
                if w.probe is not None:
                    ok = ok and agrees(outcomes[case, w.impl], outcomes.get((case, TWIN)))
                correct[w.impl] = bool(ok)
            rows.extend(_rows_for(case, impls, {w.impl: t for w, t, _ in mine}, correct,
                                  {w.impl: w.unit for w, _, _ in mine},
                                  {w.impl: w.note for w, _, _ in mine}))
        del workloads, firsts, outcomes
        gc.collect()
    judge_targets(rows)
    return rows


def environment() -> dict[str, Any]:
    """Reproduction facts: CPU, cores, Python, Cython, compile flags, platform."""
    import os
    import platform
    import sys

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        info = ""
    for line in info.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in info.splitlines():
        if line.startswith("flags"):
            if " hypervisor" in line:
                cpu += " (virtual machine)"  # vCPUs: neighbours share the host; expect drift
            break
    try:
        import Cython

        cython = Cython.__version__
    except ImportError:
        cython = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "python": sys.version.split()[0],
        "python_build": platform.python_implementation(),
        "cython": cython,
        "cflags": "-O2 (setup.py)",
        "platform": platform.platform(),
        "impls": list(available_impls()),
    }

