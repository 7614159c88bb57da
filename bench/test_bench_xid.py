"""XID decoder benchmarks (SPEC §9): compiled vs twin vs the newline-count floor, one buffer.

Workload: a generated, deterministic (seeded) kernel log of 1 000 000 lines: mixed lengths, dmesg
`[secs]`, /dev/kmsg `p,seq,usec,-;` and syslog prefixes, 1 % NVRM lines (XIDs of every form,
mapping lines, driver chatter). Targets: decoding it ≥ 20× the `re` twin, and within 5× of
`bytes.count(b"\\n")` over the same buffer. Each case checks its result against the twin's
(`extra_info["correct"]`) and prints the ratios once a group is complete.

`pytest bench --benchmark-disable` (the CI smoke test) runs each case once on a 20 000-line log.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import pytest

from nvsentinel import _xid_py

LINES = 1_000_000
QUICK_LINES = 20_000
NVRM_SHARE = 0.01
SEED = 20240830
RECORDS = 20_000  # kmsg records fed one at a time in the xid.feed_records case

TARGET_TWIN = {"text": "≥ 20× twin", "kind": "vs_twin", "value": 20.0, "impls": ["c"], "ref": ""}
TARGET_FLOOR = {"text": "≤ 5× newline count", "kind": "vs_baseline", "value": 5.0, "impls": ["c"], "ref": ""}

# ---- the generated log ----
NOISE = [
    "x",
    "usb 1-4: new high-speed USB device number {n} using xhci_hcd",
    "EXT4-fs (nvme0n1p2): mounted filesystem with ordered data mode. Quota mode: none.",
    'audit: type=1400 audit({n}.123:{m}): apparmor="DENIED" operation="open" profile="snap.lxd.daemon" '
    'name="/proc/{n}/mounts" pid={n} comm="lxd" requested_mask="r" denied_mask="r" fsuid=0 ouid=0',
    "IPv6: ADDRCONF(NETDEV_CHANGE): eth{m}: link becomes ready",
    "CPU {m}: Core temperature above threshold, cpu clock throttled (total events = {n})",
    "mlx5_core 0000:{b:02x}:00.0: mlx5_fw_tracer_handle_traces:735:(pid {n}): FWTracer: Events were lost",
    "systemd[1]: Started Session {n} of User root.",
    "kauditd_printk_skb: {m} callbacks suppressed",
    "nvidia-modeset: Loading NVIDIA Kernel Mode Setting Driver for UNIX platforms  550.54.15",
    "nvidia-nvswitch{m}: Probing device 0000:{b:02x}:00.0, Vendor Id = 0x10de, Device Id = 0x22a3",
    "TCP: request_sock_TCP: Possible SYN flooding on port {n}. Sending cookies.  Check SNMP counters.",
    "perf: interrupt took too long ({n} > {m}), lowering kernel.perf_event_max_sample_rate to {n}",
    "NFSD: client 10.0.{m}.{m} testing state ID with incorrect client ID",
    "Out of memory: Killed process {n} (python3) total-vm:{n}kB, anon-rss:{n}kB, file-rss:0kB, shmem-rss:0kB",
]
NVRM_LINES = [
    "NVRM: Xid (PCI:0000:{b:02x}:00): 13, pid={n}, name=python3, Graphics SM Warp Exception on (GPC {m}, TPC 3, SM 0): Out Of Range Address",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 31, pid={n}, name=pt_main_thread, Ch 0000000{m}, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f_{n:08x}. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 43, pid={n}, name=python3, Ch 00000008",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 45, pid={n}, name=python3, Ch 00000010",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 48, pid={n}, name=python3, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition {m}, subpartition 0.",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 63, pid={n}, Row Remapper: New row marked for remapping, reset gpu to activate.",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 74, pid=<unknown>, name=<unknown>, NVLink: fatal error detected on link {m}(0x10000, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0)",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 79, pid={n}, GPU has fallen off the bus.",
    "NVRM: Xid (PCI:0000:{b:02x}:00 GPU-I:0{m}): 94, pid={n}, Contained: CE User Channel (0x9). RST: No, D-RST: No",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 95, pid={n}, name=python3, Uncontained: FBHUB. RST: Yes, D-RST: No",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 119, pid={n}, name=nvidia-smi, Timeout after 6s of waiting for RPC response from GPU{m} GSP! Expected function 76 (GSP_RM_CONTROL) (0x20800a4c 0x4).",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 145, RLW_SRC_TRACK Nonfatal XC1 i0 Link {m} (0x040988e2 0x00000008 0x00000000 0x00000000 0x00000000 0x00000000)",
    "NVRM: Xid (PCI:0000:{b:02x}:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)",
    "NVRM: GPU at PCI:0000:{b:02x}:00.0: GPU-{n:08x}-2051-db6c-0430-ffc457bff834",
    "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024",
    "NVRM: GPU 0000:{b:02x}:00.0: RmInitAdapter failed! (0x26:0xffff:1474)",
    "NVRM: nvAssertOkFailedNoLog: Assertion failed: Call timed out [NV_ERR_TIMEOUT] (0x00000065) returned from pRmApi->Control(pRmApi, RES_GET_CLIENT_HANDLE(pKernelChannel), RES_GET_HANDLE(pKernelChannel), NVA06F_CTRL_CMD_RESTART_RUNLIST, &params, sizeof(params)) @ kernel_channel.c:4005",
]


@functools.cache
def kernel_log(lines: int) -> bytes:
    """The benchmark log: deterministic for a given size (seeded)."""
    rng = random.Random(SEED)
    out = []
    for i in range(lines):
        ts = i * 0.0137
        r = rng.random()
        if r < 0.45:
            prefix = f"[{ts:12.6f}] "
        elif r < 0.9:
            prefix = f"{rng.choice((3, 4, 6))},{i},{int(ts * 1e6)},-;"
        else:
            prefix = f"Aug {1 + i * 30 // lines:2d} 11:43:{i % 60:02d} gpu-node-7 kernel: [{ts:12.6f}] "
        template = rng.choice(NVRM_LINES) if rng.random() < NVRM_SHARE else rng.choice(NOISE)
        out.append(prefix + template.format(n=rng.randint(1, 99999), m=rng.randint(0, 9), b=rng.randint(0, 255)))
    return ("\n".join(out) + "\n").encode()


@functools.cache
def twin_events(lines: int) -> tuple:
    """The twin's events for the log: the correctness oracle (computed once)."""
    return tuple(_decode(_xid_py, kernel_log(lines)))


def _decode(module: Any, data: bytes) -> list:
    decoder = module.Decoder()
    return decoder.feed(data) + decoder.finish()


def _module(impl: str) -> Any:
    import importlib

    return importlib.import_module(f"nvsentinel._xid_{impl}")


# ---- timings for the printed ratios ----
MEDIANS: dict[tuple[str, str], float] = {}


def _record(benchmark: Any, group: str, impl: str) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        MEDIANS[(group, impl)] = stats.stats.median


def _print_ratios(group: str, lines: int) -> None:
    c, py, floor = (MEDIANS.get((group, k)) for k in ("c", "py", "floor"))
    if c is None or floor is None:
        return
    text = f"\n[{group}] {lines:,} lines: c {c * 1e3:.1f} ms, floor {floor * 1e3:.1f} ms, c/floor {c / floor:.2f}x"
    if py is not None:
        text += f", py {py * 1e3:.1f} ms, twin/c {py / c:.1f}x"
    print(text)


def _setup(benchmark: Any, group: str, impl: str, lines: int, target: dict[str, Any] | None,
           reference: str | None, unit: str = "line", ops: int | None = None, note: str = "") -> None:
    benchmark.group = group
    benchmark.extra_info.update(
        case=group, impl=impl, ops=ops or lines, unit=unit, note=note, reference=reference,
        target=target if impl == "c" else None,
    )


def _run_decode(benchmark: Any, frozen_gc: Callable[[], None], capsys: Any, group: str, impl: str,
                target: dict[str, Any]) -> None:
    lines = QUICK_LINES if benchmark.disabled else LINES
    data = kernel_log(lines)
    oracle = twin_events(lines)
    frozen_gc()
    note = "bytes.count(b'\\n')" if impl == "floor" else ""
    _setup(benchmark, group, impl, lines, target, "floor", note=note)
    if impl == "floor":
        result = benchmark(data.count, b"\n")
        correct = result == lines
    else:
        module = _module(impl)
        result = benchmark(_decode, module, data)
        correct = tuple(result) == oracle and len(result) > lines * NVRM_SHARE / 2
    benchmark.extra_info["correct"] = bool(correct)
    _record(benchmark, group, impl)
    if impl == "floor":
        with capsys.disabled():
            _print_ratios(group, lines)
    assert correct, f"{group} [{impl}] disagrees with the twin"


@pytest.mark.parametrize("impl", ["c", "py", "floor"])
def test_decode(benchmark, frozen_gc, capsys, impl):
    """Time decoding the whole 1M-line log (one feed + finish) against the twin."""
    _run_decode(benchmark, frozen_gc, capsys, "xid.decode", impl, TARGET_TWIN)


@pytest.mark.parametrize("impl", ["c", "floor"])
def test_decode_vs_floor(benchmark, frozen_gc, capsys, impl):
    """Time the same decode against bytes.count(b"\\n") over the same buffer (the physical floor)."""
    _run_decode(benchmark, frozen_gc, capsys, "xid.decode_floor", impl, TARGET_FLOOR)


@pytest.mark.parametrize("impl", ["c", "py"])
def test_feed_records(benchmark, frozen_gc, impl):
    """Time the kernel-log monitor's path: one long-lived decoder fed one kmsg record at a time."""
    records = [line + b"\n" for line in kernel_log(QUICK_LINES).splitlines()[:RECORDS]]
    module = _module(impl)

    def feed_all() -> list:
        decoder = module.Decoder()
        out = []
        for record in records:
            out += decoder.feed(record)
        return out + decoder.finish()

    frozen_gc()
    _setup(benchmark, "xid.feed_records", impl, len(records), None, None, unit="record")
    result = benchmark(feed_all)
    correct = result == list(twin_events(QUICK_LINES)[: len(result)]) and result == _decode(_xid_py, b"".join(records))
    benchmark.extra_info["correct"] = bool(correct)
    assert correct
