"""The dedup window: repeats collapse with a count and first/last time stamps."""
from __future__ import annotations

import pytest
from xid_samples import UUID

from nvsentinel import xid


def line(ts: float, xid_number: int = 95, pci: str = "0000:3b:00", pid: int = 1, msg: str = "Uncontained: FBHUB") -> str:
    return f"[{ts:12.6f}] NVRM: Xid (PCI:{pci}): {xid_number}, pid={pid}, name=p{pid}, {msg}"


def test_repeats_collapse_within_the_window():
    """Verify 1000 identical XID 95s from many processes within the window become one run with a count."""
    events = xid.decode("\n".join(line(10 + i * 0.01, pid=i) for i in range(1000)))
    runs = xid.dedupe(events, window=60)
    assert len(runs) == 1
    run = runs[0]
    assert run.count == 1000 and run.first_timestamp == 10.0 and run.last_timestamp == pytest.approx(19.99)
    assert run.event == events[0]


def test_distinct_errors_stay_apart_in_first_seen_order():
    """Verify a different GPU, XID or message starts its own run; runs come in order of first event."""
    text = "\n".join([
        line(1), line(2, pci="0000:b3:00"), line(3, xid_number=48), line(4, msg="other"), line(5),
        line(6, pci="0000:b3:00"),
    ])
    runs = xid.dedupe(xid.decode(text), window=60)
    assert [(r.event.pci, r.event.xid, r.event.message, r.count) for r in runs] == [
        ("0000:3b:00", 95, "Uncontained: FBHUB", 2),
        ("0000:b3:00", 95, "Uncontained: FBHUB", 2),
        ("0000:3b:00", 48, "Uncontained: FBHUB", 1),
        ("0000:3b:00", 95, "other", 1),
    ]


def test_window_is_measured_from_the_first_event_and_time_going_back_splits():
    """Verify a run closes window seconds after its first event, and a reboot (clock going back) splits."""
    events = xid.decode("\n".join([line(0), line(30), line(60), line(61), line(62), line(5)]))
    runs = xid.dedupe(events, window=60)
    assert [(r.first_timestamp, r.last_timestamp, r.count) for r in runs] == [(0, 60, 3), (61, 62, 2), (5, 5, 1)]
    assert [r.count for r in xid.dedupe(events, window=0)] == [1] * 6


def test_events_without_time_and_mixed_clocks():
    """Verify untimed repeats collapse together, and a realtime stamp never joins a monotonic run."""
    text = "\n".join([
        "NVRM: Xid (PCI:0000:3b:00): 95, x",
        "NVRM: Xid (PCI:0000:3b:00): 95, x",
        "[    1.000000] NVRM: Xid (PCI:0000:3b:00): 95, x",
        "[Thu Jan  1 00:00:01 1970] NVRM: Xid (PCI:0000:3b:00): 95, x",
    ])
    runs = xid.dedupe(xid.decode(text))
    assert [(r.count, r.event.clock) for r in runs] == [(2, ""), (1, "monotonic"), (1, "realtime")]


def test_streaming_deduper_reports_new_runs_and_bounds_memory():
    """Verify add() says when to act, pop_closed() hands out finished runs, and max_open bounds open runs."""
    d = xid.Deduper(window=10, max_open=2)
    events = xid.decode("\n".join([line(0), line(1), line(20), line(2, xid_number=48), line(3, xid_number=31)]))
    assert [d.add(e) for e in events] == [True, False, True, True, True]
    closed = d.pop_closed()
    assert [(r.event.xid, r.count, r.first_timestamp) for r in closed] == [(95, 2, 0), (95, 1, 20)]
    assert d.pop_closed() == []
    assert [(r.event.xid, r.count) for r in d.flush()] == [(48, 1), (31, 1)]
    with pytest.raises(ValueError, match="window"):
        xid.Deduper(window=-1)
    with pytest.raises(ValueError, match="max_open"):
        xid.Deduper(max_open=0)


def test_key_uses_uuid_when_there_is_no_pci():
    """Verify events without a PCI id (a reset line for an unmapped GPU) are keyed by their UUID."""
    events = xid.decode(f"GPU reset executed: {UUID}\nGPU reset executed: {UUID}\n")
    assert xid.dedup_key(events[0]) == ("gpu_reset", UUID, "GPU_RESET", "")
    assert [r.count for r in xid.dedupe(events)] == [2]
