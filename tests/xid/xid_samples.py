"""Shared data for the XID tests: real line templates and hypothesis strategies for log-like text.

Line shapes come from SPEC §2.3 and public driver logs (NVIDIA docs, upstream NVSentinel tests,
bug reports); fields are mutated, lines truncated and junk interleaved by the strategies.
"""
from __future__ import annotations

from hypothesis import strategies as st

UUID = "GPU-455d8f70-2051-db6c-0430-ffc457bff834"
UUID2 = "GPU-12345678-1234-1234-1234-123456789abc"

# Prefixes seen in front of kernel messages (dmesg, dmesg -T, kmsg, syslog, journal, levels).
PREFIXES = [
    "",
    "[ 1108.858286] ",
    "[16450076.435595] ",
    "[Fri Aug 30 11:43:09 2024] ",
    "[Thu Feb 29 00:00:01 2024] ",
    "[Sat Feb 29 00:00:00 2023] ",  # not a date: falls through to no time stamp
    "Aug 30 11:43:09 gpu-node-7 kernel: ",
    "Aug  2 01:02:03 kernel: ",
    "Aug  2 01:02:03.123456 gpu-node-7 kernel: [   12.500000] ",
    "kernel: [16450076.435595] ",
    "<4>[    5.000001] ",
    "<3>Aug 30 11:43:09 host kernel: ",
    "6,1234,5678901,-;",
    "4,99,123456789012,-,caller=T1234;",
    "2024-08-30T11:43:09.123456+02:00 gpu-node-7 kernel: ",
    "2024-08-30T11:43:09+0000 gpu-node-7 kernel: ",
    "2024-08-30 11:43:09,5 kernel: ",
    "2024-13-45T99:99:99Z node kernel: ",
    "nvidia-persistenced[812]: ",
    # anchoring (module doc of nvsentinel._xid_py): more header forms, user-space and kernel origins,
    # and kernel messages that echo text before the body
    "Dec  6 08:00:01 gpu-node-7 kernel: [ 1234.567890] ",
    "2024-08-30T11:43:09,398911+01:00 ",
    "[ 1108.858286] gpu-node-7 kernel: ",
    "kern  :err   : [ 1108.858286] ",
    "user  :warn  : [ 1108.858286] ",
    "12,5,6,-;",
    "<13>",
    "Aug 30 11:43:09 gpu-node-7 nvsentinel-gpu-reset: ",
    "Aug 30 11:43:09 gpu-node-7 root[77]: ",
    "Aug 30 11:43:09 input: ",
    "[123] ",
    "               ",
    "[ 12.500000] tmpfs: Bad value for 'size'",
    "6,7,8,-;tmpfs: Unknown parameter '",
    "[ 12.500000] input: ",
]

# Bodies: a representative of every line form, plus lines that look close but are not events.
BODIES = [
    "NVRM: Xid (PCI:0000:b3:00.0): 79, pid=1234, name=process, Ch 00000001",
    "NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.",
    "NVRM: Xid (PCI:0000:b5:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception on "
    "(GPC 1, TPC 3, SM 0): Out Of Range Address",
    "NVRM: Xid (PCI:0000:01:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 0): Out Of Range Address",
    "NVRM: Xid (PCI:0000:b9:00): 74, pid=<unknown>, name=<unknown>, NVLink: fatal error detected on "
    "link 6(0x10000, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0)",
    "NVRM: Xid (PCI:0000:03:00): 74, pid=..., NVLink: Fatal error detected on link 4",
    "NVRM: Xid (PCI:0008:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)",
    "NVRM: Xid (PCI:0000:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
    "NVRM: Xid (PCI:0000:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (OS Reboot)",
    "NVRM: Xid (PCI:0009:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)",
    "NVRM: Xid (PCI:0000:0d:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (PF FLR)",
    "NVRM: Xid (PCI:0000:0d:00): 154, GPU recovery action changed from 0x0 (None) to 0x3 (Drain P2P)",
    "NVRM: Xid (PCI:0000:0d:00): 154, GPU recovery action changed from 0x0 )None( to 0x1 )GPU Reset Required(",
    "NVRM: Xid (PCI:0019:01:00): 145, RLW_SRC_TRACK Nonfatal XC1 i0 Link 12 (0x040988e2 0x00000008 "
    "0x00000000 0x00000000 0x00000000 0x00000000)",
    "NVRM: Xid (PCI:0000:3f:00): 145, RLW_RXPIPE   Fatal   XC0 i1 Link 03 (0x00000004 0x00000040)",
    "NVRM: Xid (PCI:0018:01:00): 149, NETIR_LINK_EVT Fatal XC0 i0 Link 04 (0x004505c6 0x00000000 0x00000000)",
    "NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, pid=7194, Contained: CE User Channel (0x9). RST: No, D-RST: No",
    "NVRM: Xid (PCI:0000:3b:00 GPU-I:01 GPU-CI:02): 13, pid=9, name=a, Graphics Exception",
    "NVRM: Xid (0000:03:00): 14, Channel 00000001",
    "NVRM: Xid (03:00): 31, pid=22, name=python3, Ch 0000000a, intr 10000000. MMU Fault",
    "NVRM: Xid (PCI:0002:00:00): 13, pid=2519562, name=python3, Graphics Exception: ChID 000c, Class 0000cbc0",
    "NVRM: Xid (PCI:0000:04:00): 74, pid=1234, name=python3, Channel 0x23, MMU Fault: ENGINE GRAPHICS",
    "NVRM: Xid (PCI:0000:2a:00): 43, pid=1238258, name=ray::Train, Ch 00000008, previous Xid 79 on this GPU",
    "NVRM: Xid (PCI:00000000:3B:00.0): 48, An uncorrectable double bit error (DBE) has been detected",
    "NVRM: Xid (PCI:10000:01:00): 119, Timeout waiting for RPC from GSP!",
    "NVRM: Xid (PCI:0000:66:00): abc, pid=2280636",
    "NVRM: Xid : 32, pid=2280636",
    "nvidia-nvswitch0: SXid (PCI:0000:c3:00.0): 24007, Fatal, Link 28 sourcetrack timeout error (First)",
    "nvidia-nvswitch3: SXid (PCI:0000:c1:00.0): 28006, Non-fatal, Link 46 MC TS crumbstore MCTO (First)",
    "nvidia-nvswitch0: SXid (PCI:0004:00:00.0): 26008, SOE Watchdog error",
    "nvidia-nvswitch1: SXid (PCI:0000:06:00.0): 20009, Non-fatal, Li",
    "NVRM: GPU at PCI:0000:b3:00: " + UUID,
    "NVRM: GPU at 0000:03:00: " + UUID2,
    "NVRM: GPU 0000:01:00.0: GPU has fallen off the bus.",
    "NVRM: The NVIDIA GPU 0000:b3:00.0",
    "NVRM: (PCI ID: 10de:26b5) installed in this system has",
    "NVRM: fallen off the bus and is not responding to commands.",
    "NVRM: The NVIDIA GPU 0000:b3:00.0\\x0aNVRM: (PCI ID: 10de:26b5) installed in this system has\\x0a"
    "NVRM: fallen off the bus and is not responding to commands.",
    "GPU reset executed: " + UUID,
    "GPU reset executed: " + UUID + ", success: true",
    "GPU reset executed: " + UUID2 + ", success: false",
    "GPU reset executed: GPU-",
    "NVRM: Xid (0000:3b): 79, pid=1, GPU has fallen off the bus.",
    "NVRM: Xid (PCI:XXXX:XX:XX): 79, pid=1, GPU has fallen off the bus.",
    "NVRM: Xid (PCI:<redacted> GPU-I:05): 94, pid=7, Contained: CE User Channel (0x9)",
    "nvidia-nvswitch2: SXid (PCI:[REDACTED]): 24007, Fatal, Link 28 sourcetrack timeout error (First)",
    "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024",
    "NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x26:0xffff:1474)",
    "usb 1-4: new high-speed USB device number 5 using xhci_hcd",
    "EXT4-fs (nvme0n1p2): mounted filesystem with ordered data mode. Quota mode: none.",
    "CPU 3: Core temperature above threshold, cpu clock throttled",
]

# Bytes the mutators like to insert: the grammar's structural characters.
STRUCTURAL = "():,.; -_=[]<>x0123456789abcdefABCDEF NVRMXidSGPUT\t\r'"
JUNK_ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",))


@st.composite
def pci_ids(draw: st.DrawFn) -> str:
    """PCI ids in every printed shape, including short, redacted and broken ones."""
    if draw(st.integers(0, 4)) == 0:
        label = draw(st.sampled_from(["PCI:", "", "pci:"]))
        return label + draw(
            st.sampled_from(
                ["0000:3b", "00000000:3B", "0000:3b:0", "XXXX:XX:XX", "xxxx:xx:xx.x", "0000:XX:00.0", "****",
                 "X" * 33, "<redacted>", "<>", "<" + "a" * 33 + ">", "[REDACTED]", "[a]b]", "Redacted",
                 "redact", "?:?", "0000:3b:00.x"]
            )
        )
    label = draw(st.sampled_from(["PCI:", "", "PCI:", "pci:"]))
    domain = draw(st.text("0123456789abcdefABCDEF", min_size=0, max_size=9))
    bus = draw(st.text("0123456789abcdefABCDEF", min_size=1, max_size=3))
    dev = draw(st.text("0123456789abcdefABCDEF", min_size=1, max_size=3))
    fn = draw(st.sampled_from(["", "", ".0", ".7", ".", ".x"]))
    return f"{label}{domain + ':' if domain else ''}{bus}:{dev}{fn}"


@st.composite
def xid_bodies(draw: st.DrawFn) -> str:
    """Generated Xid/SXid/mapping/reset bodies with mutated fields."""
    pci = draw(pci_ids())
    mig = draw(st.sampled_from(["", " GPU-I:05", " GPU-I:1 GPU-CI:2", " GPU-CI:00", " GPU-I:12345", " GPU-I:"]))
    number = draw(st.one_of(st.integers(0, 200), st.integers(0, 10**8), st.sampled_from([13, 74, 79, 145, 154])))
    pid = draw(st.sampled_from(["", "pid=1234, ", "pid='<unknown>', ", "pid=<unknown>, ", "pid=12345678901, ", "pid=, "]))
    name = draw(st.sampled_from(["", "name=python3, ", "name=<unknown>, ", "name=a b c, ", "name=" + "n" * 300 + ", "]))
    regs = ", ".join(draw(st.lists(st.sampled_from(["0x0", "0x10000", "0xffffffffffffffff", "0x1ffffffffffffffff", "0x"]), max_size=18)))
    message = draw(
        st.sampled_from(
            [
                "Ch 00000001",
                "Channel 0x23, MMU Fault",
                "ChID 000c, Class 0000cbc0",
                "Graphics SM Warp Exception on (GPC 1, TPC 3, SM 0): Out Of Range Address",
                "Graphics Exception on (GPC 12345, TPC 1)",
                f"NVLink: fatal error detected on link {draw(st.integers(0, 99999))}({regs})",
                f"NVLink: link {draw(st.integers(0, 20))} ({regs})",
                "GPU recovery action changed from 0x0 (None) to 0x"
                + draw(st.text("0123456789abcdefg", max_size=18))
                + draw(st.sampled_from([" (GPU Reset Required)", " (Node Reboot Required)", " ()", " )x(", "", " (Reboot) to (x)"])),
                draw(st.sampled_from(["RLW_SRC_TRACK", "NETIR_LINK_EVT", "X" * 70, "A-B"]))
                + draw(st.sampled_from([" Nonfatal", " Fatal", "   Nonfatal", " Non-fatal", " "]))
                + draw(st.sampled_from([" XC1", " XC0", "  XC1"]))
                + draw(st.sampled_from([" i0", " i1", " ", ""]))
                + " Link "
                + draw(st.sampled_from(["10", "-1", "03", "12345", "x"]))
                + " (0x"
                + draw(st.text("0123456789abcdef", min_size=0, max_size=18))
                + " 0x"
                + draw(st.text("0123456789abcdef", min_size=0, max_size=18))
                + draw(st.sampled_from(["", " 0x00000000 0x1", " ...)", ")", "  0x" + "f" * 20])),
                "GPU has fallen off the bus.",
                "previous Xid 79 seen",
                "",
            ]
        )
    )
    kind = draw(st.integers(0, 7))
    if kind <= 3:
        return f"NVRM: Xid ({pci}{mig}): {number}, {pid}{name}{message}"
    if kind == 4:
        sev = draw(st.sampled_from(["Fatal, ", "Non-fatal, ", "Nonfatal,", "Fatal", "Severity 1 ", ""]))
        link = draw(st.sampled_from(["Link 28 ", "Link 04, ", "Link 12345 ", "Link", ""]))
        switch = draw(st.sampled_from(["nvidia-nvswitch0: ", "nvidia-nvswitch12345: ", "xnvidia-nvswitch2: ", ""]))
        return f"{switch}SXid ({pci}): {number}, {sev}{link}sourcetrack timeout error (First)"
    if kind == 5:
        uuid = draw(st.sampled_from([UUID, UUID2, "GPU-", "GPU-" + "a" * 80, "GPU-xyz"]))
        return f"NVRM: GPU at {pci}: {uuid}"
    if kind == 6:
        uuid = draw(st.sampled_from([UUID, UUID2, "GPU-", "GPU-" + "a" * 80]))
        tail = draw(st.sampled_from(["", ", success: true", ", success: false", ", SUCCESS: FALSE", " (reset FAILED)"]))
        return f"GPU reset executed: {uuid}{tail}"
    return draw(
        st.sampled_from(
            [
                f"NVRM: The NVIDIA GPU {pci}",
                f"NVRM: GPU {pci}: GPU has fallen off the bus.",
                "NVRM: (PCI ID: 10de:26b5) installed in this system has",
                "NVRM: fallen off the bus and is not responding to commands.",
                f"NVRM: The NVIDIA GPU {pci} (PCI ID: 10DE:26B5) has fallen off the bus",
            ]
        )
    )


@st.composite
def mutated(draw: st.DrawFn, line: str) -> str:
    """Truncate, splice structural characters or junk into, or duplicate part of a line."""
    how = draw(st.integers(0, 5))
    if how == 0 or not line:
        return line
    at = draw(st.integers(0, len(line)))
    if how == 1:
        return line[:at]
    if how == 2:
        return line[:at] + draw(st.text(STRUCTURAL, min_size=1, max_size=4)) + line[at:]
    if how == 3:
        return line[:at] + draw(st.text(JUNK_ALPHABET, max_size=6)) + line[at:]
    if how == 4:
        end = draw(st.integers(at, len(line)))
        return line[:end] + line[at:end] + line[end:]
    return line[:at] + line[at + 1 :]


@st.composite
def log_lines(draw: st.DrawFn) -> str:
    """One kernel-log-like line: a prefix, a real or generated body, maybe mutated; or junk."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.text(JUNK_ALPHABET, max_size=40))
    prefix = draw(st.sampled_from(PREFIXES))
    body = draw(st.sampled_from(BODIES)) if choice <= 4 else draw(xid_bodies())
    return draw(mutated(prefix + body))


@st.composite
def log_texts(draw: st.DrawFn) -> bytes:
    """A kernel log: lines joined by \\n (sometimes \\r\\n), maybe without a final newline."""
    lines = draw(st.lists(log_lines(), max_size=14))
    sep = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    text = sep.join(lines) + draw(st.sampled_from(["", sep]))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` split at arbitrary byte offsets (possibly inside a UTF-8 sequence)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    out, prev = [], 0
    for cut in cuts + [len(data)]:
        out.append(data[prev:cut])
        prev = cut
    return out


def decode_all(module, data, chunks=None, **kwargs):
    """Every event of `data` through `module.Decoder`, fed whole or as `chunks`."""
    decoder = module.Decoder(**kwargs)
    events = []
    for chunk in chunks if chunks is not None else [data]:
        events += decoder.feed(chunk)
    events += decoder.finish()
    return events
