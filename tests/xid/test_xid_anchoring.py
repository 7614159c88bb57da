"""Anchoring (issue 16): every rule matches at the start of the kernel message, after the header,
and never later in it; the header says who wrote the line. Text that a kernel message echoes (a
tmpfs mount option, a device name) therefore fakes no XID, clears no fault and remaps no GPU.
Against both implementations, through the decoder API and the stream path the kmsg monitor uses
(one long-lived decoder fed one record at a time, events collapsed by a Deduper).
"""
from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xid_samples import UUID, UUID2, decode_all

from nvsentinel import xid
from nvsentinel._xid_types import WARN_154_NO_TARGET, WARN_PCI_UNKNOWN
from nvsentinel.xid import Action

PCI = "0000:3b:00"
XID79 = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=python, GPU has fallen off the bus."
MAPPING = f"NVRM: GPU at PCI:0000:3b:00.0: {UUID}"
FAKE_MAPPING = f"NVRM: GPU at PCI:0000:3b:00.0: {UUID2}"
RESET = f"GPU reset executed: {UUID}"

# What the driver prints at the start of a message, and the kind it decodes to.
DRIVER_MESSAGES = [
    (XID79, "xid"),
    ("NVRM: Xid (PCI:0000:b5:00): 13, pid=1, name=a, Graphics SM Warp Exception on (GPC 1, TPC 3, SM 0): Out Of "
     "Range Address", "xid"),
    ("NVRM: Xid (PCI:0008:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
     "xid"),
    ("NVRM: Xid (PCI:0000:3b:00 GPU-I:01 GPU-CI:02): 13, pid=9, name=a, Graphics Exception", "xid"),
    ("NVRM: Xid (PCI:0019:01:00): 145, RLW_SRC_TRACK Nonfatal XC1 i0 Link 12 (0x040988e2 0x00000008)", "xid"),
    ("nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, Fatal, Link 28 sourcetrack timeout error (First)", "sxid"),
    ("SXid (PCI:0000:06:00.0): 12033, Severity 1 Engine instance 00", "sxid"),
    (MAPPING, "pci_mapping"),
    ("NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.", "fallen_off_bus"),
    (r"NVRM: The NVIDIA GPU 0000:3b:00.0\x0aNVRM: (PCI ID: 10de:26b5) installed in this system has\x0aNVRM: "
     r"fallen off the bus and is not responding to commands.", "fallen_off_bus"),
]
# What reset tooling logs as its whole message (user space: `logger`, or a write to /dev/kmsg).
TOOL_MESSAGES = [(RESET, "gpu_reset"), (f"GPU reset executed: {UUID2}, success: false", "gpu_reset")]
ALL_MESSAGES = DRIVER_MESSAGES + TOOL_MESSAGES

# Headers that name the kernel, user space, or no one (module doc of nvsentinel._xid_py, "Anchoring").
KERNEL_HEADERS = [
    "6,1234,5678901,-;",
    "0,1,2,-,caller=T1;",
    "<4>[    5.000001] ",
    "kern  :err   : [ 1108.858286] ",
    "Dec  6 08:00:01 gpu-node-7 kernel: [ 1234.567890] ",
    "Aug  2 01:02:03 kernel: ",
    "2024-08-30T11:43:09.123456+02:00 gpu-node-7 kernel: ",
    "<3>2024-08-30T11:43:09Z kernel: ",
    "kernel: [16450076.435595] ",
    "[ 1108.858286] gpu-node-7 kernel: ",
]
UNKNOWN_HEADERS = ["", "[ 1234.567890] ", "[Fri Aug 30 11:43:09 2024] ", "2024-08-30T11:43:09,398911+01:00 ", "[123] "]
USER_HEADERS = [
    "12,5,6,-;",
    "14,5,6,-,caller=T9;",
    "<13>",
    "<30>[    5.000001] ",
    "user  :warn  : [ 1108.858286] ",
    "daemon:err   : [ 1108.858286] ",
    "Dec  6 08:00:01 gpu-node-7 nvsentinel-gpu-reset: ",
    "2024-08-30T11:43:09Z gpu-node-7 root[77]: ",
]

# Kernel messages that put text someone else controls before (or around) it.
ECHOES = [
    "tmpfs: Bad value for 'size'{}",
    "tmpfs: Unknown parameter '{}'",
    'EXT4-fs (nvme0n1p2): Unrecognized mount option "{}" or missing value',
    "input: {} as /devices/virtual/input/input5",
    "usb 1-4: Product: {}",
    "python3[1234]: segfault at 0 ip 00007f0000000000 sp 00007ffd00000000 error 4 in {}",
    "audit: type=1400 audit(1725018189.123:42): apparmor=\"DENIED\" name=\"{}\"",
]


def events_of(impl, text, **kwargs):
    return decode_all(impl.load("xid"), text, **kwargs)


# ---- the lines in the issue ----
@pytest.mark.parametrize(
    "line",
    [
        "tmpfs: Bad value for 'size'NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.",
        "tmpfs: Unknown parameter 'NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.'",
        "[ 4711.000001] tmpfs: Unknown parameter 'NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.'",
        "6,1234,5678901,-;tmpfs: Bad value for 'size'NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.",
        f"tmpfs: Unknown parameter '{RESET}'",
        f"tmpfs: Unknown parameter '{FAKE_MAPPING}'",
    ],
)
def test_issue_lines_decode_to_nothing(impl, line):
    """Verify the issue's fake XID 79, fake reset and fake mapping inside a tmpfs error decode to nothing."""
    mod = impl.load("xid")
    assert mod.decode_line(line) is None
    decoder = mod.Decoder(pci_to_uuid={PCI: UUID})
    assert decoder.feed(line + "\n") + decoder.finish() == []
    assert decoder.pci_to_uuid == {PCI: UUID}


@pytest.mark.parametrize("echo", ECHOES)
def test_echoed_messages_decode_to_nothing_under_every_header(impl, echo):
    """Verify every real message, echoed inside another kernel message, decodes to nothing under every header."""
    mod = impl.load("xid")
    for header in KERNEL_HEADERS + UNKNOWN_HEADERS + USER_HEADERS:
        for message, _ in ALL_MESSAGES:
            line = header + echo.format(message)
            assert mod.decode_line(line) is None, line
            decoder = mod.Decoder()
            assert decoder.feed(line + "\n") == [] and decoder.finish() == [] and decoder.pci_to_uuid == {}, line


@pytest.mark.parametrize("header", KERNEL_HEADERS + UNKNOWN_HEADERS)
def test_real_driver_messages_decode_under_kernel_headers(impl, header):
    """Verify every real driver message decodes after every header that names the kernel or no one."""
    mod = impl.load("xid")
    for message, kind in DRIVER_MESSAGES:
        ev = mod.decode_line(header + message)
        assert ev is not None and ev.kind == kind, header + message
        assert ev.raw == header + message


# ---- who wrote the line ----
@pytest.mark.parametrize("header", USER_HEADERS)
def test_user_space_cannot_log_driver_lines(impl, header):
    """Verify a line whose header names user space (facility >= 8, a non-kernel tag) never decodes as a
    driver line, and still carries reset tooling's line."""
    mod = impl.load("xid")
    for message, _ in DRIVER_MESSAGES:
        assert mod.decode_line(header + message) is None, header + message
    ev = mod.decode_line(header + RESET)
    assert ev is not None and ev.kind == "gpu_reset" and ev.healthy and ev.gpu_uuid == UUID


@pytest.mark.parametrize("header", KERNEL_HEADERS)
def test_the_kernel_cannot_log_reset_lines(impl, header):
    """Verify a reset line under a header that names the kernel (facility 0: an echo such as an nf_log
    prefix, never reset tooling) decodes to nothing."""
    for message, _ in TOOL_MESSAGES:
        assert impl.load("xid").decode_line(header + message) is None, header + message


@pytest.mark.parametrize("header", UNKNOWN_HEADERS)
def test_reset_lines_under_headers_that_name_no_one(impl, header):
    """Verify reset tooling's line decodes after a header that names no one (dmesg, a bare line)."""
    ev = impl.load("xid").decode_line(header + RESET)
    assert ev is not None and ev.kind == "gpu_reset" and ev.healthy


def test_tag_without_host_after_an_iso_stamp_must_be_the_kernels(impl):
    """Verify `input: <any device name>` after an ISO stamp (dmesg --time-format=iso prints no tag) is a
    kernel message, not a tag: a uinput device named after a reset line fakes nothing. The kernel's own
    tag needs no host, and neither does any tag after a BSD stamp (syslog without a host name)."""
    mod = impl.load("xid")
    iso, bsd = "2024-08-30T11:43:09,398911+01:00 ", "Aug 30 11:43:09 "
    assert mod.decode_line(iso + "input: " + RESET) is None
    for stamp in (iso, bsd):
        assert mod.decode_line(stamp + "input: x y: " + RESET) is None
        assert mod.decode_line(stamp + "input: " + XID79) is None
        assert mod.decode_line(stamp + "kernel: " + XID79).xid == 79
        assert mod.decode_line(stamp + "node nvsentinel-gpu-reset: " + RESET).healthy
    assert mod.decode_line(bsd + "nvsentinel-gpu-reset: " + RESET).healthy
    assert mod.decode_line(iso + "nvsentinel-gpu-reset: " + RESET) is None


def test_continuation_and_indented_lines_are_not_messages(impl):
    """Verify an indented line (dmesg prints a record's later lines so, and a kernel message can echo a
    newline) never decodes, and neither does a line in an unknown format."""
    mod = impl.load("xid")
    echoed = "[ 12.500000] tmpfs: Unknown parameter 'x\n               " + XID79 + "'\n"
    assert events_of(impl, echoed) == []
    for line in ("  " + XID79, "\t" + RESET, "Fri 2024-08-30 11:43:09 CEST node kernel: " + XID79, ": " + XID79):
        assert mod.decode_line(line) is None, line


def test_fallen_record_needs_a_driver_continuation(impl):
    """Verify an open `NVRM: The NVIDIA GPU` record (also the start of the harmless "not supported"
    record) is completed only by a driver line, never by echoed `fallen off the bus` text."""
    start = "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0 (PCI ID: 10de:1db6)\n"
    for fake in (
        "[ 1843.400000] tmpfs: Unknown parameter 'NVRM: fallen off the bus'\n",
        "[ 1843.400000] tmpfs: fallen off the bus\n",
        "12,9,1843400000,-;NVRM: fallen off the bus and is not responding to commands.\n",
        "user  :err   : [ 1843.400000] NVRM: fallen off the bus and is not responding to commands.\n",
    ):
        assert events_of(impl, start + fake) == [], fake
    for real in (
        "               NVRM: fallen off the bus and is not responding to commands.\n",
        "Dec  6 08:00:01 node kernel: [ 1843.308145] NVRM: fallen off the bus and is not responding to commands.\n",
        "\tNVRM: fallen off the bus\n",
    ):
        (ev,) = events_of(impl, start + real)
        assert (ev.kind, ev.pci, ev.pci_device_id) == ("fallen_off_bus", "0000:b3:00", "10de:1db6")


# ---- the stream path of the kmsg monitor ----
def _feed_records(mod, records, pci_to_uuid=None):
    """The kmsg monitor's path: one long-lived decoder fed one record per call, events into a Deduper."""
    decoder = mod.Decoder(pci_to_uuid=pci_to_uuid)
    deduper = xid.Deduper(window=60)
    events = []
    for record in records:
        for ev in decoder.feed(record + "\n"):
            events.append(ev)
            deduper.add(ev)
    events += decoder.finish()
    return decoder, events, [run.event for run in deduper.flush()]


def test_fake_reset_does_not_clear_a_real_fault(impl):
    """Verify echoed or kernel-printed reset lines between a real XID 79 and the real reset clear
    nothing: the only recovery signal is the one reset tooling wrote."""
    records = [
        "6,100,1000000,-;" + MAPPING,
        "3,101,2000000,-;" + XID79,
        "4,102,3000000,-;tmpfs: Unknown parameter '" + RESET + "'",
        "4,103,3100000,-;tmpfs: Bad value for 'size'" + RESET,
        "4,104,3200000,-;" + RESET,  # facility 0: the kernel printed it (an nf_log prefix, say)
        "6,105,3300000,-;input: " + RESET + " as /devices/virtual/input/input5",
    ]
    decoder, events, runs = _feed_records(impl.load("xid"), records)
    assert [e.kind for e in events] == ["pci_mapping", "xid"]
    assert [e.kind for e in runs] == ["pci_mapping", "xid"]
    assert not any(e.healthy for e in events)
    assert events[1].gpu_uuid == UUID and events[1].classification.action is Action.RESTART_BM
    # the real one: reset tooling's write to /dev/kmsg (facility LOG_USER)
    (ev,) = decoder.feed("12,106,9000000,-;" + RESET + "\n")
    assert (ev.kind, ev.healthy, ev.pci, ev.gpu_uuid) == ("gpu_reset", True, PCI, UUID)


def test_fake_mapping_does_not_remap_a_gpu(impl):
    """Verify an echoed `NVRM: GPU at` line changes no PCI→UUID mapping: a later XID still names the real GPU."""
    records = ["6,1,1000000,-;" + MAPPING] + [
        header + echo.format(FAKE_MAPPING) for header in ("6,2,2000000,-;", "", "[ 2.000000] ") for echo in ECHOES
    ] + ["3,3,3000000,-;" + XID79, "12,4,4000000,-;" + f"GPU reset executed: {UUID2}"]
    decoder, events, _ = _feed_records(impl.load("xid"), records)
    assert decoder.pci_to_uuid == {PCI: UUID}
    assert [(e.kind, e.pci, e.gpu_uuid) for e in events] == [
        ("pci_mapping", PCI, UUID), ("xid", PCI, UUID), ("gpu_reset", "", UUID2),
    ]


def test_decode_stream_and_dedupe_ignore_echoes():
    """Verify the facade's decode_stream (small chunks) and dedupe see only the real lines of a syslog file."""
    real = [
        "Dec  6 08:00:00 gpu-node-7 kernel: [ 1000.000000] " + MAPPING,
        "Dec  6 08:00:01 gpu-node-7 kernel: [ 1001.000000] " + XID79,
        "Dec  6 08:00:02 gpu-node-7 kernel: [ 1002.000000] " + XID79,
    ]
    fakes = [
        "Dec  6 08:00:01 gpu-node-7 kernel: [ 1001.500000] tmpfs: Unknown parameter '" + RESET + "'",
        "Dec  6 08:00:01 gpu-node-7 kernel: [ 1001.600000] tmpfs: Bad value for 'size'" + FAKE_MAPPING,
        "Dec  6 08:00:01 gpu-node-7 kernel: [ 1001.700000] " + RESET,
        "Dec  6 08:00:01 gpu-node-7 evil[9]: " + XID79.replace("3b", "5e"),
    ]
    text = "\n".join([real[0], fakes[0], real[1], fakes[1], fakes[2], fakes[3], real[2]]) + "\n"
    events = list(xid.decode_stream(io.BytesIO(text.encode()), chunk_size=7))
    assert [e.raw for e in events] == real
    runs = xid.dedupe(events, window=60)
    assert [(r.event.kind, r.event.gpu_uuid, r.count) for r in runs] == [("pci_mapping", UUID, 1), ("xid", UUID, 2)]


# ---- the known misses, now decoded ----
@pytest.mark.parametrize(
    "line,expected",
    [
        ("NVRM: Xid (0000:3b): 79, pid=1, GPU has fallen off the bus.", dict(xid=79, pci="0000:3b:00", pid=1)),
        ("[ 12.5] NVRM: Xid (PCI:0001:C3): 48, DBE", dict(xid=48, pci="0001:c3:00", message="DBE")),
        ("NVRM: Xid (00000000:3b GPU-I:05): 94, pid=7, x", dict(xid=94, pci="0000:3b:00", gpu_instance=5)),
        ("nvidia-nvswitch1: SXid (0000:c3): 24007, Fatal, Link 28 x", dict(kind="sxid", pci="0000:c3:00", switch=1)),
    ],
)
def test_short_pci_form(impl, line, expected):
    """Verify the short `(dddd:bb)` PCI form decodes to the canonical id with device 00."""
    ev = impl.load("xid").decode_line(line)
    assert ev is not None and ev.warnings == ()
    for field, value in expected.items():
        assert getattr(ev, field) == value, (field, getattr(ev, field))


@pytest.mark.parametrize(
    "pci",
    ["PCI:XXXX:XX:XX", "PCI:xxxx:xx:xx.x", "XXXX:XX:XX.X", "PCI:0000:XX:00.0", "PCI:****:**:**", "PCI:<redacted>",
     "<pci>", "PCI:[REDACTED]", "REDACTED", "PCI:Redacted"],
)
def test_redacted_pci_decodes_with_unknown_gpu(impl, pci):
    """Verify an XID or SXid whose PCI id was redacted decodes, naming no GPU (pci "", no UUID) and warning,
    even where a mapping would name one."""
    mod = impl.load("xid")
    ev = mod.decode_line(f"[ 5.000000] NVRM: Xid ({pci}): 79, pid=1, GPU has fallen off the bus.",
                         pci_to_uuid={PCI: UUID})
    assert (ev.kind, ev.xid, ev.pci, ev.gpu_uuid, ev.pid) == ("xid", 79, "", "", 1)
    assert ev.warnings == (WARN_PCI_UNKNOWN,) and ev.classification.action is Action.RESTART_BM
    assert ev.timestamp == 5.0
    ev = mod.decode_line(f"nvidia-nvswitch0: SXid ({pci}): 24007, Fatal, Link 28 x")
    assert (ev.kind, ev.xid, ev.pci, ev.warnings, ev.link) == ("sxid", 24007, "", (WARN_PCI_UNKNOWN,), 28)


def test_redacted_pci_keeps_other_warnings_and_fields(impl):
    """Verify a redacted MIG XID 154 keeps its MIG ids and its own warning after the PCI warning."""
    ev = impl.load("xid").decode_line("NVRM: Xid (PCI:<redacted> GPU-I:05 GPU-CI:01): 154, GPU recovery action")
    assert (ev.pci, ev.gpu_instance, ev.compute_instance) == ("", 5, 1)
    assert ev.warnings == (WARN_PCI_UNKNOWN, WARN_154_NO_TARGET)


@pytest.mark.parametrize(
    "pci", ["PCI:000000000:3b:00", "PCI:0000:3b:00:00", "PCI:zzzz", "<>", "[" + "a" * 33 + "]", "X" * 33, "redact"]
)
def test_malformed_pci_is_not_a_redaction(impl, pci):
    """Verify an unreadable PCI id that is no redaction (no mask character or placeholder) still decodes to nothing."""
    assert impl.load("xid").decode_line(f"NVRM: Xid ({pci}): 79, x") is None


SYSLOG_AND_DMESG = "Dec  6 08:00:01 gpu-node-7 kernel: [ 1234.567890] "


@pytest.mark.parametrize(
    "message,kind",
    DRIVER_MESSAGES + [("NVRM: Xid (0000:3b): 79, x", "xid"), ("NVRM: Xid (PCI:XXXX:XX:XX): 79, x", "xid")],
)
def test_syslog_then_dmesg_prefix(impl, message, kind):
    """Verify a line with a syslog prefix and then a dmesg stamp decodes, timed by the syslog stamp."""
    ev = impl.load("xid").decode_line(SYSLOG_AND_DMESG + message)
    assert ev is not None and ev.kind == kind
    assert (ev.time_text, ev.clock) == ("Dec  6 08:00:01", "yearless")


def test_syslog_then_dmesg_prefix_fallen_off_the_bus_and_reset(impl):
    """Verify the issue's fallen-off-the-bus line, and reset tooling's syslog line, decode."""
    mod = impl.load("xid")
    ev = mod.decode_line(SYSLOG_AND_DMESG + "NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.")
    assert (ev.kind, ev.pci, ev.classification.action) == ("fallen_off_bus", PCI, Action.RESTART_BM)
    ev = mod.decode_line(f"Dec  6 08:00:02 gpu-node-7 nvsentinel-gpu-reset: {RESET}, success: true",
                         pci_to_uuid={PCI: UUID})
    assert (ev.kind, ev.healthy, ev.pci, ev.time_text) == ("gpu_reset", True, PCI, "Dec  6 08:00:02")


def test_more_header_forms(impl):
    """Verify dmesg -x, journalctl -o short-monotonic and dmesg --time-format=iso lines decode with their stamps."""
    mod = impl.load("xid")
    for line, ts, clock in [
        ("kern  :err   : [ 1108.858286] " + XID79, 1108.858286, "monotonic"),
        ("[ 1108.858286] gpu-node-7 kernel: " + XID79, 1108.858286, "monotonic"),
        ("2024-08-30T11:43:09,5+00:00 " + XID79, 1725018189.5, "realtime"),
    ]:
        ev = mod.decode_line(line)
        assert (ev.xid, ev.timestamp, ev.clock) == (79, ts, clock), line


# ---- properties ----
# A first character that no header part and no rule can begin with (digits, `<`, `[`, space, month and
# dmesg -x facility initials, `kernel`, `NVRM`, `SXid`, `GPU reset`, `nvidia-nvswitch` all excluded).
SAFE_FIRST = "beghijopqrtvwxyzBCEHIKLPQRUVWXYZ!\"#$%&'()*+,-./:;=>?@\\]^_`{|}~é中"
LINE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\n"), max_size=60)
HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z0-9-]{1,8}){0,2}", fullmatch=True)
LEVELS = st.sampled_from(["emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"])


@st.composite
def dmesg_stamps(draw: st.DrawFn) -> str:
    secs = draw(st.integers(0, 10**10 - 1))
    frac = draw(st.sampled_from(["", ".0", ".000001", ".858286", ".123456789"]))
    return f"[{secs:>{draw(st.integers(1, 12))}}{frac}] "


@st.composite
def syslog_stamps(draw: st.DrawFn) -> str:
    year, month, day = draw(st.integers(1970, 2100)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
    hms = f"{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}:{draw(st.integers(0, 59)):02d}"
    if draw(st.booleans()):
        months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
        return f"{months[month - 1]} {day:>2} {hms}{draw(st.sampled_from(['', '.5', '.123456']))} "
    frac = draw(st.sampled_from(["", ".5", ",123456", ".123456789"]))
    zone = draw(st.sampled_from(["", "Z", "+02:00", "-0700"]))
    return f"{year:04d}-{month:02d}-{day:02d}{draw(st.sampled_from('T '))}{hms}{frac}{zone} "


@st.composite
def headers(draw: st.DrawFn, origin: str) -> str:
    """A header naming `origin`: "kernel", "user" or "none" (module doc of nvsentinel._xid_py)."""
    dstamp = draw(st.one_of(st.just(""), dmesg_stamps()))
    if origin == "none":  # an ISO stamp alone: dmesg --time-format=iso
        iso = draw(syslog_stamps().filter(lambda stamp: stamp[0].isdigit()))
        return draw(st.sampled_from(["", dstamp, "[Fri Aug 30 11:43:09 2024] ", "[Sat Feb 29 00:00:00 2023] ", iso]))
    form = draw(st.integers(0, 4))
    if origin == "kernel":
        if form == 0:
            return f"{draw(st.integers(0, 7))},{draw(st.integers(0, 10**6))},{draw(st.integers(0, 10**12))},-;"
        if form == 1:
            return f"<{draw(st.integers(0, 7))}>{dstamp}"
        if form == 2:
            return f"kern{' ' * draw(st.integers(0, 2))}:{draw(LEVELS)}{' ' * draw(st.integers(0, 2))}: {dstamp}"
        if form == 3:
            host = draw(st.one_of(st.just(""), HOSTS.map(lambda h: h + " ")))
            return f"{draw(syslog_stamps())}{host}kernel: {dstamp}"
        return draw(st.sampled_from([f"kernel: {dstamp}", f"{dstamp or '[ 1.0] '}{draw(HOSTS)} kernel: "]))
    if form == 0:
        return f"{draw(st.integers(8, 191))},{draw(st.integers(0, 10**6))},{draw(st.integers(0, 10**12))},-;"
    if form == 1:
        return f"<{draw(st.integers(8, 191))}>{dstamp}"
    if form == 2:
        facility = draw(st.sampled_from(["user", "mail", "daemon", "auth", "authpriv", "syslog", "cron", "local7"]))
        return f"{facility}:{draw(LEVELS)}: {dstamp}"
    tag = draw(st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True).filter(lambda t: t != "kernel"))
    stamp = draw(syslog_stamps())
    host = draw(HOSTS) + " " if stamp[0].isdigit() or draw(st.booleans()) else ""  # BSD: a host is optional
    return f"{stamp}{host}{tag}{draw(st.sampled_from(['', '[1]', '[4711]']))}: {dstamp}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.sampled_from(SAFE_FIRST), rest=LINE_TEXT, message=st.sampled_from(ALL_MESSAGES))
def test_text_that_is_no_header_before_a_message_decodes_to_nothing(impl, first, rest, message):
    """Verify P + message decodes to nothing for any text P that no header part can begin."""
    line = first + rest + message[0]
    assert events_of(impl, line) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    origin=st.sampled_from(["kernel", "user", "none"]),
    echo=st.sampled_from([e.split("{}")[0] for e in ECHOES]),
    junk=LINE_TEXT,
    message=st.sampled_from(ALL_MESSAGES),
)
def test_header_then_echoing_message_decodes_to_nothing(impl, data, origin, echo, junk, message):
    """Verify header + a kernel message echoing any text + a real message decodes to nothing."""
    line = data.draw(headers(origin)) + echo + junk + message[0]
    mod = impl.load("xid")
    decoder = mod.Decoder(pci_to_uuid={PCI: UUID})
    assert decoder.feed(line + "\n") + decoder.finish() == []
    assert decoder.pci_to_uuid == {PCI: UUID}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), origin=st.sampled_from(["kernel", "user", "none"]), message=st.sampled_from(ALL_MESSAGES))
def test_header_then_real_message_decodes_by_origin(impl, data, origin, message):
    """Verify header + a real message always decodes to its event, unless the header names a writer that
    cannot print it: user space never prints driver lines, the kernel never prints reset tooling's."""
    header = data.draw(headers(origin))
    text, kind = message
    events = events_of(impl, header + text)
    driver = (text, kind) in DRIVER_MESSAGES
    if (origin == "user" and driver) or (origin == "kernel" and not driver):
        assert events == [], header + text
    else:
        assert [e.kind for e in events] == [kind], header + text
        assert events[0].raw == header + text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_echo_lines_in_a_stream_change_nothing(impl, data):
    """Verify echoing lines inserted anywhere in a real stream leave its events and PCI→UUID map as they were."""
    real = [
        data.draw(headers("kernel")) + MAPPING,
        data.draw(headers("none")) + XID79,
        data.draw(headers("user")) + RESET,
        data.draw(headers("kernel")) + DRIVER_MESSAGES[5][0],
    ]
    fakes = data.draw(
        st.lists(
            st.tuples(st.sampled_from(["kernel", "user", "none"]), st.sampled_from(ECHOES),
                      st.sampled_from(ALL_MESSAGES + [(FAKE_MAPPING, "pci_mapping")])),
            max_size=6,
        )
    )
    mixed = list(real)
    for origin, echo, (message, _) in fakes:
        mixed.insert(data.draw(st.integers(0, len(mixed))), data.draw(headers(origin)) + echo.format(message))
    mod = impl.load("xid")
    clean, clean_events, _ = _feed_records(mod, real)
    dirty, dirty_events, _ = _feed_records(mod, mixed)
    assert dirty_events == clean_events
    assert [e.kind for e in clean_events] == ["pci_mapping", "xid", "gpu_reset", "sxid"]
    assert dirty.pci_to_uuid == clean.pci_to_uuid == {PCI: UUID}
