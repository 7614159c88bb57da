"""Property tests: the twin is the oracle for the compiled decoder; nothing raises; time is linear."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xid_samples import BODIES, PREFIXES, chunkings, decode_all, log_texts

from nvsentinel import _xid_py
from nvsentinel.xid import Action

try:
    from nvsentinel import _xid_c
except ImportError:  # pragma: no cover - the differential tests then fail loudly
    _xid_c = None


def _diff(events_py, events_c):
    """The first differing field, for a readable failure."""
    for i, (a, b) in enumerate(zip(events_py, events_c, strict=False)):
        if a != b:
            fields = [(f, getattr(a, f), getattr(b, f)) for f in a._fields if getattr(a, f) != getattr(b, f)]
            return f"event {i}: {fields}"
    return f"{len(events_py)} events (py) vs {len(events_c)} (c)"


@pytest.mark.c_extension
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_equals_twin_on_generated_logs(data):
    """Verify compiled == twin on kernel-log-like text (real templates, mutated fields, truncation, junk), any chunking."""
    assert _xid_c is not None, "nvsentinel._xid_c is not built"
    text = data.draw(log_texts())
    events_py = decode_all(_xid_py, text, data.draw(chunkings(text)))
    events_c = decode_all(_xid_c, text, data.draw(chunkings(text)))
    assert events_py == events_c, _diff(events_py, events_c)
    for ev in events_py:
        c = ev.classification
        assert c.fatal == (c.action is not Action.NONE)


@pytest.mark.c_extension
@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=400), text=st.text(max_size=200))
def test_compiled_equals_twin_on_arbitrary_input(blob, text):
    """Verify arbitrary bytes and str decode identically in both implementations."""
    assert _xid_c is not None, "nvsentinel._xid_c is not built"
    for data in (blob, text, b"NVRM: Xid (" + blob, "SXid (PCI:0000:00:00): 1, " + text):
        events_py = decode_all(_xid_py, data)
        assert events_py == decode_all(_xid_c, data), _diff(events_py, decode_all(_xid_c, data))


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=2000), text=st.text(max_size=500))
def test_arbitrary_input_never_raises(impl, blob, text):
    """Verify arbitrary bytes and str (lone surrogates included) never raise, whole or line by line."""
    mod = impl.load("xid")
    decode_all(mod, blob)
    decode_all(mod, text)
    for line in text.splitlines():
        mod.decode_line(line)


# Units that make a naive matcher backtrack: anchors whose rule fails late, repeated in one line.
ADVERSARIAL = [
    "NVRM: Xid (PCI:0000:00:00 GPU-I:1 GPU-CI:",
    "NVRM: Xid (PCI:0000:3b:00): 74, link 1(0x1, 0x1, 0x1, 0x1, ",
    "NVRM: Xid (PCI:0000:3b:00): 154, to 0x1 (to (",
    "NVRM: Xid (PCI:0000:3b:00): 13, (GPC 1, TPC 2, SM (GPC 1, TPC ",
    "NVRM: Xid (PCI:0000:3b:00): 145, A B C D Link 1 (0x1 0x",
    "NVRM: Xid (PCI:0000:3b:00): 31, Ch Ch Channel ChID 0x",
    "[ [ [  [ 1.",
    "6,1,1,",
    "nvidia-nvswitch1: nvidia-nvswitch1: SXid (PCI:0",
    "NVRM: GPU at PCI:0000:00:00.0: GPU",
    "NVRM: The NVIDIA GPU 0000:00:00 (PCI ID: 10de:",
    "GPU reset executed: GPU reset executed: GP",
    "pid=,name=,",
    "        ",
]


def _best_time(mod, data: bytes, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        decode_all(mod, data)
        best = min(best, time.perf_counter() - t0)
    return best


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.sampled_from(ADVERSARIAL), prefix=st.sampled_from(PREFIXES), tail=st.sampled_from(BODIES))
def test_time_is_linear_in_line_length(impl, unit, prefix, tail):
    """Verify 64 KiB of adversarial text costs about the same as one line as in 32 short lines (no quadratic path)."""
    mod = impl.load("xid")
    reps = max(1, 2048 // len(unit))
    short = (prefix + unit * reps + tail)[:2048]
    many_short = ((short + "\n") * 32).encode()
    one_long = ((prefix + unit * reps * 32 + tail)[: len(many_short) - 1] + "\n").encode()
    t_short = _best_time(mod, many_short)
    t_long = _best_time(mod, one_long)
    # same bytes either way: linear work costs about the same, quadratic work ~32x more; the margin
    # absorbs a noisy shared CI machine
    assert t_long < 8 * t_short + 0.005, (unit, t_long, t_short)
