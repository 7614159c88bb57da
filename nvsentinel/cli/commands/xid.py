"""`nvsentinel xid`: decode kernel logs and explain XIDs, for SREs on a GPU node or a laptop.

    nvsentinel xid decode [FILE|-] [--json] [--overrides FILE] [--window SECONDS] [--all]
    nvsentinel xid explain XID [--json] [--overrides FILE]

`decode` prints one row per run of identical errors (time of the first, PCI id, GPU UUID when a
mapping line named it anywhere in the input, error code, mnemonic, action, fatal, count) or, with
`--json`, one JSON object per run. `explain` prints the catalog row and what nvsentinel would do.
Exit status: 0 done, 1 unreadable input or a bad override file, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from nvsentinel import xid
from nvsentinel._xid_catalog import RECOVERY_ACTION_NAMES, Action, Catalog

__all__ = ["register", "event_dict", "WHAT_NVSENTINEL_DOES"]

#: What the remediation chain does for each action (SPEC §7), in an SRE's words.
WHAT_NVSENTINEL_DOES: dict[Action, str] = {
    Action.NONE: "nothing: the GPU stays healthy (an application-level error; the job may restart)",
    Action.COMPONENT_RESET: "cordon and drain the node, then reset the GPU (gpu-reset remediation)",
    Action.RESTART_BM: "cordon and drain the node, then reboot it (reboot remediation)",
    Action.RESTART_VM: "cordon and drain the node, then reboot it (reboot remediation)",
    Action.REPLACE_VM: "cordon and drain the node, then delete the Node so the cloud replaces it",
    Action.CONTACT_SUPPORT: "cordon and drain the node, then hand it to a human (manual remediation)",
    Action.RUN_FIELDDIAG: "cordon and drain the node, then hand it to a human to run field diagnostics",
    Action.RUN_DCGMEUD: "cordon and drain the node, then hand it to a human to run DCGM EUD",
    Action.UNKNOWN: "cordon and drain the node, then hand it to a human (manual remediation)",
}

_NOTES: dict[int, str] = {
    154: "the action comes from the line: the new recovery action's name ("
    + ", ".join(f"{name!r} -> {action}" for name, action in RECOVERY_ACTION_NAMES.items())
    + "; other names by meaning: reboot -> RESTART_BM, reset/FLR -> COMPONENT_RESET, "
    "else CONTACT_SUPPORT)",
    79: "a separate 'fallen off the bus' record is always RESTART_BM as well",
    48: "usually followed by XID 63/64 (row remapping): the same COMPONENT_RESET clears both",
}
for _n in range(144, 151):
    _NOTES[_n] = (
        "NVLink5 form 'SUBCODE Severity XCn in Link N (...)' is classified per line: Nonfatal -> NONE, "
        "otherwise the catalog action; an override may name a sub-code, e.g. '145.RLW_SRC_TRACK'"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "xid",
        help="decode kernel logs (XID, SXid, fallen off the bus) and explain XIDs",
        description="Decode kernel logs and explain XIDs with NVIDIA's catalog.",
    )
    sub = parser.add_subparsers(dest="xid_command", metavar="SUBCOMMAND")

    decode = sub.add_parser(
        "decode",
        help="decode a kernel log (dmesg, /dev/kmsg, syslog, journal)",
        description="Decode a kernel log and list its GPU errors, repeats collapsed.",
    )
    decode.add_argument("file", nargs="?", default="-", metavar="FILE", help="log file, or - for stdin")
    decode.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    decode.add_argument("--overrides", metavar="FILE", help="site override file (JSON, see docs/xid.md)")
    decode.add_argument(
        "--window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="collapse identical errors within this many seconds of the first (default 60)",
    )
    decode.add_argument("--all", action="store_true", help="also list PCI -> GPU UUID mapping lines")
    decode.set_defaults(func=_decode)

    explain = sub.add_parser(
        "explain",
        help="print an XID's catalog row and what nvsentinel would do",
        description="Print an XID's catalog row and what nvsentinel would do about it.",
    )
    explain.add_argument("xid", type=int, metavar="XID")
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.add_argument("--overrides", metavar="FILE", help="site override file (JSON, see docs/xid.md)")
    explain.set_defaults(func=_explain)

    def _usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)


def _catalog(path: str | None) -> Catalog:
    return xid.load_catalog(path) if path else xid.default_catalog()


def event_dict(event: xid.XidEvent) -> dict[str, Any]:
    """An event as plain JSON-ready data (nested tuples become objects/lists)."""
    out = event._asdict()
    out["location"] = event.location._asdict() if event.location else None
    out["nvlink5"] = event.nvlink5._asdict() if event.nvlink5 else None
    out["registers"] = list(event.registers)
    out["warnings"] = list(event.warnings)
    c = event.classification
    out["classification"] = {
        "action": str(c.action),
        "fatal": c.fatal,
        "mnemonic": c.mnemonic,
        "ignored": c.ignored,
        "source": c.source,
    }
    return out


def _decode(args: argparse.Namespace) -> int:
    try:
        catalog = _catalog(args.overrides)
    except (OSError, ValueError) as exc:
        print(f"nvsentinel xid decode: {exc}", file=sys.stderr)
        return 1
    if args.window < 0:
        print("nvsentinel xid decode: --window must be >= 0", file=sys.stderr)
        return 2
    decoder = xid.Decoder(catalog)
    events: list[xid.XidEvent] = []
    try:
        if args.file == "-":
            _read_into(decoder, sys.stdin.buffer, events)
        else:
            with open(args.file, "rb") as fh:
                _read_into(decoder, fh, events)
    except OSError as exc:
        print(f"nvsentinel xid decode: {exc}", file=sys.stderr)
        return 1
    events += decoder.finish()
    # a mapping line may come after the errors in an excerpt: name the GPU from the final map
    uuids = decoder.pci_to_uuid
    events = [
        e._replace(gpu_uuid=uuids[e.pci]) if not e.gpu_uuid and e.pci in uuids else e for e in events
    ]
    if not args.all:
        events = [e for e in events if e.kind != xid.KIND_PCI_MAPPING]
    runs = xid.dedupe(events, args.window)
    out = sys.stdout
    if args.json:
        for run in runs:
            doc = event_dict(run.event)
            doc.update(count=run.count, first_timestamp=run.first_timestamp, last_timestamp=run.last_timestamp)
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    else:
        _table(out, runs)
    return 0


def _read_into(decoder: Any, fh: Any, events: list[xid.XidEvent]) -> None:
    while True:
        chunk = fh.read(xid.CHUNK_SIZE)
        if not chunk:
            return
        events += decoder.feed(chunk)


def _table(out: TextIO, runs: list[xid.DedupedEvent]) -> None:
    header = ("TIME", "PCI", "GPU", "XID", "MNEMONIC", "ACTION", "FATAL", "COUNT")
    rows = [header]
    for run in runs:
        e, c = run.event, run.event.classification
        fatal = "ignored" if c.ignored else ("yes" if c.fatal else "no")
        rows.append(
            (
                e.time_text or "-",
                e.pci or "-",
                e.gpu_uuid or "-",
                e.error_code or e.kind,
                c.mnemonic,
                str(c.action),
                fatal,
                str(run.count),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
    if len(rows) == 1:
        out.write("(no GPU errors found)\n")


def _explain(args: argparse.Namespace) -> int:
    try:
        catalog = _catalog(args.overrides)
    except (OSError, ValueError) as exc:
        print(f"nvsentinel xid explain: {exc}", file=sys.stderr)
        return 1
    number: int = args.xid
    entry = catalog.entry(number)
    c = catalog.classify(number)
    doc: dict[str, Any] = {
        "xid": number,
        "known": entry is not None,
        "mnemonic": c.mnemonic,
        "description": entry.description if entry else "",
        "catalog_action": entry.catalog_action if entry else "",
        "applies_to": list(entry.applies_to) if entry else [],
        "action": str(c.action),
        "fatal": c.fatal,
        "ignored": c.ignored,
        "source": c.source,
        "nvsentinel_does": "nothing: ignored by the site override" if c.ignored else WHAT_NVSENTINEL_DOES[c.action],
        "note": _NOTES.get(number, ""),
    }
    if args.json:
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        return 0
    lines = [
        f"XID {number}: {doc['mnemonic']}" + ("" if entry else " (not in NVIDIA's catalog)"),
        f"  description:      {doc['description'] or '-'}",
        f"  catalog bucket:   {doc['catalog_action'] or '-'}",
        f"  applies to:       {', '.join(doc['applies_to']) or '-'}",
        f"  action:           {doc['action']} ({'ignored' if c.ignored else 'fatal' if c.fatal else 'not fatal'};"
        f" decided by {c.source})"
        + (" when the line names no recovery action; see the note" if c.source == "line" else ""),
        f"  nvsentinel does:  {doc['nvsentinel_does']}",
    ]
    if doc["note"]:
        lines.append(f"  note:             {doc['note']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
