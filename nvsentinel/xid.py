"""XID / kernel-log decoding (SPEC §2.3): public API.

Picks the compiled decoder (`nvsentinel._xid_c`) unless `NVSENTINEL_NO_EXTENSIONS` is set;
`IMPLEMENTATION` says which one is loaded. Both return identical events (one test suite, a
differential property test); the grammar and the full contract are documented on the twin,
`nvsentinel._xid_py`. Every event is classified with the XID catalog (`nvsentinel._xid_catalog`,
exported here): the one table of what an XID means and what to do, with site overrides.

    >>> from nvsentinel import xid
    >>> ev = xid.decode_line("[ 1108.858286] NVRM: Xid (PCI:0000:b3:00.0): 79, pid=1234, name=python, Ch 00000001")
    >>> ev.xid, ev.pci, ev.classification.action
    (79, '0000:b3:00', <Action.RESTART_BM: 'RESTART_BM'>)
    >>> with open("/var/log/kern.log", "rb") as fh:             # any size: read in chunks
    ...     runs = xid.dedupe(xid.decode_stream(fh), window=60)

The decoder never raises on input: a line is an event, a best-effort event with `warnings`, or
nothing.

Every line form is anchored at the start of the kernel message, after the header (kmsg record
header, `<N>`, syslog stamp and `HOST kernel:`, dmesg stamps): kernel messages echo text that users
control (`tmpfs: Unknown parameter 'NVRM: Xid (...): 79, ...'`), and such text must fake no XID,
clear no fault and remap no GPU. The header also names the writer: user space (a kmsg facility
other than the kernel's, a non-`kernel` syslog tag) cannot log driver lines, and the kernel cannot
log reset tooling's `GPU reset executed:` line. `nvsentinel._xid_py` ("Anchoring") has the grammar.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Literal

from nvsentinel._compat import NO_EXTENSIONS
from nvsentinel._xid_catalog import (
    NVLINK5_XIDS,
    RECOVERY_ACTION_CODES,
    RECOVERY_ACTION_NAMES,
    Action,
    Catalog,
    CatalogEntry,
    Classification,
    Override,
    classify,
    default_catalog,
    load_catalog,
    load_overrides,
    parse_overrides,
    read_catalog_csv,
    recovery_action_to_action,
)
from nvsentinel._xid_dedup import DedupedEvent, Deduper, dedup_key, dedupe
from nvsentinel._xid_types import (
    CLOCK_MONOTONIC,
    CLOCK_REALTIME,
    CLOCK_YEARLESS,
    FALLEN_OFF_BUS_WINDOW,
    KIND_FALLEN_OFF_BUS,
    KIND_GPU_RESET,
    KIND_PCI_MAPPING,
    KIND_SXID,
    KIND_XID,
    KINDS,
    MAX_LINE_BYTES,
    Location,
    NvLink5,
    XidEvent,
    normalize_pci,
)

__all__ = [
    "IMPLEMENTATION",
    "Decoder",
    "decode_line",
    "decode",
    "decode_stream",
    "XidEvent",
    "Location",
    "NvLink5",
    "DedupedEvent",
    "Deduper",
    "dedupe",
    "dedup_key",
    "normalize_pci",
    "Action",
    "Catalog",
    "CatalogEntry",
    "Classification",
    "Override",
    "classify",
    "default_catalog",
    "load_catalog",
    "load_overrides",
    "parse_overrides",
    "read_catalog_csv",
    "recovery_action_to_action",
    "RECOVERY_ACTION_NAMES",
    "RECOVERY_ACTION_CODES",
    "NVLINK5_XIDS",
    "KINDS",
    "KIND_XID",
    "KIND_SXID",
    "KIND_FALLEN_OFF_BUS",
    "KIND_PCI_MAPPING",
    "KIND_GPU_RESET",
    "CLOCK_MONOTONIC",
    "CLOCK_REALTIME",
    "CLOCK_YEARLESS",
    "MAX_LINE_BYTES",
    "FALLEN_OFF_BUS_WINDOW",
]

IMPLEMENTATION: Literal["c", "py"]

if TYPE_CHECKING:
    from nvsentinel._xid_py import Decoder, decode_line
elif NO_EXTENSIONS:
    from nvsentinel._xid_py import Decoder, decode_line

    IMPLEMENTATION = "py"
else:
    from nvsentinel._xid_c import Decoder, decode_line

    IMPLEMENTATION = "c"

#: Bytes read per call by `decode_stream` from a file object.
CHUNK_SIZE = 1 << 20

Chunk = bytes | bytearray | memoryview | str


def decode(
    data: Chunk,
    *,
    catalog: Catalog | None = None,
    pci_to_uuid: Mapping[str, str] | None = None,
) -> list[XidEvent]:
    """Every event in a whole text (bytes or str), in order."""
    decoder = Decoder(catalog, pci_to_uuid)
    events = decoder.feed(data)
    events += decoder.finish()
    return events


def decode_stream(
    source: IO[bytes] | IO[str] | Iterable[Chunk],
    *,
    catalog: Catalog | None = None,
    pci_to_uuid: Mapping[str, str] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[XidEvent]:
    """Yield events from a file object (binary or text, read in `chunk_size` pieces) or from an
    iterable of chunks split anywhere (a multi-byte character or a line may straddle chunks)."""
    decoder = Decoder(catalog, pci_to_uuid)
    read = getattr(source, "read", None)
    if read is not None:
        while True:
            chunk = read(chunk_size)
            if not chunk:
                break
            yield from decoder.feed(chunk)
    else:
        for chunk in source:
            yield from decoder.feed(chunk)
    yield from decoder.finish()
