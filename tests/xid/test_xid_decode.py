"""Table-driven decoding of every line form in SPEC §2.3, against both implementations."""
from __future__ import annotations

import pytest
from xid_samples import UUID, UUID2, decode_all

from nvsentinel._xid_types import (
    CLOCK_MONOTONIC,
    CLOCK_REALTIME,
    CLOCK_YEARLESS,
    MAX_LINE_BYTES,
    WARN_154_NO_NAME,
    WARN_154_NO_TARGET,
    WARN_TRUNCATED,
    Location,
    NvLink5,
    XidEvent,
    normalize_pci,
)
from nvsentinel.xid import Action


def one(impl, line, **kwargs):
    return impl.load("xid").decode_line(line, **kwargs)


def check(event: XidEvent | None, expected: dict) -> None:
    assert event is not None
    for field, value in expected.items():
        if field == "action":
            assert event.classification.action == value, (field, event.classification)
        elif field == "fatal":
            assert event.classification.fatal is value, (field, event.classification)
        elif field == "mnemonic":
            assert event.classification.mnemonic == value, (field, event.classification)
        else:
            assert getattr(event, field) == value, (field, getattr(event, field))
    # invariants of every event
    assert event.classification.fatal == (event.classification.action is not Action.NONE)
    assert event.pci == "" or normalize_pci(event.pci) == event.pci


# ---- SPEC §2.3 example lines, verbatim ----
SPEC_EXAMPLES = [
    (
        "NVRM: Xid (PCI:0000:b3:00.0): 79, pid=1234, name=process, Ch 00000001",
        dict(kind="xid", xid=79, error_code="79", pci="0000:b3:00", pid=1234, process="process", channel=1,
             message="Ch 00000001", action=Action.RESTART_BM, fatal=True),
    ),
    (
        "NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.",
        dict(kind="xid", xid=79, pci="0000:3b:00", pid=None, process="", message="GPU has fallen off the bus.",
             action=Action.RESTART_BM),
    ),
    (
        "NVRM: Xid (PCI:0000:3f:00): 145, RLW_SRC_TRACK Nonfatal XC1 i0 Link 10 (0x04082907 0x00000008 ...)",
        dict(kind="xid", xid=145, error_code="145.RLW_SRC_TRACK", pci="0000:3f:00", link=10,
             registers=(0x04082907, 0x8), severity="nonfatal",
             nvlink5=NvLink5("RLW_SRC_TRACK", "nonfatal", "XC1", False, 10, 0x04082907, 0x8),
             action=Action.NONE, fatal=False),
    ),
    (
        "nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, Fatal, Link 28 sourcetrack timeout error (First)",
        dict(kind="sxid", xid=24007, error_code="SXID.24007", pci="0000:c3:00", switch=0, link=28,
             severity="fatal", message="sourcetrack timeout error (First)", action=Action.CONTACT_SUPPORT),
    ),
    (
        "NVRM: The NVIDIA GPU 0000:b3:00.0 ... fallen off the bus and is not responding to commands.",
        dict(kind="fallen_off_bus", error_code="GPU_FALLEN_OFF_BUS", xid=None, pci="0000:b3:00",
             message="fallen off the bus and is not responding to commands.", action=Action.RESTART_BM, fatal=True),
    ),
    (
        "NVRM: GPU at PCI:0000:00:08.0: GPU-12345678-...",
        dict(kind="pci_mapping", pci="0000:00:08", gpu_uuid="GPU-12345678-", action=Action.NONE),
    ),
]


@pytest.mark.parametrize("line,expected", SPEC_EXAMPLES, ids=[e[1]["kind"] + str(i) for i, e in enumerate(SPEC_EXAMPLES)])
def test_spec_example_lines_verbatim(impl, line, expected):
    """Verify each SPEC §2.3 example line decodes to its documented fields."""
    check(one(impl, line), expected)


def test_spec_fragments_in_real_lines(impl):
    """Verify the SPEC's XID 13 location, XID 74 registers and XID 154 fragments, verbatim inside lines."""
    check(
        one(impl, "NVRM: Xid (PCI:0000:b5:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 1, SM 2): Out Of Range Address"),
        dict(xid=13, location=Location(0, 1, 2), action=Action.NONE),
    )
    check(
        one(impl, "NVRM: Xid (PCI:0000:b9:00): 74, pid=<unknown>, name=<unknown>, NVLink: fatal error detected on "
                  "link 14(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)"),
        dict(xid=74, link=14, registers=(0, 0, 0x10000, 0, 0, 0, 0), pid=None, process="", action=Action.CONTACT_SUPPORT),
    )
    check(
        one(impl, "NVRM: Xid (PCI:0008:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)"),
        dict(xid=154, recovery_action="GPU Reset Required", recovery_code=1, action=Action.COMPONENT_RESET, warnings=()),
    )


def test_spec_reset_example_needs_a_uuid(impl):
    """Verify `GPU reset executed: GPU-...` (the SPEC's elided form) is not an event, and a real one is healthy."""
    assert one(impl, "GPU reset executed: GPU-...") is None
    check(
        one(impl, "GPU reset executed: " + UUID),
        dict(kind="gpu_reset", gpu_uuid=UUID, healthy=True, error_code="GPU_RESET", action=Action.NONE, fatal=False),
    )


# ---- prefixes and time stamps ----
BODY = "NVRM: Xid (PCI:0000:3b:00): 48, pid=7, name=x, An uncorrectable double bit error"
PREFIXED = [
    ("", None, "", ""),
    ("[ 1108.858286] ", 1108.858286, CLOCK_MONOTONIC, "1108.858286"),
    ("[16450076.435595] ", 16450076.435595, CLOCK_MONOTONIC, "16450076.435595"),
    ("kernel: [16450076.435595] ", 16450076.435595, CLOCK_MONOTONIC, "16450076.435595"),
    ("<4>[    5.000001] ", 5.000001, CLOCK_MONOTONIC, "5.000001"),
    ("6,1234,5678901,-;", 5.678901, CLOCK_MONOTONIC, "5.678901"),
    ("4,99,123456789012,-,caller=T1234;", 123456.789012, CLOCK_MONOTONIC, "123456.789012"),
    ("[Fri Aug 30 11:43:09 2024] ", 1725018189.0, CLOCK_REALTIME, "Fri Aug 30 11:43:09 2024"),
    ("[Fri Aug  2 11:43:09 2024] ", 1722598989.0, CLOCK_REALTIME, "Fri Aug  2 11:43:09 2024"),
    ("2024-08-30T11:43:09.5+02:00 node kernel: ", 1725010989.5, CLOCK_REALTIME, "2024-08-30T11:43:09.5+02:00"),
    ("2024-08-30T11:43:09+0000 node kernel: ", 1725018189.0, CLOCK_REALTIME, "2024-08-30T11:43:09+0000"),
    ("2024-08-30 11:43:09,25 kernel: ", 1725018189.25, CLOCK_REALTIME, "2024-08-30 11:43:09,25"),
    ("<3>2024-08-30T11:43:09Z kernel: ", 1725018189.0, CLOCK_REALTIME, "2024-08-30T11:43:09Z"),
    ("Jan  1 00:00:01 node kernel: ", 1.0, CLOCK_YEARLESS, "Jan  1 00:00:01"),
    ("Aug 30 11:43:09 kernel: ", (243 - 1) * 86400 + 11 * 3600 + 43 * 60 + 9.0, CLOCK_YEARLESS, "Aug 30 11:43:09"),
    ("Feb 29 00:00:00.5 host kernel: [ 7.0] ", 59 * 86400 + 0.5, CLOCK_YEARLESS, "Feb 29 00:00:00.5"),
    ("[Sat Feb 29 00:00:00 2023] ", None, "", ""),  # not a date, and no [secs] either
    ("2024-13-45T99:99:99Z [ 3.25] ", 3.25, CLOCK_MONOTONIC, "3.25"),  # bad ISO falls through
]


@pytest.mark.parametrize("prefix,ts,clock,text", PREFIXED, ids=[p[0].strip() or "bare" for p in PREFIXED])
def test_prefixes_and_time_stamps(impl, prefix, ts, clock, text):
    """Verify dmesg, dmesg -T, kmsg, syslog, ISO and level prefixes give the documented time stamp."""
    ev = one(impl, prefix + BODY)
    check(ev, dict(xid=48, pid=7, process="x", timestamp=ts, clock=clock, time_text=text, action=Action.COMPONENT_RESET))
    assert ev.raw == prefix + BODY


# ---- older driver formats, MIG, PCI normalisation ----
@pytest.mark.parametrize(
    "line,pci,extra",
    [
        ("NVRM: Xid (0000:03:00): 14, Channel 00000001", "0000:03:00", dict(channel=1)),
        ("NVRM: Xid (03:00): 31, pid=22, name=py, Ch 0000000a, MMU Fault", "0000:03:00", dict(channel=10, pid=22)),
        ("NVRM: Xid (PCI:3b:00): 43, pid=1", "0000:3b:00", dict(pid=1, message="")),
        ("NVRM: Xid (PCI:00000000:3B:00.0): 48, DBE", "0000:3b:00", dict(message="DBE")),
        ("NVRM: Xid (PCI:10000:01:00): 119, Timeout waiting for RPC from GSP!", "10000:01:00", {}),
        ("NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, pid=7194, Contained: CE User Channel (0x9). RST: No, D-RST: No",
         "0000:01:00", dict(gpu_instance=5, compute_instance=None, pid=7194, channel=None)),
        ("NVRM: Xid (PCI:0000:3b:00 GPU-I:01 GPU-CI:02): 13, pid=9, name=a, Graphics Exception", "0000:3b:00",
         dict(gpu_instance=1, compute_instance=2, process="a")),
        ("NVRM: Xid (PCI:0002:00:00): 13, pid=2519562, name=python3, Graphics Exception: ChID 000c, Class 0000cbc0",
         "0002:00:00", dict(channel=12)),
        ("NVRM: Xid (PCI:0000:04:00): 74, pid=1234, name=python3, Channel 0x23, MMU Fault", "0000:04:00",
         dict(channel=0x23, link=None, registers=())),
        ("NVRM: Xid (PCI:0000:2a:00): 43, pid=1, name=ray::Train, Ch 00000008, previous Xid 79 on this GPU",
         "0000:2a:00", dict(xid=43, action=Action.NONE)),
        ("NVRM: Xid (PCI:0000:2a:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 0): Out Of Range Address",
         "0000:2a:00", dict(location=Location(0, 0, None))),
        ("NVRM: Xid (PCI:0000:03:00): 74, pid=..., NVLink: Fatal error detected on link 4", "0000:03:00",
         dict(link=4, registers=(), pid=None)),
    ],
)
def test_old_formats_mig_and_pci_normalisation(impl, line, pci, extra):
    """Verify old drivers' PCI forms, MIG instances and message fields; the XID is the one after the parentheses."""
    check(one(impl, line), dict(kind="xid", pci=pci, **extra))


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("PCI:0000:3B:00.0", "0000:3b:00"),
        ("00000000:3b:00.0", "0000:3b:00"),
        ("0000:3b:00", "0000:3b:00"),
        ("3b:00", "0000:3b:00"),
        (" 0001:C3:1F.7 ", "0001:c3:1f"),
        ("10000:01:00", "10000:01:00"),
        ("GPU-1", None),
        ("0000:3b", None),
        ("000000000:3b:00", None),
    ],
)
def test_normalize_pci(text, canonical):
    """Verify every printed PCI form normalises to dddd:bb:dd (function dropped), and non-ids to None."""
    assert normalize_pci(text) == canonical


# ---- XID 154: every recovery action name found in public logs ----
RECOVERY = [
    ("0x0 (None)", Action.NONE),
    ("0x1 (GPU Reset Required)", Action.COMPONENT_RESET),
    ("0x1 (Drain and Reset)", Action.COMPONENT_RESET),
    ("0x4 (Drain and Reset)", Action.COMPONENT_RESET),
    ("0x1 (PF FLR)", Action.COMPONENT_RESET),
    ("0x2 (Node Reboot Required)", Action.RESTART_BM),
    ("0x2 (OS Reboot)", Action.RESTART_BM),
    ("0x3 (Drain P2P)", Action.CONTACT_SUPPORT),
    ("0x2 (Reboot the Node)", Action.RESTART_BM),  # an unseen wording, matched on meaning
    ("0x5 (Full Chassis Power Cycle)", Action.CONTACT_SUPPORT),
    ("0x1 ( gpu reset  required )", Action.COMPONENT_RESET),
]


@pytest.mark.parametrize("target,action", RECOVERY, ids=[r[0] for r in RECOVERY])
def test_xid154_recovery_action_names(impl, target, action):
    """Verify XID 154's action comes from the new (last) recovery action name."""
    line = f"[171167.621162] NVRM: Xid (PCI:0009:01:00): 154, GPU recovery action changed from 0x0 (None) to {target}"
    ev = one(impl, line)
    check(ev, dict(xid=154, error_code="154", warnings=(), action=action, mnemonic="GPU_RECOVERY_ACTION_CHANGED"))
    assert ev.recovery_code == int(target.split()[0], 16)


@pytest.mark.parametrize(
    "message,action,warning,code",
    [
        ("GPU recovery action changed from 0x0 (None) to 0x1 )GPU Reset Required(", Action.COMPONENT_RESET, WARN_154_NO_NAME, 1),
        ("GPU recovery action changed from 0x0 )None( to 0x2 )Node Reboot Required(", Action.RESTART_BM, WARN_154_NO_NAME, 2),
        ("GPU recovery action changed from 0x0 (None) to 0x9 ()", Action.CONTACT_SUPPORT, WARN_154_NO_NAME, 9),
        ("GPU recovery action changed from 0x0 (None)", Action.CONTACT_SUPPORT, WARN_154_NO_TARGET, None),
        ("", Action.CONTACT_SUPPORT, WARN_154_NO_TARGET, None),
        ("GPU recovery action changed to )(", Action.CONTACT_SUPPORT, WARN_154_NO_NAME, None),
    ],
)
def test_xid154_malformed_is_best_effort_with_warning(impl, message, action, warning, code):
    """Verify a malformed XID 154 (`)` before `(`, no target) is a best-effort event with a warning, never a crash."""
    ev = one(impl, f"NVRM: Xid (PCI:0000:3b:00): 154, {message}")
    check(ev, dict(xid=154, warnings=(warning,), recovery_code=code, recovery_action="", action=action))


# ---- NVLink5 XIDs 144–150 ----
def test_nvlink5_fields_and_classification(impl):
    """Verify NVLink5 sub-code, severity, containment, injected flag, link and registers; Nonfatal → NONE."""
    ev = one(impl, "kernel: [16450076.435584] NVRM: Xid (PCI:0019:01:00): 145, RLW_SRC_TRACK Nonfatal XC1 i0 "
                   "Link 12 (0x040988e2 0x00000008 0x00000000 0x00000000 0x00000000 0x00000000)")
    check(ev, dict(error_code="145.RLW_SRC_TRACK", link=12, registers=(0x040988E2, 8, 0, 0, 0, 0),
                   nvlink5=NvLink5("RLW_SRC_TRACK", "nonfatal", "XC1", False, 12, 0x040988E2, 8),
                   action=Action.NONE, mnemonic="NVLINK_RLW_ERROR", timestamp=16450076.435584))
    ev = one(impl, "NVRM: Xid (PCI:0000:3f:00): 149, NETIR_LINK_DOWN   Fatal   XC0 i1 Link 03 (0x4 0x40)")
    check(ev, dict(error_code="149.NETIR_LINK_DOWN", severity="fatal", link=3,
                   nvlink5=NvLink5("NETIR_LINK_DOWN", "fatal", "XC0", True, 3, 4, 0x40), action=Action.CONTACT_SUPPORT))
    # not the NVLink5 form: a plain XID 145 with the catalog action
    ev = one(impl, "NVRM: Xid (PCI:0000:3f:00): 145, RLW error on some link")
    check(ev, dict(error_code="145", nvlink5=None, severity="", action=Action.CONTACT_SUPPORT))


# ---- NVSwitch SXid ----
@pytest.mark.parametrize(
    "line,expected",
    [
        ("[123] nvidia-nvswitch3: SXid (PCI:0000:c1:00.0): 28006, Non-fatal, Link 46 MC TS crumbstore MCTO (First)",
         dict(switch=3, xid=28006, link=46, severity="nonfatal", message="MC TS crumbstore MCTO (First)", action=Action.NONE)),
        ("[73309.599396] nvidia-nvswitch0: SXid (PCI:0000:06:00.0): 20009, Non-fatal, Link 04 RX Short Error Rate",
         dict(switch=0, link=4, message="RX Short Error Rate", timestamp=73309.599396)),
        ("nvidia-nvswitch0: SXid (PCI:0004:00:00.0): 26008, SOE Watchdog error",
         dict(severity="", link=None, message="SOE Watchdog error", pci="0004:00:00", action=Action.NONE)),
        ("[38889.018130] nvidia-nvswitch1: SXid (PCI:0000:06:00.0): 20009, Non-fatal, Li",
         dict(severity="nonfatal", link=None, message="Li")),
        ("SXid (PCI:0000:06:00.0): 12033, Severity 1 Engine instance 00",
         dict(switch=None, severity="", message="Severity 1 Engine instance 00")),
    ],
)
def test_sxid_forms(impl, line, expected):
    """Verify NVSwitch SXid lines, with and without severity, link and switch prefix."""
    check(one(impl, line), dict(kind="sxid", **expected))


# ---- mapping, reset, fallen off the bus ----
def test_mapping_names_later_events_and_reset_finds_its_pci(impl):
    """Verify a `GPU at` line maps PCI→UUID for later events, and a reset line gets the PCI id back."""
    text = "\n".join([
        "NVRM: Xid (PCI:0000:b3:00): 31, early, before the mapping",
        "NVRM: GPU at PCI:0000:b3:00.0: " + UUID,
        "NVRM: GPU at 0000:03:00: " + UUID2,
        "NVRM: Xid (PCI:0000:B3:00.0): 48, DBE",
        "NVRM: GPU 0000:03:00.0: GPU has fallen off the bus.",
        "GPU reset executed: " + UUID + ", success: true",
        "GPU reset executed: " + UUID2 + ", success: false",
        "GPU reset executed: GPU-00000000-0000-0000-0000-000000000000 (reset FAILED)",
    ])
    events = decode_all(impl.load("xid"), text)
    assert [e.kind for e in events] == ["xid", "pci_mapping", "pci_mapping", "xid", "fallen_off_bus", "gpu_reset", "gpu_reset", "gpu_reset"]
    assert events[0].gpu_uuid == ""
    check(events[3], dict(gpu_uuid=UUID, pci="0000:b3:00"))
    check(events[4], dict(gpu_uuid=UUID2, pci="0000:03:00", action=Action.RESTART_BM))
    check(events[5], dict(gpu_uuid=UUID, pci="0000:b3:00", healthy=True, message="success: true", fatal=False))
    check(events[6], dict(gpu_uuid=UUID2, pci="0000:03:00", healthy=False, action=Action.CONTACT_SUPPORT,
                          mnemonic="GPU_RESET_FAILED"))
    check(events[7], dict(pci="", healthy=False))


def test_seeded_mapping(impl):
    """Verify pci_to_uuid seeds the map (keys normalised) and a bad key is a ValueError."""
    mod = impl.load("xid")
    ev = mod.decode_line("NVRM: Xid (PCI:0000:3b:00): 79, x", pci_to_uuid={"00000000:3B:00.0": UUID})
    assert ev.gpu_uuid == UUID
    with pytest.raises(ValueError, match="pci_to_uuid"):
        mod.Decoder(pci_to_uuid={"not-pci": UUID})
    d = mod.Decoder()
    d.feed("NVRM: GPU at PCI:0000:3B:00.0: " + UUID + "\n")
    assert d.pci_to_uuid == {"0000:3b:00": UUID}


def test_unknown_xid_is_contact_support(impl):
    """Verify an XID the catalog lacks decodes and maps to CONTACT_SUPPORT (the catalog default)."""
    check(one(impl, "NVRM: Xid (PCI:0000:3b:00): 999, something new"),
          dict(xid=999, action=Action.CONTACT_SUPPORT, mnemonic="UNKNOWN_XID"))


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n\n\n",
        "NVRM: Xid : 32, pid=2280636",
        "NVRM: Xid (PCI:0000:66:00): abc, pid=2280636",
        "NVRM: Xid (PCI:0000:66:00): 1234567, seven digits",
        "NVRM: Xid (PCI:0000:3b:00 GPU-I:12345): 13, mig id too long",
        "NVRM: Xid (PCI:000000000:3b:00): 13, nine digit domain",
        "[Wed Dec 11 13:23:01 2024] Linux version 5.15.0-117-generic",
        "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15",
        "NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x26:0xffff:1474)",
        "NVRM: fallen off the bus and is not responding to commands.",
        "NVRM: The NVIDIA GPU 0000:b3:00.0",
        "GPU reset executed:",
        "Xid (PCI:0000:3b:00): 79, no NVRM: prefix",
    ],
)
def test_not_an_event(impl, line):
    """Verify lines that are not decodable forms yield nothing (and never raise)."""
    assert one(impl, line) is None


def test_bytes_and_str_agree_and_bad_utf8_is_replaced(impl):
    """Verify str and bytes inputs decode alike; invalid UTF-8 becomes U+FFFD, never an error."""
    line = "NVRM: Xid (PCI:0000:3b:00): 13, pid=1, name=prøcess, bad \udcff surrogate"
    mod = impl.load("xid")
    ev_str = mod.decode_line(line)
    ev_bytes = mod.decode_line(line.encode("utf-8", "surrogatepass"))
    assert ev_str == ev_bytes
    assert ev_str.process == "prøcess"
    ev = mod.decode_line(b"NVRM: Xid (PCI:0000:3b:00): 13, \xff\xfe junk")
    assert ev.message == "\ufffd\ufffd junk"
    assert mod.decode_line(bytearray(b"NVRM: Xid (PCI:0000:3b:00): 13, x")).xid == 13
    assert mod.decode_line(memoryview(b"NVRM: Xid (PCI:0000:3b:00): 13, x")).xid == 13
    with pytest.raises(TypeError):
        mod.decode_line(13)


def test_crlf_and_long_lines(impl):
    """Verify a CRLF line ends cleanly and an over-long line is cut to MAX_LINE_BYTES with a warning."""
    mod = impl.load("xid")
    ev = mod.decode_line("NVRM: Xid (PCI:0000:3b:00): 13, msg\r\n")
    assert ev.message == "msg" and ev.warnings == ()
    long_line = "NVRM: Xid (PCI:0000:3b:00): 13, " + "x" * (2 * MAX_LINE_BYTES)
    ev = mod.decode_line(long_line)
    assert ev.warnings == (WARN_TRUNCATED,)
    assert len(ev.raw) == MAX_LINE_BYTES
    # an anchor past the cut is not seen
    assert mod.decode_line("y" * MAX_LINE_BYTES + "NVRM: Xid (PCI:0000:3b:00): 13, x") is None


def test_events_pickle_and_compare(impl):
    """Verify events survive pickling and equal the twin's events field by field."""
    import pickle

    from nvsentinel import _xid_py

    line = ("6,1,1000,-;NVRM: Xid (PCI:0000:3f:00): 145, RLW_SRC_TRACK Fatal XC1 i1 Link 10 (0x1 0x2) "
            "(GPC 1, TPC 2, SM 3)")
    ev = one(impl, line)
    assert pickle.loads(pickle.dumps(ev)) == ev
    assert ev == _xid_py.decode_line(line)
    assert hash(ev) == hash(_xid_py.decode_line(line))
