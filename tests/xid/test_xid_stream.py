"""Streaming: chunks split anywhere, multi-line fallen-off-the-bus records, bounded memory."""
from __future__ import annotations

import io
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from xid_samples import UUID, chunkings, decode_all, log_texts

from nvsentinel import xid
from nvsentinel._xid_types import FALLEN_OFF_BUS_WINDOW, MAX_LINE_BYTES, WARN_TRUNCATED
from nvsentinel.xid import Action

DMESG_RECORD = (
    "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0\n"
    "               NVRM: (PCI ID: 10de:26b5) installed in this system has\n"
    "               NVRM: fallen off the bus and is not responding to commands.\n"
)


def test_dmesg_three_line_record(impl):
    """Verify the three-line dmesg record is one fallen_off_bus event with the first line's time and PCI ID."""
    events = decode_all(impl.load("xid"), DMESG_RECORD)
    assert len(events) == 1
    ev = events[0]
    assert (ev.kind, ev.pci, ev.pci_device_id, ev.timestamp) == ("fallen_off_bus", "0000:b3:00", "10de:26b5", 1843.308145)
    assert ev.classification.action is Action.RESTART_BM and ev.classification.fatal
    assert ev.raw == DMESG_RECORD.rstrip("\n")
    assert ev.message == "fallen off the bus and is not responding to commands."


def test_journal_record_with_embedded_newlines(impl):
    """Verify one journal record holding the whole multi-line printk decodes with decode_line."""
    record = "NVRM: The NVIDIA GPU 0000:b3:00.0\nNVRM: installed in this system has\nNVRM: fallen off the bus and is not responding to commands."
    ev = impl.load("xid").decode_line(record)
    assert ev is not None and ev.kind == "fallen_off_bus" and ev.pci == "0000:b3:00" and ev.pci_device_id == ""


def test_kmsg_record_with_escaped_newlines(impl):
    """Verify the /dev/kmsg form (newlines printed as \\x0a) is one line and one event."""
    line = (r"3,1001,1843308145,-;NVRM: The NVIDIA GPU 0000:b3:00.0\x0aNVRM: (PCI ID: 10de:26b5) installed in this "
            r"system has\x0aNVRM: fallen off the bus and is not responding to commands.")
    ev = impl.load("xid").decode_line(line)
    assert (ev.kind, ev.pci, ev.pci_device_id, ev.timestamp) == ("fallen_off_bus", "0000:b3:00", "10de:26b5", 1843.308145)


def test_record_window_interleaving_and_replacement(impl):
    """Verify other events inside an open record still decode, a new record replaces the old, and the window ends it."""
    mod = impl.load("xid")
    text = "\n".join([
        "NVRM: The NVIDIA GPU 0000:b3:00.0",
        "NVRM: Xid (PCI:0000:b3:00): 79, GPU has fallen off the bus.",  # an event, not the completion
        "NVRM: fallen off the bus and is not responding to commands.",
    ])
    assert [e.kind for e in decode_all(mod, text)] == ["xid", "fallen_off_bus"]
    text = "\n".join([
        "NVRM: The NVIDIA GPU 0000:b3:00.0",
        "NVRM: The NVIDIA GPU 0000:c3:00.0",
        "NVRM: fallen off the bus and is not responding to commands.",
    ])
    assert [e.pci for e in decode_all(mod, text)] == ["0000:c3:00"]
    late = ["NVRM: The NVIDIA GPU 0000:b3:00.0"] + ["filler"] * FALLEN_OFF_BUS_WINDOW + ["NVRM: fallen off the bus"]
    assert decode_all(mod, "\n".join(late)) == []
    in_time = ["NVRM: The NVIDIA GPU 0000:b3:00.0"] + ["filler"] * (FALLEN_OFF_BUS_WINDOW - 1) + ["NVRM: fallen off the bus"]
    assert len(decode_all(mod, "\n".join(in_time))) == 1
    # an open record at the end of a stream yields nothing
    assert decode_all(mod, "NVRM: The NVIDIA GPU 0000:b3:00.0\n") == []


def test_feed_after_finish_keeps_the_map(impl):
    """Verify finish() ends one stream and a second stream on the same decoder still knows the GPUs."""
    d = impl.load("xid").Decoder()
    assert [e.kind for e in d.feed("NVRM: GPU at PCI:0000:3b:00.0: " + UUID)] == []
    assert [e.kind for e in d.finish()] == ["pci_mapping"]
    assert d.feed("NVRM: Xid (PCI:0000:3b:00): 48, x\n")[0].gpu_uuid == UUID
    assert d.finish() == []


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_chunks_split_anywhere_decode_like_the_whole(impl, data):
    """Verify feeding a log in chunks split at arbitrary byte offsets gives the same events as one feed."""
    mod = impl.load("xid")
    text = data.draw(log_texts())
    chunks = data.draw(chunkings(text))
    assert decode_all(mod, text, chunks) == decode_all(mod, text)


def test_byte_at_a_time(impl):
    """Verify the hardest split: one byte per feed, including inside UTF-8 sequences and CRLF."""
    mod = impl.load("xid")
    text = (DMESG_RECORD + "NVRM: Xid (PCI:0000:3b:00): 13, pid=1, name=prøcess, Ch 1\r\n").encode()
    assert decode_all(mod, text, [text[i : i + 1] for i in range(len(text))]) == decode_all(mod, text)


def test_long_line_across_chunks_is_bounded(impl):
    """Verify a 16 MiB line fed in chunks keeps memory bounded and decodes like the whole (cut, warned)."""
    mod = impl.load("xid")
    head = b"NVRM: Xid (PCI:0000:3b:00): 13, "
    piece = b"x" * 65536
    d = mod.Decoder()
    tracemalloc.start()
    try:
        d.feed(head)
        for _ in range(256):
            assert d.feed(piece) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX_LINE_BYTES, peak
    events = d.feed(b"\n") + d.finish()
    assert len(events) == 1 and events[0].warnings == (WARN_TRUNCATED,) and len(events[0].raw) == MAX_LINE_BYTES
    whole = head + piece * 256 + b"\n"
    assert events == decode_all(mod, whole)


def test_decode_stream_sources():
    """Verify decode_stream reads binary and text files and iterables of chunks alike."""
    text = DMESG_RECORD + "NVRM: Xid (PCI:0000:3b:00): 48, DBE\nGPU reset executed: " + UUID
    expected = xid.decode(text)
    assert len(expected) == 3
    assert list(xid.decode_stream(io.BytesIO(text.encode()), chunk_size=7)) == expected
    assert list(xid.decode_stream(io.StringIO(text), chunk_size=5)) == expected
    raw = text.encode()
    assert list(xid.decode_stream([raw[:10], raw[10:11], raw[11:]])) == expected
    assert list(xid.decode_stream(iter([text]))) == expected
