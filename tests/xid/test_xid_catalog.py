"""The one policy table: catalog data, classification rules and site overrides."""
from __future__ import annotations

import collections
import importlib.resources
import json

import pytest

from nvsentinel import xid as cat
from nvsentinel.xid import Action, Catalog, Classification, Override


def test_package_catalog_is_complete_and_consistent():
    """Verify the shipped catalog has XIDs 1–172 with the README's action counts and fatal ⇔ action ≠ NONE."""
    c = cat.default_catalog()
    assert len(c) == 172
    entries = [c.entry(x) for x in range(1, 173)]
    assert all(e is not None for e in entries)
    counts = collections.Counter(e.action for e in entries)
    assert counts == {Action.NONE: 70, Action.COMPONENT_RESET: 15, Action.CONTACT_SUPPORT: 85,
                      Action.RESTART_BM: 1, Action.RESTART_VM: 1}
    for e in entries:
        assert e.fatal == (e.action is not Action.NONE)
    assert c.entry(79).action is Action.RESTART_BM
    assert c.entry(151).action is Action.RESTART_VM
    assert c.entry(45).action is Action.NONE  # upstream PR #1629's correction
    assert c.entry(13).applies_to == ("A100", "H100", "B100", "GB200")
    assert c.entry(0) is None and c.entry(173) is None


def test_catalog_is_package_data():
    """Verify the CSV is read from the installed package (importlib.resources), not from ../shared."""
    text = (importlib.resources.files("nvsentinel") / "data" / "xid-catalog.csv").read_text("utf-8")
    assert text.startswith("xid,mnemonic,catalog_action,recommended_action,fatal,")
    assert len(cat.read_catalog_csv(text)) == 172


def test_read_catalog_csv_rejects_contradictions():
    """Verify a row whose fatal column contradicts its action is refused with its line number."""
    head = "xid,mnemonic,catalog_action,recommended_action,fatal,a100,h100,b100,gb200,description\n"
    with pytest.raises(ValueError, match="line 2"):
        cat.read_catalog_csv(head + "1,X,RESET_GPU,COMPONENT_RESET,false,true,true,true,true,d\n")
    with pytest.raises(ValueError, match="line 2"):
        cat.read_catalog_csv(head + "x,X,RESET_GPU,COMPONENT_RESET,true,true,true,true,true,d\n")
    # an empty recommended_action is mapped from the bucket the way upstream maps it
    entries = cat.read_catalog_csv(head + "7,X,RESET_FABRIC,,true,,,,,d\n8,Y,FOO,,true,,,,,d\n")
    assert entries[7].action is Action.COMPONENT_RESET and entries[8].action is Action.CONTACT_SUPPORT


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(xid=79), Classification(Action.RESTART_BM, True, "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS")),
        (dict(xid=13), Classification(Action.NONE, False, "ROBUST_CHANNEL_GR_EXCEPTION / ROBUST_CHANNEL_GR_ERROR_SW_NOTIFY")),
        (dict(xid=4242), Classification(Action.CONTACT_SUPPORT, True, "UNKNOWN_XID", source="default")),
        (dict(xid=154, recovery_action="Node Reboot Required"),
         Classification(Action.RESTART_BM, True, "GPU_RECOVERY_ACTION_CHANGED", source="line")),
        (dict(xid=154, recovery_code=1), Classification(Action.COMPONENT_RESET, True, "GPU_RECOVERY_ACTION_CHANGED", source="line")),
        (dict(xid=154), Classification(Action.CONTACT_SUPPORT, True, "GPU_RECOVERY_ACTION_CHANGED", source="line")),
        (dict(xid=145, error_code="145.RLW_SRC_TRACK", severity="nonfatal"),
         Classification(Action.NONE, False, "NVLINK_RLW_ERROR", source="line")),
        (dict(xid=145, error_code="145.RLW_SRC_TRACK", severity="fatal"),
         Classification(Action.CONTACT_SUPPORT, True, "NVLINK_RLW_ERROR", source="line")),
        (dict(xid=145), Classification(Action.CONTACT_SUPPORT, True, "NVLINK_RLW_ERROR")),
        (dict(kind="fallen_off_bus"), Classification(Action.RESTART_BM, True, "GPU_FALLEN_OFF_BUS", source="rule")),
        (dict(kind="gpu_reset", healthy=True), Classification(Action.NONE, False, "GPU_RESET_EXECUTED", source="rule")),
        (dict(kind="gpu_reset"), Classification(Action.CONTACT_SUPPORT, True, "GPU_RESET_FAILED", source="rule")),
        (dict(kind="sxid", xid=24007, severity="fatal"), Classification(Action.CONTACT_SUPPORT, True, "NVSWITCH_SXID", source="line")),
        (dict(kind="sxid", xid=20009, severity="nonfatal"), Classification(Action.NONE, False, "NVSWITCH_SXID", source="line")),
        (dict(kind="pci_mapping"), Classification(Action.NONE, False, "PCI_MAPPING", source="rule")),
    ],
)
def test_classification_rules(kwargs, expected):
    """Verify each classification rule of the single classify() function."""
    assert cat.classify(**kwargs) == expected


def test_classify_refuses_nonsense():
    """Verify an unknown kind, or an xid event without a number, is a ValueError (a caller bug)."""
    with pytest.raises(ValueError, match="kind"):
        cat.classify(13, kind="bogus")
    with pytest.raises(ValueError, match="xid"):
        cat.classify(None)


@pytest.mark.parametrize(
    "name,code,action",
    [(name, None, action) for name, action in cat.RECOVERY_ACTION_NAMES.items()]
    + [("NODE REBOOT REQUIRED", None, Action.RESTART_BM), ("Cold Reset", None, Action.COMPONENT_RESET),
       ("Power Cycle", 2, Action.CONTACT_SUPPORT), ("", 2, Action.RESTART_BM), ("", 7, Action.CONTACT_SUPPORT),
       ("", None, Action.CONTACT_SUPPORT)],
)
def test_recovery_action_table(name, code, action):
    """Verify XID 154 names map by table, then by meaning; the code decides only without a name."""
    assert cat.recovery_action_to_action(name, code) is action


def write_overrides(tmp_path, doc) -> str:
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_override_file_changes_ignores_and_adds(tmp_path):
    """Verify an override file changes an action, ignores an XID, adds an unknown one and names sub-codes."""
    path = write_overrides(tmp_path, {
        "version": 1,
        "overrides": {
            "13": {"action": "COMPONENT_RESET", "reason": "site policy: recurring SM faults"},
            "43": {"ignore": True},
            "999": {"mnemonic": "SITE_SPECIFIC", "description": "our firmware", "action": "RESTART_BM"},
            "145.RLW_SRC_TRACK": {"action": "NONE"},
            "146": {"action": "RESTART_BM"},
            "SXID.24007": {"fatal": False},
            "GPU_FALLEN_OFF_BUS": {"action": "REPLACE_VM"},
            "79": {"fatal": True},
            "31": {"fatal": True},
        },
    })
    c = cat.load_catalog(path)
    assert c.classify(13) == Classification(Action.COMPONENT_RESET, True, c.entry(13).mnemonic, source="override")
    assert c.classify(43) == Classification(Action.NONE, False, "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR", ignored=True, source="override")
    assert c.classify(999) == Classification(Action.RESTART_BM, True, "SITE_SPECIFIC", source="override")
    assert c.entry(999).description == "our firmware"
    assert c.classify(145, error_code="145.RLW_SRC_TRACK", severity="fatal").action is Action.NONE
    assert c.classify(146, error_code="146.ANY", severity="nonfatal").action is Action.RESTART_BM  # falls back to XID
    assert c.classify(kind="sxid", xid=24007, severity="fatal").action is Action.NONE
    assert c.classify(kind="fallen_off_bus").action is Action.REPLACE_VM
    assert c.classify(79).action is Action.RESTART_BM  # fatal: true keeps a fatal action
    assert c.classify(31).action is Action.CONTACT_SUPPORT  # ... and makes a non-fatal one CONTACT_SUPPORT
    assert c.classify(48).action is Action.COMPONENT_RESET  # untouched rows keep the catalog
    assert cat.default_catalog().classify(13).action is Action.NONE  # the default catalog is unchanged


def test_ignored_xids_and_override_precedence():
    """Verify ignored_xids (the NVML provider's flag) ignores XIDs and an override table wins over it."""
    c = cat.load_catalog({"48": Override(action=Action.RESTART_BM)}, ignored_xids=[48, 63])
    assert c.classify(48).action is Action.RESTART_BM and not c.classify(48).ignored
    assert c.classify(63).ignored and not c.classify(63).fatal
    layered = Catalog(c._entries).with_overrides({"13": Override(ignore=True)})
    assert layered.classify(13).ignored and layered.overrides.keys() == {"13"}


@pytest.mark.parametrize(
    "doc,message",
    [
        ([], "top level"),
        ({"version": 2}, "version"),
        ({"overrides": {}, "extra": 1}, "unknown keys"),
        ({"overrides": []}, "must be an object"),
        ({"overrides": {"XID13": {}}}, "not an error code"),
        ({"overrides": {"13": "NONE"}}, "must be an object"),
        ({"overrides": {"13": {"action": "REBOOT"}}}, r"overrides\['13'\].action"),
        ({"overrides": {"13": {"action": "NONE", "fatal": True}}}, "contradicts"),
        ({"overrides": {"13": {"fatal": "yes"}}}, "fatal"),
        ({"overrides": {"13": {"ignore": 1}}}, "ignore"),
        ({"overrides": {"13": {"mnemonic": 5}}}, "mnemonic"),
        ({"overrides": {"13": {"colour": "red"}}}, "unknown fields"),
    ],
)
def test_bad_override_files_are_refused(tmp_path, doc, message):
    """Verify a malformed override file is a ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        cat.load_catalog(write_overrides(tmp_path, doc))


def test_override_file_must_be_json(tmp_path):
    """Verify a non-JSON override file is a ValueError naming the file."""
    path = tmp_path / "o.json"
    path.write_text("13: NONE")
    with pytest.raises(ValueError, match="not JSON"):
        cat.load_overrides(path)


def test_decoder_uses_the_catalog_it_is_given(impl, tmp_path):
    """Verify the decoder classifies through the catalog passed in (overrides apply to events)."""
    c = cat.load_catalog(write_overrides(tmp_path, {"overrides": {"13": {"ignore": True}, "154": {"action": "NONE"}}}))
    mod = impl.load("xid")
    ev = mod.decode_line("NVRM: Xid (PCI:0000:3b:00): 13, x", catalog=c)
    assert ev.classification.ignored and ev.classification.action is Action.NONE
    ev = mod.decode_line("NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (OS Reboot)", catalog=c)
    assert ev.recovery_action == "OS Reboot" and ev.classification.action is Action.NONE
    assert mod.Decoder(c).catalog is c


def test_docs_recovery_table_is_the_code_table():
    """Verify the XID 154 name table in docs/xid.md is exactly catalog.RECOVERY_ACTION_NAMES."""
    import pathlib
    import re

    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "xid.md").read_text()
    section = doc.split("### XID 154 recovery action names", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([A-Z_]+)` \|$", section, flags=re.M)
    assert {name.lower(): Action(action) for name, action in rows} == dict(cat.RECOVERY_ACTION_NAMES)
